"""/api/v1/projects/{name}/environments: a project's ordered environments (core.environment_admin)."""

from __future__ import annotations

import dataclasses

from core import environment_admin
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/projects/{name}/environments")
async def list_environments(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep
) -> list[schemas.EnvironmentOut]:
    async with tx(rt) as session:
        views = await environment_admin.list_views(session, actor=actor, project=name)
        return [schemas.EnvironmentOut(**dataclasses.asdict(v)) for v in views]


@router.post("/projects/{name}/environments", status_code=201)
async def create_environment(
    name: schemas.NamePath, body: schemas.EnvironmentIn, rt: RtDep, actor: ActorDep
) -> schemas.EnvironmentOut:
    async with tx(rt) as session:
        view = await environment_admin.create(
            session,
            actor=actor,
            project=name,
            name=body.name,
            cluster=body.cluster,
            namespace=body.namespace,
            after=body.after,
            before=body.before,
        )
        return schemas.EnvironmentOut(**dataclasses.asdict(view))


@router.patch("/projects/{name}/environments/{env}")
async def update_environment(
    name: schemas.NamePath, env: schemas.NamePath, body: schemas.EnvironmentPatch, rt: RtDep, actor: ActorDep
) -> schemas.EnvironmentOut:
    async with tx(rt) as session:
        view = await environment_admin.update(
            session, actor=actor, project=name, name=env, cluster=body.cluster, namespace=body.namespace
        )
        return schemas.EnvironmentOut(**dataclasses.asdict(view))


@router.delete("/projects/{name}/environments/{env}", status_code=204)
async def delete_environment(
    name: schemas.NamePath, env: schemas.NamePath, rt: RtDep, actor: ActorDep
) -> None:
    async with tx(rt) as session:
        await environment_admin.delete(session, actor=actor, project=name, name=env)
