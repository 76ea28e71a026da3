"""Protection per environment: approvals, deploy windows, freezes and locks.

`core.deploys` calls two hooks: `check_request` before a deploy is written (locks, windows, freezes,
and how many approvals it will need) and `approve` when someone approves or rejects.  Every channel
goes through them, so Slack, GitHub, the API and the CLI obey the same rules.

Approvals count persons, not subjects: a subject linked to a person (table `identities`) is that
person, so one human approving from Slack and again from GitHub counts once, and nobody approves a
deploy they requested under another identity.

Windows and freezes hold every deploy into the environment except rollbacks: a rollback goes back to
a revision that already ran, which is what one wants at 3 a.m. outside the window or during a freeze.
Locks hold rollbacks too (a lock is a person saying "hands off"); only shipit's own automatic rollback
passes a lock, as it passes the per-app lock.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, environments, identity, validation
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identities import person_key
from core.identity import Actor, Role
from storage import models

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# The environment's approver_role default: whoever may deploy may approve.
ROLE_ALIASES = {"deployer": Role.DEVELOPER}
MAX_APPROVALS = 10
MAX_FREEZE = dt.timedelta(days=731)
HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


# ------------------------------------------------------------------ persons


def approver_role(env: models.Environment) -> Role:
    name = (env.approver_role or "deployer").strip().lower()
    return ROLE_ALIASES.get(name) or Role.parse(name, field="approver_role")


# ------------------------------------------------------------------ windows


@dataclass(frozen=True, kw_only=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time | None  # None: midnight at the end of the day ("24:00")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(f"unknown time zone {name!r}: use a name like Europe/Berlin", field="tz") from None


def parse_days(text: str) -> list[str]:
    """ "mon-fri", "sat,sun", "mon,wed-fri", "all": the day names in week order (a range may wrap: fri-mon)."""
    text = text.strip().lower()
    if text in ("all", "*", "daily", "every day"):
        return list(DAYS)
    picked: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last or first)
        i = a
        while True:
            picked.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    if not picked:
        raise InvalidInput("days must name at least one day, like mon-fri", field="days")
    return [DAYS[i] for i in sorted(picked)]


def _day(text: str) -> int:
    key = text.strip().lower()[:3]
    if key not in DAYS:
        raise InvalidInput(f"unknown day {text!r}: use mon, tue, wed, thu, fri, sat, sun", field="days")
    return DAYS.index(key)


def parse_hhmm(text: str, *, field: str) -> str:
    if not HHMM.match(text.strip()):
        raise InvalidInput(f"{field} must be a time like 09:00 (24-hour clock), got {text!r}", field=field)
    return text.strip()


def _time(text: str) -> dt.time | None:
    if text == "24:00":
        return None
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def windows_of(raw: list[Any] | None) -> list[Window]:
    out = []
    for w in raw or []:
        days = w.get("days") or list(DAYS)
        out.append(
            Window(
                days=frozenset(_day(d) for d in days),
                start=_time(w.get("start") or "00:00") or dt.time(0),
                end=_time(w.get("end") or "24:00"),
            )
        )
    return out


def _intervals_on(
    day: dt.date, *, windows: list[Window], tz: ZoneInfo
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The windows opening on local date `day`, as aware datetimes (an end at or before the start runs overnight)."""
    spans = []
    for w in windows:
        if day.weekday() not in w.days:
            continue
        start = dt.datetime.combine(day, w.start, tzinfo=tz)
        if w.end is None or w.end <= w.start:
            end_day = day + dt.timedelta(days=1)
            end = dt.datetime.combine(end_day, w.end or dt.time(0), tzinfo=tz)
        else:
            end = dt.datetime.combine(day, w.end, tzinfo=tz)
        # Wall times normalised through UTC: a time in a DST gap lands just after it.
        spans.append((_norm(start), _norm(end)))
    return spans


def _norm(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).astimezone(t.tzinfo)


