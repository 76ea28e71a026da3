"""Deploy requests without a cluster: queueing, supersede, dedupe, approvals, permissions, revisions."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, inspect, select, update

from core import apps, deploys, events, jobs, projects, secrets
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases

ALICE = Actor(subject="user:alice", channel="api", display="alice")
BOB = Actor(subject="user:bob", channel="api", display="bob")
VIEWER = Actor(subject="user:victor", channel="api", display="victor")


@pytest.fixture
async def paper(paper: Runtime) -> Runtime:
    """tests/core/conftest.py's app `web` on a cluster row never contacted; alice and bob develop, victor views."""
    async with paper.sessionmaker.begin() as session:
        for who, role in ((ALICE, "developer"), (BOB, "developer"), (VIEWER, "viewer")):
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject=who.subject, role=role
            )
    return paper


async def _request(rt: Runtime, actor: Actor = ALICE, **kw: object) -> deploys.Requested:
    async with rt.sessionmaker.begin() as session:
        return await deploys.request(session, ctx=rt.core, actor=actor, app_name="web", trigger="api", **kw)  # type: ignore[arg-type]


async def _count(rt: Runtime, model: type[models.Base], *where: object) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


async def test_request_writes_revision_deployment_job_event_and_audit_together(paper: Runtime) -> None:
    result = await _request(paper, image="1.1")
    d = result.deployment
    assert result.created and d.status == deploys.QUEUED and d.image == "ghcr.io/acme/web:1.1"
    assert d.revision_number == 1
    assert await _count(paper, models.Job, models.Job.dedupe_key == f"deploy:{d.id}") == 1
    assert (
        await _count(
            paper, models.Event, models.Event.deployment_id == d.id, models.Event.kind == events.DEPLOY_QUEUED
        )
        == 1
    )
    assert await _count(paper, models.AuditEvent, models.AuditEvent.action == "deploy.request") == 1
    async with paper.sessionmaker() as session:
        app = await session.scalar(select(models.App))
        # A request is a candidate: the app's image moves only when the rollout succeeds.
        assert app is not None and app.image == "ghcr.io/acme/web:1.0"


async def test_a_revision_records_the_checksum_of_the_secrets_version_it_runs_with(paper: Runtime) -> None:
    """Read once per cache stamp, never decrypted at request time: still the version's own checksum,
    and a new version (set or unset) is seen by the very next request."""

    async def set_secret(**values: str) -> None:
        async with paper.sessionmaker.begin() as session:
            await secrets.set_values(session, ctx=paper.core, actor=ADMIN, app_name="web", values=values)

    async def recorded(requested: deploys.Requested) -> tuple[int | None, str, str]:
        async with paper.sessionmaker() as session:
            revision = await session.get(models.Revision, requested.deployment.revision_id)
            assert revision is not None
            version = await session.scalar(
                select(models.SecretVersion).where(
                    models.SecretVersion.app_id == revision.app_id,
                    models.SecretVersion.version == revision.secrets_version,
                )
            )
            assert version is not None
            return revision.secrets_version, revision.secret_checksum, version.checksum

    await set_secret(TOKEN="one")
    first = [await recorded(await _request(paper, image=tag)) for tag in ("1.1", "1.2")]
    await set_secret(TOKEN="two")
    second = await recorded(await _request(paper, image="1.3"))
    assert [(v, c) for v, c, _ in first] == [(1, first[0][2])] * 2
    assert second[0] == 2 and second[1] == second[2] != first[0][1]


async def test_bad_image_is_refused_and_nothing_is_written(paper: Runtime) -> None:
    with pytest.raises(InvalidInput) as e:
        await _request(paper, image="ghcr.io/Acme/WEB:?")
    assert e.value.field == "image"
    assert await _count(paper, models.Deployment) == 0
    assert await _count(paper, models.Revision) == 0
    assert await _count(paper, models.Job, models.Job.kind == "deploy") == 0


async def test_same_dedupe_key_is_one_deploy(paper: Runtime) -> None:
    first = await _request(paper, image="1.1", dedupe_key="push:abc")
    second = await _request(paper, image="1.1", dedupe_key="push:abc")
    assert not second.created and second.deployment.id == first.deployment.id
    assert await _count(paper, models.Deployment) == 1
    assert await _count(paper, models.Job, models.Job.kind == "deploy") == 1


