"""Tenancy over real HTTP and through the CLI: who may create projects, what outsiders learn (nothing),
where apps may go (granted clusters, own namespaces), grants and their revocation, protection."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from typer.testing import CliRunner

from core import clusters
from shipit import cli, runtime
from shipit.main import create_app
from shipit.settings import Settings
from tests.conftest import ADMIN, LiveServer, serving, serving_posts
from tests.shipit.conftest import make_token, offline_kubeconfig, table_rows

WEB = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}


def message(r: httpx.Response) -> str:
    return str(r.json()["error"]["message"])


class Tenants:
    """acme (on `offline`, namespace `apps`) with protected app `web` and a deploy awaiting approval;
    rival (namespace `team-b`) with app `vault`; cluster `spare` granted to nobody; a client per person."""

    def __init__(self, live_server: LiveServer, api: httpx.AsyncClient) -> None:
        self.live_server, self.admin = live_server, api
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.deploy_id = 0

    async def as_(self, subject: str) -> httpx.AsyncClient:
        if subject not in self.clients:
            token = await make_token(self.live_server.rt, subject=subject, admin=False)
            self.clients[subject] = httpx.AsyncClient(
                base_url=self.live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
        return self.clients[subject]

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()


@pytest.fixture
async def tenants(live_server: LiveServer, api: httpx.AsyncClient, offline: str) -> AsyncIterator[Tenants]:
    t = Tenants(live_server, api)
    assert (await api.post("/api/v1/projects", json={"name": "rival"})).status_code == 201
    for subject, project, role in (
        ("user:pat", "acme", "admin"),
        ("user:olive", "acme", "owner"),
        ("user:dev", "acme", "developer"),
        ("user:rita", "rival", "admin"),
    ):
        r = await api.put(f"/api/v1/projects/{project}/members/{subject}", json={"role": role})
        assert r.status_code == 200, r.text
    r = await api.post("/api/v1/apps", json={**WEB, "name": "web", "protected": True})
    assert r.status_code == 201, r.text
    r = await api.post(
        "/api/v1/apps",
        json={**WEB, "project": "rival", "name": "vault", "namespace": "team-b", "protected": True},
    )
    assert r.status_code == 201, r.text
    r = await (await t.as_("user:dev")).post("/api/v1/apps/web/deploys", json={"image": "1.1"})
    assert r.status_code == 202 and r.json()["status"] == "awaiting_approval", r.text
    t.deploy_id = int(r.json()["id"])
    rt = live_server.rt
    async with rt.sessionmaker.begin() as session:
        await clusters.add(
            session,
            ctx=rt.core,
            actor=ADMIN,
            name="spare",
            kubeconfig_text=offline_kubeconfig(),
            default_namespace="apps",
            version="v0.0.0-offline",
        )
    yield t
    await t.close()


async def test_a_token_with_no_role_cannot_create_a_project(tenants: Tenants) -> None:
    nobody = await tenants.as_("user:nobody")
    r = await nobody.post("/api/v1/projects", json={"name": "mine"})
    assert r.status_code == 403 and "creating a project needs a global admin" in message(r)
    pat = await tenants.as_("user:pat")  # an admin of a project is not a global admin
    assert (await pat.post("/api/v1/projects", json={"name": "mine"})).status_code == 403
    names = [p["name"] for p in (await tenants.admin.get("/api/v1/projects")).json()]
    assert names == ["acme", "rival"]


async def test_project_creators_everyone_opens_it(settings: Settings) -> None:
    rt = await runtime.build(settings.model_copy(update={"project_creators": "everyone"}))
    try:
        async with serving(create_app(rt=rt)) as url:
            token = await make_token(rt, subject="user:newbie", admin=False)
            admin = await make_token(rt)
            async with httpx.AsyncClient(
                timeout=30, base_url=url, headers={"Authorization": f"Bearer {token}"}
            ) as c:
                r = await c.post("/api/v1/projects", json={"name": "mine"})
                assert r.status_code == 201, r.text
                members = (await c.get("/api/v1/projects/mine/members")).json()
                assert members == [{"subject": "user:newbie", "role": "owner"}]
                async with httpx.AsyncClient(
                    timeout=30, base_url=url, headers={"Authorization": f"Bearer {admin}"}
                ) as a:
                    assert (await a.post("/api/v1/projects", json={"name": "hidden"})).status_code == 201
                # Someone else's project name is taken, without saying that a project has it.
                taken = await c.post("/api/v1/projects", json={"name": "hidden"})
                assert taken.status_code == 409
                assert message(taken) == "project name 'hidden' is not available; choose another"
                # A new project may use no cluster until a global admin grants one.
                assert (await c.get("/api/v1/clusters")).json() == []
    finally:
        await runtime.stop(rt)


# Every route that names a project, an app or a deploy, with a body valid for it.
PROJECT_ROUTES = [
    ("PATCH", "/api/v1/projects/{p}", {"slack_channel": "#x"}),
    ("GET", "/api/v1/projects/{p}/members", None),
    ("PUT", "/api/v1/projects/{p}/members/user:eve", {"role": "viewer"}),
    ("DELETE", "/api/v1/projects/{p}/members/user:olive", None),
    ("GET", "/api/v1/projects/{p}/grants", None),
]
APP_ROUTES = [
    ("GET", "/api/v1/apps/{a}", None),
    ("PATCH", "/api/v1/apps/{a}", {"replicas": 2}),
    ("PATCH", "/api/v1/apps/{a}", {"protected": False}),
    ("POST", "/api/v1/apps/{a}/deploys", {"image": "1.2"}),
    ("GET", "/api/v1/apps/{a}/deploys", None),
    ("POST", "/api/v1/apps/{a}/rollback", {}),
    ("GET", "/api/v1/apps/{a}/revisions", None),
    ("POST", "/api/v1/apps/{a}/scale", {"replicas": 3}),
    ("POST", "/api/v1/apps/{a}/lock", {"reason": "x"}),
    ("POST", "/api/v1/apps/{a}/unlock", None),
    ("POST", "/api/v1/apps/{a}/pause", None),
    ("POST", "/api/v1/apps/{a}/resume", None),
    ("GET", "/api/v1/apps/{a}/status", None),
    ("GET", "/api/v1/apps/{a}/logs", None),
    ("GET", "/api/v1/apps/{a}/usage", None),
    ("GET", "/api/v1/apps/{a}/secrets", None),
    ("PUT", "/api/v1/apps/{a}/secrets", {"values": {"K": "v"}}),
    ("DELETE", "/api/v1/apps/{a}/secrets/K", None),
    ("POST", "/api/v1/apps/{a}/runs", {"command": ["true"]}),
    ("GET", "/api/v1/apps/{a}/runs", None),
    ("GET", "/api/v1/apps/{a}/runs?limit=5", None),
    ("GET", "/api/v1/apps/{a}/runs/web-run-abc", None),
    ("DELETE", "/api/v1/apps/{a}/runs/web-run-abc", None),
    ("GET", "/api/v1/apps/{a}/runs/web-run-abc/logs", None),
    ("DELETE", "/api/v1/apps/{a}", None),
]
DEPLOY_ROUTES = [
    ("GET", "/api/v1/deploys/{d}", None),
    ("POST", "/api/v1/deploys/{d}/approve", None),
    ("POST", "/api/v1/deploys/{d}/reject", None),
    ("POST", "/api/v1/deploys/{d}/cancel", None),
]


async def test_outsiders_get_exactly_the_answer_for_something_missing(tenants: Tenants) -> None:
    # rita is admin in rival and holds no role in acme: acme, web and web's deploy do not exist for her.
    rita = await tenants.as_("user:rita")

    async def both(method: str, path: str, real: str, missing: str, body: Any) -> None:
        key = path[path.index("{") + 1]
        a = await rita.request(method, path.replace("{" + key + "}", real), json=body)
        b = await rita.request(method, path.replace("{" + key + "}", missing), json=body)
        assert a.status_code == b.status_code == 404, (method, path, a.text, b.text)
        # Byte for byte the answer for a missing one of the same name.
        assert a.content == b.content.replace(missing.encode(), real.encode()), (method, path, a.text, b.text)

    for method, path, body in PROJECT_ROUTES:
        await both(method, path, "acme", "nope", body)
    for method, path, body in APP_ROUTES:
        await both(method, path, "web", "nop", body)
    for method, path, body in DEPLOY_ROUTES:
        await both(method, path, str(tenants.deploy_id), str(tenants.deploy_id + 1000), body)

    # Creating an app in a project you are not in answers as for a missing project (422 on the field).
    a = await rita.post("/api/v1/apps", json={**WEB, "name": "x1", "namespace": "team-b"})
    b = await rita.post("/api/v1/apps", json={**WEB, "project": "nope", "name": "x1", "namespace": "team-b"})
    assert a.status_code == b.status_code == 422 and a.json()["error"]["field"] == "project"
    assert message(a) == "no project named 'acme'" and message(b) == "no project named 'nope'"
    assert (await rita.get("/api/v1/apps", params={"project": "acme"})).json() == []

    # Nothing changed underneath: the deploy still waits, the app is still protected and there.
    d = (await tenants.admin.get(f"/api/v1/deploys/{tenants.deploy_id}")).json()
    assert d["status"] == "awaiting_approval"
    web = (await tenants.admin.get("/api/v1/apps/web")).json()
    assert web["protected"] is True and web["replicas"] == 1
    members = (await tenants.admin.get("/api/v1/projects/acme/members")).json()
    assert "user:eve" not in [m["subject"] for m in members]

    # Someone with a role that is too low is told which role is needed.
    dev = await tenants.as_("user:dev")
    r = await dev.patch("/api/v1/projects/acme", json={"slack_channel": "#x"})
    assert r.status_code == 403 and "needs the admin role; you have developer" in message(r)


async def test_app_names_in_conflicts(tenants: Tenants) -> None:
    rita = await tenants.as_("user:rita")
    r = await rita.post(
        "/api/v1/apps", json={**WEB, "project": "rival", "name": "web", "namespace": "team-b"}
    )
    assert r.status_code == 409 and message(r) == "app name 'web' is not available; choose another"
    pat = await tenants.as_("user:pat")
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "vault"})
    assert r.status_code == 409 and message(r) == "app name 'vault' is not available; choose another"
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "web"})
    assert r.status_code == 409 and message(r) == "an app named 'web' already exists"


async def test_a_project_admin_stays_in_its_own_namespaces_and_clusters(tenants: Tenants) -> None:
    pat = await tenants.as_("user:pat")
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "sneaky", "namespace": "team-b"})
    assert r.status_code == 409
    assert message(r) == "namespace team-b on cluster offline is not available to project acme"
    assert "rival" not in r.text
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "far", "cluster": "spare"})
    assert r.status_code == 403
    assert message(r) == (
        "project acme may not use cluster spare; a global admin can grant it with `shipit clusters grant spare acme`"
    )
    ghost = await pat.post("/api/v1/apps", json={**WEB, "name": "far", "cluster": "ghost"})
    assert ghost.status_code == 403 and message(ghost) == message(r).replace("spare", "ghost")
    # A namespace of its own on its granted cluster is fine: shipit will create it.
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "api", "namespace": "acme-api"})
    assert r.status_code == 201, r.text
    grants = (await pat.get("/api/v1/projects/acme/grants")).json()
    assert grants == [
        {
            "cluster": "offline",
            "project": "acme",
            "namespaces": {"acme-api": "created", "apps": "granted"},
            "granted_by": "user:admin",
        }
    ]
    apps = {a["name"]: a["namespace"] for a in (await tenants.admin.get("/api/v1/apps")).json()}
    assert apps == {"api": "acme-api", "vault": "team-b", "web": "apps"}


async def test_grant_list_and_revoke_over_the_api(tenants: Tenants) -> None:
    pat = await tenants.as_("user:pat")
    admin = tenants.admin
    r = await pat.post("/api/v1/clusters/spare/grants", json={"project": "acme"})
    assert r.status_code == 403 and message(r) == "granting a cluster needs a global admin token"
    assert (await pat.get("/api/v1/clusters/spare/grants")).status_code == 403
    assert (await pat.delete("/api/v1/clusters/offline/grants/rival")).status_code == 403

    r = await admin.post("/api/v1/clusters/spare/grants", json={"project": "acme"})
    assert r.status_code == 201, r.text
    assert r.json() == {"cluster": "spare", "project": "acme", "namespaces": {}, "granted_by": "user:admin"}
    r = await admin.post("/api/v1/clusters/spare/grants", json={"project": "rival", "namespace": "shared"})
    assert r.status_code == 201 and r.json()["namespaces"] == {"shared": "granted"}
    r = await admin.post("/api/v1/clusters/spare/grants", json={"project": "acme", "namespace": "shared"})
    assert r.status_code == 409 and "belongs to project rival" in message(r)  # admins may know
    listed = (await admin.get("/api/v1/clusters/spare/grants")).json()
    assert [(g["project"], g["namespaces"]) for g in listed] == [
        ("acme", {}),
        ("rival", {"shared": "granted"}),
    ]

    r = await pat.post("/api/v1/apps", json={**WEB, "name": "far", "cluster": "spare", "namespace": "far"})
    assert r.status_code == 201, r.text
    r = await admin.delete("/api/v1/clusters/spare/grants/acme")
    assert r.status_code == 409 and "still has apps on cluster spare (far)" in message(r)
    assert (await admin.delete("/api/v1/apps/far")).status_code == 200
    assert (await admin.delete("/api/v1/clusters/spare/grants/acme")).status_code == 204
    r = await pat.post("/api/v1/apps", json={**WEB, "name": "far", "cluster": "spare", "namespace": "far"})
    assert r.status_code == 403 and "may not use cluster spare" in message(r)
    r = await admin.delete("/api/v1/clusters/spare/grants/rival", params={"namespace": "shared"})
    assert r.status_code == 204
    listed = (await admin.get("/api/v1/clusters/spare/grants")).json()
    assert [(g["project"], g["namespaces"]) for g in listed] == [("rival", {})]
    audit = (await admin.get("/api/v1/audit", params={"target": "cluster/spare"})).json()
    assert sorted({a["action"] for a in audit}) == ["cluster.add", "cluster.grant", "cluster.revoke"]


async def test_cluster_list_hides_other_clusters_and_server_urls(tenants: Tenants) -> None:
    pat = await tenants.as_("user:pat")
    seen = (await pat.get("/api/v1/clusters")).json()
    assert seen == [
        {
            "name": "offline",
            "default_namespace": "apps",
            "server": None,
            "server_version": None,
            "last_check_at": None,
            "last_check_error": None,
        }
    ]
    assert (await (await tenants.as_("user:nobody")).get("/api/v1/clusters")).json() == []
    everything = (await tenants.admin.get("/api/v1/clusters")).json()
    assert [c["name"] for c in everything] == ["offline", "spare"]
    assert all(c["server"].startswith("https://127.0.0.1:") and c["server_version"] for c in everything)


async def test_grants_and_cluster_list_through_the_cli(tenants: Tenants, admin_token: str) -> None:
    runner = CliRunner()
    pat_token = await make_token(tenants.live_server.rt, subject="user:pat2", admin=False)
    await tenants.admin.put("/api/v1/projects/acme/members/user:pat2", json={"role": "admin"})

    async def shipit(*args: str, token: str = admin_token) -> tuple[int, str, str]:
        env = {"SHIPIT_URL": tenants.live_server.url, "SHIPIT_TOKEN": token}
        result = await asyncio.to_thread(runner.invoke, cli.app, list(args), env=env)
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = await shipit("clusters", "grant", "spare", "acme")
    assert code == 0 and "project acme may use cluster spare; shipit creates the namespaces" in out
    code, out, _ = await shipit("clusters", "grant", "spare", "rival", "--namespace", "legacy")
    assert code == 0 and "owns namespace legacy there" in out
    code, out, _ = await shipit("clusters", "grants", "spare")
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["CLUSTER", "PROJECT", "NAMESPACES", "GRANTED", "BY"]
    assert lines[1][:3] == ["spare", "acme", "-"] and lines[2][:4] == [
        "spare",
        "rival",
        "legacy",
        "(granted)",
    ]

    code, out, _ = await shipit("clusters", "list", token=pat_token)
    assert code == 0 and out.split() == ["NAME", "NAMESPACE", "offline", "apps", "spare", "apps"]
    assert "127.0.0.1" not in out
    code, _, err = await shipit("clusters", "grant", "spare", "acme", token=pat_token)
    assert code == 1 and "granting a cluster needs a global admin token" in err

    code, out, _ = await shipit("clusters", "revoke", "spare", "rival", "--namespace", "legacy")
    assert code == 0 and "no longer owns namespace legacy" in out
    code, out, _ = await shipit("clusters", "revoke", "spare", "acme")
    assert code == 0 and "project acme may no longer use cluster spare" in out
    code, out, _ = await shipit("clusters", "list", token=pat_token)
    assert out.split() == ["NAME", "NAMESPACE", "offline", "apps"]
    code, out, _ = await shipit("projects", "grants", "acme", token=pat_token)
    assert code == 0 and "offline" in out and "apps (granted)" in out
    code, out, _ = await shipit("clusters", "list")
    assert "SERVER" in out and "https://127.0.0.1:" in out


async def test_idempotency_key_of_another_projects_deploy_reveals_nothing(tenants: Tenants) -> None:
    ivy = await tenants.as_("user:ivy")
    admin = tenants.admin
    await admin.put("/api/v1/projects/rival/members/user:ivy", json={"role": "developer"})
    key = {"Idempotency-Key": "release-42"}
    first = await ivy.post("/api/v1/apps/vault/deploys", json={"image": "2.0"}, headers=key)
    assert first.status_code == 202, first.text
    again = await ivy.post("/api/v1/apps/vault/deploys", json={"image": "2.0"}, headers=key)
    assert again.json()["id"] == first.json()["id"]

    # Out of rival and into acme: the key no longer finds rival's deploy, on any app.
    await admin.delete("/api/v1/projects/rival/members/user:ivy")
    await admin.put("/api/v1/projects/acme/members/user:ivy", json={"role": "developer"})
    hidden = await ivy.post("/api/v1/apps/vault/deploys", json={"image": "2.0"}, headers=key)
    missing = await ivy.post("/api/v1/apps/nope/deploys", json={"image": "2.0"}, headers=key)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content.replace(b"nope", b"vault")
    reused = await ivy.post("/api/v1/apps/web/deploys", json={"image": "2.0"}, headers=key)
    assert reused.status_code == 409, reused.text
    assert "vault" not in reused.text and str(first.json()["id"]) not in reused.text
    assert "idempotency key was already used" in message(reused)


class Receiver:
    """A project's outgoing-webhook endpoint: records each delivery's event, body and signature."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(
            (request.headers["X-Shipit-Event"], body, request.headers.get("X-Shipit-Signature-256", ""))
        )
        return web.Response(status=204)


