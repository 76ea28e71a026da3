"""The append-only audit log.  Details never hold secret values: callers pass keys, not values."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.identity import Actor
from storage import models


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target: str,
    project_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> models.AuditEvent:
    row = models.AuditEvent(
        actor=actor.subject,
        channel=actor.channel,
        action=action,
        target=target,
        project_id=project_id,
        details=details or {},
    )
    session.add(row)
    await session.flush()
    return row


async def write(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target: str,
    project_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """`record` for a caller that needs no row back (a deploy request): one INSERT built once, no
    ORM object and no flush of the session's other pending changes (issue 13: CPU per request)."""
    await session.execute(
        _INSERT, row(actor=actor, action=action, target=target, project_id=project_id, details=details)
    )


def row(
    *,
    actor: Actor,
    action: str,
    target: str,
    project_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An audit row as `write` inserts it, stamped now, for `write_all` to insert with others."""
    return {
        "at": models.utcnow(),
        "actor": actor.subject,
        "channel": actor.channel,
        "action": action,
        "target": target,
        "project_id": project_id,
        "details": details or {},
    }


async def write_all(session: AsyncSession, *, rows: list[dict[str, Any]]) -> None:
    """Insert rows made by `row`, in one trip to the database (a batch of deploy requests)."""
    if rows:
        await session.execute(_INSERT, rows)


_INSERT = insert(cast(Table, models.AuditEvent.__table__))


async def query(
    session: AsyncSession,
    *,
    project_ids: set[int] | None,
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[models.AuditEvent]:
    """Newest first; with `since` or `after_id` (an export, paged by the last id seen), oldest first."""
    order = models.AuditEvent.id.asc() if since or after_id is not None else models.AuditEvent.id.desc()
    q = select(models.AuditEvent).order_by(order).limit(min(max(limit, 1), 1000))
    if after_id is not None:
        q = q.where(models.AuditEvent.id > after_id)
    if project_ids is not None:
        q = q.where(models.AuditEvent.project_id.in_(project_ids))
    if target:
        q = q.where(models.AuditEvent.target.like(f"%{target}%"))
    if action:
        q = q.where(models.AuditEvent.action == action)
    if actor:
        q = q.where(models.AuditEvent.actor == actor)
    if since:
        q = q.where(models.AuditEvent.at >= since)
    return list(await session.scalars(q))
