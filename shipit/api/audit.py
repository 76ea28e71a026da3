"""/api/v1/audit: the audit log of the projects the caller may see, and its export."""

from __future__ import annotations

import datetime as dt

from fastapi import Query

from core import audit, identity
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/audit")
async def read_audit(
    rt: RtDep,
    actor: ActorDep,
    target: schemas.AuditTargetQuery = None,
    action: schemas.AuditActionQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    since: dt.datetime | None = None,  # from this time on, oldest first (an export)
    after_id: schemas.AfterIdQuery = None,  # the next page of an export: ids above this
) -> list[schemas.AuditOut]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)  # a bare date or time is UTC
    async with tx(rt) as session:
        visible = await identity.visible_project_ids(session, actor=actor)
        rows = await audit.query(
            session,
            project_ids=visible,
            target=target,
            action=action,
            limit=limit,
            since=since,
            after_id=after_id,
        )
        return [
            schemas.AuditOut(
                id=r.id,
                at=r.at,
                actor=r.actor,
                channel=r.channel,
                action=r.action,
                target=r.target,
                details=r.details,
            )
            for r in rows
        ]
