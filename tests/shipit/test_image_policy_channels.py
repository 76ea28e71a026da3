"""`shipit apps policy` and /api/v1/apps/{name}/policy over real HTTP: set, show, clear, refuse."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from core import environments
from storage import models
from tests.conftest import LiveServer
from tests.shipit.test_cli import Run, ok, one_error_line
from tests.shipit.test_cli import shipit as shipit

APP = {
    "project": "acme",
    "cluster": "offline",
    "image": "registry.local:5000/acme/web:1.4.0",
    "deploy": False,
}


@pytest.fixture
async def web(api: httpx.AsyncClient, offline: str) -> str:
    r = await api.post("/api/v1/apps", json={**APP, "name": "web"})
    assert r.status_code == 201, r.text
    return "web"


async def test_cli_sets_shows_and_clears_a_policy(live_server: LiveServer, shipit: Run, web: str) -> None:
    async with live_server.rt.sessionmaker.begin() as session:
        project_id = await session.scalar(select(models.Project.id).where(models.Project.name == "acme"))
        assert project_id is not None
        await environments.add(session, project_id=project_id, name="staging")
    out = ok(
        await shipit("apps", "policy", "web", "--semver", "^1.4", "--poll", "5m", "--promote-to", "staging")
    )
    assert "registry.local:5000/acme/web" in out and "semver ^1.4" in out
    assert "polling every 300s" in out and "promotes to staging" in out
    shown = ok(await shipit("apps", "policy", "web"))
    assert "last tag:   none yet" in shown
    out = ok(await shipit("apps", "policy", "web", "--regex", r"main-(?P<key>\d+)", "--sort", "numeric"))
    assert "regex main-(?P<key>\\d+) (sorted numeric)" in out and "only (no polling)" in out
    err = one_error_line(await shipit("apps", "policy", "web", "--semver", "^1.4.x.y"))
    assert "semver" in err
    err = one_error_line(await shipit("apps", "policy", "web", "--regex", r"main-(\d+)"))
    assert "group `key`" in err
    err = one_error_line(await shipit("apps", "policy", "web", "--semver", "^1", "--env", "qa"))
    assert "environment named 'qa'" in err and "production" in err  # names where it does run
    ok(await shipit("apps", "policy", "web", "--clear"))
    assert "no image policy" in one_error_line(await shipit("apps", "policy", "web"))


async def test_api_names_the_field_and_keeps_roles(api: httpx.AsyncClient, web: str) -> None:
    r = await api.put("/api/v1/apps/web/policy", json={"semver": "^1", "glob": "x*"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "semver"
    r = await api.put("/api/v1/apps/web/policy", json={"glob": "main-*", "poll_seconds": 5})
    assert r.status_code == 422 and r.json()["error"]["field"] == "poll_seconds"
    r = await api.put("/api/v1/apps/web/policy", json={"glob": "main-*", "promote_to": "production"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "promote_to"  # it runs there already
    r = await api.put("/api/v1/apps/web/policy", json={"glob": "main-*", "repository": "ghcr.io/acme/web"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["kind"], body["pattern"], body["repository"]) == ("glob", "main-*", "ghcr.io/acme/web")
    assert body["environment"] == "production" and body["failures"] == 0
    assert (await api.get("/api/v1/apps/web/policy", params={"environment": "production"})).status_code == 200
    assert (await api.delete("/api/v1/apps/web/policy")).status_code == 204
    assert (await api.get("/api/v1/apps/web/policy")).status_code == 404


async def test_api_takes_the_env_its_several_environments_error_asks_for(
    live_server: LiveServer, api: httpx.AsyncClient, web: str
) -> None:
    """The README: `?env=` on /apps/{name}/...; the policy routes took only `?environment=`, so following
    the error's advice (`?env=staging`) got the same error again."""
    r = await api.post(
        "/api/v1/projects/acme/environments",
        json={"name": "staging", "namespace": "acme-stg", "before": "production"},
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/api/v1/apps", json={"name": "web", "project": "acme", "environment": "staging", "deploy": False}
    )
    assert r.status_code == 201, r.text

    r = await api.get("/api/v1/apps/web/policy")
    error = r.json()["error"]
    assert error["type"] == "SeveralEnvironments" and "?env=staging" in error["message"], r.text

    r = await api.put("/api/v1/apps/web/policy", params={"env": "staging"}, json={"glob": "main-*"})
    assert r.status_code == 200 and r.json()["environment"] == "staging", r.text
    r = await api.get("/api/v1/apps/web/policy", params={"env": "staging"})
    assert r.status_code == 200 and r.json()["pattern"] == "main-*", r.text
    r = await api.get("/api/v1/apps/web/policy", params={"env": "production"})
    assert r.status_code == 404, r.text  # production's web has none: the parameter is read, not ignored
    # The first spelling still works; two that disagree are refused, naming the field.
    r = await api.get("/api/v1/apps/web/policy", params={"environment": "staging"})
    assert r.status_code == 200, r.text
    r = await api.get("/api/v1/apps/web/policy", params={"env": "staging", "environment": "production"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "env", r.text
    assert (await api.delete("/api/v1/apps/web/policy", params={"env": "staging"})).status_code == 204
