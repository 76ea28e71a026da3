"""Apps deployed on the test control plane through the real API: what the cluster tests start from."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import World
from tests.helpers import eventually

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
