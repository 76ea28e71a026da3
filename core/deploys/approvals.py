"""Approving, rejecting, cancelling and expiring deploys that have not started."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    audit,
    events,
    jobs,
    metrics,
    protection,
)
from core.context import Core
from core.deploys.queries import (
    _authorized,
)
from core.deploys.request import (
    _enqueue,
)
from core.deploys.states import (
    AWAITING_APPROVAL,
    CANCELLED,
    PENDING,
    QUEUED,
)
from core.errors import Conflict
from core.identity import Actor, Role
from core.protection import REJECTED_BY, rejected_by
from storage import models

log = logging.getLogger(__name__)


async def approve(
    session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int, approve: bool = True
) -> models.Deployment:
    """A second person approves (or rejects) a deploy of a protected app."""
    verb = "approving" if approve else "rejecting"
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action=f"{verb} deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status != AWAITING_APPROVAL:
        rejecter = rejected_by(deployment)
        if rejecter is not None:  # a second `.reject` (or a late approval) says what happened, and who
            raise Conflict(f"deploy #{deployment.id} was already rejected by {rejecter}")
        raise Conflict(f"deploy #{deployment.id} is {deployment.status}, not awaiting approval")
    if deployment.approval_expires_at and deployment.approval_expires_at < models.utcnow():
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
        raise Conflict(f"deploy #{deployment.id} waited too long for approval and expired; request it again")
    # The one place approvals are checked (protection.refuse_own_deploy: another person, not another
    # account), then the environment's approver role and one approval per person.
    tally = await protection.approve(session, actor=actor, app=app, deployment=deployment, approve=approve)
    if tally is not None and not tally.complete:
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_AWAITING_APPROVAL,
            deployment=deployment,
            project_id=app.project_id,
            step=f"approval:{tally.approvals}",
            payload={"approved_by": actor.subject, "approvals": tally.approvals, "needed": tally.needed},
        )
    elif approve:
        deployment.status, deployment.approved_by = QUEUED, actor.subject
        await _enqueue(session, deployment=deployment)
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_QUEUED,
            deployment=deployment,
            project_id=app.project_id,
            step="approved",
            payload={"approved_by": actor.subject},
        )
    else:
        deployment.rejected_by = actor.subject
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"{REJECTED_BY}{actor.name}"
        )
    await audit.record(
        session,
        actor=actor,
        action="deploy.approve" if approve else "deploy.reject",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id, **({"approvals": tally.text} if tally else {})},
    )
    return deployment


async def cancel(session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action="cancelling deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status not in PENDING:
        raise Conflict(
            f"deploy #{deployment.id} is {deployment.status}; only queued deploys can be cancelled"
        )
    await _finish_pending(
        session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"cancelled by {actor.name}"
    )
    await audit.record(
        session,
        actor=actor,
        action="deploy.cancel",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id},
    )
    return deployment


async def _finish_pending(
    session: AsyncSession, *, ctx: Core, deployment: models.Deployment, status: str, error: str
) -> None:
    deployment.status, deployment.error, deployment.finished_at = status, error, models.utcnow()
    await jobs.cancel_where(session, dedupe_keys=[f"deploy:{deployment.id}"])
    app = await session.get(models.App, deployment.app_id)
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_CANCELLED,
        deployment=deployment,
        project_id=app.project_id if app else None,
        step="final",
        payload={"reason": error},
    )
    metrics.DEPLOYS_BY.labels(status, deployment.trigger).inc()


async def expire_approvals(session: AsyncSession, *, ctx: Core) -> int:
    stale = list(
        await session.scalars(
            select(models.Deployment).where(
                models.Deployment.status == AWAITING_APPROVAL,
                models.Deployment.approval_expires_at < models.utcnow(),
            )
        )
    )
    for deployment in stale:
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
    return len(stale)


# ---------------------------------------------------------------- the worker side
