"""Autoscaling on real metrics: the real HPA controller scales a deployed app on kwok's emulated CPU use
(metrics-server scraping it), and shipit's own deploys, rollbacks and scale changes never fight it.

An app's pods "use" controlplane.POD_CPU_USAGE each unless the pod carries kwok's usage annotation,
which kwok reads again at every scrape: annotating a running pod is how a test puts load on the app.
Scale-down is tested with the app's scale_down_window at 0: by default the HPA waits out a 5-minute
downscale stabilization window first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from typer.testing import CliRunner

from core.kube import render
from shipit import cli
from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.conftest import make_token

# Generous deadlines (a loaded 2-core machine): a rollout, and the HPA seeing load (a new pod has
# metrics after metrics-server's second scrape, every 10 s; the controller syncs every 2 s).
ROLLOUT = 180.0
SCALING = 240.0
USAGE_CPU = "kwok.x-k8s.io/usage-cpu"

pytestmark = pytest.mark.timeout(900)
logger = logging.getLogger(__name__)


@pytest.fixture
async def api(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """The live server over HTTP, as a global admin."""
    token = await make_token(live_server.rt)
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        yield c


async def _wait_deploy(api: httpx.AsyncClient, deployment_id: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        return dict((await api.get(f"/api/v1/deploys/{deployment_id}")).json())

    done = await eventually(
        probe, lambda d: d["status"] not in ("queued", "running"), timeout=ROLLOUT, what="the deploy"
    )
    return dict(done)


async def _deployment(kube_api: k8s.ApiClient, namespace: str, name: str) -> Any:
    return await k8s.AppsV1Api(kube_api).read_namespaced_deployment(name, namespace)


async def _hpa(kube_api: k8s.ApiClient, namespace: str, name: str) -> Any:
    try:
        return await k8s.AutoscalingV2Api(kube_api).read_namespaced_horizontal_pod_autoscaler(name, namespace)
    except k8s.ApiException as e:
        if e.status == 404:
            return None
        raise


async def _load(kube_api: k8s.ApiClient, namespace: str, app: str, *, cpu: str) -> list[str]:
    """Every running pod of the app now uses `cpu` (kwok's usage annotation); their names."""
    core = k8s.CoreV1Api(kube_api)
    pods = await core.list_namespaced_pod(namespace, label_selector=f"{render.LABEL_NAME}={app}")
    names = [p.metadata.name for p in pods.items if p.metadata.deletion_timestamp is None]
    for name in names:
        await core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {USAGE_CPU: cpu}}})
    return names


async def test_the_hpa_scales_on_load_and_deploys_rollbacks_and_scale_changes_keep_its_count(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    ns = world.namespace
    await _create_autoscaled(api, world)
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.replicas == 1

    # Load: the one pod uses 200m of its 100m request, 200 % against a 50 % target: up to the max, 3.
    assert len(await _load(kube_api, ns, "web", cpu="200m")) == 1

    async def deployment() -> Any:
        return await _deployment(kube_api, ns, "web")

    await eventually(deployment, lambda d: d.spec.replicas == 3, timeout=SCALING, what="the HPA scaling to 3")
    await eventually(
        deployment,
        lambda d: (d.status.available_replicas or 0) == 3,
        timeout=ROLLOUT,
        what="3 available pods",
    )

    async def hpa() -> Any:
        return await _hpa(kube_api, ns, "web")

    # The HPA's status catches up at its next sync.
    await eventually(
        hpa,
        lambda h: (h.status.current_replicas, h.status.desired_replicas) == (3, 3),
        timeout=SCALING,
        what="the HPA's status at 3",
    )

    # The status and usage APIs see the 3 pods.
    async def status() -> dict[str, Any]:
        got = await api.get("/api/v1/apps/web/status")
        assert got.status_code == 200, got.text
        return dict(got.json())

    def hpa_settled(s: dict[str, Any]) -> bool:
        scaler = s["live"]["autoscaler"] or {}
        cpu = scaler.get("cpu_current_percent")
        # The HPA's own average once it has all three pods' metrics: (200 + 20 + 20) / 3 = 80 % of the
        # requests, give or take the rate (before that, the loaded pod's 200 % alone).
        return (
            s["live"]["ready"] == 3
            and scaler.get("current_replicas") == 3
            and cpu is not None
            and 70 < cpu < 90
        )

    s = await eventually(status, hpa_settled, timeout=SCALING, what="3 ready pods in the HPA's status")
    assert s["live"]["desired"] == 3
    scaler = s["live"]["autoscaler"]
    assert {
        k: scaler[k] for k in ("min_replicas", "max_replicas", "cpu_target_percent", "desired_replicas")
    } == {
        "min_replicas": 1,
        "max_replicas": 3,
        "cpu_target_percent": 50,
        "desired_replicas": 3,
    }
    assert scaler["last_scale_time"]
    # The CLI's status says the same in one line.
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": await make_token(live_server.rt)}
    out = await asyncio.to_thread(CliRunner().invoke, cli.app, ["status", "web"], env=env)
    assert out.exit_code == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("autoscaler"))
    assert "3 pods, wants 3 (min 1, max 3); CPU " in line and "% of requests (target 50%)" in line, line

    async def usage() -> dict[str, Any]:
        got = await api.get("/api/v1/apps/web/usage")
        assert got.status_code == 200, got.text
        return dict(got.json())

    u = await eventually(usage, lambda u: len(u["pods"]) == 3, timeout=SCALING, what="metrics of 3 pods")
    assert u["autoscaling"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "cpu_target_percent": 50,
        "scale_down_window_seconds": None,  # Kubernetes' default: the 5 minutes relied on below
    }
    # The loaded pod at 200 %, the two new ones at the default 20m (20 %): the same figures the HPA has.
    assert sorted(round(p["usage"]["cpu_of_requests_percent"]) for p in u["pods"]) == [20, 20, 200]

    # A new image while scaled: the deploy leaves spec.replicas to the HPA and its rollout finishes at 3.
    # (The new pods are unloaded, but the HPA's downscale window holds its 3 for 5 minutes.)
    r = await api.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.1"})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.template.spec.containers[0].image == "ghcr.io/acme/web:1.1"
    assert dep.spec.replicas == 3 and dep.status.updated_replicas == 3
    assert all(
        "f:replicas" not in ((m.fields_v1 or {}).get("f:spec") or {})
        for m in dep.metadata.managed_fields
        if m.manager == render.FIELD_MANAGER
    ), "shipit must not own spec.replicas under an HPA"

    # A rollback while scaled keeps the count too.
    r = await api.post("/api/v1/apps/web/rollback", json={})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.template.spec.containers[0].image == "ghcr.io/acme/web:1.0"
    assert dep.spec.replicas == 3 and dep.status.updated_replicas == 3

    # Autoscaling off with a fixed count: shipit's HPA is deleted and the Deployment gets that count.
    r = await api.post("/api/v1/apps/web/scale", json={"replicas": 2})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    assert await _hpa(kube_api, ns, "web") is None
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.replicas == 2 and dep.status.available_replicas == 2
    s = await status()
    assert s["live"]["autoscaler"] is None and s["live"]["desired"] == 2


