"""/api/v1/apps: create, read, change and delete apps, and their lock and pause flags (core.apps)."""

from __future__ import annotations

import logging
from typing import Literal

from core import apps, deploys, logctx, status
from core.apps import AppChanges
from core.errors import NotFound, ShipitError
from shipit import schemas
from shipit.api import reads
from shipit.api.base import ActorDep, RtDep, new_router, tx

log = logging.getLogger(__name__)
router = new_router()


def _changes(body: schemas.AppFields) -> AppChanges:
    return AppChanges(
        **body.model_dump(
            exclude_unset=True, exclude={"name", "project", "cluster", "namespace", "deploy", "environment"}
        )
    )


@router.get("/apps")
async def list_apps(rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None) -> list[schemas.AppOut]:
    async with tx(rt) as session:
        return [
            await reads.app_out(session, a)
            for a in await apps.list_visible(session, actor=actor, project=project)
        ]


@router.post("/apps", status_code=201, response_model=schemas.AppCreated)
async def create_app(body: schemas.AppIn, rt: RtDep, actor: ActorDep) -> dict[str, object]:
    async with tx(rt) as session:
        app = await apps.create(
            session,
            actor=actor,
            project=body.project,
            cluster=body.cluster or "",
            name=body.name,
            namespace=body.namespace,
            changes=_changes(body),
            env=body.environment,
        )
        deployment = None
        if body.deploy and app.image:
            deployment = (
                await deploys.request(
                    session,
                    ctx=rt.core,
                    actor=actor,
                    app_name=app.name,
                    trigger=actor.channel,
                    env=await apps.env_name(session, app=app),
                )
            ).deployment
        return {
            "app": await reads.app_out(session, app),
            "deployment": reads.deployment_listed(deployment, app=app.name) if deployment else None,
        }


@router.get("/apps/{name}")
async def show_app(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.AppOut:
    async with tx(rt) as session:
        return await reads.app_out(session, await apps.get(session, actor=actor, name=name, env=env))


@router.patch("/apps/{name}")
async def update_app(
    name: schemas.NamePath, body: schemas.AppFields, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.AppOut:
    async with tx(rt) as session:
        return await reads.app_out(
            session,
            await apps.update(session, ctx=rt.core, actor=actor, name=name, changes=_changes(body), env=env),
        )


@router.delete("/apps/{name}", response_model=schemas.AppDeleted)
async def delete_app(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> dict[str, object]:
    async with tx(rt) as session:
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)
        await apps.delete(session, actor=actor, name=name, env=env)
    # The app is gone from the database now; an unreachable cluster must not make that look like a
    # failure, so say what was left behind instead of answering with an error.
    try:
        kept = await status.remove_workload(ctx=rt.core, target=target)
    except ShipitError as e:
        logctx.deploy_logger(log, project=target.project, app=name, namespace=target.namespace).warning(
            "app deleted, but its workload stays: %s", e
        )
        return {
            "deleted": name,
            "workload_removed": False,
            "warning": f"{name} is deleted, but its objects in namespace {target.namespace} could not be "
            f"removed from the cluster ({e}); they carry the label app.kubernetes.io/name={name}",
        }
    if kept:
        return {
            "deleted": name,
            "workload_removed": True,
            "warning": f"{name} is deleted; objects shipit did not create for it were left alone: "
            + "; ".join(kept),
        }
    return {"deleted": name, "workload_removed": True, "warning": None}


# The app_flag convertor (shipit.api.base) matches these four words only, so this route cannot swallow
# /deploys, /rollback or /scale, whichever router Starlette tries first.
@router.post("/apps/{name}/{flag:app_flag}", status_code=200)
async def set_flag(
    name: schemas.NamePath,
    flag: Literal["lock", "unlock", "pause", "resume"],
    rt: RtDep,
    actor: ActorDep,
    body: schemas.ReasonIn | None = None,
    env: schemas.EnvQuery = None,
) -> schemas.AppOut:
    flags = {
        "lock": ("lock", True),
        "unlock": ("lock", False),
        "pause": ("pause", True),
        "resume": ("pause", False),
    }
    if flag not in flags:
        raise NotFound(f"unknown action {flag!r}: use lock, unlock, pause or resume")
    which, on = flags[flag]
    async with tx(rt) as session:
        app = await apps.set_flag(
            session, actor=actor, name=name, flag=which, on=on, reason=body.reason if body else None, env=env
        )
        return await reads.app_out(session, app)
