"""Protection per environment without a cluster: approvals by persons, windows, freezes, locks.

The window arithmetic is unit-tested on fixed instants (DST in Europe/Berlin, week wrap); the deploy
rules go through `deploys.request` / `deploys.approve` on real SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from core import deploys, environments, events, identities, projects, protection
from core.errors import Conflict, InvalidInput, PermissionDenied
from core.identity import Actor
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC

ALICE = Actor(subject="user:alice", channel="api", display="alice")
BOB = Actor(subject="user:bob", channel="api", display="bob")
CAROL = Actor(subject="user:carol", channel="api", display="carol")
DAVE = Actor(subject="user:dave", channel="api", display="dave")  # admin
# Alice again, from Slack: linked to her person in the test.
ALICE_SLACK = Actor(subject="slack:U0ALICE01", channel="slack", display="alice")


def _windows(*spec: tuple[str, str, str]) -> list[protection.Window]:
    return protection.windows_of(
        [{"days": protection.parse_days(days), "start": a, "end": b} for days, a, b in spec]
    )


def _at(text: str, tz: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz)


# ------------------------------------------------------------------ window arithmetic


def test_inside_a_window_is_allowed_and_the_end_is_exclusive() -> None:
    w = _windows(("mon-fri", "09:00", "17:00"))
    assert protection.blocked_at(_at("2026-12-07T09:00"), windows=w, freezes=[], tz=BERLIN) is None
    assert protection.blocked_at(_at("2026-12-07T16:59"), windows=w, freezes=[], tz=BERLIN) is None
    blocked = protection.blocked_at(_at("2026-12-07T17:00"), windows=w, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.next_allowed == _at("2026-12-08T09:00")


def test_friday_evening_opens_monday_morning_across_the_spring_dst_change() -> None:
    # Clocks go forward in the night to Sunday 2026-03-29: Monday 09:00 is CEST (UTC+2).
    w = _windows(("mon-fri", "09:00", "17:00"))
    blocked = protection.blocked_at(_at("2026-03-27T18:00"), windows=w, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.why == "window" and blocked.next_allowed is not None
    assert blocked.next_allowed.astimezone(UTC) == dt.datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    assert (
        protection.show_time(blocked.next_allowed, tz=BERLIN) == "Mon 2026-03-30 09:00 CEST (Europe/Berlin)"
    )


def test_autumn_dst_change_and_a_window_starting_in_the_spring_gap() -> None:
    w = _windows(("mon", "09:00", "10:00"))
    blocked = protection.blocked_at(_at("2026-10-24T12:00"), windows=w, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.next_allowed is not None
    assert blocked.next_allowed.astimezone(UTC) == dt.datetime(2026, 10, 26, 8, 0, tzinfo=UTC)  # CET again
    # 02:30 does not exist on 2026-03-29 in Berlin: the window opens at the first real instant after it.
    gap = _windows(("sun", "02:30", "04:00"))
    blocked = protection.blocked_at(_at("2026-03-28T12:00"), windows=gap, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.next_allowed is not None
    assert blocked.next_allowed.astimezone(UTC) == dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_week_wrap_and_overnight_windows() -> None:
    monday_only = _windows(("mon", "09:00", "12:00"))
    blocked = protection.blocked_at(_at("2026-12-08T10:00"), windows=monday_only, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.next_allowed == _at("2026-12-14T09:00")  # next week's Monday
    # Sunday 22:00 to Monday 02:00: open on Monday 01:00 (yesterday's window), closed on Monday 03:00.
    night = _windows(("sun", "22:00", "02:00"))
    assert protection.blocked_at(_at("2026-12-07T01:00"), windows=night, freezes=[], tz=BERLIN) is None
    blocked = protection.blocked_at(_at("2026-12-07T03:00"), windows=night, freezes=[], tz=BERLIN)
    assert blocked is not None and blocked.next_allowed == _at("2026-12-13T22:00")
    # A day range that wraps the week.
    assert protection.parse_days("fri-mon") == ["mon", "fri", "sat", "sun"]
    assert protection.parse_days("sat,sun") == ["sat", "sun"]
    with pytest.raises(InvalidInput):
        protection.parse_days("funday")


def test_a_freeze_pushes_the_next_time_to_its_end_or_the_window_after_it() -> None:
    w = _windows(("mon-fri", "09:00", "17:00"))
    short = [protection.Freeze(start=None, end=_at("2026-12-07T12:00"), reason="release")]
    blocked = protection.blocked_at(_at("2026-12-07T10:00"), windows=w, freezes=short, tz=BERLIN)
    assert blocked is not None and blocked.why == "freeze" and blocked.next_allowed == _at("2026-12-07T12:00")
    late = [protection.Freeze(start=None, end=_at("2026-12-07T18:00"), reason="release")]
    blocked = protection.blocked_at(_at("2026-12-07T10:00"), windows=w, freezes=late, tz=BERLIN)
    assert blocked is not None and blocked.next_allowed == _at("2026-12-08T09:00")
    # No windows: only the freeze holds.
    blocked = protection.blocked_at(_at("2026-12-07T10:00"), windows=[], freezes=late, tz=BERLIN)
    assert blocked is not None and blocked.next_allowed == _at("2026-12-07T18:00")
    assert protection.blocked_at(_at("2026-12-07T18:00"), windows=[], freezes=late, tz=BERLIN) is None


def test_durations() -> None:
    assert protection.parse_duration("2h", field="for") == 7200
    assert protection.parse_duration("1d2h30m", field="for") == 95400
    with pytest.raises(InvalidInput):
        protection.parse_duration("soon", field="for")


# ------------------------------------------------------------------ through deploys.request / approve


@pytest.fixture
async def paper(paper: Runtime) -> Runtime:
    """tests/core/conftest.py's app `web` in its one environment; alice, bob, carol develop, dave admins."""
    rt = paper
    async with rt.sessionmaker.begin() as session:
        roles = ((ALICE, "developer"), (BOB, "developer"), (CAROL, "developer"), (DAVE, "admin"))
        for who, role in roles:
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject=who.subject, role=role
            )
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject=ALICE_SLACK.subject, role="developer"
        )
        person = models.Person(name="alice")
        session.add(person)
        await session.flush()
        for subject in (ALICE.subject, ALICE_SLACK.subject):
            session.add(
                models.Identity(person_id=person.id, subject=subject, verified_by="admin", created_by="test")
            )
    return rt


