"""With `promote_to`, a registry deploy that succeeded is promoted (its exact digest) to the app's row in
that environment: `Promoter` listens to deploy.succeeded like a notifier.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, deploys, events, promotion
from core.context import Core
from core.errors import UserError
from core.image_policies.policies import policy_of
from core.image_policies.triggers import ACTOR, TRIGGER
from storage import models


async def after_success(session: AsyncSession, *, ctx: Core, deployment_id: int) -> deploys.Requested | None:
    """A registry deploy succeeded: with promote_to, promote what now runs (its exact digest)."""
    deployment = await session.get(models.Deployment, deployment_id)
    if deployment is None or deployment.trigger != TRIGGER or deployment.preview_id is not None:
        return None
    app = await session.get(models.App, deployment.app_id)
    policy = await policy_of(session, app=app) if app else None
    if app is None or policy is None or not policy.promote_to:
        return None
    try:
        async with session.begin_nested():
            result = await promotion.promote(
                session, ctx=ctx, actor=ACTOR, app_name=app.name,
                source=await apps.env_name(session, app=app), target=policy.promote_to,
                dedupe_key=f"registry-promote:{deployment.id}:{policy.promote_to}",
            )  # fmt: skip
    except UserError as e:
        policy.last_error = f"promotion to {policy.promote_to} refused: {e}"[:2000]
        return None
    policy.last_error = None
    return result


class Promoter:
    """Listens to deploy.succeeded (as notifiers do: a durable notify job) and promotes registry deploys."""

    name = "registry-promote"

    def __init__(self, *, ctx: Core) -> None:
        self.ctx = ctx

    def wants(self, kind: str) -> bool:
        return kind == events.DEPLOY_SUCCEEDED

    def wants_event(self, audience: events.Audience) -> bool:
        return audience.trigger == TRIGGER and not audience.preview

    async def deliver(self, notice: events.Notice) -> events.Delivered | None:
        if notice.deployment is None:
            return None
        async with self.ctx.sessionmaker.begin() as session:
            await after_success(session, ctx=self.ctx, deployment_id=notice.deployment.id)
        return None

    async def close(self) -> None:
        return None
