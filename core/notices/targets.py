"""Notification targets: rows saying where a project's notices go, for which environment and events.

A target is (project, environment or every one, kind, address, secret, format, event filter).  At
emit time `route` picks the targets of each notifier that want the event; each gets its own notify
job, so a slow or dead target never holds up another.  Each delivery's outcome is kept on the row
(last success, last failure and why, consecutive failures): after FAILING_AFTER failures in a row a
target is shown as failing and retried less often, but still tried; `shipit notify test` resets it.
Secrets are encrypted at rest and never shown (`secret: set`).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets as pysecrets
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from core import audit, environments, identity, readcache, validation
from core.context import Core
from core.errors import InvalidInput, NotFound, PermanentError, TransientError, UserError
from core.identity import Actor, Role
from core.notices import (
    EVENT_KINDS,
    TEST_KIND,
    DeploymentView,
    Notice,
    TargetView,
    delivery,
    matches,
    project_view,
    registry,
    short_kind,
    target_view,
)
from storage import models

FAILING_AFTER = 5  # consecutive failures before a target is shown as failing
FAILING_RETRY_SECONDS = 300.0  # and retried no sooner than this
ERROR_MAX = 500
FORMATS = ("", "cloudevents")
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\".]+$")
_EVENT_NAMES = frozenset(EVENT_KINDS) | {short_kind(k) for k in EVENT_KINDS} | {"*"}


@dataclass(frozen=True, kw_only=True)
class Listed:
    id: int
    kind: str
    address: str  # as shown: a Teams or Discord URL only up to its host
    environment: str | None
    events: str
    format: str
    secret: bool
    created_by: str
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str | None
    failures: int

    @property
    def failing(self) -> bool:
        return self.failures >= FAILING_AFTER


@dataclass(frozen=True, kw_only=True)
class Tested:
    target: Listed
    ok: bool
    message: str


# ------------------------------------------------------------------ routing (emit time)


_MEMO = "shipit.notice_targets"


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    # Remembered for one transaction only: the next one reads the rows again (other replicas write too).
    if transaction.parent is None:
        session.info.pop(_MEMO, None)


def _forget(session: AsyncSession) -> None:
    """Every add or delete of a target in this session drops what `of_project` remembered."""
    session.info.pop(_MEMO, None)


async def of_project(session: AsyncSession, *, project_id: int | None) -> list[models.NotificationTarget]:
    """A project's targets, read once per session (transaction): each event of a request routes
    through the same rows (issue 13: statements per request).  Edits of a row are the same objects;
    adds and deletes in this module call `_forget`."""
    if project_id is None:
        return []
    memo: dict[int, list[models.NotificationTarget]] = session.info.setdefault(_MEMO, {})
    if project_id not in memo:

        def q() -> Select[models.NotificationTarget]:  # built only when the copies do not answer
            return (
                select(models.NotificationTarget)
                .where(models.NotificationTarget.project_id == project_id)
                .order_by(models.NotificationTarget.id)
            )

        memo[project_id] = await readcache.rows(session, ("targets.of", project_id), q)
    return list(memo[project_id])


def route(
    rows: Sequence[models.NotificationTarget], *, notifier: str, kind: str, environment: str | None
) -> list[TargetView | None]:
    """The targets of `notifier` that want this event from this environment (None: its default)."""
    mine = sorted((r for r in rows if r.kind == notifier), key=lambda r: r.id)
    if not mine:
        return [None] if notifier in registry.DEFAULT_TARGET else []
    out: list[TargetView | None] = []
    addressless = False
    for r in mine:
        if r.environment is not None and r.environment != environment:
            continue
        if not matches(r.events, kind):
            continue
        if not r.address:
            # GitHub reports to each app's own repository: two such rows must not report twice.
            if addressless:
                continue
            addressless = True
        out.append(target_view(r, primary=r is mine[0]))
    return out


async def slack_channel(session: AsyncSession, *, project_id: int) -> str | None:
    """The project's first Slack channel, if it has one (where its deploy cards go)."""
    rows = [r for r in await of_project(session, project_id=project_id) if r.kind == "slack" and r.address]
    return rows[0].address if rows else None


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """A project's first Slack channel and first webhook: what `shipit projects list` shows.

    Read from the targets, the source of truth, so `shipit notify remove` shows there at once (the
    old projects columns are only mirrored by set_default)."""

    slack_channel: str | None = None
    webhook_url: str | None = None
    webhook_signed: bool = False