def _in_window(t: dt.datetime, *, windows: list[Window], tz: ZoneInfo) -> bool:
    local = t.astimezone(tz).date()
    for day in (local - dt.timedelta(days=1), local):
        for start, end in _intervals_on(day, windows=windows, tz=tz):
            if start <= t < end:
                return True
    return False


def _next_opening(t: dt.datetime, *, windows: list[Window], tz: ZoneInfo) -> dt.datetime | None:
    local = t.astimezone(tz).date()
    for offset in range(0, 9):
        starts = sorted(
            start
            for start, _ in _intervals_on(local + dt.timedelta(days=offset), windows=windows, tz=tz)
            if start > t
        )
        if starts:
            return starts[0]
    return None


@dataclass(frozen=True, kw_only=True)
class Freeze:
    start: dt.datetime | None
    end: dt.datetime
    reason: str


def freezes_of(raw: list[Any] | None, *, tz: ZoneInfo) -> list[Freeze]:
    out = []
    for f in raw or []:
        end = _instant(f.get("end"), tz=tz)
        if end is None:
            continue
        out.append(Freeze(start=_instant(f.get("start"), tz=tz), end=end, reason=str(f.get("reason") or "")))
    return out


def _instant(text: object, *, tz: ZoneInfo) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def _freeze_at(t: dt.datetime, freezes: list[Freeze]) -> Freeze | None:
    on = [f for f in freezes if (f.start is None or f.start <= t) and t < f.end]
    return max(on, key=lambda f: f.end) if on else None


@dataclass(frozen=True, kw_only=True)
class Blocked:
    why: str  # "window" or "freeze"
    next_allowed: dt.datetime | None  # in the environment's time zone; None: no window ever opens
    freeze: Freeze | None = None


def blocked_at(
    now: dt.datetime, *, windows: list[Window], freezes: list[Freeze], tz: ZoneInfo
) -> Blocked | None:
    """None when a deploy may start at `now`; else why not and the next moment it may (in `tz`)."""
    freeze = _freeze_at(now, freezes)
    if freeze is None and (not windows or _in_window(now, windows=windows, tz=tz)):
        return None
    t: dt.datetime | None = now
    for _ in range(200):  # each turn moves t forward past a freeze or to a window's opening
        assert t is not None
        on = _freeze_at(t, freezes)
        if on is not None:
            t = on.end
            continue
        if windows and not _in_window(t, windows=windows, tz=tz):
            t = _next_opening(t, windows=windows, tz=tz)
            if t is None:
                break
            continue
        break
    return Blocked(
        why="freeze" if freeze is not None else "window",
        next_allowed=t.astimezone(tz) if t is not None else None,
        freeze=freeze,
    )


def show_time(t: dt.datetime, *, tz: ZoneInfo) -> str:
    """How every message names a moment of an environment: "Mon 2026-12-07 09:00 CET (Europe/Berlin)"."""
    local = t.astimezone(tz)
    return f"{local:%a %Y-%m-%d %H:%M %Z} ({tz.key})"


# ------------------------------------------------------------------ locks


@dataclass(frozen=True, kw_only=True)
class Lock:
    reason: str
    by: str
    at: dt.datetime | None
    until: dt.datetime | None


def lock_of(row: models.Environment | models.Project, *, now: dt.datetime | None = None) -> Lock | None:
    """The row's lock while it holds; an expired one reads as no lock at all."""
    if not row.locked_reason:
        return None
    now = now or models.utcnow()
    if row.locked_until is not None and row.locked_until <= now:
        return None
    return Lock(reason=row.locked_reason, by=row.locked_by or "?", at=row.locked_at, until=row.locked_until)


def _lock_text(what: str, lock: Lock) -> str:
    until = f" until {lock.until:%Y-%m-%d %H:%M} UTC" if lock.until else ""
    return f"{what} is locked by {lock.by}{until}: {lock.reason}. Unlock it first."


# ------------------------------------------------------------------ the request hook


