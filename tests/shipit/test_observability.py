"""One trace per deploy (request -> queue -> job -> apply -> rollout -> notifications) and JSON logs.

The SDK's in-memory exporter collects the spans; everything else is real: the app over HTTP, the
worker, the control plane, the project's outgoing webhook.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import observe
from shipit import logs, telemetry
from tests.conftest import LiveServer, World, serving_posts

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    # Once per process (OpenTelemetry allows one global provider); requested before the runtime is built.
    telemetry.setup(exporter=EXPORTER, simple=True)
    EXPORTER.clear()
    yield EXPORTER


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


async def test_one_trace_per_deploy_and_json_logs(
    traced: InMemorySpanExporter,
    json_log: io.StringIO,
    world: World,
    live_server: LiveServer,
    api: httpx.AsyncClient,
) -> None:
    got: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(request.headers["X-Shipit-Event"])
        return web.Response(status=204)

    async with serving_posts(handle) as url:
        r = await api.patch(f"/api/v1/projects/{world.project}", json={"webhook_url": f"{url}/hook"})
        assert r.status_code == 200, r.text
        r = await api.post(
            "/api/v1/apps",
            json={"name": "web", "project": world.project, "cluster": world.cluster, "deploy": False},
        )
        assert r.status_code == 201, r.text
        r = await api.post(
            "/api/v1/apps/web/deploys",
            json={"image": "ghcr.io/acme/web:1.0"},
            headers={"X-Request-Id": "req-trace-1"},
        )
        assert r.status_code == 202, r.text
        assert r.headers["x-request-id"] == "req-trace-1"
        deployment_id = r.json()["id"]
        for _ in range(600):
            d = (await api.get(f"/api/v1/deploys/{deployment_id}")).json()
            if d["status"] not in ("queued", "running") and "deploy.succeeded" in got:
                break
            await asyncio.sleep(0.1)
        assert d["status"] == "succeeded", d
        await asyncio.sleep(0.5)  # the notify job's span ends after its delivery

    spans = traced.get_finished_spans()
    [request] = [
        s for s in spans if s.kind.name == "SERVER" and s.attributes.get("http.route") == "/api/v1/apps/{name}/deploys"
        and s.attributes.get("http.request.method", s.attributes.get("http.method")) == "POST"
    ]  # fmt: skip
    trace_id = request.context.trace_id
    mine = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in mine}
    names = {s.name for s in mine}
    assert {
        "queue deploy",
        "job deploy",
        "deploy.apply",
        "deploy.rollout",
        "job notify",
        "notify webhook",
    } <= names

    def ancestors(s: Any) -> list[str]:
        out = []
        while s.parent is not None and s.parent.span_id in by_id:
            s = by_id[s.parent.span_id]
            out.append(s.name)
        return out

    [job] = [s for s in mine if s.name == "job deploy"]
    assert ancestors(job)[:1] == ["queue deploy"] and request.name in ancestors(job)
    for name in ("deploy.apply", "deploy.rollout"):
        [s] = [s for s in mine if s.name == name]
        assert ancestors(s)[0] == "job deploy"
    # The succeeded notification hangs under the deploy job that emitted it.
    notified = [
        s
        for s in mine
        if s.name == "notify webhook" and s.attributes.get("shipit.event") == "deploy.succeeded"
    ]
    assert len(notified) == 1 and "job deploy" in ancestors(notified[0])
    # No other deploy's spans leaked into this trace, and the worker's SQL is traced inside it.
    assert all(s.attributes.get("shipit.deploy_id") in (None, deployment_id) for s in mine)
    assert any(s.attributes.get("db.system") and "job deploy" in ancestors(s) for s in mine)

    # JSON logs: one object per line, with the request id and the deploy id where known.
    records = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    queued = [r for r in records if r["message"].startswith(f"deploy {deployment_id} app=web namespace=")]
    assert queued and "queued: revision=" in queued[0]["message"]
    assert queued[0]["request_id"] == "req-trace-1" and queued[0]["app"] == "web"
    # The deploy's own lines carry what they are about, as fields and in the message.
    assert queued[0]["deploy_id"] == deployment_id and queued[0]["namespace"]
    worker = [
        r for r in records if r.get("deploy_id") == deployment_id and "applied revision" in r["message"]
    ]
    assert worker and worker[0]["app"] == "web" and worker[0]["trace_id"] == format(trace_id, "032x")
    assert worker[0]["namespace"] == queued[0]["namespace"]
    assert worker[0]["message"].startswith(
        f"deploy {deployment_id} app=web namespace={worker[0]['namespace']}: "
    )
    assert observe.fields() == {}  # nothing leaked into the test's own context