async def defaults(session: AsyncSession, *, project_ids: Sequence[int]) -> dict[int, Defaults]:
    """Defaults for each of `project_ids` (one query); a project without targets gets empty ones."""
    if not project_ids:
        return {}
    rows = await session.scalars(
        select(models.NotificationTarget)
        .where(
            models.NotificationTarget.project_id.in_(list(project_ids)),
            models.NotificationTarget.kind.in_(("slack", "webhook")),
            models.NotificationTarget.address != "",
        )
        .order_by(models.NotificationTarget.id)
    )
    slack: dict[int, models.NotificationTarget] = {}
    webhook: dict[int, models.NotificationTarget] = {}
    for r in rows:
        (slack if r.kind == "slack" else webhook).setdefault(r.project_id, r)
    out = {}
    for pid in project_ids:
        s, w = slack.get(pid), webhook.get(pid)
        out[pid] = Defaults(
            slack_channel=s.address if s else None,
            webhook_url=w.address if w else None,
            webhook_signed=w is not None and w.secret_enc is not None,
        )
    return out


async def view(session: AsyncSession, *, target_id: int) -> TargetView | None:
    """The target as a notify job delivers to it, from the read cache's copies when they answer (a
    notify job read the row and its project's first target of the kind: two statements a job)."""
    row = await readcache.get(session, models.NotificationTarget, target_id)
    if row is None:
        return None
    rows = await of_project(session, project_id=row.project_id)
    first = min((r.id for r in rows if r.kind == row.kind), default=row.id)
    return target_view(row, primary=first == row.id)


async def record(
    sessionmaker: async_sessionmaker[AsyncSession], *, target: TargetView | None, error: str | None
) -> int:
    """Keep a delivery's outcome on its target; returns the consecutive failures now.

    On SQLite, where one process owns the database, a success right after one this process wrote
    (within SUCCESS_NOTED_SECONDS, no failure recorded since) writes nothing: under a burst of cards
    that would be a write transaction per delivery, competing with requests for SQLite's one writer,
    for a row that already says "fine" (issue 13); last_success_at may lag by that much.  Replicas
    on PostgreSQL always write: another may have recorded a failure meanwhile.
    """
    if target is None:
        return 0
    noted = _successes_noted.setdefault(sessionmaker, {})
    now = time.monotonic()
    if (
        error is None
        and now - noted.get(target.id, -SUCCESS_NOTED_SECONDS) < SUCCESS_NOTED_SECONDS
        and sessionmaker.kw["bind"].dialect.name == "sqlite"
    ):
        return 0
    noted.pop(target.id, None)
    async with sessionmaker.begin() as session:
        row = await session.get(models.NotificationTarget, target.id)
        if row is None:
            return 0
        if error is None:
            row.last_success_at, row.failures = models.utcnow(), 0
        else:
            row.last_failure_at, row.last_error = models.utcnow(), error[:ERROR_MAX]
            row.failures = (row.failures or 0) + 1
        failures = row.failures
    if error is None:
        noted[target.id] = now
    return failures


# Per database (sessionmaker) and target: when this process last wrote a success (time.monotonic()).
SUCCESS_NOTED_SECONDS = 60.0
_successes_noted: weakref.WeakKeyDictionary[async_sessionmaker[AsyncSession], dict[int, float]] = (
    weakref.WeakKeyDictionary()
)


# ------------------------------------------------------------------ managing targets


async def _project(
    session: AsyncSession, *, actor: Actor, name: str, role: Role, action: str
) -> models.Project:
    project = await session.scalar(select(models.Project).where(models.Project.name == name))
    if project is None:
        raise identity.project_not_found(name)
    await identity.require(session, actor=actor, project=project, role=role, action=action)
    return project


def shown_address(kind: str, address: str) -> str:
    """Teams and Discord URLs carry their secret in the path, webhooks maybe in the query."""
    if kind in registry.SECRET_URLS or kind == "webhook":
        parts = urllib.parse.urlsplit(address)
        if kind in registry.SECRET_URLS:
            return f"{parts.scheme}://{parts.netloc}/…"
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return address