@dataclass(frozen=True, kw_only=True)
class Gate:
    """What `core.deploys.request` needs to know about the environment of a deploy."""

    environment: models.Environment
    needs_approval: bool
    approval_ttl_seconds: float
    overridden: Blocked | None  # a window or freeze an admin deployed through


async def check_request(
    session: AsyncSession,
    *,
    actor: Actor,
    app: models.App,
    trigger: str,
    preview: bool,
    automatic: bool,
    rollback: bool,
    override_window: bool,
    default_ttl_seconds: float,
    now: dt.datetime | None = None,
) -> Gate:
    """Refuse a deploy into a locked project or environment, or outside its windows; say what it needs.

    Previews run in their own namespaces and are not held (as the per-app lock does not hold them).
    """
    env = await environments.of_app(session, app=app)
    now = now or models.utcnow()
    overridden = None
    if preview is False and not automatic:
        project = await session.get(models.Project, app.project_id)
        plock = lock_of(project, now=now) if project is not None else None
        if plock is not None and project is not None:
            raise Conflict(_lock_text(f"project {project.name}", plock))
        elock = lock_of(env, now=now)
        if elock is not None:
            raise Conflict(_lock_text(f"environment {env.name}", elock))
        if not rollback:
            tz = zone(env.timezone or "UTC")
            blocked = blocked_at(
                now, windows=windows_of(env.windows), freezes=freezes_of(env.freezes, tz=tz), tz=tz
            )
            if blocked is not None:
                if not override_window:
                    raise Conflict(_blocked_text(env, blocked, tz=tz))
                if project is not None:
                    await identity.require(
                        session,
                        actor=actor,
                        project=project,
                        role=Role.ADMIN,
                        action="deploying outside a window",
                    )
                overridden = blocked
    ttl = env.approval_ttl_seconds or default_ttl_seconds
    return Gate(
        environment=env,
        needs_approval=(app.protected or env.protected) and not preview and not automatic,
        approval_ttl_seconds=float(ttl),
        overridden=overridden,
    )


def _blocked_text(env: models.Environment, blocked: Blocked, *, tz: ZoneInfo) -> str:
    if blocked.freeze is not None:
        why = f"environment {env.name} is frozen" + (
            f" ({blocked.freeze.reason})" if blocked.freeze.reason else ""
        )
    else:
        why = f"environment {env.name} is outside its deploy windows"
    if blocked.next_allowed is None:
        return f"{why}, and no window opens again. An admin may deploy with override_window."
    return (
        f"{why}: the next allowed time is {show_time(blocked.next_allowed, tz=tz)}. "
        "A project admin may deploy now with override_window."
    )


async def record_override(
    session: AsyncSession, *, actor: Actor, app: models.App, gate: Gate, deployment_id: int
) -> None:
    """An admin deployed through a window or freeze: said in the audit log, with what was overridden."""
    if gate.overridden is None:
        return
    b = gate.overridden
    await audit.record(
        session,
        actor=actor,
        action="deploy.override_window",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "deployment": deployment_id,
            "environment": gate.environment.name,
            "blocked_by": b.why,
            "next_allowed": b.next_allowed.isoformat() if b.next_allowed else None,
            **({"freeze_reason": b.freeze.reason} if b.freeze else {}),
        },
    )


# ------------------------------------------------------------------ the approval hook


@dataclass(frozen=True, kw_only=True)
class Tally:
    approvals: int
    needed: int

    @property
    def complete(self) -> bool:
        return self.approvals >= self.needed

    @property
    def text(self) -> str:
        return f"{self.approvals} of {self.needed} approvals"


async def needed_for(session: AsyncSession, *, app: models.App) -> int:
    """Approvals a deploy of the app needs now: the environment's count when it is protected, else 1."""
    env = await environments.of_app(session, app=app)
    return max(1, env.required_approvals or 1) if env.protected else 1


