"""Usage history against the real control plane: the sampling pass the runtime runs (one Metrics API
list per namespace, metrics-server scraping kwok's simulated usage) stores each deployed app's totals
once per slot, however many passes run; a cluster without a Metrics API is skipped, said once; and the
usage answer over HTTP and in the CLI carries the history and its hint."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from core import usage_history
from shipit import cli
from shipit.settings import Settings
from storage import models
from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import add_cluster, bare_cluster, wait_deploy
from tests.shipit.test_usage import CPU_PER_POD, MEMORY_PER_POD, METRICS, MI
from tests.testenv import controlplane

__all__ = ["bare_cluster"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The runtime's own passes off: these tests run the pass themselves, at slots they choose.
    return settings.model_copy(update={"usage_sample_seconds": 0})


async def _create(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await api.post("/api/v1/apps", json=body)
    assert r.status_code == 201, r.text
    assert (await wait_deploy(api, r.json()["deployment"]["id"]))["status"] == "succeeded"


async def _measured(api: httpx.AsyncClient, app: str, pods: int) -> None:
    async def usage() -> dict[str, Any]:
        got = await api.get(f"/api/v1/apps/{app}/usage")
        assert got.status_code == 200, got.text
        return dict(got.json())

    await eventually(usage, lambda u: len(u["pods"]) == pods, timeout=METRICS, what=f"metrics of {app}")


async def _rows(live_server: LiveServer) -> list[tuple[str, dt.datetime, int, float, int]]:
    async with live_server.rt.sessionmaker() as session:
        s, a = models.UsageSample, models.App
        found = await session.execute(
            select(a.name, s.sampled_at, s.pods, s.cpu_millicores, s.memory_bytes)
            .join(a, a.id == s.app_id)
            .order_by(s.sampled_at, a.name)
        )
        return [tuple(r) for r in found]  # type: ignore[misc]


@pytest.mark.both_databases  # the INSERT ... ON CONFLICT DO NOTHING of each dialect
async def test_a_pass_stores_each_deployed_apps_totals_once_per_slot(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, admin_token: str
) -> None:
    rt = live_server.rt
    common = {"project": world.project, "cluster": world.cluster, "image": "ghcr.io/acme/web:1.0"}
    # 20m of 500m requested per pod (under half: a hint); 32Mi of 64Mi (exactly half: none).
    await _create(
        api, {"name": "web", "replicas": 2, "cpu_request": "500m", "memory_request": "64Mi", **common}
    )
    await _create(api, {"name": "worker", "replicas": 1, **common})
    r = await api.post(
        "/api/v1/apps", json={"name": "idle", "project": world.project, "cluster": world.cluster}
    )
    assert r.status_code == 201, r.text  # never deployed (no image): no sample, not even a read for it
    await _measured(api, "web", 2)
    await _measured(api, "worker", 1)

    # In the past, at slots of their own (the runtime's passes are off here anyway).
    slot = usage_history.slot_of(models.utcnow() - dt.timedelta(minutes=10), every=60)
    now = slot + dt.timedelta(seconds=10)
    sampled = await usage_history.sample(rt.core, every=60, now=now)
    # Both apps share the namespace: one Metrics API list for the two.
    assert (sampled.slot, sampled.stored, sampled.namespaces, sampled.skipped_clusters) == (slot, 2, 1, [])
    rows = await _rows(live_server)
    assert [(name, at, pods, memory) for name, at, pods, _, memory in rows] == [
        ("web", slot, 2, 2 * MEMORY_PER_POD),
        ("worker", slot, 1, MEMORY_PER_POD),
    ]
    # CPU is a rate over two scrapes, off by their latency (well under 1 %).
    assert rows[0][3] == pytest.approx(2 * CPU_PER_POD, rel=0.01)
    assert rows[1][3] == pytest.approx(CPU_PER_POD, rel=0.01)

    # A second pass in the same slot (a replica's, a restart's) stores nothing and reads nothing.
    again = await usage_history.sample(rt.core, every=60, now=now + dt.timedelta(seconds=30))
    assert (again.stored, again.namespaces) == (0, 0)
    # Two passes of one slot at once (replicas racing past the "already sampled" check): one row each.
    racing = now - dt.timedelta(minutes=20)
    both = await asyncio.gather(*(usage_history.sample(rt.core, every=60, now=racing) for _ in range(2)))
    assert sum(s.stored for s in both) == 2
    assert len(await _rows(live_server)) == 4

    # Their hours rolled up, as a maintenance pass does once they are over: the 30d window.
    async with rt.sessionmaker.begin() as session:
        later = models.utcnow() + dt.timedelta(hours=2)
        assert await usage_history.roll_up(session, lookback=None, now=later) >= 2  # per app and hour

    # The usage answer carries the history: two samples in each window, and the CPU hint.
    got = (await api.get("/api/v1/apps/web/usage")).json()
    windows = got["history"]["windows"]
    assert [(w["window"], w["samples"], w["max_pods"], w["memory_peak_bytes"]) for w in windows] == [
        ("1h", 2, 2, 64 * MI),
        ("24h", 2, 2, 64 * MI),
        ("7d", 2, 2, 64 * MI),
        ("30d", 2, 2, 64 * MI),
    ]
    assert windows[3]["cpu_average_millicores"] == pytest.approx(
        windows[2]["cpu_average_millicores"], abs=0.001
    )
    assert windows[0]["cpu_peak_millicores"] == pytest.approx(2 * CPU_PER_POD, rel=0.01)
    [hint] = got["history"]["hints"]
    assert re.fullmatch(
        r"CPU: requests 500m per pod, 24h peak (20|19)m per pod \((40|39)m at most in total\): "
        r"requests could be lowered",
        hint,
    ), hint

    # The CLI shows it under the table; --json carries it.
    runner = CliRunner()
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": admin_token}
    out = await asyncio.to_thread(runner.invoke, cli.app, ["usage", "web"], env=env)
    assert out.exit_code == 0, out.stdout + out.stderr
    assert re.search(r"last 1h\s+cpu avg (40|39\.\d|40\.\d)m peak .*, memory avg 64\.0Mi peak 64\.0Mi "
                     r"\(2 samples, up to 2 pods\)", out.stdout), out.stdout  # fmt: skip
    assert re.search(r"last 30d\s+cpu avg .*, memory avg 64\.0Mi peak 64\.0Mi \(2 samples, up to 2 pods\)",
                     out.stdout), out.stdout  # fmt: skip
    assert re.search(r"hint\s+CPU: requests 500m per pod", out.stdout), out.stdout
    out = await asyncio.to_thread(runner.invoke, cli.app, ["usage", "web", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.stdout)["history"]["hints"] == [hint]


async def test_a_cluster_without_a_metrics_api_is_skipped_and_said_once(
    world: World,
    live_server: LiveServer,
    api: httpx.AsyncClient,
    bare_cluster: controlplane.ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = live_server.rt
    await add_cluster(rt, bare_cluster, project="rival")
    image = "ghcr.io/acme/web:1.0"
    await _create(api, {"name": "web", "project": world.project, "cluster": world.cluster, "image": image})
    await _create(api, {"name": "api", "project": "rival", "cluster": "bare", "image": image})
    await _measured(api, "web", 1)

    now = models.utcnow() - dt.timedelta(minutes=10)
    with caplog.at_level(logging.WARNING, logger="core.usage_history"):
        first = await usage_history.sample(rt.core, every=60, now=now)
        second = await usage_history.sample(rt.core, every=60, now=now + dt.timedelta(minutes=1))
    # The cluster with a Metrics API is sampled both times; the other is skipped without failing.
    assert (first.stored, first.skipped_clusters) == (1, ["bare"])
    assert (second.stored, second.skipped_clusters) == (1, ["bare"])
    assert [name for name, *_ in await _rows(live_server)] == ["web", "web"]
    said = [r.getMessage() for r in caplog.records if r.name == "core.usage_history"]
    assert len(said) == 1, said
    assert "cluster bare skipped" in said[0] and "this cluster has no Metrics API" in said[0]
