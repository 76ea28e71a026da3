"""Promotion: run in one environment exactly what runs in another (staging -> production).

What moves is the source row's CURRENT revision (the last rollout that succeeded there): its image,
pinned by the digest it resolved to, and its release command.  Everything else is the target's own:
replicas, env, resources, autoscaling, domain and secrets.  The deploy goes through deploys.request
like any other, so the target's lock, namespace ownership and approvals still apply.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, deploys, secrets
from core import revisions as snapshots
from core.context import Core
from core.errors import Conflict, InvalidInput
from core.identity import Actor, Role
from storage import models

TRIGGER = "promote"


async def promote(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    source: str,
    target: str,
    dedupe_key: str | None = None,
) -> deploys.Requested:
    if source == target:
        raise InvalidInput("promote from one environment to another, not to the same one", field="to")
    src = await apps.get(session, actor=actor, name=app_name, env=source)
    await apps.authorize(session, actor=actor, app=src, role=Role.VIEWER, action="promoting")
    dst = await apps.get(session, actor=actor, name=app_name, env=target)
    await apps.authorize(session, actor=actor, app=dst, role=Role.DEVELOPER, action="deploying")
    current = (
        await session.get(models.Revision, src.current_revision_id)
        if src.current_revision_id is not None
        else None
    )
    if current is None:
        raise Conflict(f"{app_name} has no successful deploy in {source} yet: nothing to promote")
    moved = snapshots.of_revision(current)
    # The target's own settings and secrets version, the source's exact image and release command.
    await secrets.ensure_version(session, ctx=ctx, app=dst)
    snapshot = snapshots.from_app(dst).replace(
        image=moved.image_ref, digest=moved.digest, release_command=moved.release_command
    )
    result = await deploys.request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app_name,
        env=target,
        trigger=TRIGGER,
        snapshot=snapshot,
        dedupe_key=dedupe_key,
        reason=f"promote revision {current.number} from {source}",
    )
    if result.created:
        await audit.record(
            session,
            actor=actor,
            action="app.promote",
            target=f"app/{app_name}",
            project_id=dst.project_id,
            details={
                "from": source,
                "to": target,
                "revision": current.number,
                "image": moved.image_ref,
                "digest": moved.digest,
                "deployment": result.deployment.id,
            },
        )
    return result
