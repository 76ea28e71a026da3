"""Abuse limits and small leaks, over real HTTP: API throttling, slow clients, body caps on the webhook
routes, security headers, private files, the bootstrap token file, and cluster errors that do not
repeat what a hostile API server says."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import text

from core import tokens
from shipit import runtime, serving
from shipit.main import create_app
from shipit.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.conftest import serving as serve_app
from tests.shipit.conftest import make_token

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
GITHUB_SECRET = "a webhook secret"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def other_address() -> httpx.AsyncHTTPTransport:
    # The whole of 127.0.0.0/8 is loopback on Linux: a second client address without a second host.
    return httpx.AsyncHTTPTransport(local_address="127.0.0.2")


# --------------------------------------------------------------------------- API throttling


async def test_failed_authentication_is_throttled_per_address(
    live_server: LiveServer, settings: Settings
) -> None:
    strict = settings.model_copy(update={"api_auth_failures_per_minute": 5})
    good = await make_token(live_server.rt)
    async with serve_app(create_app(strict, rt=live_server.rt)) as url:
        async with httpx.AsyncClient(timeout=30, base_url=url) as here:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer shp_guess"}) * 2:
                r = await here.get("/api/v1/me", headers=headers)
                if r.status_code == 429:
                    break
                assert r.status_code == 401, r.text
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limited"
            # Blocked whatever it sends now, a good token included...
            r = await here.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            # ...but only on the API.
            assert (await here.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(timeout=30, base_url=url, transport=other_address()) as elsewhere:
            r = await elsewhere.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"})
            assert r.status_code == 200, r.text


async def test_each_token_has_a_request_budget(live_server: LiveServer, settings: Settings) -> None:
    budget = settings.model_copy(update={"api_requests_per_minute": 3})
    first, second = await make_token(live_server.rt), await make_token(live_server.rt, subject="user:ci")
    async with (
        serve_app(create_app(budget, rt=live_server.rt)) as url,
        httpx.AsyncClient(timeout=30, base_url=url) as http,
    ):
        answers = [
            (await http.get("/api/v1/me", headers={"Authorization": f"Bearer {first}"})).status_code
            for _ in range(4)
        ]
        assert answers == [200, 200, 200, 429]
        r = await http.get("/api/v1/projects", headers={"Authorization": f"Bearer {first}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "budget" in r.json()["error"]["message"]
        # Spelling the scheme differently is the same token, the same budget.
        for scheme in ("bearer", "BEARER", "Bearer "):
            r = await http.get("/api/v1/me", headers={"Authorization": f"{scheme} {first}"})
            assert r.status_code == 429
        # Another token has its own budget, from the same address.
        r = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"})
        assert r.status_code == 200 and r.json()["subject"] == "user:ci"


async def test_limits_at_zero_are_off(live_server: LiveServer, settings: Settings) -> None:
    off = settings.model_copy(update={"api_auth_failures_per_minute": 0, "api_requests_per_minute": 0})
    token = await make_token(live_server.rt)
    async with (
        serve_app(create_app(off, rt=live_server.rt)) as url,
        httpx.AsyncClient(timeout=30, base_url=url) as http,
    ):
        for _ in range(30):
            assert (await http.get("/api/v1/me")).status_code == 401
        for _ in range(30):
            assert (
                await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            ).status_code == 200


# --------------------------------------------------------------------------- slow and greedy clients


@contextlib.asynccontextmanager
async def uvicorn_as_served(
    settings: Settings, rt: runtime.Runtime, **override: Any
) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """The app under uvicorn with exactly the options `shipit serve` uses; yields the port and server."""
    port = free_port()
    options = {**serving.uvicorn_options(settings), **override}
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, rt=rt), host="127.0.0.1", port=port, lifespan="on", **options)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port, server
    finally:
        server.should_exit = True
        await task


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a deadline guards the test only)."""
    return await asyncio.wait_for(reader.read(), timeout=30)


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    live_server: LiveServer, settings: Settings, protocol: str
) -> None:
    quick = settings.model_copy(update={"header_timeout_seconds": 0.5})
    base = serving.HttpToolsWithHeaderTimeout if protocol == "httptools" else serving.H11WithHeaderTimeout
    http = type("Guarded", (base,), {"header_timeout": 0.5})
    async with uvicorn_as_served(quick, live_server.rt, http=http) as (port, _):
        # Slowloris: a request line and one header, then nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await closed_by_server(reader) == b""
        writer.close()

        # A keep-alive connection: the first request is answered, a stalled second one is cut off.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        await writer.drain()
        answered = await closed_by_server(reader)
        assert answered.startswith(b"HTTP/1.1 200") and answered.count(b"HTTP/1.1") == 1
        writer.close()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One whole response (headers and a Content-Length body) off a kept-alive connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), timeout=30)


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
async def test_an_idle_kept_alive_connection_outlives_the_header_timeout(
    live_server: LiveServer, settings: Settings, protocol: str
) -> None:
    # The header clock starts at the next request's first byte: idling between requests is bounded by
    # the keep-alive alone, which a proxy in front relies on (it reuses the connection until its own
    # idle timeout; a server that closes first loses the request sent as it closes).
    quick = settings.model_copy(update={"header_timeout_seconds": 0.5, "keep_alive_seconds": 60.0})
    base = serving.HttpToolsWithHeaderTimeout if protocol == "httptools" else serving.H11WithHeaderTimeout
    http = type("Guarded", (base,), {"header_timeout": 0.5})
    async with uvicorn_as_served(quick, live_server.rt, http=http) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(1.5)  # three header timeouts, idle
        # A next request that starts and stalls is still cut off, counted from its first byte.
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_serve_uses_the_guarded_protocol_and_the_configured_limits(settings: Settings) -> None:
    tuned = settings.model_copy(
        update={"header_timeout_seconds": 3.0, "keep_alive_seconds": 7.0, "max_connections": 42}
    )
    options = serving.uvicorn_options(tuned)
    assert issubclass(options["http"], serving.HttpToolsWithHeaderTimeout)
    assert options["http"].header_timeout == 3.0
    assert options["timeout_keep_alive"] == 7.0 and options["limit_concurrency"] == 42


