"""/api/v1/apps/{name}/secrets: write-only app secrets; a change redeploys unless told not to."""

from __future__ import annotations

from core import deploys, secrets
from shipit import schemas
from shipit.api import reads
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/apps/{name}/secrets")
async def list_secrets(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.SecretKeyOut]:
    async with tx(rt) as session:
        rows = await secrets.list_keys(session, actor=actor, app_name=name, env=env)
        return [schemas.SecretKeyOut(key=r.key, updated_at=r.updated_at) for r in rows]


@router.put("/apps/{name}/secrets", response_model=schemas.SecretsChanged)
async def set_secrets(
    name: schemas.NamePath,
    body: schemas.SecretsIn,
    rt: RtDep,
    actor: ActorDep,
    deploy: bool = True,
    env: schemas.EnvQuery = None,
) -> dict[str, object]:
    async with tx(rt) as session:
        change = await deploys.set_secrets(
            session, ctx=rt.core, actor=actor, app_name=name, values=body.values, redeploy=deploy, env=env
        )
        return _secrets_changed(change)


@router.delete("/apps/{name}/secrets/{key}", response_model=schemas.SecretsChanged)
async def delete_secret(
    name: schemas.NamePath,
    key: schemas.SecretKeyPath,
    rt: RtDep,
    actor: ActorDep,
    deploy: bool = True,
    env: schemas.EnvQuery = None,
) -> dict[str, object]:
    async with tx(rt) as session:
        change = await deploys.unset_secrets(
            session, ctx=rt.core, actor=actor, app_name=name, keys=[key], redeploy=deploy, env=env
        )
        return _secrets_changed(change)


def _secrets_changed(change: deploys.SecretChange) -> dict[str, object]:
    r = change.redeploy
    d = reads.deployment_listed(r.deployment, app=change.app.name) if r else None
    return {"keys": change.keys, "deployment": d}
