"""/api/v1/registries: registry credentials, write-only passwords (core.registries)."""

from __future__ import annotations

from core import registries
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


def _registry_out(r: registries.Listed) -> schemas.RegistryOut:
    return schemas.RegistryOut(
        host=r.host, project=r.project, username=r.username, created_by=r.created_by, updated_at=r.updated_at
    )


@router.get("/registries")
async def list_registries(
    rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None
) -> list[schemas.RegistryOut]:
    async with tx(rt) as session:
        return [
            _registry_out(r) for r in await registries.list_visible(session, actor=actor, project=project)
        ]


@router.post("/registries", status_code=201)
async def add_registry(body: schemas.RegistryIn, rt: RtDep, actor: ActorDep) -> dict[str, object]:
    async with tx(rt) as session:
        row, created = await registries.add(
            session,
            ctx=rt.core,
            actor=actor,
            host=body.host,
            username=body.username,
            password=body.password,
            project=body.project,
        )
        return {"host": row.host, "project": body.project, "username": row.username, "created": created}


@router.delete("/registries/{host}", status_code=204)
async def remove_registry(
    host: schemas.RegistryHostPath, rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None
) -> None:
    async with tx(rt) as session:
        await registries.remove(session, actor=actor, host=host, project=project)
