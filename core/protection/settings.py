"""Protection settings of an environment (CLI, API, Slack): protect, windows, freezes; and finding
the environment a caller names.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, environments, identity, projects, validation
from core.errors import InvalidInput, NotFound
from core.identity import Actor, Role
from core.protection.approvals import MAX_APPROVALS, ROLE_ALIASES
from core.protection.windows import instant, parse_days, parse_hhmm, parse_instant, zone
from storage import models

MAX_FREEZE = dt.timedelta(days=731)


async def load_env(
    session: AsyncSession, *, actor: Actor, project: str, env: str, role: Role, action: str
) -> tuple[models.Project, models.Environment]:
    row = await projects.get_for(session, actor=actor, name=project, role=role, action=action)
    return row, await environments.get(session, project_id=row.id, name=env)


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
    _, row = await load_env(
        session, actor=actor, project=project, env=env, role=Role.VIEWER, action="reading environments"
    )
    return row


async def audit_change(
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
    p, row = await load_env(
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
    await audit_change(
        session, actor=actor, action="environment.protect", project=p, env=row.name,
        details={"approvals": approvals, "approver_role": name, "approval_ttl_seconds": approval_ttl_seconds},
    )  # fmt: skip
    return row


async def unprotect(session: AsyncSession, *, actor: Actor, project: str, env: str) -> models.Environment:
    p, row = await load_env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="protecting environments"
    )
    row.protected, row.required_approvals = False, 1
    await audit_change(
        session, actor=actor, action="environment.unprotect", project=p, env=row.name, details={}
    )
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
    p, row = await load_env(
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
    await audit_change(
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
    p, row = await load_env(
        session, actor=actor, project=project, env=env, role=Role.ADMIN, action="freezing environments"
    )
    tz = zone(row.timezone or "UTC")
    now = models.utcnow()
    if clear:
        row.freezes = []
    else:
        end = parse_instant(until, field="until", tz=tz)
        begin = parse_instant(start, field="from", tz=tz) if start else now
        if end <= max(begin, now):
            raise InvalidInput("a freeze must end in the future and after it starts", field="until")
        if end - now > MAX_FREEZE:  # a longer stop is a lock, not a freeze
            raise InvalidInput("a freeze ends within two years; lock the environment instead", field="until")
        text = validation.text(reason or "frozen", field="reason", max_length=500)
        kept = [f for f in row.freezes or [] if (instant(f.get("end"), tz=tz) or now) > now]  # ended ones go
        row.freezes = [*kept, {"start": begin.isoformat(), "end": end.isoformat(), "reason": text}]
    await audit_change(
        session,
        actor=actor,
        action="environment.freeze",
        project=p,
        env=row.name,
        details={"freezes": list(row.freezes)},
    )
    return row
