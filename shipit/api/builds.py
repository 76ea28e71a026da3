"""/api/v1/apps/{name}/builds: the app's builds from source (core.builds), and one build's log."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from core import builds
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/apps/{name}/builds")
async def list_builds(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[schemas.BuildOut]:
    async with tx(rt) as session:
        rows = await builds.list_for(session, actor=actor, app_name=name, env=env, limit=limit)
        return [schemas.BuildOut.of(b, app=name) for b in rows]


@router.post("/apps/{name}/builds/{build_id}/retry", status_code=202)
async def retry_build(
    name: schemas.NamePath, build_id: schemas.IdPath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.BuildOut:
    async with tx(rt) as session:
        build = await builds.retry(
            session, ctx=rt.core, actor=actor, app_name=name, build_id=build_id, env=env
        )
        return schemas.BuildOut.of(build, app=name)


@router.get("/apps/{name}/builds/{build_id}")
async def get_build(
    name: schemas.NamePath, build_id: schemas.IdPath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.BuildOut:
    async with tx(rt) as session:
        build = await builds.get_for(session, actor=actor, app_name=name, build_id=build_id, env=env)
        return schemas.BuildOut.of(build, app=name, with_log=True)
