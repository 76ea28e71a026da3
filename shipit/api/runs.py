"""/api/v1/apps/{name}/runs: one-off commands in the app's image, env and secrets (core.runs)."""

from __future__ import annotations

import dataclasses

from fastapi import Query
from fastapi.responses import StreamingResponse

from core import runs
from shipit import schemas
from shipit.api.base import CLUSTER_ERRORS, ActorDep, RtDep, new_router
from shipit.api.live import log_response

router = new_router()


def _out(run: runs.RunView) -> schemas.RunOut:
    return schemas.RunOut.model_validate(dataclasses.asdict(run))


@router.post("/apps/{name}/runs", status_code=201, responses=CLUSTER_ERRORS)
async def start_run(
    name: schemas.NamePath, body: schemas.RunIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.RunOut:
    """Start `command` as a Job from the app's current revision (developer; admin in a protected env)."""
    run = await runs.start(
        ctx=rt.core,
        actor=actor,
        app_name=name,
        env=env,
        command=body.command,
        timeout_seconds=body.timeout_seconds,
    )
    return _out(run)


@router.get("/apps/{name}/runs", responses=CLUSTER_ERRORS)
async def list_runs(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
    limit: int = Query(runs.LIST_LIMIT, ge=1, le=runs.MAX_LIST_LIMIT),
) -> list[schemas.RunOut]:
    """The app's run history, newest first, with the live state of runs whose Jobs still exist."""
    found = await runs.list_runs(ctx=rt.core, actor=actor, app_name=name, env=env, limit=limit)
    return [_out(r) for r in found]


@router.get("/apps/{name}/runs/{run}", responses=CLUSTER_ERRORS)
async def get_run(
    name: schemas.NamePath, run: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.RunOut:
    return _out(await runs.status_of(ctx=rt.core, actor=actor, app_name=name, env=env, run=run))


@router.delete("/apps/{name}/runs/{run}", responses=CLUSTER_ERRORS)
async def cancel_run(
    name: schemas.NamePath, run: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.RunOut:
    """Delete the run's Job (its pod and Secret go with it)."""
    return _out(await runs.cancel(ctx=rt.core, actor=actor, app_name=name, env=env, run=run))


@router.get(
    "/apps/{name}/runs/{run}/logs",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The run's log lines, as text.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **CLUSTER_ERRORS,
    },
)
async def run_logs(
    name: schemas.NamePath,
    run: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    tail: int = Query(1000, ge=1, le=5000),
    follow: bool = False,
    env: schemas.EnvQuery = None,
) -> StreamingResponse:
    stream = runs.log_lines(
        ctx=rt.core, actor=actor, app_name=name, env=env, run=run, follow=follow, tail_lines=tail
    )
    return await log_response(stream)
