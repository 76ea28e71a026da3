"""/api/v1/apps/{name}/previews: open pull-request previews, and approving a fork's (core.previews)."""

from __future__ import annotations

from core import apps, identity, previews
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/apps/{name}/previews")
async def list_previews(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.PreviewOut]:
    async with tx(rt) as session:
        app = await apps.get(session, actor=actor, name=name, env=env)
        await apps.authorize(
            session, actor=actor, app=app, role=identity.Role.VIEWER, action="listing previews"
        )
        return [
            schemas.PreviewOut.of(p, app=app.name) for p in await previews.list_open(session, app_id=app.id)
        ]


@router.post("/apps/{name}/previews/{number}/approve", status_code=202)
async def approve_preview(
    name: schemas.NamePath,
    number: schemas.PrNumberPath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
) -> schemas.PreviewOut:
    """Deploy the waiting preview of a pull request from a fork: its current head commit, no secrets."""
    async with tx(rt) as session:
        approval = await previews.approve(
            session, ctx=rt.core, actor=actor, app_name=name, number=number, env=env
        )
        return schemas.PreviewOut.of(approval.preview, app=name, deployment=approval.decision.deployment_id)