async def tally(session: AsyncSession, *, deployment: models.Deployment) -> Tally | None:
    """Approvals so far and needed, for a deploy that waits or waited for approval; None for one that never did."""
    if deployment.approval_expires_at is None and deployment.approved_by is None:
        # Never waited for approval (approvals are only taken while one waits): no count to read.
        return None
    count = int(
        await session.scalar(
            select(func.count())
            .select_from(models.DeployApproval)
            .where(models.DeployApproval.deployment_id == deployment.id)
        )
        or 0
    )
    if deployment.approval_expires_at is None and count == 0 and deployment.approved_by is None:
        return None
    app = await session.get(models.App, deployment.app_id)
    needed = await needed_for(session, app=app) if app is not None else 1
    # A deploy approved before multi-approval existed has approved_by and no rows: one approval.
    return Tally(approvals=max(count, 1 if deployment.approved_by else 0), needed=needed)


async def approve(
    session: AsyncSession, *, actor: Actor, app: models.App, deployment: models.Deployment, approve: bool
) -> Tally | None:
    """Check the approver and record the approval; the tally after it (None for a rejection).

    The approver needs the environment's approver role; the requester's person never approves their own
    deploy, and a person approves once.
    """
    env = await environments.of_app(session, app=app)
    project = await session.get(models.Project, app.project_id)
    role = approver_role(env)
    if project is not None:
        verb = "approving" if approve else "rejecting"
        await identity.require(session, actor=actor, project=project, role=role, action=f"{verb} deploys")
    if not approve:
        return None
    mine = await person_key(session, subject=actor.subject)
    if mine == await person_key(session, subject=deployment.actor):
        raise PermissionDenied("nobody approves their own deploy: ask someone else on the project")
    earlier = await session.scalar(
        select(models.DeployApproval.id).where(
            models.DeployApproval.deployment_id == deployment.id, models.DeployApproval.person_key == mine
        )
    )
    if earlier is not None:
        raise Conflict(f"you already approved deploy #{deployment.id}; it needs someone else's approval")
    try:
        async with session.begin_nested():
            session.add(
                models.DeployApproval(
                    deployment_id=deployment.id, person_key=mine, subject=actor.subject, channel=actor.channel
                )
            )
    except IntegrityError:
        raise Conflict(
            f"you already approved deploy #{deployment.id}; it needs someone else's approval"
        ) from None
    result = await tally(session, deployment=deployment)
    assert result is not None
    return result


# ------------------------------------------------------------------ settings (CLI, API, Slack)


async def _env(
    session: AsyncSession, *, actor: Actor, project: str, env: str, role: Role, action: str
) -> tuple[models.Project, models.Environment]:
    row = await session.scalar(select(models.Project).where(models.Project.name == project))
    if row is None:
        raise identity.project_not_found(project)
    await identity.require(session, actor=actor, project=row, role=role, action=action)
    return row, await environments.get(session, project_id=row.id, name=env)


async def _project(
    session: AsyncSession, *, actor: Actor, project: str, role: Role, action: str
) -> models.Project:
    row = await session.scalar(select(models.Project).where(models.Project.name == project))
    if row is None:
        raise identity.project_not_found(project)
    await identity.require(session, actor=actor, project=row, role=role, action=action)
    return row


async def resolve_env(session: AsyncSession, *, actor: Actor, where: str) -> tuple[str, str]:
    """(project, environment) from "acme/staging", or from "staging" when one of the caller's projects has it."""
    project, sep, env = where.partition("/")
    if sep:
        return project, env
    q = (
        select(models.Project.name)
        .join(models.Environment, models.Environment.project_id == models.Project.id)
        .where(models.Environment.name == where)
        .order_by(models.Project.name)
    )
    visible = await identity.visible_project_ids(session, actor=actor)
    if visible is not None:
        q = q.where(models.Project.id.in_(visible))
    names = list(await session.scalars(q))
    if not names:
        raise NotFound(f"none of your projects has an environment named {where!r}")
    if len(names) > 1:
        raise InvalidInput(
            f"{', '.join(names)} all have an environment {where!r}: name one, like {names[0]}/{where}",
            field="environment",
        )
    return names[0], where


