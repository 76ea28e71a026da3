"""/api/v1/apps/{name}/policy: the image policy that deploys new registry tags (core.image_policies)."""

from __future__ import annotations

from core import image_policies
from core.errors import InvalidInput, NotFound
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


def _env(env: str | None, environment: str | None) -> str | None:
    # `?env=` as on every /apps/{name}/... route (and as the several-environments error asks);
    # `?environment=`, which these routes took first, still works.
    if env and environment and env != environment:
        raise InvalidInput(f"env ({env}) and environment ({environment}) differ: give env only", field="env")
    return env or environment


def policy_out(p: image_policies.Policy) -> schemas.ImagePolicyOut:
    return schemas.ImagePolicyOut(
        app=p.app,
        environment=p.environment,
        repository=p.repository,
        kind=p.kind,
        pattern=p.pattern,
        sort=p.sort,
        poll_seconds=p.poll_interval_seconds,
        next_poll_at=p.next_poll_at,
        last_polled_at=p.last_polled_at,
        failures=p.failures,
        last_error=p.last_error,
        last_tag=p.last_tag,
        promote_to=p.promote_to,
        created_by=p.created_by,
        updated_at=p.updated_at,
    )


@router.get("/apps/{name}/policy")
async def get_policy(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
    environment: schemas.EnvironmentQuery = None,
) -> schemas.ImagePolicyOut:
    async with tx(rt) as session:
        p = await image_policies.show(session, actor=actor, app_name=name, environment=_env(env, environment))
    if p is None:
        raise NotFound(f"{name} has no image policy")
    return policy_out(p)


@router.put("/apps/{name}/policy")
async def put_policy(
    name: schemas.NamePath,
    body: schemas.ImagePolicyIn,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
    environment: schemas.EnvironmentQuery = None,
) -> schemas.ImagePolicyOut:
    environment = _env(env, environment)
    given = [(k, p) for k, p in (("semver", body.semver), ("glob", body.glob), ("regex", body.regex)) if p]
    if len(given) != 1:
        raise InvalidInput("give exactly one of semver, glob and regex", field="semver")
    kind, pattern = given[0]
    async with tx(rt) as session:
        p = await image_policies.set_policy(
            session,
            actor=actor,
            app_name=name,
            environment=environment,
            kind=kind,
            pattern=pattern,
            sort=body.sort,
            repository=body.repository,
            poll_interval_seconds=body.poll_seconds,
            promote_to=body.promote_to,
        )
    return policy_out(p)


@router.delete("/apps/{name}/policy", status_code=204)
async def delete_policy(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
    environment: schemas.EnvironmentQuery = None,
) -> None:
    environment = _env(env, environment)
    async with tx(rt) as session:
        if not await image_policies.clear(session, actor=actor, app_name=name, environment=environment):
            raise NotFound(f"{name} has no image policy")
