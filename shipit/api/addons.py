"""/api/v1/apps/{name}/addons: managed databases (PostgreSQL, Redis) next to an app.

Create and destroy answer 202 at once: the work is a job (core.addons).  The list asks the cluster
for each add-on's StatefulSet after the transaction, so no transaction waits on the cluster.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query

from core import addons
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()

KindPath = Annotated[Literal["postgres", "redis"], Path(description="postgres or redis")]


def _out(v: addons.AddonView) -> schemas.AddonOut:
    return schemas.AddonOut(
        app=v.app,
        kind=v.kind,
        plan=v.plan,
        state=v.state,
        detail=v.detail,
        name=v.name,
        namespace=v.namespace,
        secret_key=v.secret_key,
        error=v.error,
    )


@router.post("/apps/{name}/addons", status_code=202)
async def create_addon(
    name: schemas.NamePath, body: schemas.AddonIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.AddonOut:
    async with tx(rt) as session:
        addon = await addons.create(
            session, ctx=rt.core, actor=actor, app_name=name, kind=body.kind, plan=body.plan, env=env
        )
        return _out(addons.view(addon, app=name))


@router.get("/apps/{name}/addons")
async def list_addons(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.AddonOut]:
    async with tx(rt) as session:
        where, rows = await addons.rows_for(session, ctx=rt.core, actor=actor, app_name=name, env=env)
    return [_out(v) for v in await addons.observed(ctx=rt.core, where=where, rows=rows)]


@router.delete("/apps/{name}/addons/{kind}", status_code=202)
async def destroy_addon(
    name: schemas.NamePath,
    kind: KindPath,
    rt: RtDep,
    actor: ActorDep,
    delete_data: Annotated[bool, Query(description="Also delete the data's PersistentVolumeClaim.")] = False,
    env: schemas.EnvQuery = None,
) -> schemas.AddonOut:
    async with tx(rt) as session:
        addon = await addons.destroy(
            session, ctx=rt.core, actor=actor, app_name=name, kind=kind, delete_data=delete_data, env=env
        )
        return _out(addons.view(addon, app=name))
