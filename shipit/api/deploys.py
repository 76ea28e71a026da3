"""/api/v1/apps/{name}/deploys and /api/v1/deploys: deploy, dry-run, approve, roll back, scale, promote."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Header, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import select

from core import autoscaling, deploys, dryrun, promotion, revisions
from core.apps import UNSET
from core.errors import NotFound
from core.identity import Actor
from shipit import schemas
from shipit.api import reads
from shipit.api.base import CLUSTER_ERRORS, ActorDep, RtDep, new_router, tx
from shipit.runtime import Runtime
from storage import models

router = new_router()


@router.post(
    "/apps/{name}/deploys",
    status_code=202,
    response_model=schemas.DeploymentOut,
    # A dry run answers 200 with the difference, after asking the cluster (hence 502).
    responses={
        200: {"model": schemas.DryRunOut, "description": "Dry run: what would change."},
        **CLUSTER_ERRORS,
    },
)
async def deploy(
    name: schemas.NamePath,
    body: schemas.DeployIn,
    rt: RtDep,
    actor: ActorDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    dry_run: bool = False,
    env: schemas.EnvQuery = None,
) -> schemas.DeploymentOut | JSONResponse:
    if body.dry_run or dry_run:
        return await _dry_run(name=name, image=body.image, rt=rt, actor=actor, env=env)
    key = body.dedupe_key or idempotency_key
    async with tx(rt) as session:
        result = await deploys.request(
            session,
            ctx=rt.core,
            actor=actor,
            app_name=name,
            image=body.image,
            trigger=actor.channel,
            dedupe_key=f"api:{actor.subject}:{key}" if key else None,
            override_window=body.override_window,
            env=env,
        )
        return await reads.deployment_out(
            session, result.deployment, revision=result.revision, position=result.queue_position
        )


async def _dry_run(
    *, name: str, image: str | None, rt: Runtime, actor: Actor, env: str | None = None
) -> JSONResponse:
    """200 with the difference (a dry run is answered, not accepted for later); nothing is stored."""
    async with tx(rt) as session:
        plan = await dryrun.plan(session, ctx=rt.core, actor=actor, app_name=name, image=image, env=env)
    result = await dryrun.run(ctx=rt.core, plan=plan)
    return JSONResponse(jsonable_encoder(schemas.DryRunOut.of(result)), status_code=200)


@router.get("/apps/{name}/deploys")
async def list_deploys(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    limit: int = Query(20, ge=1, le=200),
    env: schemas.EnvQuery = None,
) -> list[schemas.DeploymentOut]:
    async with tx(rt) as session:
        rows = await deploys.history(session, actor=actor, app_name=name, limit=limit, env=env)
        ids = [d.revision_id for d in rows if d.revision_id is not None]
        revisions = {
            r.id: r for r in await session.scalars(select(models.Revision).where(models.Revision.id.in_(ids)))
        }
        return [
            reads.deployment_listed(d, app=name, revision=revisions.get(d.revision_id or 0)) for d in rows
        ]


@router.get("/deploys/{deployment_id}")
async def get_deploy(deployment_id: schemas.IdPath, rt: RtDep, actor: ActorDep) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        return await reads.deployment_out(
            session, await deploys.get(session, actor=actor, deployment_id=deployment_id)
        )


@router.post("/deploys/{deployment_id}/{action:deploy_action}")
async def act_on_deploy(
    deployment_id: schemas.IdPath, action: Literal["approve", "reject", "cancel"], rt: RtDep, actor: ActorDep
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        if action in ("approve", "reject"):
            d = await deploys.approve(
                session, ctx=rt.core, actor=actor, deployment_id=deployment_id, approve=action == "approve"
            )
        elif action == "cancel":
            d = await deploys.cancel(session, ctx=rt.core, actor=actor, deployment_id=deployment_id)
        else:
            raise NotFound(f"unknown action {action!r}: use approve, reject or cancel")
        return await reads.deployment_out(session, d)


@router.post("/apps/{name}/rollback", status_code=202)
async def rollback(
    name: schemas.NamePath, body: schemas.RollbackIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        result = await deploys.rollback(
            session, ctx=rt.core, actor=actor, app_name=name, revision=body.revision, env=env
        )
        return reads.deployment_listed(result.deployment, app=name)


@router.get("/apps/{name}/revisions")
async def list_revisions(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.RevisionOut]:
    async with tx(rt) as session:
        return [
            schemas.RevisionOut(
                number=r.number,
                image=r.image,
                source=r.source,
                rollback_of=r.rollback_of,
                created_by=r.created_by,
                created_at=r.created_at,
                # Every stored format, shown in today's (schema_version included).
                snapshot=revisions.of_revision(r).to_json(),
            )
            for r in await deploys.revisions(session, actor=actor, app_name=name, env=env)
        ]


@router.post("/apps/{name}/scale", status_code=202)
async def scale(
    name: schemas.NamePath, body: schemas.ScaleIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        result = await autoscaling.scale(
            session,
            ctx=rt.core,
            actor=actor,
            app_name=name,
            replicas=body.replicas,
            min_replicas=body.min_replicas,
            max_replicas=body.max_replicas,
            cpu_target=body.cpu_target,
            scale_down_window=body.scale_down_window
            if "scale_down_window" in body.model_fields_set
            else UNSET,
            autoscaling_off=body.autoscaling is False,
            env=env,
        )
        return reads.deployment_listed(result.deployment, app=name)


@router.post("/apps/{name}/promote", status_code=202)
async def promote(
    name: schemas.NamePath, body: schemas.PromoteIn, rt: RtDep, actor: ActorDep
) -> schemas.DeploymentOut:
    """Deploy to `to` exactly what runs in `from` (image by digest, release command), with `to`'s settings."""
    async with tx(rt) as session:
        result = await promotion.promote(
            session, ctx=rt.core, actor=actor, app_name=name, source=body.from_, target=body.to
        )
        return reads.deployment_listed(result.deployment, app=name)
