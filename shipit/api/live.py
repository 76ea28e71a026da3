"""/api/v1/apps/{name}/status, /usage and /logs: what the cluster says now (core.status, core.usage)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse

from core import status, usage
from shipit import schemas
from shipit.api.base import CLUSTER_ERRORS, METRICS_ERRORS, ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/apps/{name}/status", responses=CLUSTER_ERRORS)
async def app_status(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, live: bool = True, env: schemas.EnvQuery = None
) -> dict[str, object]:
    async with tx(rt) as session:
        observed = await status.read(session, actor=actor, app_name=name, env=env)
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)
    if live:
        observed = await status.with_live(ctx=rt.core, status=observed, target=target)
    return _jsonable(observed)


@router.get(
    "/apps/{name}/usage",
    responses=METRICS_ERRORS,
)
async def app_usage(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> dict[str, object]:
    """CPU and memory the app's pods use now (the cluster's Metrics API), against their requests and
    limits and, with autoscaling on, the HPA's CPU target."""
    async with tx(rt) as session:
        plan = await usage.plan(session, ctx=rt.core, actor=actor, app_name=name, env=env)
    return _jsonable(await usage.read(ctx=rt.core, plan=plan))


def _jsonable(value: object) -> dict[str, object]:
    out: dict[str, object] = json.loads(json.dumps(jsonable_encoder(dataclasses.asdict(value))))  # type: ignore[call-overload]
    return out


@router.get(
    "/apps/{name}/logs",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The pods' log lines: text, each prefixed with its pod when there are several; "
            'with format=json, one JSON object a line: {"pod", "container", "line"}.',
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **CLUSTER_ERRORS,
    },
)
async def app_logs(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    tail: int = Query(100, ge=1, le=5000),
    follow: bool = False,
    env: schemas.EnvQuery = None,
    fmt: Literal["text", "json"] = Query("text", alias="format"),
) -> StreamingResponse:
    async with tx(rt) as session:
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)

    stream = status.log_lines(ctx=rt.core, target=target, tail_lines=tail, follow=follow)
    return await log_response(stream, fmt=fmt)


async def log_response(
    stream: AsyncIterator[status.LogLine], *, fmt: Literal["text", "json"] = "text"
) -> StreamingResponse:
    """Pod log lines streamed as text (or ndjson); errors before the first line answer as errors."""
    # Once a streamed 200 has started, an error can only cut the connection.  So wait (briefly, since
    # a followed quiet pod may say nothing for long) for the first line: "no pods" and cluster errors
    # raised before it become a JSON error with its status code.
    first = asyncio.ensure_future(_first_line(stream))
    await asyncio.wait({first}, timeout=5)
    if first.done():
        first.result()

    def encoded(line: status.LogLine) -> bytes:
        if fmt == "json":  # a script tells the pods apart by `pod`, not by parsing a prefix
            return (
                json.dumps({"pod": line.pod, "container": line.container, "line": line.line}) + "\n"
            ).encode()
        return (line.text.rstrip("\n") + "\n").encode()

    async def lines() -> AsyncIterator[bytes]:
        line = await first
        if line is None:
            return
        yield encoded(line)
        async for line in stream:
            yield encoded(line)

    media_type = "application/x-ndjson" if fmt == "json" else "text/plain; charset=utf-8"
    return StreamingResponse(lines(), media_type=media_type)


async def _first_line(stream: AsyncIterator[status.LogLine]) -> status.LogLine | None:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None
