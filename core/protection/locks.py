"""Locks on an environment or a whole project: a person saying "hands off", with a reason and
perhaps an end.  Only the locker (any of their identities) or a project admin lifts one early.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from core import identity, projects, validation
from core.errors import PermissionDenied
from core.identities import person_key
from core.identity import Actor, Role
from core.protection.settings import audit_change, load_env
from storage import models


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


def lock_text(what: str, lock: Lock) -> str:
    until = f" until {lock.until:%Y-%m-%d %H:%M} UTC" if lock.until else ""
    return f"{what} is locked by {lock.by}{until}: {lock.reason}. Unlock it first."


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
    p, row = await load_env(
        session, actor=actor, project=project, env=env, role=Role.DEVELOPER, action="locking environments"
    )
    _lock(row, actor=actor, reason=reason, seconds=seconds)
    await audit_change(
        session, actor=actor, action="environment.lock", project=p, env=row.name,
        details={"reason": row.locked_reason, "until": row.locked_until.isoformat() if row.locked_until else None},
    )  # fmt: skip
    return row


async def unlock_env(session: AsyncSession, *, actor: Actor, project: str, env: str) -> models.Environment:
    p, row = await load_env(
        session, actor=actor, project=project, env=env, role=Role.DEVELOPER, action="unlocking environments"
    )
    await _unlock(session, actor=actor, project=p, row=row)
    await audit_change(session, actor=actor, action="environment.unlock", project=p, env=row.name, details={})
    return row


async def lock_project(
    session: AsyncSession, *, actor: Actor, project: str, reason: str | None, seconds: int | None = None
) -> models.Project:
    p = await projects.get_for(
        session, actor=actor, name=project, role=Role.ADMIN, action="locking a project"
    )
    _lock(p, actor=actor, reason=reason, seconds=seconds)
    await audit_change(
        session, actor=actor, action="project.lock", project=p, env=None,
        details={"reason": p.locked_reason, "until": p.locked_until.isoformat() if p.locked_until else None},
    )  # fmt: skip
    return p


async def unlock_project(session: AsyncSession, *, actor: Actor, project: str) -> models.Project:
    p = await projects.get_for(
        session, actor=actor, name=project, role=Role.DEVELOPER, action="unlocking a project"
    )
    await _unlock(session, actor=actor, project=p, row=p)
    await audit_change(session, actor=actor, action="project.unlock", project=p, env=None, details={})
    return p