def listed(row: models.NotificationTarget) -> Listed:
    return Listed(
        id=row.id,
        kind=row.kind,
        address=shown_address(row.kind, row.address),
        environment=row.environment,
        events=row.events,
        format=row.format or "",
        secret=row.secret_enc is not None,
        created_by=row.created_by,
        last_success_at=row.last_success_at,
        last_failure_at=row.last_failure_at,
        last_error=row.last_error,
        failures=row.failures or 0,
    )


def _address(kind: str, address: str) -> str:
    address = validation.text(
        address.strip(), field="address", max_length=validation.limit(models.NotificationTarget, "address")
    )
    if kind == "github":
        if address:
            raise InvalidInput(
                "a github target has no address: it reports to each app's repository", field="address"
            )
        return ""
    if not address:
        raise InvalidInput(f"a {kind} target needs an address", field="address")
    if kind == "email":
        if not _EMAIL.match(address):
            raise InvalidInput(f"not an email address: {validation.shown(address)!r}", field="address")
    elif kind == "slack":
        if len(address) > validation.limit(models.Project, "slack_channel") or " " in address:
            raise InvalidInput("a Slack channel id such as C0123ABCD (or TEAM/CHANNEL)", field="address")
    elif not address.startswith(("http://", "https://")):
        # Not echoed back: a Teams or Discord URL is a secret.
        raise InvalidInput(f"a {kind} target's address must start with http:// or https://", field="address")
    return address


def _events(value: str) -> str:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in _EVENT_NAMES]
    if not names or unknown:
        raise InvalidInput(
            f"events: '*' or a comma list of {', '.join(short_kind(k) for k in EVENT_KINDS)}"
            + (
                f"; unknown: {', '.join(validation.shown(n, at_most=40) for n in unknown)}" if unknown else ""
            ),
            field="events",
        )
    out = ",".join(dict.fromkeys(names))
    if len(out) > validation.limit(models.NotificationTarget, "events"):
        raise InvalidInput("events: too many", field="events")
    return "*" if "*" in names else out


async def add(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    project: str,
    kind: str,
    address: str,
    environment: str | None = None,
    events: str = "*",
    secret: str | None = None,
    format: str = "",
) -> models.NotificationTarget:
    """Add a target (project admins).  A target with the same kind, address and environment is refused."""
    p = await _project(
        session, actor=actor, name=project, role=Role.ADMIN, action="adding a notification target"
    )
    if kind not in registry.KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(registry.KINDS)}", field="kind")
    address = _address(kind, address)
    if environment is not None:
        environment = (await environments.get(session, project_id=p.id, name=environment)).name
    events = _events(events)
    if format not in FORMATS or (format and kind != "webhook"):
        raise InvalidInput("format: only a webhook target has one, and it is 'cloudevents'", field="format")
    if secret is not None and kind != "webhook":
        raise InvalidInput("only a webhook target has a secret (it signs the body)", field="secret")
    for row in await of_project(session, project_id=p.id):
        if (row.kind, row.address, row.environment) == (kind, address, environment):
            raise UserError(f"project {project} already has this {kind} target (#{row.id}); remove it first")
    row = models.NotificationTarget(
        project_id=p.id,
        environment=environment,
        kind=kind,
        address=address,
        secret_enc=ctx.cipher.encrypt_text(secret, purpose=delivery.PURPOSE) if secret else None,
        format=format,
        events=events,
        created_by=actor.subject,
        failures=0,
    )
    session.add(row)
    _forget(session)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="notify.add",
        target=f"project/{project}",
        project_id=p.id,
        details={
            "id": row.id,
            "kind": kind,
            "address": shown_address(kind, address),
            "environment": environment,
            "events": events,
            "format": format,
            "secret": secret is not None,
        },
    )
    return row


async def list_for(session: AsyncSession, *, actor: Actor, project: str) -> list[Listed]:
    p = await _project(
        session, actor=actor, name=project, role=Role.VIEWER, action="listing notification targets"
    )
    return [listed(r) for r in await of_project(session, project_id=p.id)]


async def _row(
    session: AsyncSession, *, project: models.Project, target_id: int
) -> models.NotificationTarget:
    row = await session.get(models.NotificationTarget, target_id)
    if row is None or row.project_id != project.id:
        raise NotFound(f"project {project.name} has no notification target #{target_id}")
    return row


