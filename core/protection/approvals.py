"""The approval hook: who may approve a deploy into an environment, and how many persons' approvals
it needs.  Approvals count persons, not subjects (see core.identities).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import environments, identity
from core.errors import Conflict, PermissionDenied
from core.identities import person_key
from core.identity import Actor, Role
from storage import models

# The environment's approver_role default: whoever may deploy may approve.
ROLE_ALIASES = {"deployer": Role.DEVELOPER}
MAX_APPROVALS = 10


def approver_role(env: models.Environment) -> Role:
    name = (env.approver_role or "deployer").strip().lower()
    return ROLE_ALIASES.get(name) or Role.parse(name, field="approver_role")


# The words a rejection writes in the deployment's error, for people (the card, the dashboard, the CLI).
# Who rejected it is the rejected_by column; before migration 0014 these words were the only record.
REJECTED_BY = "rejected by "


def rejected_by(deployment: models.Deployment) -> str | None:
    """Who rejected the deploy, None when it was not rejected: the rejecter's subject (slack:U123,
    github:carol), or for a rejection older than the column that migration 0014 found no audit row
    for, the name its error text recorded."""
    if deployment.rejected_by is not None:
        return deployment.rejected_by
    error = deployment.error or ""
    # "cancelled" is core.deploys.CANCELLED, which this package cannot import (core.deploys imports it).
    if deployment.status == "cancelled" and error.startswith(REJECTED_BY):
        return error[len(REJECTED_BY) :]
    return None


@dataclass(frozen=True, kw_only=True)
class Tally:
    approvals: int
    needed: int
    approvers: tuple[str, ...] = ()  # who approved so far (the subject each used), in order

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
    approvers = tuple(await session.scalars(_APPROVERS, {"deployment_id": deployment.id}))
    count = len(approvers)
    if deployment.approval_expires_at is None and count == 0 and deployment.approved_by is None:
        return None
    app = await session.get(models.App, deployment.app_id)
    needed = await needed_for(session, app=app) if app is not None else 1
    # A deploy approved before multi-approval existed has approved_by and no rows: one approval.
    if not approvers and deployment.approved_by:
        approvers = (deployment.approved_by,)
    return Tally(approvals=max(count, 1 if deployment.approved_by else 0), needed=needed, approvers=approvers)


# Built once: every card of a deploy that waits for approval counts them (issue 13: notify jobs).
_APPROVERS = (
    select(models.DeployApproval.subject)
    .where(models.DeployApproval.deployment_id == bindparam("deployment_id"))
    .order_by(models.DeployApproval.id)
)


async def refuse_own_deploy(session: AsyncSession, *, actor: Actor, deployment: models.Deployment) -> str:
    """The one self-approval rule, for every channel (Slack button, `.approve` comment, API, CLI, web):
    nobody approves a deploy their person requested, from any of their identities.  The approver's
    person key when they may approve.
    """
    mine = await person_key(session, subject=actor.subject)
    if mine == await person_key(session, subject=deployment.actor):
        raise PermissionDenied("nobody approves their own deploy: ask someone else on the project")
    return mine


async def approve(
    session: AsyncSession, *, actor: Actor, app: models.App, deployment: models.Deployment, approve: bool
) -> Tally | None:
    """Check the approver and record the approval; the tally after it (None for a rejection).

    The approver needs the environment's approver role; the requester's person never approves their own
    deploy, and a person approves once.
    """
    mine = await refuse_own_deploy(session, actor=actor, deployment=deployment) if approve else None
    env = await environments.of_app(session, app=app)
    project = await session.get(models.Project, app.project_id)
    role = approver_role(env)
    if project is not None:
        verb = "approving" if approve else "rejecting"
        await identity.require(session, actor=actor, project=project, role=role, action=f"{verb} deploys")
    if mine is None:
        return None
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
