"""`shipit identities` and /api/v1/identities over real HTTP: admins link, nobody else links anyone's."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from shipit import cli
from tests.conftest import LiveServer
from tests.shipit.conftest import make_token
from tests.shipit.test_cli import ok, one_error_line

pytestmark = pytest.mark.both_databases


async def test_api_links_and_roles_follow_the_person(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str
) -> None:
    r = await api.put("/api/v1/projects/acme/members/slack:U0ALICE01", json={"role": "developer"})
    assert r.status_code == 200, r.text
    octo = await make_token(live_server.rt, subject="github:octo", admin=False)
    headers = {"Authorization": f"Bearer {octo}"}
    assert (await api.get("/api/v1/projects", headers=headers)).json() == []

    r = await api.post("/api/v1/identities", json={"subjects": ["slack:U0ALICE01", "github:Octo"]})
    assert r.status_code == 200, r.text
    linked = r.json()
    assert {i["subject"] for i in linked} == {"slack:U0ALICE01", "github:octo"}
    assert {i["verified_by"] for i in linked} == {"admin"} and len({i["person"] for i in linked}) == 1
    assert [p["name"] for p in (await api.get("/api/v1/projects", headers=headers)).json()] == ["acme"]
    mine = await api.get("/api/v1/identities", headers=headers)
    assert {i["subject"] for i in mine.json()} == {"slack:U0ALICE01", "github:octo"}

    # Not an admin: no linking (not even with oneself), no unlinking, no looking at others.
    for method, path, body in (
        ("POST", "/api/v1/identities", {"subjects": ["github:octo", "slack:U0BOB0001"]}),
        ("POST", "/api/v1/identities", {"subjects": ["user:eve", "slack:U0EVE"]}),
        ("DELETE", "/api/v1/identities/slack:U0ALICE01", None),
        ("GET", "/api/v1/identities?subject=slack:U0BOB0001", None),
    ):
        r = await api.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["type"] == "PermissionDenied"

    # A subject of another person is not moved: 409 naming it.
    r = await api.post("/api/v1/identities", json={"subjects": ["slack:U0BOB0001", "github:bob"]})
    assert r.status_code == 200, r.text
    r = await api.post("/api/v1/identities", json={"subjects": ["github:octo", "github:bob"]})
    assert r.status_code == 409 and "github:bob" in r.json()["error"]["message"], r.text

    r = await api.delete("/api/v1/identities/github:octo")
    assert r.status_code == 200 and r.json()["subject"] == "github:octo", r.text
    assert (await api.get("/api/v1/projects", headers=headers)).json() == []
    r = await api.post("/api/v1/identities", json={"subjects": ["github:octo"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "subjects", r.text
    r = await api.post("/api/v1/identities", json={"subjects": ["github:octo", "not a subject"]})
    assert r.status_code == 422, r.text
    audit = (await api.get("/api/v1/audit", params={"action": "identity.link"})).json()
    assert len(audit) == 2


async def test_cli_identities(live_server: LiveServer, admin_token: str) -> None:
    runner = CliRunner()

    async def run(*args: str, token: str = admin_token) -> Result:
        env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": token}
        return await asyncio.to_thread(runner.invoke, cli.app, list(args), env=env)

    out = ok(await run("identities", "link", "slack:U0ALICE01", "github:octo", "user:alice@acme.io"))
    assert out.startswith("person ") and "github:octo" in out and "user:alice@acme.io" in out
    out = ok(await run("identities", "list", "github:octo"))
    assert "slack:U0ALICE01" in out and "admin" in out and "VERIFIED BY" in out

    eve = await make_token(live_server.rt, subject="user:eve", admin=False)
    line = one_error_line(await run("identities", "link", "user:eve", "github:octo", token=eve))
    assert "global admin" in line
    line = one_error_line(await run("identities", "unlink", "github:octo", token=eve))
    assert "global admin" in line
    assert "no linked identities" in ok(await run("identities", "list", token=eve))

    ok(await run("identities", "link", "slack:U0BOB0001", "github:bob"))
    line = one_error_line(await run("identities", "link", "slack:U0BOB0001", "github:octo"))
    assert "github:octo already belongs to another person" in line
    out = ok(await run("identities", "unlink", "github:octo"))
    assert "github:octo is no longer linked" in out
    out = ok(await run("identities", "list", "github:octo"))
    assert "no linked identities" in out