async def _env_name(rt: Runtime) -> str:
    async with rt.sessionmaker() as session:
        project = await session.scalar(select(models.Project).where(models.Project.name == "acme"))
        assert project is not None
        return (await environments.default_for(session, project_id=project.id)).name


async def _request(rt: Runtime, actor: Actor = ALICE, **kw: object) -> models.Deployment:
    async with rt.sessionmaker.begin() as session:
        result = await deploys.request(session, ctx=rt.core, actor=actor, app_name="web", trigger="api", **kw)  # type: ignore[arg-type]
        return result.deployment


async def _approve(rt: Runtime, actor: Actor, deployment_id: int, approve: bool = True) -> models.Deployment:
    async with rt.sessionmaker.begin() as session:
        return await deploys.approve(
            session, ctx=rt.core, actor=actor, deployment_id=deployment_id, approve=approve
        )


async def _audits(rt: Runtime, action: str) -> list[models.AuditEvent]:
    async with rt.sessionmaker() as session:
        return list(
            await session.scalars(select(models.AuditEvent).where(models.AuditEvent.action == action))
        )


@pytest.mark.both_databases
async def test_two_approvals_from_two_persons_and_never_from_the_requesters_other_identity(
    paper: Runtime,
) -> None:
    env = await _env_name(paper)
    async with paper.sessionmaker.begin() as session:
        await protection.protect(
            session, actor=DAVE, project="acme", env=env, approvals=2, approval_ttl_seconds=7200
        )
    d = await _request(paper)
    assert d.status == deploys.AWAITING_APPROVAL
    assert d.approval_expires_at is not None
    assert dt.timedelta(seconds=7100) < d.approval_expires_at - models.utcnow() <= dt.timedelta(seconds=7200)

    # Alice's Slack identity is Alice: refused, and it counts for nothing.
    with pytest.raises(PermissionDenied, match="nobody approves their own deploy"):
        await _approve(paper, ALICE_SLACK, d.id)
    first = await _approve(paper, BOB, d.id)
    assert first.status == deploys.AWAITING_APPROVAL
    with pytest.raises(Conflict, match="already approved"):
        await _approve(paper, BOB, d.id)
    async with paper.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        tally = await protection.tally(session, deployment=row)
        assert tally is not None and tally.text == "1 of 2 approvals"
    second = await _approve(paper, CAROL, d.id)
    assert second.status == deploys.QUEUED and second.approved_by == CAROL.subject
    async with paper.sessionmaker() as session:
        keys = set(await session.scalars(select(models.DeployApproval.person_key)))
    assert keys == {BOB.subject, CAROL.subject}