async def get_environment(
    session: AsyncSession, *, actor: Actor, project: str, env: str
) -> models.Environment:
    _, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.VIEWER, action="reading environments"
    )
    return row


async def _audit(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    project: models.Project,
    env: str | None,
    details: dict[str, Any],
) -> None:
    target = f"project/{project.name}" + (f"/env/{env}" if env else "")
    await audit.record(
        session, actor=actor, action=action, target=target, project_id=project.id, details=details
    )


async def protect(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    env: str,
    approvals: int = 1,
    approver_role: str = "deployer",
    approval_ttl_seconds: int | None = None,
) -> models.Environment:
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="protecting environments"
    )
    validation.int_range(approvals, field="approvals", low=1, high=MAX_APPROVALS)
    name = approver_role.strip().lower()
    role = ROLE_ALIASES.get(name) or Role.parse(name, field="approver_role")
    if role < Role.DEVELOPER:
        raise InvalidInput("approver_role must be deployer, developer, admin or owner", field="approver_role")
    if approval_ttl_seconds is not None:
        validation.int_range(approval_ttl_seconds, field="approval_ttl", low=60, high=30 * 86400)
    row.protected, row.required_approvals, row.approver_role = True, approvals, name
    row.approval_ttl_seconds = approval_ttl_seconds
    await _audit(
        session, actor=actor, action="environment.protect", project=p, env=row.name,
        details={"approvals": approvals, "approver_role": name, "approval_ttl_seconds": approval_ttl_seconds},
    )  # fmt: skip
    return row


async def unprotect(session: AsyncSession, *, actor: Actor, project: str, env: str) -> models.Environment:
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="protecting environments"
    )
    row.protected, row.required_approvals = False, 1
    await _audit(session, actor=actor, action="environment.unprotect", project=p, env=row.name, details={})
    return row


async def set_window(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    env: str,
    days: str | None = None,
    start: str | None = None,
    end: str | None = None,
    tz: str | None = None,
    add: bool = False,
    clear: bool = False,
) -> models.Environment:
    """Set (or with `add`, add) a deploy window, or clear them all (deploys at any time)."""
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="setting deploy windows"
    )
    if tz is not None:
        row.timezone = zone(tz).key
    if clear:
        row.windows = []
    else:
        if days is None or start is None or end is None:
            raise InvalidInput(
                "a window needs days, a start and an end, like mon-fri 09:00 17:00", field="days"
            )
        window = {
            "days": parse_days(days),
            "start": parse_hhmm(start, field="start"),
            "end": parse_hhmm(end, field="end"),
        }
        if window["start"] == window["end"]:
            raise InvalidInput("a window's start and end must differ", field="end")
        row.windows = [*(row.windows or []), window] if add else [window]
    await _audit(
        session, actor=actor, action="environment.window", project=p, env=row.name,
        details={"windows": list(row.windows), "timezone": row.timezone},
    )  # fmt: skip
    return row


async def freeze(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    env: str,
    until: str | None = None,
    start: str | None = None,
    reason: str | None = None,
    clear: bool = False,
) -> models.Environment:
    """Add a freeze (no deploys from `start`, default now, until `until`), or clear them all."""
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="freezing environments"
    )
    tz = zone(row.timezone or "UTC")
    now = models.utcnow()
    if clear:
        row.freezes = []
    else:
        end = _parse_instant(until, field="until", tz=tz)
        begin = _parse_instant(start, field="from", tz=tz) if start else now
        if end <= max(begin, now):
            raise InvalidInput("a freeze must end in the future and after it starts", field="until")
        if end - now > MAX_FREEZE:  # a longer stop is a lock, not a freeze
            raise InvalidInput("a freeze ends within two years; lock the environment instead", field="until")
        text = validation.text(reason or "frozen", field="reason", max_length=500)
        kept = [f for f in row.freezes or [] if (_instant(f.get("end"), tz=tz) or now) > now]  # ended ones go
        row.freezes = [*kept, {"start": begin.isoformat(), "end": end.isoformat(), "reason": text}]
    await _audit(
        session,
        actor=actor,
        action="environment.freeze",
        project=p,
        env=row.name,
        details={"freezes": list(row.freezes)},
    )
    return row


