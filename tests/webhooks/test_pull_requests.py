"""pull_request deliveries over real HTTP: previews are opened, updated, capped and closed (no cluster
needed: the app runs without its worker, so these tests see exactly what each delivery queued)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core import deploys, events, previews
from storage import models
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    Hook,
    deliver_notifications,
    deployments,
    job_rows,
    make_app,
    offline_cluster,
    pr_payload,
)


async def _preview_app(hook: Hook, **changes: Any) -> models.App:
    await offline_cluster(hook.rt)
    return await make_app(
        hook.rt,
        previews_enabled=True,
        preview_domain="preview.acme.dev",
        preview_env={"PREVIEW": "1"},
        image_template="ghcr.io/acme/web:{sha}",
        **changes,
    )


async def _previews(hook: Hook) -> list[models.Preview]:
    async with hook.rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Preview).order_by(models.Preview.pr_number)))


async def test_opened_queues_a_preview_deploy_in_its_own_namespace(hook: Hook) -> None:
    await _preview_app(hook)
    r = await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_A))
    assert r.status_code == 202, r.text
    [decision] = r.json()["decisions"]
    assert decision["action"] == "deploy"
    assert decision["preview"] == "web-pr-7"
    assert "http://web-pr-7.preview.acme.dev" in decision["reason"]
    [preview] = await _previews(hook)
    assert (preview.namespace, preview.url, preview.status) == (
        "web-pr-7",
        "http://web-pr-7.preview.acme.dev",
        "deploying",
    )
    assert (preview.repo, preview.head_sha, preview.closed_at) == ("acme/web", SHA_A, None)
    assert preview.expires_at is not None
    [deployment] = await deployments(hook.rt)
    assert (deployment.namespace, deployment.preview_id, deployment.trigger) == ("web-pr-7", preview.id, "pr")
    assert deployment.image == f"ghcr.io/acme/web:{SHA_A}"
    assert deployment.git_sha == SHA_A
    [job] = await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)
    assert job.concurrency_key == f"deploy:{preview.app_id}:web-pr-7"
    async with hook.rt.sessionmaker() as session:
        app = await session.get(models.App, preview.app_id)
    assert app is not None and app.image == "ghcr.io/acme/web:0.1"  # a preview leaves the app alone


async def test_preview_url_is_https_when_tls_is_configured(hook: Hook) -> None:
    await _preview_app(hook, tls_issuer="letsencrypt")
    await hook.post("pull_request", pr_payload("opened", number=3))
    [preview] = await _previews(hook)
    assert preview.url == "https://web-pr-3.preview.acme.dev"


async def test_synchronize_redeploys_the_same_preview_with_the_new_head(hook: Hook) -> None:
    await _preview_app(hook)
    await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_A))
    r = await hook.post("pull_request", pr_payload("synchronize", number=7, sha=SHA_B))
    assert r.json()["decisions"][0]["action"] == "deploy"
    [preview] = await _previews(hook)
    assert preview.head_sha == SHA_B
    rows = await deployments(hook.rt)
    assert [(d.git_sha, d.status, d.preview_id) for d in rows] == [
        (SHA_A, "superseded", preview.id),
        (SHA_B, "queued", preview.id),
    ]


@pytest.mark.both_databases
async def test_closed_queues_the_teardown_and_cancels_pending_deploys(hook: Hook) -> None:
    await _preview_app(hook)
    await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_A))
    r = await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_A))
    assert r.status_code == 202
    assert r.json()["decisions"][0]["reason"] == "preview web-pr-7 is being deleted"
    [preview] = await _previews(hook)
    assert preview.status == "closing" and preview.closed_at is not None
    [deployment] = await deployments(hook.rt)
    assert deployment.status == "cancelled"
    [teardown] = await job_rows(hook.rt, kind=previews.TEARDOWN_JOB)
    assert teardown.payload["preview_id"] == preview.id
    assert teardown.payload["reason"] == "pull request #7 was closed"
    assert teardown.concurrency_key == f"deploy:{preview.app_id}:web-pr-7"
    # Closing twice queues nothing more.
    r = await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_A))
    assert r.json()["decisions"][0]["reason"] == "no open preview for pull request #7"
    assert len(await job_rows(hook.rt, kind=previews.TEARDOWN_JOB)) == 1


async def test_reopened_brings_a_closed_preview_back(hook: Hook) -> None:
    await _preview_app(hook)
    await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_A))
    await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_A))
    r = await hook.post("pull_request", pr_payload("reopened", number=7, sha=SHA_A))
    assert r.json()["decisions"][0]["action"] == "deploy"
    [preview] = await _previews(hook)
    assert (preview.status, preview.closed_at) == ("deploying", None)
    assert [d.status for d in await deployments(hook.rt)] == ["cancelled", "queued"]


@pytest.mark.both_databases
async def test_the_cap_on_open_previews_refuses_with_a_pr_comment(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await _preview_app(hook, preview_max_open=1)
    first = pr_payload("opened", number=7, sha=SHA_A)
    second = pr_payload("opened", number=8, sha=SHA_B)
    fake_github.add_pull_from_event(first)
    fake_github.add_pull_from_event(second)
    await hook.post("pull_request", first)
    r = await hook.post("pull_request", second)
    assert r.status_code == 202
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip"
    assert "web already has 1 open previews, the limit (preview_max_open=1)" in decision["reason"]
    assert [p.pr_number for p in await _previews(hook)] == [7]
    async with hook.rt.sessionmaker() as session:
        refused = list(
            await session.scalars(select(models.Event).where(models.Event.kind == events.PREVIEW_REFUSED))
        )
    assert [e.payload["pr_number"] for e in refused] == [8]

    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 8)
    assert "No preview environment for `web`" in comment["body"]
    assert "preview_max_open=1" in comment["body"]

    # A second push to the refused PR does not add a second comment.
    await hook.post("pull_request", pr_payload("synchronize", number=8, sha=SHA_A))
    await deliver_notifications(hook.rt)
    assert len(fake_github.comments("acme/web", 8)) == 1

    # Once PR 7 closes, the next push to PR 8 gets its preview.
    await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_A))
    r = await hook.post("pull_request", pr_payload("synchronize", number=8, sha=SHA_B))
    assert r.json()["decisions"][0]["action"] == "deploy"


async def test_closing_a_pr_without_a_preview_is_a_clear_202(hook: Hook) -> None:
    await _preview_app(hook)
    r = await hook.post("pull_request", pr_payload("closed", number=99))
    assert r.status_code == 202
    assert r.json()["decisions"][0]["reason"] == "no open preview for pull request #99"
    assert await job_rows(hook.rt) == []