async def test_autoscaling_on_carries_the_fixed_count_over_and_auto_off_sets_it_back(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    ns = world.namespace
    r = await api.post(
        "/api/v1/apps",
        json={
            "name": "web",
            "project": world.project,
            "cluster": world.cluster,
            "image": "ghcr.io/acme/web:1.0",
            "replicas": 2,
        },
    )
    assert r.status_code == 201, r.text
    assert (await _wait_deploy(api, r.json()["deployment"]["id"]))["status"] == "succeeded"

    # Fixed 2 -> autoscaling 1..4: the Deployment keeps its 2 pods (not reset to 1 nor to the minimum).
    r = await api.post(
        "/api/v1/apps/web/scale", json={"min_replicas": 1, "max_replicas": 4, "cpu_target": 50}
    )
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    hpa = await _hpa(kube_api, ns, "web")
    assert hpa is not None and (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 4)
    assert hpa.metadata.labels[render.LABEL_MANAGED_BY] == render.FIELD_MANAGER
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.replicas == 2 and dep.status.available_replicas == 2

    # Load on both pods: the HPA takes the Deployment to its max, 4.
    assert len(await _load(kube_api, ns, "web", cpu="200m")) == 2

    async def deployment() -> Any:
        return await _deployment(kube_api, ns, "web")

    await eventually(deployment, lambda d: d.spec.replicas == 4, timeout=SCALING, what="the HPA scaling to 4")

    # `auto off`: the HPA goes, and the deploy takes spec.replicas back from it: the app's fixed 2.
    r = await api.post("/api/v1/apps/web/scale", json={"autoscaling": False})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    assert await _hpa(kube_api, ns, "web") is None
    app = (await api.get("/api/v1/apps/web")).json()
    assert app["replicas"] == 2 and app["autoscaling"] is None, app
    dep = await _deployment(kube_api, ns, "web")
    assert dep.spec.replicas == 2


async def _create_autoscaled(api: httpx.AsyncClient, world: World, **settings: Any) -> None:
    body = {
        "name": "web",
        "project": world.project,
        "cluster": world.cluster,
        "image": "ghcr.io/acme/web:1.0",
        "cpu_request": "100m",
        "cpu_limit": "500m",
        "min_replicas": 1,
        "max_replicas": 3,
        "cpu_target": 50,
        **settings,
    }
    r = await api.post("/api/v1/apps", json=body)
    assert r.status_code == 201, r.text
    assert (await _wait_deploy(api, r.json()["deployment"]["id"]))["status"] == "succeeded"


def _window_of(hpa: Any) -> int | None:
    behavior = hpa.spec.behavior
    return (
        None
        if behavior is None or behavior.scale_down is None
        else behavior.scale_down.stabilization_window_seconds
    )


async def test_with_a_scale_down_window_of_0_the_hpa_scales_back_down_when_the_load_goes(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    ns = world.namespace
    await _create_autoscaled(api, world, scale_down_window=0)
    hpa = await _hpa(kube_api, ns, "web")
    assert hpa is not None and _window_of(hpa) == 0
    # The server filled in the rest of `behavior` with its defaults: shipit set only the window.
    assert hpa.spec.behavior.scale_down.policies and hpa.spec.behavior.scale_up is not None

    async def deployment() -> Any:
        return await _deployment(kube_api, ns, "web")

    # Load: up to the max, 3, as in the first test.
    assert len(await _load(kube_api, ns, "web", cpu="200m")) == 1
    await eventually(deployment, lambda d: d.spec.replicas == 3, timeout=SCALING, what="the HPA scaling to 3")
    await eventually(
        deployment,
        lambda d: (d.status.available_replicas or 0) == 3,
        timeout=ROLLOUT,
        what="3 available pods",
    )
    # The status shows the window beside the HPA's figures.
    got = await api.get("/api/v1/apps/web/status")
    assert got.status_code == 200, got.text
    assert got.json()["live"]["autoscaler"]["scale_down_window_seconds"] == 0, got.text
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": await make_token(live_server.rt)}
    out = await asyncio.to_thread(CliRunner().invoke, cli.app, ["status", "web"], env=env)
    assert out.exit_code == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("autoscaler"))
    assert line.endswith("; scales down after 0s"), line

    # The load goes: every pod at 5m, 5 % of its request against a 50 % target.  Without the window the
    # HPA would hold 3 for 5 minutes; with 0 it scales down as soon as it sees the new metrics.
    lowered = time.monotonic()
    assert len(await _load(kube_api, ns, "web", cpu="5m")) == 3
    await eventually(
        deployment, lambda d: d.spec.replicas == 1, timeout=180, what="the HPA scaling down to 1"
    )
    # Said, not asserted (no timings in tests): the log (`--log-cli-level=INFO`) shows how long it took.
    logger.info("scale_down_window=0: 3 -> 1 pod %.0f s after the load went", time.monotonic() - lowered)
    await eventually(deployment, lambda d: (d.status.replicas or 0) == 1, timeout=ROLLOUT, what="1 pod left")


@pytest.mark.both_databases
async def test_the_window_is_in_the_revision_and_a_rollback_puts_the_old_one_back_on_the_hpa(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    ns = world.namespace

    async def window_of_app() -> Any:
        return (await api.get("/api/v1/apps/web")).json()["autoscaling"]["scale_down_window"]

    async def hpa() -> Any:
        return await _hpa(kube_api, ns, "web")

    await _create_autoscaled(api, world, scale_down_window=30)
    assert _window_of(await hpa()) == 30
    # A new window is a new revision, deployed.
    r = await api.post("/api/v1/apps/web/scale", json={"scale_down_window": 120})
    assert r.status_code == 202, r.text
    changed = await _wait_deploy(api, r.json()["id"])
    assert changed["status"] == "succeeded" and changed["revision"] == 2, changed
    assert _window_of(await hpa()) == 120
    revisions = (await api.get("/api/v1/apps/web/revisions")).json()
    windows = {
        rev["number"]: rev["snapshot"]["autoscaling"]["scale_down_window_seconds"] for rev in revisions
    }
    assert windows == {1: 30, 2: 120}, windows

    # Rolling back to revision 1 puts its window back, on the HPA and in the app's settings.
    r = await api.post("/api/v1/apps/web/rollback", json={"revision": 1})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    assert _window_of(await hpa()) == 30
    assert await window_of_app() == 30

    # A changed setting not deployed yet: the dry run shows it on the HPA, and changes nothing.
    r = await api.patch("/api/v1/apps/web", json={"scale_down_window": 90})
    assert r.status_code == 200, r.text
    r = await api.post("/api/v1/apps/web/deploys", params={"dry_run": "true"}, json={})
    assert r.status_code == 200, r.text
    lines = [x for x in r.json()["lines"] if "stabilizationWindowSeconds" in x]
    assert len(lines) == 1 and "HorizontalPodAutoscaler/web" in lines[0], r.json()["lines"]
    assert "30" in lines[0] and "90" in lines[0], lines
    assert _window_of(await hpa()) == 30

    # Back to Kubernetes' default: the server-side apply drops `behavior` whole (the defaults the server
    # filled in with it went with it), so the HPA is again what it was before any window.
    r = await api.post("/api/v1/apps/web/scale", json={"scale_down_window": None})
    assert r.status_code == 202, r.text
    assert (await _wait_deploy(api, r.json()["id"]))["status"] == "succeeded"
    assert await window_of_app() is None
    assert (await hpa()).spec.behavior is None