async def test_newer_queued_deploy_supersedes_older_queued_ones(paper: Runtime) -> None:
    d1 = (await _request(paper, image="1.1")).deployment
    d2 = (await _request(paper, image="1.2")).deployment
    d3 = (await _request(paper, image="1.3")).deployment
    async with paper.sessionmaker() as session:
        statuses = {d.id: d.status for d in await session.scalars(select(models.Deployment))}
        job_states = {
            j.dedupe_key: j.state
            for j in await session.scalars(select(models.Job).where(models.Job.kind == "deploy"))
        }
    assert statuses == {d1.id: "superseded", d2.id: "superseded", d3.id: "queued"}
    assert job_states[f"deploy:{d1.id}"] == jobs.CANCELLED
    assert job_states[f"deploy:{d3.id}"] == jobs.QUEUED
    superseded = await _count(paper, models.Event, models.Event.kind == events.DEPLOY_SUPERSEDED)
    assert superseded == 2


async def _deploy_jobs(rt: Runtime) -> dict[str, str]:
    async with rt.sessionmaker() as session:
        rows = await session.scalars(select(models.Job).where(models.Job.kind == deploys.DEPLOY_JOB))
        return {j.dedupe_key or "": j.state for j in rows}


async def test_two_requests_at_once_number_their_revisions_one_after_the_other(paper: Runtime) -> None:
    """The revision number is computed inside its INSERT: B must not take A's number while A's
    transaction is open (PostgreSQL: the app's row lock; SQLite: one writer at a time).  Without the
    lock, B would compute 1 as well and fail on the unique (app_id, number) once A commits."""
    async with paper.sessionmaker.begin() as session:
        a = await deploys.request(
            session, ctx=paper.core, actor=ALICE, app_name="web", trigger="api", image="1.1"
        )
        b_task = asyncio.create_task(_request(paper, actor=BOB, image="1.2"))
        await asyncio.sleep(0.5)  # B reaches the lock while A still holds it (or comes later: same result)
    b = await b_task
    assert (a.deployment.revision_number, b.deployment.revision_number) == (1, 2)
    async with paper.sessionmaker() as session:
        rows = {d.id: (d.revision_number, d.status) for d in await session.scalars(select(models.Deployment))}
        numbers = sorted(await session.scalars(select(models.Revision.number)))
    assert rows == {a.deployment.id: (1, "superseded"), b.deployment.id: (2, "queued")}
    assert numbers == [1, 2]
    assert await _deploy_jobs(paper) == {
        f"deploy:{a.deployment.id}": jobs.CANCELLED,
        f"deploy:{b.deployment.id}": jobs.QUEUED,
    }


async def test_supersede_cancels_only_jobs_that_exist(paper: Runtime) -> None:
    """A deploy waiting for approval has no job: superseding it writes none.  One approved (queued)
    has one: superseding it cancels that job, in the request's jobs INSERT."""
    async with paper.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=paper.core, actor=ADMIN, name="web", changes=apps.AppChanges(protected=True)
        )
    d1 = (await _request(paper, image="2.0")).deployment
    d2 = (await _request(paper, image="2.1")).deployment
    assert await _deploy_jobs(paper) == {}
    async with paper.sessionmaker.begin() as session:
        await deploys.approve(session, ctx=paper.core, actor=BOB, deployment_id=d2.id)
    assert await _deploy_jobs(paper) == {f"deploy:{d2.id}": jobs.QUEUED}
    d3 = (await _request(paper, image="2.2")).deployment
    assert d3.status == deploys.AWAITING_APPROVAL
    assert await _deploy_jobs(paper) == {f"deploy:{d2.id}": jobs.CANCELLED}
    async with paper.sessionmaker() as session:
        statuses = {d.id: (d.status, d.error) for d in await session.scalars(select(models.Deployment))}
        superseded = list(
            await session.scalars(
                select(models.Event.deployment_id)
                .where(models.Event.kind == events.DEPLOY_SUPERSEDED)
                .order_by(models.Event.id)
            )
        )
    assert statuses == {
        d1.id: ("superseded", f"superseded by deploy #{d2.id}"),
        d2.id: ("superseded", f"superseded by deploy #{d3.id}"),
        d3.id: ("awaiting_approval", None),
    }
    assert superseded == [d1.id, d2.id]


async def test_a_request_knows_its_place_in_the_queue_as_the_count_says(paper: Runtime) -> None:
    """The answer's queue position comes from the deployment's INSERT, not from a count of its own;
    it must say what the count says: 1 + the deploys of its target running or queued before it."""

    async def counted(d: models.Deployment) -> int | None:
        async with paper.sessionmaker() as session:
            row = await session.get(models.Deployment, d.id)
            assert row is not None
            return await events.queue_position(session, deployment=row)

    first = await _request(paper, image="1.1")
    assert first.queue_position == 1 == await counted(first.deployment)
    async with paper.sessionmaker.begin() as session:  # the worker took it
        await session.execute(
            update(models.Deployment)
            .where(models.Deployment.id == first.deployment.id)
            .values(status=deploys.RUNNING)
        )
    second = await _request(paper, image="1.2")
    assert second.queue_position == 2 == await counted(second.deployment)
    third = await _request(paper, image="1.3")  # supersedes the second: still second in line
    assert third.queue_position == 2 == await counted(third.deployment)
    async with paper.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=paper.core, actor=ADMIN, name="web", changes=apps.AppChanges(protected=True)
        )
    waiting = await _request(paper, image="1.4")
    assert waiting.queue_position is None and await counted(waiting.deployment) is None


