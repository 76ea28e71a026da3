"""Apps deployed on the test control plane through the real API: what the cluster tests start from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from core import clusters, projects
from shipit.runtime import Runtime
from tests.conftest import ADMIN, World
from tests.helpers import eventually
from tests.testenv import controlplane, plugin

ROLLOUT = 240.0  # a loaded CI machine; the deploy's own progress deadline decides failure first


async def wait_deploy(api: httpx.AsyncClient, deployment_id: int) -> dict[str, Any]:
    """The deploy once it has ended (succeeded, failed, superseded or cancelled)."""

    async def probe() -> dict[str, Any]:
        return dict((await api.get(f"/api/v1/deploys/{deployment_id}")).json())

    ended = await eventually(
        probe, lambda d: d["status"] not in ("queued", "running"), timeout=ROLLOUT, what="the deploy"
    )
    return dict(ended)


async def deployed_app(
    api: httpx.AsyncClient,
    world: World,
    *,
    name: str = "web",
    image: str = "ghcr.io/acme/web:1.0",
    **fields: Any,
) -> dict[str, Any]:
    """Create the app in the world's project and cluster and wait for its first deploy to succeed."""
    body = {"name": name, "project": world.project, "cluster": world.cluster, "image": image, **fields}
    r = await api.post("/api/v1/apps", json=body)
    assert r.status_code == 201, r.text
    created = dict(r.json())
    assert (await wait_deploy(api, created["deployment"]["id"]))["status"] == "succeeded"
    return created


@pytest.fixture
async def bare_cluster() -> AsyncIterator[controlplane.ControlPlane]:
    """A second control plane, without metrics-server: a cluster with no Metrics API, as many are."""
    plugin.require_local_binaries()
    cp = controlplane.ControlPlane(metrics_server=False)
    await asyncio.to_thread(cp.start)
    try:
        yield cp
    finally:
        await asyncio.to_thread(cp.stop)


async def add_cluster(
    rt: Runtime, cp: controlplane.ControlPlane, *, project: str, name: str = "bare"
) -> None:
    """Register `cp` as cluster `name` and grant its `default` namespace to a new project `project`."""
    assert cp.env is not None
    kubeconfig = cp.env.kubeconfig
    version = await clusters.check(ctx=rt.core, kubeconfig_text=kubeconfig, key=name)
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name=project)
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name=name, kubeconfig_text=kubeconfig,
            default_namespace="default", version=version,
        )  # fmt: skip
        await clusters.grant(session, actor=ADMIN, cluster=name, project=project, namespace="default")
