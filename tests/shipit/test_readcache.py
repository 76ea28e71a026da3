"""The read cache (core.readcache) over the real API: a write is seen on the very next request.

Each test warms the cache of the serving runtime with a request, then changes what it copied through a
SECOND runtime on the same database (its own engine and pool: another replica, or the CLI on the
server), and the very next request to the first runtime must answer from the change.  Both databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from core import apps, projects, tokens
from core.notices import targets
from core.protection import settings as protection
from shipit import runtime
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN, serving
from tests.shipit.conftest import make_token, seed_offline

pytestmark = pytest.mark.both_databases

DEV = "user:dev"


@pytest.fixture
async def other(settings: Settings, rt: Runtime) -> AsyncIterator[Runtime]:
    """Another replica on the same database (built after `rt`, so the schema is there)."""
    second = await runtime.build(settings)
    yield second
    await runtime.stop(second)


@pytest.fixture
async def api(rt: Runtime, db_backend: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over HTTP, a project with an app, and a developer's token (not an admin)."""
    async with rt.sessionmaker.begin() as session:
        await seed_offline(session, rt=rt)
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=DEV, role="developer")
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="offline",
            name="web",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
        )
    token = await make_token(rt, subject=DEV, admin=False)
    async with (
        serving(create_app(rt=rt)) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http,
    ):
        yield http


async def _deploy(http: httpx.AsyncClient, tag: str) -> httpx.Response:
    return await http.post("/api/v1/apps/web/deploys", json={"image": f"ghcr.io/acme/web:{tag}"})


async def _warm(http: httpx.AsyncClient, rt: Runtime) -> None:
    """Two deploy requests: the second is answered from the copies (hits, no new misses)."""
    assert (await _deploy(http, "1.1")).status_code == 202
    misses = rt.core.readcache.misses
    assert (await _deploy(http, "1.2")).status_code == 202
    assert rt.core.readcache.misses == misses, "the second request should read nothing it read before"
    assert rt.core.readcache.hits > 0


async def test_a_token_revoked_by_another_replica_is_refused_on_the_next_request(
    api: httpx.AsyncClient, rt: Runtime, other: Runtime
) -> None:
    await _warm(api, rt)
    async with other.sessionmaker.begin() as session:
        row = await session.scalar(select(models.ApiToken).where(models.ApiToken.subject == DEV))
        assert row is not None
        await tokens.revoke(session, actor=ADMIN, token_id=row.id)
    answer = await _deploy(api, "1.3")
    assert answer.status_code == 401, answer.text


async def test_a_membership_removed_by_another_replica_is_refused_on_the_next_request(
    api: httpx.AsyncClient, rt: Runtime, other: Runtime
) -> None:
    await _warm(api, rt)
    async with other.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=DEV, role=None)
    answer = await _deploy(api, "1.3")
    assert answer.status_code == 404, answer.text  # a project you hold no role in does not exist for you
    # And a role lowered to viewer: 403 naming the role.
    async with other.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=DEV, role="viewer")
    answer = await _deploy(api, "1.4")
    assert answer.status_code == 403, answer.text
    assert "developer" in answer.text


async def test_an_app_deleted_or_locked_by_another_replica_is_seen_on_the_next_request(
    api: httpx.AsyncClient, rt: Runtime, other: Runtime
) -> None:
    await _warm(api, rt)
    async with other.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="lock", on=True, reason="db migration")
    answer = await _deploy(api, "1.3")
    assert answer.status_code == 409, answer.text
    assert "db migration" in answer.text
    async with other.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="lock", on=False)
    assert (await _deploy(api, "1.4")).status_code == 202
    async with other.sessionmaker.begin() as session:
        # Nothing is running (no worker here), so the app may go with its queued deploys.
        await apps.delete(session, actor=ADMIN, name="web")
    answer = await _deploy(api, "1.5")
    assert answer.status_code == 404, answer.text


async def test_environment_protection_set_by_another_replica_holds_the_next_request(
    api: httpx.AsyncClient, rt: Runtime, other: Runtime
) -> None:
    await _warm(api, rt)
    async with other.sessionmaker.begin() as session:
        await protection.protect(session, actor=ADMIN, project="acme", env="production", approvals=1)
    answer = await _deploy(api, "1.3")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "awaiting_approval", answer.json()


async def test_a_target_added_by_another_replica_gets_the_next_requests_events(
    api: httpx.AsyncClient, rt: Runtime, other: Runtime
) -> None:
    await _warm(api, rt)
    async with other.sessionmaker.begin() as session:
        target = await targets.add(
            session,
            ctx=other.core,
            actor=ADMIN,
            project="acme",
            kind="webhook",
            address="https://hooks.example.com/shipit",
        )
        target_id = target.id
    answer = await _deploy(api, "1.3")
    assert answer.status_code == 202, answer.text
    deployment_id = answer.json()["id"]
    async with rt.sessionmaker() as session:
        notify = list(await session.scalars(select(models.Job).where(models.Job.kind == "notify")))
        events = {e.id: e for e in await session.scalars(select(models.Event))}
    routed = [
        j
        for j in notify
        if j.payload.get("target") == target_id
        and events[j.payload["event_id"]].deployment_id == deployment_id
    ]
    assert routed, [j.payload for j in notify]