async def test_viewer_cannot_deploy_and_is_told_which_role(paper: Runtime) -> None:
    with pytest.raises(PermissionDenied, match="needs the developer role; you have viewer"):
        await _request(paper, actor=VIEWER, image="1.1")
    stranger = Actor(subject="user:mallory", channel="api")
    with pytest.raises(NotFound, match="no app named 'web'"):
        await _request(paper, actor=stranger, image="1.1")


async def test_locked_app_refuses_deploys_until_unlocked(paper: Runtime) -> None:
    async with paper.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ALICE, name="web", flag="lock", on=True, reason="incident 42")
    with pytest.raises(Conflict, match="incident 42"):
        await _request(paper, image="1.1")
    async with paper.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ALICE, name="web", flag="lock", on=False)
    assert (await _request(paper, image="1.1")).created


async def test_protected_app_needs_a_second_person(paper: Runtime) -> None:
    async with paper.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=paper.core, actor=ADMIN, name="web", changes=apps.AppChanges(protected=True)
        )
    d = (await _request(paper, image="2.0")).deployment
    assert d.status == deploys.AWAITING_APPROVAL
    assert await _count(paper, models.Job, models.Job.kind == "deploy") == 0
    with pytest.raises(PermissionDenied, match="nobody approves their own deploy"):
        async with paper.sessionmaker.begin() as session:
            await deploys.approve(session, ctx=paper.core, actor=ALICE, deployment_id=d.id)
    with pytest.raises(PermissionDenied, match="developer role"):
        async with paper.sessionmaker.begin() as session:
            await deploys.approve(session, ctx=paper.core, actor=VIEWER, deployment_id=d.id)
    async with paper.sessionmaker.begin() as session:
        approved = await deploys.approve(session, ctx=paper.core, actor=BOB, deployment_id=d.id)
    assert approved.status == deploys.QUEUED and approved.approved_by == BOB.subject
    assert await _count(paper, models.Job, models.Job.kind == "deploy", models.Job.state == jobs.QUEUED) == 1
    with pytest.raises(Conflict, match="not awaiting approval"):
        async with paper.sessionmaker.begin() as session:
            await deploys.approve(session, ctx=paper.core, actor=BOB, deployment_id=d.id)


async def test_approval_expires(paper: Runtime) -> None:
    async with paper.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=paper.core, actor=ADMIN, name="web", changes=apps.AppChanges(protected=True)
        )
    d = (await _request(paper, image="2.0")).deployment
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment).values(approval_expires_at=models.utcnow() - dt.timedelta(seconds=1))
        )
    async with paper.sessionmaker.begin() as session:
        assert await deploys.expire_approvals(session, ctx=paper.core) == 1
    async with paper.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None and row.status == deploys.CANCELLED and row.error == "approval expired"


async def test_cancel_a_queued_deploy(paper: Runtime) -> None:
    d = (await _request(paper, image="1.1")).deployment
    async with paper.sessionmaker.begin() as session:
        await deploys.cancel(session, ctx=paper.core, actor=BOB, deployment_id=d.id)
    assert (
        await _count(paper, models.Job, models.Job.kind == "deploy", models.Job.state == jobs.CANCELLED) == 1
    )
    with pytest.raises(Conflict, match="only queued deploys"):
        async with paper.sessionmaker.begin() as session:
            await deploys.cancel(session, ctx=paper.core, actor=BOB, deployment_id=d.id)


async def test_only_the_last_ten_revisions_are_kept_and_numbers_keep_growing(paper: Runtime) -> None:
    for i in range(13):
        await _request(paper, image=f"1.{i}")
    async with paper.sessionmaker() as session:
        numbers = list(await session.scalars(select(models.Revision.number).order_by(models.Revision.number)))
        deployments = list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))
    assert numbers == list(range(4, 14))
    assert [d.revision_number for d in deployments] == list(range(1, 14))
    # A pruned revision's deploys keep their number and image, and point at nothing (the foreign key).
    assert [d.revision_id is None for d in deployments] == [True] * 3 + [False] * 10
    assert deployments[0].revision_id is None and deployments[0].image == "ghcr.io/acme/web:1.0"