async def test_connections_over_the_limit_get_503(live_server: LiveServer, settings: Settings) -> None:
    capped = settings.model_copy(update={"max_connections": 2})
    async with uvicorn_as_served(capped, live_server.rt) as (port, server):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        while len(server.server_state.connections) < 2:  # accepted on the server's side
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert r.status_code == 503
        for _, writer in idle:
            writer.close()


async def test_a_stalled_body_is_408(live_server: LiveServer, settings: Settings) -> None:
    quick = settings.model_copy(update={"body_timeout_seconds": 0.5})
    async with serve_app(create_app(quick, rt=live_server.rt)) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"name": '
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        assert head.startswith(b"HTTP/1.1 408"), head
        writer.close()


# --------------------------------------------------------------------------- bodies over the cap


def slack_signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SLACK_SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def github_signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "Content-Type": "application/json",
    }


@pytest.fixture
async def channels_on(settings: Settings) -> AsyncIterator[tuple[str, runtime.Runtime]]:
    """The app with both webhook channels on, a 2 KiB body cap, served over loopback."""
    on = settings.model_copy(
        update={
            "max_body_bytes": 2048,
            "slack_signing_secret": SecretStr(SLACK_SECRET),
            "slack_bot_token": SecretStr("xoxb-never-used"),
            "slack_api_url": f"http://127.0.0.1:{free_port()}/api/",
            "github_webhook_secret": SecretStr(GITHUB_SECRET),
            "github_token": SecretStr("never-used"),
            "github_api_url": f"http://127.0.0.1:{free_port()}",
        }
    )
    rt = await runtime.build(on)
    try:
        async with serve_app(create_app(rt=rt)) as url:
            yield url, rt
    finally:
        await runtime.stop(rt)


@pytest.mark.parametrize("route", ["/slack/events", "/github/webhook"])
async def test_bodies_over_the_cap_are_413_on_the_webhook_routes_without_errors_logged(
    channels_on: tuple[str, runtime.Runtime], caplog: pytest.LogCaptureFixture, route: str
) -> None:
    url, _ = channels_on
    caplog.set_level(logging.DEBUG)
    big = b"text=" + b"x" * 10_000
    headers = slack_signed(big) if route == "/slack/events" else github_signed(big)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        declared = await http.post(route, content=big, headers=headers)
        streamed = await http.post(route, content=chunks(), headers=headers)  # chunked, no length
        # The route itself works: a small signed body gets past the cap and the signature check.
        if route == "/slack/events":
            small = b'{"type": "url_verification", "challenge": "c"}'
            fine = await http.post(
                route, content=small, headers={**slack_signed(small), "Content-Type": "application/json"}
            )
        else:
            small = b'{"zen": "ok"}'
            fine = await http.post(
                route, content=small, headers={**github_signed(small), "X-GitHub-Event": "ping"}
            )
    assert "content-length" not in streamed.request.headers
    assert [declared.status_code, streamed.status_code] == [413, 413], (declared.text, streamed.text)
    assert declared.json()["error"]["type"] == streamed.json()["error"]["type"] == "payload_too_large"
    assert fine.status_code == 200, fine.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


