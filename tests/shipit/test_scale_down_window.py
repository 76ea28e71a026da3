"""The autoscaler's scale-down window over the real API (SQLite and PostgreSQL): its bounds, that it
needs autoscaling, that a fixed count or `auto off` clears it, and that the audit says it.

What it does in a cluster (the rendered HPA, rollback, the HPA scaling down) is in
tests/e2e/test_autoscaling.py; the rendering itself in tests/core/kube/test_render.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.shipit.conftest import table_rows

pytestmark = pytest.mark.both_databases

APP = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}
AUTO = {"min_replicas": 1, "max_replicas": 3, "cpu_target": 50}


@pytest.fixture
async def web(api: httpx.AsyncClient, offline: str) -> str:
    r = await api.post("/api/v1/apps", json={**APP, "name": "web", **AUTO})
    assert r.status_code == 201, r.text
    return "web"


async def _window(api: httpx.AsyncClient) -> Any:
    r = await api.get("/api/v1/apps/web")
    assert r.status_code == 200, r.text
    scaling = r.json()["autoscaling"]
    return scaling and scaling["scale_down_window"]


def _refused(r: httpx.Response, *, fragment: str = "scale_down_window") -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "scale_down_window" and fragment in error["message"], error


@pytest.mark.parametrize("value", [-1, 3601, 2**40, 30.5, "thirty", "default", [30]])
async def test_a_window_out_of_range_or_not_an_integer_is_a_422_naming_it(
    live_server: LiveServer, api: httpx.AsyncClient, web: str, value: Any
) -> None:
    audit_before = await table_rows(live_server.rt, "audit_events")
    for method, path in (("POST", "/api/v1/apps/web/scale"), ("PATCH", "/api/v1/apps/web")):
        _refused(await api.request(method, path, json={"scale_down_window": value}))
    _refused(await api.post("/api/v1/apps", json={**APP, "name": "api", **AUTO, "scale_down_window": value}))
    assert await table_rows(live_server.rt, "audit_events") == audit_before
    assert await _window(api) is None


async def test_the_edges_are_stored_and_audited_and_null_sets_kubernetes_default_back(
    api: httpx.AsyncClient, web: str
) -> None:
    for seconds in (0, 3600):
        r = await api.post("/api/v1/apps/web/scale", json={"scale_down_window": seconds})
        assert r.status_code == 202, r.text
        assert await _window(api) == seconds
    # min/max/cpu changed without the window keep it, as they keep each other.
    r = await api.post("/api/v1/apps/web/scale", json={"max_replicas": 5})
    assert r.status_code == 202, r.text
    assert await _window(api) == 3600
    r = await api.patch("/api/v1/apps/web", json={"scale_down_window": 30})
    assert r.status_code == 200 and r.json()["autoscaling"]["scale_down_window"] == 30, r.text
    r = await api.post("/api/v1/apps/web/scale", json={"scale_down_window": None})
    assert r.status_code == 202, r.text
    assert await _window(api) is None
    r = await api.get("/api/v1/audit", params={"target": "app/web", "action": "app.update"})
    assert r.status_code == 200, r.text
    windows = [e["details"].get("scale_down_window", "-") for e in r.json()]
    # Newest first: every scale change says the window it left the app with.
    assert windows == [None, 30, 3600, 3600, 0], windows


async def test_a_window_needs_autoscaling_and_turning_it_off_clears_the_window(
    live_server: LiveServer, api: httpx.AsyncClient, web: str
) -> None:
    r = await api.post("/api/v1/apps/web/scale", json={**AUTO, "scale_down_window": 60})
    assert r.status_code == 202 and await _window(api) == 60, r.text
    # With a fixed count, or with `auto off`, a window has nothing to apply to: refused, naming it.
    for body in ({"replicas": 2, "scale_down_window": 60}, {"autoscaling": False, "scale_down_window": 60}):
        _refused(await api.post("/api/v1/apps/web/scale", json=body), fragment="needs autoscaling")
    assert await _window(api) == 60
    # Turning autoscaling off takes the window with it.
    r = await api.post("/api/v1/apps/web/scale", json={"replicas": 2})
    assert r.status_code == 202, r.text
    shown = (await api.get("/api/v1/apps/web")).json()
    assert shown["autoscaling"] is None and shown["replicas"] == 2
    (row,) = await table_rows(live_server.rt, "apps")
    assert row["scale_down_window"] is None and row["min_replicas"] is None
    # A window alone, or by PATCH, on an app without autoscaling: the same refusal.
    _refused(
        await api.post("/api/v1/apps/web/scale", json={"scale_down_window": 60}), fragment="needs autoscaling"
    )
    _refused(
        await api.patch("/api/v1/apps/web", json={"scale_down_window": 60}), fragment="needs autoscaling"
    )
    # Autoscaling turned off by PATCH (min and max cleared) clears the window too.
    r = await api.post("/api/v1/apps/web/scale", json={**AUTO, "scale_down_window": 60})
    assert r.status_code == 202 and await _window(api) == 60, r.text
    r = await api.patch(
        "/api/v1/apps/web", json={"min_replicas": None, "max_replicas": None, "cpu_target": None}
    )
    assert r.status_code == 200 and r.json()["autoscaling"] is None, r.text
    (row,) = await table_rows(live_server.rt, "apps")
    assert row["scale_down_window"] is None