async def remove(session: AsyncSession, *, actor: Actor, project: str, target_id: int) -> None:
    p = await _project(
        session, actor=actor, name=project, role=Role.ADMIN, action="removing a notification target"
    )
    row = await _row(session, project=p, target_id=target_id)
    await session.delete(row)
    _forget(session)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="notify.remove",
        target=f"project/{project}",
        project_id=p.id,
        details={"id": target_id, "kind": row.kind, "address": shown_address(row.kind, row.address)},
    )


async def test(*, ctx: Core, actor: Actor, project: str, target_id: int) -> Tested:
    """Send a sample notice to one target now (outside the outbox) and say what happened.

    The outcome is kept on the target like any delivery's; a success resets its failure count.
    """
    async with ctx.sessionmaker.begin() as session:
        p = await _project(
            session, actor=actor, name=project, role=Role.ADMIN, action="testing a notification target"
        )
        row = await _row(session, project=p, target_id=target_id)
        target = await view(session, target_id=row.id)
        assert target is not None
        notice = _sample(p, target=target, actor=actor)
        await audit.record(
            session, actor=actor, action="notify.test", target=f"project/{project}", project_id=p.id,
            details={"id": target_id, "kind": row.kind},
        )  # fmt: skip
    notifier = ctx.notifiers.get(target.kind)
    if target.kind == "github":
        ok, message = (
            True,
            "nothing sent: GitHub targets report deploys of pushed commits to each app's repository",
        )
    elif notifier is None:
        ok, message = False, f"the {target.kind} notifier is not configured on this server"
    else:
        try:
            await notifier.deliver(notice)
        except (TransientError, PermanentError) as e:
            ok, message = False, str(e)
        except Exception as e:
            ok, message = False, f"internal error: {type(e).__name__}"
        else:
            ok, message = True, "sent"
    await record(ctx.sessionmaker, target=target, error=None if ok else message)
    async with ctx.sessionmaker() as session:
        fresh = await session.get(models.NotificationTarget, target_id)
        shown = listed(fresh) if fresh is not None else listed(row)
    return Tested(target=shown, ok=ok, message=message)


_test_ids = iter(range(1, 2**62))


def _sample(project: models.Project, *, target: TargetView, actor: Actor) -> Notice:
    now = models.utcnow()
    # A negative deploy id per test: no real deploy has it, and a Slack test posts a fresh card.
    fake_id = -pysecrets.randbelow(2**31) - next(_test_ids)
    return Notice(
        event_id=fake_id,
        kind=TEST_KIND,
        created_at=now,
        payload={"test": True, "by": actor.subject},
        project=project_view(project),
        app=None,
        deployment=DeploymentView(
            id=fake_id,
            status="succeeded",
            trigger="test",
            actor=actor.subject,
            image="example.invalid/shipit/test:1",
            revision=None,
            namespace="-",
            error=None,
            logs=[],
            ready=1,
            desired=1,
            queue_position=None,
            approved_by=None,
            git_sha=None,
            git_ref=None,
            created_at=now,
            started_at=now,
            finished_at=now,
        ),
        preview=None,
        target=target,
        environment=target.environment,
    )


# ------------------------------------------------------------------ the project's own settings


async def set_default(
    session: AsyncSession,
    *,
    ctx: Core,
    project: models.Project,
    kind: str,
    address: str | None,
    secret: str | None = None,
    actor: Actor,
) -> None:
    """`projects create/update --slack-channel/--webhook-url`: the project-wide target of that kind.

    The first target of `kind` for every environment is changed (or made); '' removes it.  A secret
    given alone changes that target's secret.
    """
    rows = [
        r
        for r in await of_project(session, project_id=project.id)
        if r.kind == kind and r.environment is None
    ]
    row = rows[0] if rows else None
    if address is not None:
        if not address:
            if row is not None:
                await session.delete(row)
                _forget(session)
                await session.flush()
            return
        if row is None:
            row = models.NotificationTarget(
                project_id=project.id, environment=None, kind=kind, address=address, format="", events="*",
                created_by=actor.subject, failures=0,
            )  # fmt: skip
            if kind == "webhook" and secret is None:
                row.secret_enc = project.webhook_secret_enc  # a secret set before the URL
            session.add(row)
            _forget(session)
        else:
            row.address = address
    if secret is not None and row is not None:
        row.secret_enc = ctx.cipher.encrypt_text(secret, purpose=delivery.PURPOSE) if secret else None
    await session.flush()
