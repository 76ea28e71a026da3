"""`deploy --dry-run` over the real API and the CLI, against the real control plane, and the release
command as an app setting."""

from __future__ import annotations

import httpx

from tests.conftest import LiveServer, World
from tests.core.test_dry_run import row_counts
from tests.shipit.cluster_apps import deployed_app
from tests.shipit.test_cli import Run, ok, shipit  # noqa: F401  (the fixture)


async def test_dry_run_over_the_api_in_the_body_or_the_query(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    await deployed_app(api, world, env={"MODE": "prod"})
    before = await row_counts(live_server.rt)

    r = await api.post("/api/v1/apps/web/deploys", json={"image": "1.6", "dry_run": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["image"] == "ghcr.io/acme/web:1.6"
    image = {
        "kind": "Deployment",
        "name": "web",
        "path": "spec.template.spec.containers[0].image",
        "old": "ghcr.io/acme/web:1.0",
        "new": "ghcr.io/acme/web:1.6",
        "hidden": False,
    }
    assert image in body["changes"], body
    assert body["create"] == [] and body["delete"] == []

    r = await api.post("/api/v1/apps/web/deploys", params={"dry_run": "true"}, json={"image": "1.7"})
    assert r.status_code == 200 and r.json()["image"] == "ghcr.io/acme/web:1.7", r.text
    assert await row_counts(live_server.rt) == before
    status = (await api.get("/api/v1/apps/web/status")).json()
    assert status["live"]["image"] == "ghcr.io/acme/web:1.0"


async def test_release_command_is_an_app_setting_over_the_api(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    await deployed_app(api, world, release_command="bin/migrate")
    assert (await api.get("/api/v1/apps/web")).json()["release_command"] == "bin/migrate"
    r = await api.patch("/api/v1/apps/web", json={"release_command": "   "})
    assert r.status_code == 422 and r.json()["error"]["field"] == "release_command", r.text
    r = await api.patch("/api/v1/apps/web", json={"release_command": "x" * 1001})
    assert r.status_code == 422 and "release_command" in r.text, r.text
    r = await api.patch("/api/v1/apps/web", json={"release_command": ""})
    assert r.status_code == 200 and r.json()["release_command"] is None, r.text


async def test_cli_deploy_dry_run_and_release_command(
    world: World,
    live_server: LiveServer,
    api: httpx.AsyncClient,
    shipit: Run,  # noqa: F811
) -> None:
    await deployed_app(api, world)
    out = ok(await shipit("apps", "update", "web", "--release-command", "bin/migrate", "--env", "MODE=debug"))
    assert "release_command" in out
    before = await row_counts(live_server.rt)
    out = ok(await shipit("deploy", "web", "1.6", "--dry-run"))
    assert "dry run: deploying web ghcr.io/acme/web:1.6" in out, out
    assert "  release command runs first: bin/migrate" in out
    assert (
        "  Deployment/web spec.template.spec.containers[0].image: ghcr.io/acme/web:1.0 → ghcr.io/acme/web:1.6"
        in out
    )
    assert "Deployment/web spec.template.spec.containers[0].env[MODE].value: (none) → debug" in out, out
    assert await row_counts(live_server.rt) == before
    assert "bin/migrate" in ok(await shipit("apps", "show", "web"))