def _parse_instant(text: str | None, *, field: str, tz: ZoneInfo) -> dt.datetime:
    if not text:
        raise InvalidInput(f"{field} is needed: a date and time like 2026-12-27T18:00", field=field)
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{field} must be a date and time like 2026-12-27T18:00, got {text!r}", field=field
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def _lock(
    row: models.Environment | models.Project, *, actor: Actor, reason: str | None, seconds: int | None
) -> None:
    if seconds is not None:
        validation.int_range(seconds, field="for", low=60, high=366 * 86400)
    row.locked_reason = validation.text(reason or "locked", field="reason", max_length=500)
    row.locked_by = actor.subject
    row.locked_at = models.utcnow()
    row.locked_until = row.locked_at + dt.timedelta(seconds=seconds) if seconds else None


async def _unlock(
    session: AsyncSession, *, actor: Actor, project: models.Project, row: models.Environment | models.Project
) -> None:
    """The locker (any of their identities) or a project admin; an expired lock anyone with the role may clear."""
    held = lock_of(row)
    if held is not None and row.locked_by:
        same = await person_key(session, subject=actor.subject) == await person_key(
            session, subject=row.locked_by
        )
        if (
            not same
            and (await identity.role_of(session, actor=actor, project_id=project.id) or Role.VIEWER)
            < Role.ADMIN
        ):
            raise PermissionDenied(f"locked by {row.locked_by}: only they or a project admin may unlock it")
    row.locked_reason = row.locked_by = None
    row.locked_at = row.locked_until = None


async def lock_env(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    env: str,
    reason: str | None,
    seconds: int | None = None,
) -> models.Environment:
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.DEVELOPER, action="locking environments"
    )
    _lock(row, actor=actor, reason=reason, seconds=seconds)
    await _audit(
        session, actor=actor, action="environment.lock", project=p, env=row.name,
        details={"reason": row.locked_reason, "until": row.locked_until.isoformat() if row.locked_until else None},
    )  # fmt: skip
    return row


async def unlock_env(session: AsyncSession, *, actor: Actor, project: str, env: str) -> models.Environment:
    p, row = await _env(
        session, actor=actor, project=project, env=env, role=Role.DEVELOPER, action="unlocking environments"
    )
    await _unlock(session, actor=actor, project=p, row=row)
    await _audit(session, actor=actor, action="environment.unlock", project=p, env=row.name, details={})
    return row


async def lock_project(
    session: AsyncSession, *, actor: Actor, project: str, reason: str | None, seconds: int | None = None
) -> models.Project:
    p = await _project(session, actor=actor, project=project, role=Role.ADMIN, action="locking a project")
    _lock(p, actor=actor, reason=reason, seconds=seconds)
    await _audit(
        session, actor=actor, action="project.lock", project=p, env=None,
        details={"reason": p.locked_reason, "until": p.locked_until.isoformat() if p.locked_until else None},
    )  # fmt: skip
    return p


async def unlock_project(session: AsyncSession, *, actor: Actor, project: str) -> models.Project:
    p = await _project(
        session, actor=actor, project=project, role=Role.DEVELOPER, action="unlocking a project"
    )
    await _unlock(session, actor=actor, project=p, row=p)
    await _audit(session, actor=actor, action="project.unlock", project=p, env=None, details={})
    return p


def parse_duration(text: str, *, field: str) -> int:
    """ "90s", "30m", "2h", "1d", "1h30m" -> seconds."""
    m = re.fullmatch(r"\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text.lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise InvalidInput(f"{field} must be a duration like 30m, 2h or 1d, got {text!r}", field=field)
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s
