"""`usage`: what an app's pods use, from the real control plane's Metrics API (metrics-server scraping
kwok's simulated usage), over the real HTTP API and through the CLI; and what a cluster without a
Metrics API answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from core import projects
from shipit import cli
from tests.conftest import ADMIN, LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import add_cluster, bare_cluster, deployed_app
from tests.shipit.conftest import closed_port, make_token
from tests.testenv import controlplane

# A new pod has PodMetrics after metrics-server's second scrape of it (every 10 s), so up to ~20 s.
__all__ = ["bare_cluster"]  # the fixture, for pytest

METRICS = 90.0
MI = 2**20

CPU_PER_POD = 20.0  # millicores: controlplane.POD_CPU_USAGE, one container per pod
MEMORY_PER_POD = 32 * MI  # controlplane.POD_MEMORY_USAGE


def test_the_simulated_usage_is_what_these_tests_expect() -> None:
    assert (controlplane.POD_CPU_USAGE, controlplane.POD_MEMORY_USAGE) == ("20m", "32Mi")


async def test_usage_over_the_api_and_the_cli_is_the_simulated_usage(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, admin_token: str
) -> None:
    await deployed_app(
        api, world, cpu_request="50m", cpu_limit="200m", memory_request="64Mi", memory_limit="128Mi",
        # 40 % of the CPU request is used, under the target: the HPA keeps the minimum, 2.
        min_replicas=2, max_replicas=4, cpu_target=80,
    )  # fmt: skip

    async def usage() -> dict[str, Any]:
        got = await api.get("/api/v1/apps/web/usage")
        assert got.status_code == 200, got.text
        return dict(got.json())

    u = await eventually(usage, lambda u: len(u["pods"]) == 2, timeout=METRICS, what="metrics of both pods")
    assert (u["app"], u["project"], u["environment"], u["namespace"]) == (
        "web",
        "acme",
        "production",
        world.namespace,
    )
    assert u["revision"] == 1
    assert u["per_pod"] == {
        "cpu_request": "50m",
        "cpu_limit": "200m",
        "memory_request": "64Mi",
        "memory_limit": "128Mi",
        "cpu_request_millicores": 50.0,
        "cpu_limit_millicores": 200.0,
        "memory_request_bytes": 64 * MI,
        "memory_limit_bytes": 128 * MI,
    }
    assert u["autoscaling"] == {
        "min_replicas": 2,
        "max_replicas": 4,
        "cpu_target_percent": 80,
        "scale_down_window_seconds": None,  # Kubernetes' default
    }
    for pod in u["pods"]:
        assert pod["pod"].startswith("web-")
        f = pod["usage"]
        # Memory is exact; CPU is a rate over two scrapes, off by the scrapes' latency (well under 1 %).
        assert f["memory_bytes"] == MEMORY_PER_POD
        assert f["memory_of_requests_percent"] == 50.0 and f["memory_of_limits_percent"] == 25.0
        assert f["cpu_millicores"] == pytest.approx(CPU_PER_POD, rel=0.01)
        assert f["cpu_of_requests_percent"] == pytest.approx(40.0, abs=0.5)
        assert f["cpu_of_limits_percent"] == pytest.approx(10.0, abs=0.2)
        assert pod["window"] and pod["timestamp"]
    total = u["total"]
    assert total["memory_bytes"] == 2 * MEMORY_PER_POD
    assert total["memory_of_requests_percent"] == 50.0
    assert total["cpu_millicores"] == pytest.approx(2 * CPU_PER_POD, rel=0.01)
    assert total["cpu_of_requests_percent"] == pytest.approx(40.0, abs=0.5)

    # The same through the CLI, as a table and as JSON.
    runner = CliRunner()
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": admin_token}
    out = await asyncio.to_thread(runner.invoke, cli.app, ["usage", "web"], env=env)
    assert out.exit_code == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["POD", "CPU"]
    assert [line.split()[0] for line in lines[1:3]] == sorted(p["pod"] for p in u["pods"])
    assert all("32.0Mi (50%/25%)" in line for line in lines[1:3]), out.stdout
    assert "cpu 50m/200m, memory 64Mi/128Mi (request/limit, revision 1)" in out.stdout
    assert "autoscaling  2-4 pods at 80% of the CPU request; now 4" in out.stdout  # 40 % or so
    out = await asyncio.to_thread(runner.invoke, cli.app, ["usage", "web", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.stdout)["per_pod"]["memory_request_bytes"] == 64 * MI


async def test_a_viewer_reads_usage_and_an_outsider_finds_no_app(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    r = await api.post(
        "/api/v1/apps",
        json={"name": "web", "project": world.project, "cluster": world.cluster, "min_replicas": 1,
              "max_replicas": 3, "cpu_target": 50, "scale_down_window": 45},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    r = await api.put(f"/api/v1/projects/{world.project}/members/user:vera", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    rt = live_server.rt
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="rival")
    r = await api.put("/api/v1/projects/rival/members/user:rita", json={"role": "owner"})
    assert r.status_code == 200, r.text

    async def as_(subject: str) -> httpx.AsyncClient:
        token = await make_token(rt, subject=subject, admin=False)
        return httpx.AsyncClient(
            base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    async with await as_("user:vera") as vera, await as_("user:rita") as rita:
        # Nothing deployed yet: no pods, and the app's settings stand for the requests.
        seen = await vera.get("/api/v1/apps/web/usage")
        assert seen.status_code == 200, seen.text
        assert seen.json()["pods"] == [] and seen.json()["revision"] is None
        assert seen.json()["per_pod"]["cpu_request"] == "100m"
        assert seen.json()["autoscaling"] == {
            "min_replicas": 1,
            "max_replicas": 3,
            "cpu_target_percent": 50,
            "scale_down_window_seconds": 45,
        }
        vera_token = vera.headers["Authorization"].removeprefix("Bearer ")
        env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": vera_token}
        out = await asyncio.to_thread(CliRunner().invoke, cli.app, ["usage", "web"], env=env)
        assert out.exit_code == 0, out.stdout + out.stderr
        assert "1-3 pods at 50% of the CPU request; now -; scales down after 45s" in out.stdout, out.stdout
        hidden = await rita.get("/api/v1/apps/web/usage")
        missing = await rita.get("/api/v1/apps/nop/usage")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.content == missing.content.replace(b"nop", b"web")


async def test_a_cluster_without_a_metrics_api_is_said_so(
    live_server: LiveServer, api: httpx.AsyncClient, admin_token: str, bare_cluster: controlplane.ControlPlane
) -> None:
    await add_cluster(live_server.rt, bare_cluster, project="acme")
    r = await api.post("/api/v1/apps", json={"name": "web", "project": "acme", "cluster": "bare"})
    assert r.status_code == 201, r.text

    r = await api.get("/api/v1/apps/web/usage")
    assert r.status_code == 501, r.text
    error = r.json()["error"]
    assert error["type"] == "NoMetricsApi"
    assert "this cluster has no Metrics API (metrics.k8s.io, served by metrics-server)" in error["message"]

    # The CLI says it in its one error line.
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": admin_token}
    out = await asyncio.to_thread(CliRunner().invoke, cli.app, ["usage", "web"], env=env)
    assert out.exit_code == 1 and out.stdout == ""
    assert out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1, out.stderr
    assert "this cluster has no Metrics API" in out.stderr

    # A Metrics API registered but served by nothing (metrics-server down): 503 from the cluster, said so.
    assert await asyncio.to_thread(bare_cluster.register_metrics_api, closed_port())

    async def answer() -> httpx.Response:
        return await api.get("/api/v1/apps/web/usage")

    r = await eventually(answer, lambda r: r.status_code != 200, timeout=30, what="an answer about the API")
    assert r.status_code == 501, r.text
    assert "this cluster has an unavailable Metrics API" in r.json()["error"]["message"]