# --------------------------------------------------------------------------- headers


SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
}


async def test_every_response_carries_the_security_headers(
    live_server: LiveServer, settings: Settings
) -> None:
    token = await make_token(live_server.rt)
    auth = {"Authorization": f"Bearer {token}"}
    small = settings.model_copy(update={"max_body_bytes": 1024, "api_requests_per_minute": 5})
    async with (
        serve_app(create_app(small, rt=live_server.rt)) as url,
        httpx.AsyncClient(timeout=30, base_url=url) as http,
    ):
        answers = [
            await http.get("/healthz"),
            await http.get("/metrics"),
            await http.get("/docs"),
            await http.get("/no/such/page"),
            await http.get("/api/v1/me"),  # 401
            await http.get("/api/v1/me", headers=auth),
            await http.post("/api/v1/projects", headers=auth, json={"name": "x" * 5000}),  # 413
            await http.post("/slack/events", content=b"x"),  # 503: Slack is off here
        ]
        while (r := await http.get("/api/v1/me", headers=auth)).status_code != 429:
            pass
        answers.append(r)
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 401, 200, 413, 503, 429]
    for answer in answers:
        assert {k: answer.headers.get(k) for k in SECURITY} == SECURITY, (answer.request.url, answer.headers)


async def test_token_answers_are_not_cached(live_server: LiveServer) -> None:
    token = await make_token(live_server.rt)
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        created = await api.post("/api/v1/tokens", json={"name": "ci", "subject": "user:ci"})
        listed = await api.get("/api/v1/tokens")
        health = await api.get("/healthz")
    assert created.status_code == 201 and created.json()["token"].startswith("shp_")
    assert created.headers["cache-control"] == "no-store"
    assert listed.headers["cache-control"] == "no-store"
    assert "cache-control" not in health.headers


# --------------------------------------------------------------------------- files