@pytest.mark.both_databases
async def test_approver_role_and_reject(paper: Runtime) -> None:
    env = await _env_name(paper)
    async with paper.sessionmaker.begin() as session:
        await protection.protect(
            session, actor=DAVE, project="acme", env=env, approvals=1, approver_role="admin"
        )
    with pytest.raises(PermissionDenied, match="protecting environments"):
        async with paper.sessionmaker.begin() as session:
            await protection.protect(session, actor=BOB, project="acme", env=env)
    d = await _request(paper)
    with pytest.raises(PermissionDenied, match="needs the admin role"):
        await _approve(paper, BOB, d.id)
    rejected = await _approve(paper, DAVE, d.id, approve=False)
    assert rejected.status == deploys.CANCELLED
    d2 = await _request(paper)
    assert (await _approve(paper, DAVE, d2.id)).status == deploys.QUEUED
    async with paper.sessionmaker.begin() as session:
        await protection.unprotect(session, actor=DAVE, project="acme", env=env)
    assert (await _request(paper)).status == deploys.QUEUED


@pytest.mark.both_databases
async def test_who_rejected_is_a_column_and_an_older_rejection_answers_from_its_error_text(
    paper: Runtime,
) -> None:
    env = await _env_name(paper)
    async with paper.sessionmaker.begin() as session:
        await protection.protect(session, actor=DAVE, project="acme", env=env, approvals=1)
    d = await _request(paper)
    rejected = await _approve(paper, BOB, d.id, approve=False)
    assert (rejected.rejected_by, rejected.error) == (BOB.subject, "rejected by bob")
    # The column, not the words: reworded (or translated) error text still answers who.
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment).where(models.Deployment.id == d.id).values(error="abgelehnt von bob")
        )
    async with paper.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None and deploys.rejected_by(row) == BOB.subject
        assert events.deployment_view_of(row).rejected_by == BOB.subject
    with pytest.raises(Conflict, match=f"already rejected by {BOB.subject}"):
        await _approve(paper, CAROL, d.id)

    # A rejection written before migration 0014 (the column NULL, no audit row to fill it from): its
    # error text, the only record then, still says who; a name that holds the separator included.
    old = await _request(paper)
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment)
            .where(models.Deployment.id == old.id)
            .values(status=deploys.CANCELLED, error="rejected by carol rejected by nobody", rejected_by=None)
        )
    async with paper.sessionmaker() as session:
        row = await session.get(models.Deployment, old.id)
        assert row is not None and deploys.rejected_by(row) == "carol rejected by nobody"
        assert events.deployment_view_of(row).rejected_by == "carol rejected by nobody"
    with pytest.raises(Conflict, match="already rejected by carol rejected by nobody"):
        await _approve(paper, BOB, old.id, approve=False)

    # Neither a cancel nor an expired approval is a rejection.
    cancelled = await _request(paper)
    async with paper.sessionmaker.begin() as session:
        await deploys.cancel(session, ctx=paper.core, actor=CAROL, deployment_id=cancelled.id)
    expiring = await _request(paper)
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment)
            .where(models.Deployment.id == expiring.id)
            .values(approval_expires_at=models.utcnow() - dt.timedelta(seconds=1))
        )
    async with paper.sessionmaker.begin() as session:
        assert await deploys.expire_approvals(session, ctx=paper.core) == 1
    async with paper.sessionmaker() as session:
        for deployment_id, error in ((cancelled.id, "cancelled by carol"), (expiring.id, "approval expired")):
            row = await session.get(models.Deployment, deployment_id)
            assert row is not None and (row.status, row.error) == (deploys.CANCELLED, error)
            assert (row.rejected_by, deploys.rejected_by(row)) == (None, None)


@pytest.mark.both_databases
async def test_outside_the_window_refused_with_the_next_time_and_an_admin_override_is_audited(
    paper: Runtime,
) -> None:
    env = await _env_name(paper)
    now = models.utcnow().astimezone(BERLIN)
    opens = (now + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    closes = opens + dt.timedelta(hours=1)
    async with paper.sessionmaker.begin() as session:
        await protection.set_window(
            session, actor=DAVE, project="acme", env=env, days="all",
            start=f"{opens:%H:%M}", end=f"{closes:%H:%M}", tz="Europe/Berlin",
        )  # fmt: skip
    expected = protection.show_time(opens, tz=BERLIN)
    with pytest.raises(Conflict) as refused:
        await _request(paper)
    assert f"outside its deploy windows: the next allowed time is {expected}" in str(refused.value)
    # Only an admin may override.
    with pytest.raises(PermissionDenied):
        await _request(paper, override_window=True)
    d = await _request(paper, actor=DAVE, override_window=True)
    assert d.status == deploys.QUEUED
    (row,) = await _audits(paper, "deploy.override_window")
    assert row.actor == DAVE.subject and row.details["deployment"] == d.id
    assert row.details["next_allowed"] == opens.isoformat()
    # A rollback is not held by windows (see core.protection); nothing else changed.
    async with paper.sessionmaker.begin() as session:
        await session.execute(update(models.Deployment).values(status=deploys.SUCCEEDED))
    d2 = await _request(paper, actor=DAVE, override_window=True, image="1.1")
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment).where(models.Deployment.id == d2.id).values(status="succeeded")
        )
        rb = await deploys.rollback(session, ctx=paper.core, actor=ALICE, app_name="web")
    assert rb.deployment.status == deploys.QUEUED
    async with paper.sessionmaker.begin() as session:
        await protection.set_window(session, actor=DAVE, project="acme", env=env, clear=True)
    assert (await _request(paper)).status == deploys.QUEUED


