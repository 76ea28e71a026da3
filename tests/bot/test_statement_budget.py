"""How many SQL statements one deploy request costs, over HTTP: a regression guard, not a timing.

A `before_cursor_execute` listener on the real engine of the real app counts every statement the
driver is handed while one request is answered: `POST /api/v1/apps/{name}/deploys` with a bearer
token, and a signed Slack `/shipit deploy` through bolt.  What is counted: every SELECT, INSERT,
UPDATE and DELETE (an executemany counts once: it is one statement).  BEGIN and COMMIT are not
counted when the driver runs them as statements (SQLite's BEGIN IMMEDIATE, SAVEPOINT) and not
when the DBAPI does it itself (COMMIT); SQLite's PRAGMAs at connect are not counted, because the
listener is installed after the pool is warm.
The worker is not started, so nothing else talks to the database while a request is measured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from shipit.main import create_app
from shipit.runtime import Runtime
from storage import models
from tests.bot.conftest import ALICE, CHANNEL, SlackSender, add_app, grant_roles
from tests.conftest import serving
from tests.fakes.slack_api import FakeSlack
from tests.shipit.conftest import make_token, seed_offline

# The aim of issue 13 is 8 per request: both paths reach it.  The budgets are
# what each path costs on SQLite today (before issue 13: 30 and 36; 25 and 26 after environments, protection, identities and
# notification targets were merged; 20 and 20 before this pass), so that nothing creeps back.  The
# read-mostly look-ups (token, app, environment, project, roles, namespace claim, secrets probe,
# notification targets) cost one statement together while nothing changed: the read cache's stamp
# (core/readcache.py); the writes are one statement per table (revision, deployment, supersede,
# events, audit, jobs).  Slack's replay guard is the deployment's own dedupe key (the command's
# trigger id), not a delivery record of its own; an app past its kept revisions prunes in one DELETE more.
AIM = 8
API_BUDGET = 8
SLACK_BUDGET = 8


@contextmanager
def counting(rt: Runtime) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split())[:160])

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _report(what: str, statements: list[str], budget: int) -> str:
    listed = "\n".join(f"  {i + 1:2}. {s}" for i, s in enumerate(statements))
    return f"{what} ran {len(statements)} SQL statements (budget {budget}, aim {AIM}):\n{listed}"


@pytest.fixture
async def served(rt: Runtime) -> AsyncIterator[str]:
    """The real app (Slack channel on) over HTTP, without the worker: only requests use the database."""
    async with rt.sessionmaker.begin() as session:
        await seed_offline(session, rt=rt, slack_channel=CHANNEL)
    await grant_roles(rt, project="acme")
    await add_app(rt, name="web", cluster="offline", image="ghcr.io/acme/web:1.0")
    async with serving(create_app(rt=rt)) as url:
        yield url


async def _deploys(rt: Runtime) -> list[models.Deployment]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))


async def test_an_api_deploy_request_stays_within_the_statement_budget(served: str, rt: Runtime) -> None:
    token = await make_token(rt)
    async with httpx.AsyncClient(base_url=served, headers={"Authorization": f"Bearer {token}"}) as http:
        # A first request warms what is read once (and shows the path works at all).
        first = await http.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.1"})
        assert first.status_code == 202, first.text
        with counting(rt) as statements:
            second = await http.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.2"})
        assert second.status_code == 202, second.text
    assert len(statements) <= API_BUDGET, _report("POST /api/v1/apps/web/deploys", statements, API_BUDGET)
    # The answer tells the new deploy's place in the queue (the first is superseded: it is next).
    assert second.json()["queue_position"] == 1, second.json()
    # Still the whole request: the second supersedes the first, both committed before the answer.
    rows = await _deploys(rt)
    assert [(d.image, d.status) for d in rows] == [
        ("ghcr.io/acme/web:1.1", "superseded"),
        ("ghcr.io/acme/web:1.2", "queued"),
    ]


async def test_a_deploy_of_an_app_past_its_kept_revisions_prunes_in_one_statement(
    served: str, rt: Runtime
) -> None:
    """The usual case in production: every request then also prunes the oldest revision."""
    token = await make_token(rt)
    async with httpx.AsyncClient(base_url=served, headers={"Authorization": f"Bearer {token}"}) as http:
        for i in range(rt.core.config.revisions_kept):
            r = await http.post("/api/v1/apps/web/deploys", json={"image": f"ghcr.io/acme/web:1.{i}"})
            assert r.status_code == 202, r.text
        with counting(rt) as statements:
            r = await http.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:2.0"})
        assert r.status_code == 202, r.text
    budget = API_BUDGET + 1  # the prune: one DELETE
    assert len(statements) <= budget, _report("POST /api/v1/apps/web/deploys (pruning)", statements, budget)
    assert any(s.startswith("DELETE FROM revisions") for s in statements), statements
    async with rt.sessionmaker() as session:
        numbers = sorted(await session.scalars(select(models.Revision.number)))
    assert numbers == list(range(2, rt.core.config.revisions_kept + 2))


async def test_a_slack_deploy_command_stays_within_the_statement_budget(
    served: str, rt: Runtime, fake_slack: FakeSlack
) -> None:
    slack = SlackSender(url=served, fake=fake_slack)
    try:
        first = await slack.command("deploy web ghcr.io/acme/web:1.1", user=ALICE)
        assert "queued" in str(first).lower(), first
        with counting(rt) as statements:
            second = await slack.command("deploy web ghcr.io/acme/web:1.2", user=ALICE)
        assert "queued" in str(second).lower(), second
    finally:
        await slack.close()
    assert len(statements) <= SLACK_BUDGET, _report("/shipit deploy", statements, SLACK_BUDGET)
    rows = await _deploys(rt)
    assert [(d.image, d.status, d.actor) for d in rows] == [
        ("ghcr.io/acme/web:1.1", "superseded", ALICE.subject),
        ("ghcr.io/acme/web:1.2", "queued", ALICE.subject),
    ]
