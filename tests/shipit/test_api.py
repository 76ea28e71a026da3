"""The REST API over real HTTP: auth, errors that name the field, nothing half-written, no secret leaks."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shipit.main import create_app
from shipit.settings import Settings
from tests.conftest import LiveServer, World, database_bytes, serving
from tests.shipit.cluster_apps import wait_deploy
from tests.shipit.conftest import make_token, table_rows

APP = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return dict(body["error"])


async def create_app_ok(api: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    r = await api.post("/api/v1/apps", json={**APP, "name": name, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


# --------------------------------------------------------------------------- auth


async def test_every_api_route_needs_a_valid_bearer_token(
    live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as anon:
        for headers in (
            {},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer nope"},
            {"Authorization": "Bearer shp_" + "x" * 43},
        ):
            for method, path in (
                ("GET", "/api/v1/apps"),
                ("POST", "/api/v1/projects"),
                ("GET", "/api/v1/audit"),
            ):
                r = await anon.request(method, path, headers=headers, json={"name": "sneaky"})
                assert r.status_code == 401, (headers, path, r.text)
                assert error_of(r)["type"] == "Unauthenticated"
    # None of the refused requests wrote anything.
    assert (await api.get("/api/v1/projects")).json() == []


async def test_a_revoked_token_stops_working_at_once(live_server: LiveServer, api: httpx.AsyncClient) -> None:
    created = (await api.post("/api/v1/tokens", json={"name": "ci", "subject": "user:ci"})).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    async with httpx.AsyncClient(base_url=live_server.url, headers=headers) as ci:
        me = await ci.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["subject"] == "user:ci"
        assert (await api.delete(f"/api/v1/tokens/{created['id']}")).status_code == 200
        r = await ci.get("/api/v1/me")
        assert r.status_code == 401
        assert "revoked" in error_of(r)["message"]


async def test_tokens_are_stored_hashed(live_server: LiveServer, api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/tokens", json={"name": "deployer", "subject": "user:deployer"})
    assert r.status_code == 201, r.text
    plaintext = r.json()["token"]
    assert plaintext.startswith("shp_") and len(plaintext) > 40

    rows = await table_rows(live_server.rt, "api_tokens")
    row = next(row for row in rows if row["name"] == "deployer")
    assert row["token_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    for other in rows:
        assert all(plaintext not in str(value) for value in other.values()), other
    assert plaintext.encode() not in database_bytes(live_server.rt)
    # Listing shows a prefix to recognise it by, never the token.
    listed = (await api.get("/api/v1/tokens")).text
    assert plaintext not in listed and row["prefix"] in listed


# --------------------------------------------------------------------------- projects


async def test_projects_create_list_and_members(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/projects", json={"name": "acme", "slack_channel": "#deploys"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "acme" and r.json()["webhook_signed"] is False
    listed = (await api.get("/api/v1/projects")).json()
    assert [(p["name"], p["slack_channel"]) for p in listed] == [("acme", "#deploys")]
    # The creator owns it.
    assert (await api.get("/api/v1/projects/acme/members")).json() == [
        {"subject": "user:admin", "role": "owner"}
    ]

    again = await api.post("/api/v1/projects", json={"name": "acme"})
    assert again.status_code == 409 and "already exists" in error_of(again)["message"]

    bad = await api.post("/api/v1/projects", json={"name": "Acme Corp"})
    assert bad.status_code == 422 and error_of(bad)["field"] == "name"
    role = await api.put("/api/v1/projects/acme/members/user:bob", json={"role": "boss"})
    assert role.status_code == 422 and error_of(role)["field"] == "role"
    assert [p["name"] for p in (await api.get("/api/v1/projects")).json()] == ["acme"]


# --------------------------------------------------------------------------- bad input writes nothing


@pytest.mark.parametrize(
    ("name", "fields", "field", "words"),
    [
        ("bad-image", {"image": "ghcr.io/Acme/web:1.0 latest"}, "image", "image reference"),
        ("bad-image-2", {"image": "web:"}, "image", "image reference"),
        ("Web_App", {}, "name", "DNS-1123"),
        ("-web", {}, "name", "DNS-1123"),
        ("x" * 64, {}, "name", "at most 63 characters"),
        ("minmax", {"min_replicas": 5, "max_replicas": 2}, "min_replicas", "greater than"),
        (
            "cpu-zero",
            {"min_replicas": 1, "max_replicas": 3, "cpu_target": 0},
            "cpu_target",
            "between 1 and 100",
        ),
        (
            "cpu-high",
            {"min_replicas": 1, "max_replicas": 3, "cpu_target": 101},
            "cpu_target",
            "between 1 and 100",
        ),
        ("half-scaling", {"min_replicas": 2}, "min_replicas", "max_replicas"),
        ("bad-port", {"port": 70000}, "port", "65535"),
        ("bad-cpu", {"cpu_request": "lots"}, "cpu_request", "CPU quantity"),
        ("bad-memory", {"memory_limit": "1 GB"}, "memory_limit", "memory quantity"),
        ("bad-health", {"health_path": "healthz"}, "health_path", "absolute"),
        ("bad-env", {"env": {"1FOO": "x"}}, "env", "environment variable"),
        ("bad-domain", {"domain": "not a host"}, "domain", "DNS name"),
        ("unknown-field", {"colour": "blue"}, "colour", "Extra inputs"),
        ("wrong-type", {"replicas": "many"}, "replicas", "integer"),
        ("no-project", {"project": "nope"}, "project", "no project"),
        ("no-cluster", {"cluster": "nope"}, "cluster", "no cluster"),
        ("bad-namespace", {"namespace": "Not_Valid"}, "namespace", "DNS-1123"),
    ],
)
async def test_bad_app_input_is_422_naming_the_field_and_writes_nothing(
    live_server: LiveServer,
    api: httpx.AsyncClient,
    offline: str,
    name: str,
    fields: dict[str, Any],
    field: str,
    words: str,
) -> None:
    audit_before = len(await table_rows(live_server.rt, "audit_events"))
    r = await api.post("/api/v1/apps", json={**APP, "name": name, **fields, "deploy": True})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["type"] == "InvalidInput"
    assert error["field"] == field
    assert field in error["message"] and words in error["message"], error

    # Nothing half-written: no app, no audit row, no revision, no deploy, no job.
    assert name not in [a["name"] for a in (await api.get("/api/v1/apps")).json()]
    assert (await api.get("/api/v1/audit", params={"target": f"app/{name}"})).json() == []
    assert len(await table_rows(live_server.rt, "audit_events")) == audit_before
    for table in ("apps", "revisions", "deployments", "jobs"):
        assert await table_rows(live_server.rt, table) == [], table


async def test_bad_update_changes_nothing(api: httpx.AsyncClient, offline: str) -> None:
    await create_app_ok(api, "web", min_replicas=2, max_replicas=4, cpu_target=70)
    before = (await api.get("/api/v1/apps/web")).json()
    for body, field in (
        ({"min_replicas": 9}, "min_replicas"),  # 9 > max 4: checked against the stored values
        ({"cpu_target": 0}, "cpu_target"),
        ({"image": "ghcr.io/acme/Web:2"}, "image"),
        ({"image": "ghcr.io/acme/web:2.0", "port": 0}, "port"),  # one bad field: the good one is not kept
    ):
        r = await api.patch("/api/v1/apps/web", json=body)
        assert r.status_code == 422 and error_of(r)["field"] == field, r.text
    assert (await api.get("/api/v1/apps/web")).json() == before
    assert [e["action"] for e in (await api.get("/api/v1/audit", params={"target": "app/web"})).json()] == [
        "app.create"
    ]


@pytest.mark.parametrize("image", ["", "  ", "\t"])
async def test_a_blank_image_is_422_naming_image_and_deploys_nothing(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str, image: str
) -> None:
    await create_app_ok(api, "web")
    r = await api.post("/api/v1/apps/web/deploys", json={"image": image})
    assert r.status_code == 422, r.text
    error = error_of(r)
    # A tab is refused by the schema's one-line rule before core sees it; either way, `image` is named.
    assert error["field"] == "image", error
    assert ("image must not be empty" in error["message"]) or (
        "without control characters" in error["message"]
    )
    assert await table_rows(live_server.rt, "deployments") == []
    assert await table_rows(live_server.rt, "jobs") == []
    assert (await api.get("/api/v1/apps/web")).json()["image"] == "ghcr.io/acme/web:1.0"


async def test_deploy_images_follow_the_reference_grammar(api: httpx.AsyncClient, offline: str) -> None:
    await create_app_ok(api, "web", image="bitnami/redis:7")  # Docker Hub org/name: refused before
    r = await api.post("/api/v1/apps/web/deploys", json={"image": "repo@sha256:ffff"})
    assert r.status_code == 422 and error_of(r)["field"] == "image", r.text
    r = await api.post("/api/v1/apps/web/deploys", json={"image": "7.2"})  # a bare tag keeps the repository
    assert r.status_code == 202 and r.json()["image"] == "bitnami/redis:7.2", r.text


async def test_unknown_app_is_404_listing_only_the_apps_you_can_see(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str
) -> None:
    await create_app_ok(api, "web")
    await create_app_ok(api, "worker")
    for method, path in (
        ("GET", "/api/v1/apps/wbe"),
        ("POST", "/api/v1/apps/wbe/deploys"),
        ("GET", "/api/v1/apps/wbe/secrets"),
        ("POST", "/api/v1/apps/wbe/rollback"),
        ("DELETE", "/api/v1/apps/wbe"),
    ):
        r = await api.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == 404, (path, r.text)
        message = error_of(r)["message"]
        assert "'wbe'" in message and "web, worker" in message, message

    stranger = await make_token(live_server.rt, subject="user:stranger", admin=False)
    r = await api.get("/api/v1/apps/web", headers={"Authorization": f"Bearer {stranger}"})
    assert r.status_code == 404
    message = error_of(r)["message"]
    assert "no apps" in message and "worker" not in message, message


@pytest.mark.parametrize(
    "kubeconfig",
    [
        "",
        "{not: [yaml",
        "clusters: []",
        "apiVersion: v1\nclusters:\n- name: x\n  cluster: {}\ncontexts: []\n",
        "\x00\x01",
    ],
)
async def test_unreadable_kubeconfig_is_422_naming_kubeconfig(
    live_server: LiveServer, api: httpx.AsyncClient, kubeconfig: str
) -> None:
    r = await api.post("/api/v1/clusters", json={"name": "prod", "kubeconfig": kubeconfig})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["field"] == "kubeconfig" and "kubeconfig" in error["message"]
    assert (await api.get("/api/v1/clusters")).json() == []
    assert await table_rows(live_server.rt, "clusters") == []
    assert [e["action"] for e in await table_rows(live_server.rt, "audit_events")] == ["token.create"]


async def test_only_a_global_admin_adds_clusters(live_server: LiveServer) -> None:
    token = await make_token(live_server.rt, subject="user:dev", admin=False)
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}
    ) as dev:
        r = await dev.post("/api/v1/clusters", json={"name": "prod", "kubeconfig": "clusters: []"})
    assert r.status_code == 403 and "admin" in error_of(r)["message"]


async def test_request_body_over_the_cap_is_413(
    live_server: LiveServer, settings: Settings, admin_token: str
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 1024})
    app = create_app(small, rt=live_server.rt)
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}) as client,
    ):
        big = {"name": "big", "slack_channel": "x" * 2000}
        declared = await client.post("/api/v1/projects", json=big)
        assert declared.status_code == 413, declared.text
        assert error_of(declared)["type"] == "payload_too_large"

        async def chunks() -> Any:
            # No Content-Length: the cap must hold while the body streams in.
            for _ in range(8):
                yield b" " * 512
            yield b'{"name": "big"}'

        streamed = await client.post(
            "/api/v1/projects", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        assert error_of(streamed)["type"] == "payload_too_large"

        fine = await client.post("/api/v1/projects", json={"name": "small"})
        assert fine.status_code == 201, fine.text
    assert [p["name"] for p in (await client_projects(live_server, admin_token))] == ["small"]


async def client_projects(live_server: LiveServer, token: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        return list((await c.get("/api/v1/projects")).json())


async def test_unknown_json_field_is_422_naming_it(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/projects", json={"name": "acme", "slack_chanel": "#typo"})
    assert r.status_code == 422
    error = error_of(r)
    assert error["field"] == "slack_chanel" and "slack_chanel" in error["message"]
    assert (await api.get("/api/v1/projects")).json() == []

    not_json = await api.post(
        "/api/v1/projects", content=b"{name: acme", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422 and error_of(not_json)["type"] == "InvalidInput"


# --------------------------------------------------------------------------- permissions


async def test_a_viewer_gets_403_naming_the_role_when_deploying(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str
) -> None:
    await create_app_ok(api, "web")
    r = await api.put("/api/v1/projects/acme/members/user:vera", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    viewer = await make_token(live_server.rt, subject="user:vera", admin=False)
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {viewer}"}
    ) as vera:
        assert (await vera.get("/api/v1/apps/web")).status_code == 200
        assert [a["name"] for a in (await vera.get("/api/v1/apps")).json()] == ["web"]
        for method, path, body in (
            ("POST", "/api/v1/apps/web/deploys", {"image": "ghcr.io/acme/web:2.0"}),
            ("POST", "/api/v1/apps/web/rollback", {}),
            ("POST", "/api/v1/apps/web/scale", {"replicas": 3}),
        ):
            r = await vera.request(method, path, json=body)
            assert r.status_code == 403, (path, r.text)
            message = error_of(r)["message"]
            assert "needs the" in message and "you have viewer" in message, message
        deploy = await vera.post("/api/v1/apps/web/deploys", json={})
        assert "needs the developer role" in error_of(deploy)["message"]
        secrets = await vera.put("/api/v1/apps/web/secrets", json={"values": {"K": "v"}})
        assert secrets.status_code == 403 and "needs the admin role" in error_of(secrets)["message"]
    assert (await api.get("/api/v1/apps/web/deploys")).json() == []
    assert (await api.get("/api/v1/apps/web")).json()["image"] == "ghcr.io/acme/web:1.0"


@pytest.mark.both_databases
async def test_a_rejection_over_the_api_records_who_rejected_it(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str
) -> None:
    await create_app_ok(api, "web", protected=True)
    r = await api.put("/api/v1/projects/acme/members/user:rita", json={"role": "developer"})
    assert r.status_code == 200, r.text
    rita = await make_token(live_server.rt, subject="user:rita", admin=False)
    asked = await api.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:2.0"})
    assert asked.status_code == 202 and asked.json()["status"] == "awaiting_approval", asked.text
    assert asked.json()["rejected_by"] is None
    d = asked.json()["id"]
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {rita}"}, timeout=30
    ) as client:
        r = await client.post(f"/api/v1/deploys/{d}/reject")
    assert r.status_code == 200, r.text
    # A field beside approved_by (the error's words are unchanged), in every answer that shows the deploy.
    body = r.json()
    assert (body["status"], body["rejected_by"], body["approved_by"], body["error"]) == (
        "cancelled",
        "user:rita",
        None,
        "rejected by rita",
    )
    assert (await api.get(f"/api/v1/deploys/{d}")).json()["rejected_by"] == "user:rita"
    assert [x["rejected_by"] for x in (await api.get("/api/v1/apps/web/deploys")).json()] == ["user:rita"]
    [row] = await table_rows(live_server.rt, "deployments")
    assert row["rejected_by"] == "user:rita"
    # A second rejection names the first rejecter, from the column.
    again = await api.post(f"/api/v1/deploys/{d}/reject")
    assert again.status_code == 409 and "already rejected by user:rita" in error_of(again)["message"]
    # A cancel is not a rejection.
    later = (await api.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:2.1"})).json()
    cancelled = (await api.post(f"/api/v1/deploys/{later['id']}/cancel")).json()
    assert (cancelled["status"], cancelled["rejected_by"]) == ("cancelled", None)
    # A rejection from before migration 0014 had only its error text: the JSON still says who.
    async with live_server.rt.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE deployments SET error = 'rejected by vera' WHERE id = :id"), {"id": later["id"]}
        )
    assert (await api.get(f"/api/v1/deploys/{later['id']}")).json()["rejected_by"] == "vera"


# --------------------------------------------------------------------------- secrets


async def test_secret_values_never_leave_the_api_or_reach_the_database_in_plain(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str
) -> None:
    await create_app_ok(api, "web", env={"PLAIN": "visible"})
    value = f"s3cret-{uuid.uuid4().hex}"
    bodies: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = await api.request(method, path, **kwargs)
        bodies.append(r.text)
        return r

    r = await call(
        "PUT", "/api/v1/apps/web/secrets", json={"values": {"DATABASE_URL": value, "API_KEY": value[::-1]}}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"keys": ["API_KEY", "DATABASE_URL"], "deployment": None}
    # Invalid secrets are refused without the value, and without the refused name: that is most
    # often the value itself, given without its name.
    bad = await call("PUT", "/api/v1/apps/web/secrets", json={"values": {"1BAD": value}})
    assert bad.status_code == 422 and error_of(bad)["field"] == "values"
    assert "secret's key" in error_of(bad)["message"] and "1BAD" not in error_of(bad)["message"]
    huge = await call("PUT", "/api/v1/apps/web/secrets", json={"values": {"HUGE": value * 2000}})
    assert huge.status_code == 422 and "HUGE" in error_of(huge)["message"]

    listed = await call("GET", "/api/v1/apps/web/secrets")
    assert [s["key"] for s in listed.json()] == ["API_KEY", "DATABASE_URL"]
    assert set(listed.json()[0]) == {"key", "updated_at"}
    for path in (
        "/api/v1/apps/web",
        "/api/v1/apps",
        "/api/v1/audit",
        "/api/v1/apps/web/status?live=false",
        "/api/v1/apps/web/revisions",
        "/api/v1/apps/web/deploys",
        "/openapi.json",
    ):
        assert (await call("GET", path)).status_code == 200, path
    assert (await call("DELETE", "/api/v1/apps/web/secrets/API_KEY")).status_code == 200
    audit = (await api.get("/api/v1/audit", params={"target": "app/web", "action": "secrets.set"})).json()
    assert audit[0]["details"]["keys"] == ["API_KEY", "DATABASE_URL"]

    for body in bodies:
        assert value not in body and value[::-1] not in body
    rows = await table_rows(live_server.rt, "secrets")
    assert [r["key"] for r in rows] == ["DATABASE_URL"]
    assert value.encode() not in rows[0]["value_enc"]
    assert all(value not in str(v) for v in rows[0].values())
    for table in ("audit_events", "events", "jobs", "revisions"):
        assert value not in str(await table_rows(live_server.rt, table)), table
    raw = database_bytes(live_server.rt)
    assert value.encode() not in raw and value[::-1].encode() not in raw


# --------------------------------------------------------------------------- service endpoints


async def test_health_readiness_docs_and_metrics(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        ready = await anon.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"
        paths = (await anon.get("/openapi.json")).json()["paths"]
        assert "/api/v1/apps" in paths and "/api/v1/apps/{name}/deploys" in paths
        # WebDAV's PROPFIND: a method the HTTP parser knows and shipit does not serve anywhere.
        assert (await anon.request("PROPFIND", "/healthz")).status_code == 405
        metrics = (await anon.get("/metrics")).text
        assert 'shipit_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics
        # Counted, but not as a series of its own: the method is the caller's to choose.
        assert 'shipit_http_requests_total{method="OTHER",route="/healthz",status="405"}' in metrics
        assert "PROPFIND" not in metrics
        assert 'shipit_queue_depth{state="queued"}' in metrics


# --------------------------------------------------------------------------- on a real cluster


async def test_deploy_status_logs_and_delete_over_the_api(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    r = await api.post(
        "/api/v1/apps",
        json={
            "name": "web",
            "project": world.project,
            "cluster": world.cluster,
            "image": "ghcr.io/acme/web:1.0",
        },
    )
    assert r.status_code == 201, r.text
    first = r.json()["deployment"]
    assert first["status"] == "queued" and first["trigger"] == "api"
    done = await wait_deploy(api, first["id"])
    assert done["status"] == "succeeded", done

    status = (await api.get("/api/v1/apps/web/status")).json()
    assert status["current"]["id"] == first["id"]
    assert status["live"]["image"] == "ghcr.io/acme/web:1.0" and status["live"]["ready"] >= 1

    value = f"s3cret-{uuid.uuid4().hex}"
    r = await api.put("/api/v1/apps/web/secrets", json={"values": {"TOKEN": value}})
    assert r.status_code == 200 and r.json()["deployment"]["trigger"] == "config", r.text
    assert (await wait_deploy(api, r.json()["deployment"]["id"]))["status"] == "succeeded"
    assert value not in (await api.get("/api/v1/apps/web/status")).text

    async with api.stream("GET", "/api/v1/apps/web/logs", params={"tail": 5}) as logs:
        assert logs.status_code == 200
        lines = [line async for line in logs.aiter_lines()]
    # No file kwok serves as these pods' logs (tests/shipit/test_pod_logs.py writes some): one line each.
    assert lines and all("(no logs: " in line for line in lines) and value not in "".join(lines)

    deleted = await api.delete("/api/v1/apps/web")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted": "web", "workload_removed": True, "warning": None}
    assert (await api.get("/api/v1/apps/web")).status_code == 404
    status_after = await api.get("/api/v1/apps")
    assert status_after.json() == []


async def test_logs_of_an_app_without_pods_is_a_404_json_error(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    r = await api.post(
        "/api/v1/apps",
        json={"name": "idle", "project": world.project, "cluster": world.cluster, "deploy": False},
    )
    assert r.status_code == 201, r.text
    logs = await api.get("/api/v1/apps/idle/logs")
    assert logs.status_code == 404, logs.text
    assert "no pods" in error_of(logs)["message"]


async def test_cluster_add_checks_the_connection(
    live_server: LiveServer, api: httpx.AsyncClient, kube_env: Any
) -> None:
    r = await api.post("/api/v1/clusters", json={"name": "local", "kubeconfig": kube_env.kubeconfig})
    assert r.status_code == 201, r.text
    assert r.json()["server"] == kube_env.server and r.json()["server_version"].startswith("v")
    rows = await table_rows(live_server.rt, "clusters")
    assert kube_env.kubeconfig.encode() not in rows[0]["kubeconfig_enc"]

    unreachable = kube_env.kubeconfig.replace(kube_env.server, "https://127.0.0.1:1")
    r = await api.post("/api/v1/clusters", json={"name": "gone", "kubeconfig": unreachable})
    assert r.status_code == 422 and error_of(r)["field"] == "kubeconfig", r.text
    assert [c["name"] for c in (await api.get("/api/v1/clusters")).json()] == ["local"]