@pytest.mark.both_databases
async def test_a_freeze_refuses_until_its_end(paper: Runtime) -> None:
    env = await _env_name(paper)
    until = (models.utcnow() + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    async with paper.sessionmaker.begin() as session:
        await protection.freeze(
            session, actor=DAVE, project="acme", env=env, until=until.isoformat(), reason="year-end"
        )
    with pytest.raises(Conflict) as refused:
        await _request(paper)
    text = str(refused.value)
    assert "is frozen (year-end)" in text
    assert protection.show_time(until, tz=ZoneInfo("UTC")) in text
    async with paper.sessionmaker.begin() as session:
        await protection.freeze(session, actor=DAVE, project="acme", env=env, clear=True)
    assert (await _request(paper)).status == deploys.QUEUED


@pytest.mark.both_databases
async def test_an_environment_lock_with_expiry_blocks_then_no_longer(paper: Runtime) -> None:
    env = await _env_name(paper)
    async with paper.sessionmaker.begin() as session:
        row = await protection.lock_env(
            session, actor=BOB, project="acme", env=env, reason="db migration", seconds=7200
        )
        until = row.locked_until
    assert until is not None
    with pytest.raises(Conflict) as refused:
        await _request(paper)
    assert f"environment {env} is locked by user:bob until {until:%Y-%m-%d %H:%M} UTC: db migration" in str(
        refused.value
    )
    # Another developer may not unlock it; Bob's lock runs out by itself.
    with pytest.raises(PermissionDenied, match="only they or a project admin"):
        async with paper.sessionmaker.begin() as session:
            await protection.unlock_env(session, actor=CAROL, project="acme", env=env)
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Environment).values(locked_until=models.utcnow() - dt.timedelta(seconds=1))
        )
    async with paper.sessionmaker() as session:
        e = await session.scalar(select(models.Environment))
        assert e is not None and protection.lock_of(e) is None  # reads as unlocked
    assert (await _request(paper)).status == deploys.QUEUED
    # A lock without expiry: the admin unlocks it.
    async with paper.sessionmaker.begin() as session:
        await protection.lock_env(session, actor=BOB, project="acme", env=env, reason="incident")
    with pytest.raises(Conflict, match="locked by user:bob: incident"):
        await _request(paper)
    async with paper.sessionmaker.begin() as session:
        await protection.unlock_env(session, actor=DAVE, project="acme", env=env)
    assert (await _request(paper)).status == deploys.QUEUED


@pytest.mark.both_databases
async def test_a_project_lock_holds_every_environment_and_human_rollbacks(paper: Runtime) -> None:
    with pytest.raises(PermissionDenied):
        async with paper.sessionmaker.begin() as session:
            await protection.lock_project(session, actor=BOB, project="acme", reason="audit")
    d = await _request(paper)
    async with paper.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment).where(models.Deployment.id == d.id).values(status="succeeded")
        )
    await _request(paper, image="1.1")
    async with paper.sessionmaker.begin() as session:
        await session.execute(update(models.Deployment).values(status="succeeded"))
        await protection.lock_project(session, actor=DAVE, project="acme", reason="audit")
    with pytest.raises(Conflict, match="project acme is locked by user:dave: audit"):
        await _request(paper)
    with pytest.raises(Conflict, match="project acme is locked"):
        async with paper.sessionmaker.begin() as session:
            await deploys.rollback(session, ctx=paper.core, actor=ALICE, app_name="web")
    async with paper.sessionmaker.begin() as session:
        await protection.unlock_project(session, actor=DAVE, project="acme")
    assert (await _request(paper)).status == deploys.QUEUED
    async with paper.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(models.AuditEvent).where(
            models.AuditEvent.action.in_(("project.lock", "project.unlock")))) == 2  # fmt: skip


async def test_person_key(paper: Runtime) -> None:
    async with paper.sessionmaker() as session:
        a = await identities.person_key(session, subject=ALICE.subject)
        assert a.startswith("person:") and a == await identities.person_key(
            session, subject=ALICE_SLACK.subject
        )
        assert await identities.person_key(session, subject=BOB.subject) == BOB.subject
