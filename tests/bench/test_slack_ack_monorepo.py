"""bench.slack_ack --monorepo: its pushes are what the real app accepts, each deploying every mono app
once, and its summary flags a run whose deployments are not accepted pushes x apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bench import slack_ack
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from tests.conftest import serving
from tests.webhooks.conftest import make_app, offline_cluster


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=db_url,
        data_dir=tmp_path / "var",
        master_key=SecretStr(generate_key()),
        github_webhook_secret=SecretStr(slack_ack.GITHUB_SECRET),
        registry_pin_digests=False,
    )


@pytest.fixture
async def served(rt: Runtime) -> AsyncIterator[str]:
    """The real app over HTTP, without its worker, with three apps following the bench's monorepo."""
    await offline_cluster(rt)
    for m in range(3):
        await make_app(
            rt,
            name=f"mono-{m:02d}",
            git_repo=slack_ack.monorepo(),
            image_template=f"ghcr.io/acme/mono-{m:02d}:{{sha}}",
        )
    async with serving(create_app(rt=rt)) as url:
        yield url


async def test_each_monorepo_push_is_accepted_and_deploys_every_app_once(served: str, rt: Runtime) -> None:
    pushes = slack_ack.monorepo_pushes(count=3, seed="test")
    assert len({h["X-GitHub-Delivery"] for _, h in pushes}) == 3
    async with httpx.AsyncClient(base_url=served) as http:
        for body, headers in pushes:
            answer = await http.post("/github/webhook", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            assert [d["action"] for d in answer.json()["decisions"]] == ["deploy"] * 3, answer.json()
        # Sent again (a redelivery): answered, nothing written.
        again = await http.post("/github/webhook", content=pushes[0][0], headers=pushes[0][1])
        assert again.json()["result"] == "duplicate", again.json()
    async with rt.sessionmaker() as session:
        rows = list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))
    assert len(rows) == 9 and {d.trigger for d in rows} == {"push"}
    # Each push a new commit of the branch: the last one's deploys are queued, the others superseded.
    assert len({d.git_sha for d in rows}) == 3
    assert [d.status for d in rows] == ["superseded"] * 6 + ["queued"] * 3


def _row(*, pushes: int, errors: int, deployed: int) -> slack_ack.MonoRow:
    return slack_ack.MonoRow(
        rate=50, latencies=[10.0] * 100, errors=[], elapsed=2.0, busy=0.5,
        push_latencies=[20.0] * pushes, push_errors=["500"] * errors, push_elapsed=2.0, deployed=deployed,
    )  # fmt: skip


def test_the_summary_gives_deployments_per_second_and_flags_a_loss_or_a_double() -> None:
    fine = slack_ack.mono_summary(_row(pushes=4, errors=1, deployed=60), apps=20)
    assert fine.split()[-1] == "30.0" and "!=" not in fine
    lost = slack_ack.mono_summary(_row(pushes=4, errors=0, deployed=60), apps=20)
    assert "deployments 60 != 4 pushes accepted x 20 apps" in lost
    doubled = slack_ack.mono_summary(_row(pushes=4, errors=0, deployed=100), apps=20)
    assert "!=" in doubled
