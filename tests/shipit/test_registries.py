"""Registry credentials over the real REST API and the `shipit registries` CLI.

The password goes in once (request body / stdin) and never comes back: not in any answer, audit
row, log line, nor in the database unencrypted.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import LiveServer, database_bytes
from tests.shipit.conftest import make_token, table_rows
from tests.shipit.test_cli import Run, ok, one_error_line, shipit, table

__all__ = ["shipit"]  # the CLI fixture, used here as in test_cli

PASSWORD = "r3gistry-Pa55word-never-shown"


async def _as(live_server: LiveServer, subject: str) -> httpx.AsyncClient:
    token = await make_token(live_server.rt, subject=subject, admin=False)
    return httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def test_api_role_rules_and_no_password_anywhere(
    live_server: LiveServer, api: httpx.AsyncClient, offline: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    for subject, role in (("user:alice", "admin"), ("user:dev", "developer")):
        r = await api.put(f"/api/v1/projects/acme/members/{subject}", json={"role": role})
        assert r.status_code == 200, r.text
    alice, dev, stranger = (
        await _as(live_server, "user:alice"),
        await _as(live_server, "user:dev"),
        await _as(live_server, "user:stranger"),
    )
    async with alice, dev, stranger:
        body = {"host": "ghcr.io", "username": "acme-bot", "password": PASSWORD, "project": "acme"}
        r = await alice.post("/api/v1/registries", json=body)
        assert r.status_code == 201, r.text
        assert r.json() == {"host": "ghcr.io", "project": "acme", "username": "acme-bot", "created": True}
        answers.append(r.text)

        r = await dev.post("/api/v1/registries", json=body)
        assert r.status_code == 403 and "needs the admin role" in r.json()["error"]["message"]
        r = await stranger.post("/api/v1/registries", json=body)
        assert r.status_code == 404 and "no project named 'acme'" in r.json()["error"]["message"]
        r = await alice.post("/api/v1/registries", json={**body, "project": None, "host": "docker.io"})
        assert r.status_code == 403 and "global admin" in r.json()["error"]["message"]
        r = await api.post(
            "/api/v1/registries", json={"host": "index.docker.io", "username": "hub", "password": PASSWORD}
        )
        assert r.status_code == 201 and r.json()["host"] == "docker.io"
        answers.append(r.text)
        r = await alice.post("/api/v1/registries", json={**body, "host": "not a host"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "host"
        assert PASSWORD not in r.text

        r = await dev.get("/api/v1/registries", params={"project": "acme"})
        assert r.status_code == 200
        assert [(x["host"], x["project"], x["username"]) for x in r.json()] == [
            ("ghcr.io", "acme", "acme-bot")
        ]
        answers.append(r.text)
        r = await stranger.get("/api/v1/registries", params={"project": "acme"})
        assert r.status_code == 404
        assert (await stranger.get("/api/v1/registries")).json() == []
        r = await api.get("/api/v1/registries")
        assert {(x["host"], x["project"]) for x in r.json()} == {("ghcr.io", "acme"), ("docker.io", None)}
        assert all("password" not in x for x in r.json())
        answers.append(r.text)
        answers.append((await api.get("/api/v1/audit", params={"target": "registry/"})).text)

        r = await dev.delete("/api/v1/registries/ghcr.io", params={"project": "acme"})
        assert r.status_code == 403
        r = await alice.delete("/api/v1/registries/ghcr.io", params={"project": "acme"})
        assert r.status_code == 204
        r = await alice.delete("/api/v1/registries/ghcr.io", params={"project": "acme"})
        assert r.status_code == 404
    audit_rows = await table_rows(live_server.rt, "audit_events")
    assert {r["action"] for r in audit_rows if str(r["target"]).startswith("registry/")} == {
        "registry.add",
        "registry.remove",
    }
    for text in [*answers, repr(audit_rows), caplog.text]:
        assert PASSWORD not in text
    assert PASSWORD.encode() not in database_bytes(live_server.rt)


async def test_cli_add_from_stdin_list_and_remove(shipit: Run, offline: str, live_server: LiveServer) -> None:
    out = ok(
        await shipit(
            "registries", "add", "registry.local:5000", "--username", "deployer", "--password-stdin",
            "--project", "acme", input=PASSWORD + "\n",
        )
    )  # fmt: skip
    assert out.strip() == "stored credentials for registry.local:5000 as deployer (project acme)"
    rows = await table_rows(live_server.rt, "registries")
    assert len(rows) == 1 and PASSWORD.encode() not in rows[0]["password_enc"]
    out = ok(
        await shipit(
            "registries", "add", "registry.local:5000", "-u", "deployer2", "--password-stdin",
            "--project", "acme", input="another-one",
        )
    )  # fmt: skip
    assert out.strip() == "replaced credentials for registry.local:5000 as deployer2 (project acme)"

    # Never as an argument, never empty.
    line = one_error_line(await shipit("registries", "add", "ghcr.io", "-u", "x"))
    assert "--password-stdin" in line
    line = one_error_line(
        await shipit("registries", "add", "ghcr.io", "-u", "x", "--password-stdin", input="")
    )
    assert line == "error: --password-stdin -: read nothing from stdin"

    listed = ok(await shipit("registries", "list"))
    rows_out = table(listed)
    assert rows_out[0] == ["HOST", "PROJECT", "USERNAME", "BY", "UPDATED"]
    assert rows_out[1][:4] == ["registry.local:5000", "acme", "deployer2", "user:admin"]
    as_json = ok(await shipit("registries", "list", "--project", "acme", "--json"))
    assert "deployer2" in as_json and PASSWORD not in as_json and "another-one" not in as_json

    assert ok(await shipit("registries", "remove", "registry.local:5000", "--project", "acme")).strip() == (
        "removed credentials for registry.local:5000 (project acme)"
    )
    line = one_error_line(await shipit("registries", "remove", "registry.local:5000", "--project", "acme"))
    assert "no credentials for registry registry.local:5000 in project acme" in line
    assert "no registry credentials" in ok(await shipit("registries", "list"))