async def test_database_directory_and_master_key_are_private(settings: Settings, tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual one: files 0644 and directories 0755 unless we say so
    try:
        db = tmp_path / "fresh" / "db" / "shipit.db"
        data = tmp_path / "fresh" / "var"
        fresh = settings.model_copy(
            update={"database_url": f"sqlite+aiosqlite:///{db}", "data_dir": data, "master_key": None}
        )
        rt = await runtime.build(fresh)
        try:
            async with rt.sessionmaker.begin() as session:
                await session.execute(text("SELECT 1"))
            await make_token(rt)  # a write, so the write-ahead log exists
            wal = Path(f"{db}-wal")
            assert wal.exists()
            assert mode(wal) == 0o600
        finally:
            await runtime.stop(rt)
    finally:
        os.umask(old_umask)
    assert mode(db) == 0o600
    assert mode(db.parent) == 0o700 and mode(db.parent.parent) == 0o700
    assert mode(data) == 0o700
    assert mode(data / "master.key") == 0o600


def test_a_generated_master_key_is_announced_as_the_readme_says_never_logged(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's first start: a warning that a key went to the data dir, naming SHIPIT_MASTER_KEY and
    `shipit keys generate`; the key itself appears in no log line, and the next start reuses it."""
    fresh = settings.model_copy(update={"data_dir": tmp_path / "var", "master_key": None})
    caplog.set_level(logging.DEBUG)
    key = runtime.resolve_master_key(fresh)
    assert (tmp_path / "var" / "master.key").read_text().strip() == key
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "GENERATED" in warning and str(tmp_path / "var" / "master.key") in warning
    assert "SHIPIT_MASTER_KEY" in warning and "`shipit keys generate`" in warning
    assert key not in caplog.text
    caplog.clear()
    assert runtime.resolve_master_key(fresh) == key
    assert "GENERATED" not in caplog.text and key not in caplog.text


async def test_first_start_writes_the_admin_token_to_a_private_file_not_the_log(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "secrets" / "admin-token"
    first = settings.model_copy(update={"bootstrap_token_file": token_file, "run_worker": False})
    caplog.set_level(logging.DEBUG)
    async with serve_app(create_app(first)) as url:
        token = token_file.read_text().strip()
        async with httpx.AsyncClient(
            timeout=30, base_url=url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            me = await api.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["subject"] == "user:admin" and me.json()["admin"]
    assert mode(token_file) == 0o600 and mode(token_file.parent) == 0o700
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if token in m]
    assert [m for m in messages if str(token_file) in m]


async def test_an_existing_token_file_is_never_overwritten(settings: Settings, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("someone else's file\n")
    rt = await runtime.build(settings)
    try:
        with pytest.raises(RuntimeError, match="refusing to overwrite"):
            await runtime.bootstrap_admin_token(rt, write_to=token_file)
        async with rt.sessionmaker() as session:
            assert not await tokens.has_any(session)  # no token whose only copy went nowhere
    finally:
        await runtime.stop(rt)
    assert token_file.read_text() == "someone else's file\n"


async def test_a_copy_of_env_example_is_the_defaults_and_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`cp .env.example .env` (the README: it "lists every one"): every value it shows is the default and
    every empty one means unset, so shipit starts as without it; `SHIPIT_MASTER_KEY=` was an empty key."""
    for name in [n for n in os.environ if n.startswith("SHIPIT_")]:
        monkeypatch.delenv(name)
    example = Path(__file__).resolve().parents[2] / ".env.example"
    from_file = Settings(_env_file=example)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    differ = {
        k: getattr(from_file, k)
        for k in Settings.model_fields
        if getattr(from_file, k) != getattr(defaults, k)
    }
    assert differ == {}
    monkeypatch.setenv("SHIPIT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'shipit.db'}")
    monkeypatch.setenv("SHIPIT_DATA_DIR", str(tmp_path / "var"))
    rt = await runtime.build(Settings(_env_file=example, run_worker=False))  # type: ignore[call-arg]
    await runtime.stop(rt)
    assert (tmp_path / "var" / "master.key").is_file()  # generated, as on a first start without a key


def test_an_empty_token_file_setting_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPIT_BOOTSTRAP_TOKEN_FILE", "")
    assert Settings(_env_file=None).bootstrap_token_file is None  # type: ignore[call-arg]


# --------------------------------------------------------------------------- hostile API servers

MARKER = "EVIL-MARKER-<script>alert(1)</script>"


@contextlib.asynccontextmanager
async def hostile_api_server(status: int, body: bytes, content_type: str) -> AsyncIterator[int]:
    """A 'Kubernetes API server' that answers every request with `status` and `body`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                f"HTTP/1.1 {status} {MARKER}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def kubeconfig_for(port: int) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: evil
  cluster: {{server: "http://127.0.0.1:{port}"}}
contexts:
- name: evil
  context: {{cluster: evil, user: u, namespace: apps}}
current-context: evil
users:
- name: u
  user: {{token: not-a-real-token}}
"""


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (500, f"<html>{MARKER}</html>".encode(), "text/html"),
        (
            503,
            json.dumps({"kind": "Status", "message": MARKER, "reason": MARKER}).encode(),
            "application/json",
        ),
        (401, json.dumps({"kind": "Status", "message": MARKER}).encode(), "application/json"),
        (403, MARKER.encode(), "text/plain"),
    ],
)
async def test_cluster_add_errors_do_not_repeat_what_the_server_said(
    live_server: LiveServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
    content_type: str,
) -> None:
    token = await make_token(live_server.rt)
    caplog.set_level(logging.DEBUG)
    async with (
        hostile_api_server(status, body, content_type) as port,
        httpx.AsyncClient(
            timeout=30, base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}
        ) as api,
    ):
        r = await api.post("/api/v1/clusters", json={"name": "evil", "kubeconfig": kubeconfig_for(port)})
    assert r.status_code >= 400, r.text
    message = r.json()["error"]["message"]
    assert MARKER not in r.text and urllib.parse.quote(MARKER) not in r.text
    assert f"HTTP {status}" in message, message
    logged = [rec.getMessage() for rec in caplog.records if not rec.name.startswith("httpx")]
    assert not [m for m in logged if "EVIL-MARKER" in m]
    assert (await api_clusters(live_server, token)) == []


async def api_clusters(live_server: LiveServer, token: str) -> list[Any]:
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        return list((await api.get("/api/v1/clusters")).json())


async def test_an_existing_database_readable_by_others_is_pointed_out(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "old" / "shipit.db"
    db.parent.mkdir()
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    caplog.set_level(logging.WARNING)
    rt = await runtime.build(settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{db}"}))
    await runtime.stop(rt)
    assert [r for r in caplog.records if str(db) in r.getMessage() and "chmod 600" in r.getMessage()]
    assert mode(db) == 0o644  # pointed out, not changed behind the owner's back