async def test_turning_protection_off_needs_an_owner_and_is_announced(tenants: Tenants) -> None:
    receiver = Receiver()
    async with serving_posts(receiver.handle) as url:
        r = await tenants.admin.patch(
            "/api/v1/projects/acme", json={"webhook_url": f"{url}/hook", "webhook_secret": "s3cret"}
        )
        assert r.status_code == 200, r.text
        pat, olive = await tenants.as_("user:pat"), await tenants.as_("user:olive")
        r = await pat.patch("/api/v1/apps/web", json={"protected": False})
        assert r.status_code == 403
        assert message(r) == "turning protection off in project acme needs the owner role; you have admin"
        assert (await tenants.admin.get("/api/v1/apps/web")).json()["protected"] is True
        r = await olive.patch("/api/v1/apps/web", json={"protected": False})
        assert r.status_code == 200 and r.json()["protected"] is False

        audit = (await olive.get("/api/v1/audit", params={"action": "app.unprotect"})).json()
        assert [(a["actor"], a["target"]) for a in audit] == [("user:olive", "app/web")]

        # The worker delivers it to the project's webhook, signed like every other event.
        for _ in range(600):
            if any(kind == "app.protection_changed" for kind, _, _ in receiver.got):
                break
            await asyncio.sleep(0.05)
        [(_, body, signature)] = [g for g in receiver.got if g[0] == "app.protection_changed"]
        assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        sent = json.loads(body)
        assert sent["project"] == "acme" and sent["app"] == "web"
        assert sent["details"]["protected"] is False and sent["details"]["by"] == "user:olive"
        # Turning it back on needs only the admin role.
        r = await pat.patch("/api/v1/apps/web", json={"protected": True})
        assert r.status_code == 200 and r.json()["protected"] is True
        rows = [
            r
            for r in await table_rows(tenants.live_server.rt, "events")
            if r["kind"] == "app.protection_changed"
        ]
        assert len(rows) == 2