async def test_rollback_needs_a_successful_deploy(paper: Runtime) -> None:
    with pytest.raises(Conflict, match="no successful deploy"):
        async with paper.sessionmaker.begin() as session:
            await deploys.rollback(session, ctx=paper.core, actor=ALICE, app_name="web")


async def test_tag_only_deploy_keeps_the_repository(paper: Runtime) -> None:
    d = (await _request(paper, image="v2.1.0")).deployment
    assert d.image == "ghcr.io/acme/web:v2.1.0"
    d = (await _request(paper, image="registry.example.com:5000/team/web@sha256:" + "a" * 64)).deployment
    assert d.image.startswith("registry.example.com:5000/team/web@sha256:")


async def test_the_rollback_target_is_one_rule_for_now_and_for_a_given_deploy(paper: Runtime) -> None:
    # r1 and r2 succeeded, r3 failed (statuses written as the worker would leave them).
    d1, d2, d3 = [(await _request(paper, image=tag)).deployment for tag in ("1.0", "1.1", "1.2")]
    async with paper.sessionmaker.begin() as session:
        for d, status in ((d1, deploys.SUCCEEDED), (d2, deploys.SUCCEEDED), (d3, deploys.FAILED)):
            await session.execute(
                update(models.Deployment).where(models.Deployment.id == d.id).values(status=status)
            )
    async with paper.sessionmaker() as session:
        app = await apps.get(session, actor=ALICE, name="web")
        # Without a deploy (API, CLI, web, `/shipit rollback`): the one before what runs now (r2).
        assert await deploys.rollback_target(session, app=app) == d1.revision_number
        # From a card (the Roll back button): the last good one before that deploy.
        for before, expected in ((d3, d2), (d2, d1)):
            row = await session.get(models.Deployment, before.id)
            assert await deploys.rollback_target(session, app=app, before=row) == expected.revision_number
        with pytest.raises(Conflict, match=f"web has no successful deploy before #{d1.id} to roll back to"):
            await deploys.rollback_target(
                session, app=app, before=await session.get(models.Deployment, d1.id)
            )
    async with paper.sessionmaker.begin() as session:
        rb = await deploys.rollback(session, ctx=paper.core, actor=BOB, app_name="web", from_deployment=d3.id)
        revision = await session.get(models.Revision, rb.deployment.revision_id)
        assert revision is not None and revision.rollback_of == d2.revision_number
    for missing in (10**6, 2**40):
        with pytest.raises(NotFound, match=f"no deploy #{missing} of web"):
            async with paper.sessionmaker.begin() as session:
                await deploys.rollback(
                    session, ctx=paper.core, actor=BOB, app_name="web", from_deployment=missing
                )


async def test_the_requested_deployment_is_the_sessions_row_as_the_database_has_it(paper: Runtime) -> None:
    # The request builds the deployment from its INSERT's RETURNING row, without the ORM's loader:
    # it must be what a load would give, the session's own (tracked, nothing pending).
    columns = [c.key for c in models.Deployment.__table__.c]
    async with paper.sessionmaker.begin() as session:
        result = await deploys.request(
            session, ctx=paper.core, actor=ALICE, app_name="web", trigger="api", image="1.2",
            git_sha="abc123", notify_refs={"pr": 7},
        )  # fmt: skip
        d = result.deployment
        assert inspect(d).persistent and d in session and not session.dirty and not session.new
        assert await session.get(models.Deployment, d.id) is d  # the identity map's, no second object
        revision = result.revision  # built the same way, outside a webhook batch
        assert revision is not None and inspect(revision).persistent and not session.dirty
        assert await session.get(models.Revision, d.revision_id) is revision
        assert revision.number == d.revision_number == 1 and revision.image == "ghcr.io/acme/web:1.2"
        stored_revision = await session.scalar(
            select(models.Revision.snapshot).where(models.Revision.id == revision.id)
        )
        assert revision.snapshot == stored_revision and revision.snapshot["image"] == revision.image
        mine = {k: getattr(d, k) for k in columns}
        # Tracked like a loaded row: a change is flushed as an UPDATE.
        d.error = "seen"
        await session.flush()
        assert (
            await session.scalar(select(models.Deployment.error).where(models.Deployment.id == d.id))
            == "seen"
        )
    async with paper.sessionmaker() as session:
        stored = await session.get(models.Deployment, d.id)
        assert stored is not None
        assert {k: getattr(stored, k) for k in columns} == {**mine, "error": "seen"}
    assert mine["notify_refs"] == {"pr": 7} and mine["logs"] == [] and mine["git_sha"] == "abc123"
