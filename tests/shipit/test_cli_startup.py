"""The CLI's start: API commands load no server module, and read SHIPIT_URL/SHIPIT_TOKEN as Settings does.

People and scripts run `shipit` dozens of times a day; the server's Settings (pydantic-settings and every
server option), its database and Kubernetes clients cost each run most of a second.  The client reads its
two settings itself (shipit.cli_client.client.client_settings), so the last test holds it to Settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import pytest

from shipit.cli_client import client
from shipit.settings import Settings
from tests.conftest import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]

# Top-level packages an API command has no use for.  (pydantic itself is typer's: it coerces values.)
SERVER_ONLY = (
    "pydantic_settings", "sqlalchemy", "alembic", "aiosqlite", "asyncpg", "fastapi", "starlette", "uvicorn",
    "kubernetes_asyncio", "aiohttp", "slack_bolt", "slack_sdk", "github", "opentelemetry", "jinja2",
    "authlib", "cryptography", "core", "storage", "bot", "webhooks", "web",
)  # fmt: skip
# Modules of shipit itself that are the server's.
SERVER_MODULES = ("shipit.settings", "shipit.main", "shipit.runtime", "shipit.app", "shipit.api")
# Not even these for `--help` or a command that stops before talking HTTP.
HTTP = ("httpx", "httpcore", "certifi", "asyncio")

# Runs the CLI's entry point and, at exit, prints the loaded modules named above on the last line.
PROBE = """
import atexit, json, sys
names = json.loads(sys.argv.pop(1))
atexit.register(lambda: print(json.dumps(sorted(
    n for n in names if n in sys.modules or any(m.startswith(n + ".") for m in sys.modules)
))))
from shipit.cli import main
main()
"""


async def loaded(*args: str, env: dict[str, str], names: tuple[str, ...]) -> tuple[list[str], str]:
    """Run `shipit ARGS` in a process of its own (in an empty directory: no .env); the listed modules
    it loaded, and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, json.dumps(names), *args,
        cwd=env["HOME"], env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1]), err.decode()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHIPIT_")}
    return {**env, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}


async def test_an_api_command_loads_no_server_module(live_server: LiveServer, admin_token: str, cli_env: dict[str, str]) -> None:  # fmt: skip
    env = {**cli_env, "SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": admin_token}
    found, err = await loaded("whoami", "--json", env=env, names=SERVER_ONLY + SERVER_MODULES + ("httpx",))
    assert err == ""
    # httpx is the probe that the command did talk to the server, and the only one allowed.
    assert found == ["httpx"]


async def test_help_and_setup_errors_load_no_http_client(cli_env: dict[str, str]) -> None:
    names = SERVER_ONLY + SERVER_MODULES + HTTP
    assert await loaded("--help", env=cli_env, names=names) == ([], "")
    found, err = await loaded("apps", "list", env={**cli_env, "SHIPIT_TOKEN": ""}, names=names)
    assert found == [] and "set SHIPIT_TOKEN" in err
    # Nothing listening: the client is built and fails to connect, still without the server's modules.
    url = f"http://127.0.0.1:{free_port()}"
    found, err = await loaded("apps", "list", env={**cli_env, "SHIPIT_URL": url, "SHIPIT_TOKEN": "t"}, names=names)  # fmt: skip
    assert "connection refused" in err and url in err
    assert "asyncio" not in found and not set(found) & set(SERVER_ONLY + SERVER_MODULES)


# (environment, .env file or None): every way a person sets the two, and the corners of each.
CASES = [
    ({}, None),
    ({"SHIPIT_URL": "https://ship.example", "SHIPIT_TOKEN": "shp_env"}, None),
    ({}, "SHIPIT_URL=https://from.file\nSHIPIT_TOKEN=shp_file\n"),
    ({"SHIPIT_TOKEN": "shp_env"}, "SHIPIT_URL=https://from.file\nSHIPIT_TOKEN=shp_file\n"),
    ({"SHIPIT_TOKEN": "", "SHIPIT_URL": ""}, "SHIPIT_URL=https://from.file\nSHIPIT_TOKEN=shp_file\n"),
    ({"shipit_url": "http://lower.case:1"}, "shipit_token=shp_lower\n"),
    ({}, "export SHIPIT_TOKEN='  shp_quoted  '\nSHIPIT_URL = \"https://q.example\" # comment\n"),
    ({}, "SHIPIT_URL\nSHIPIT_TOKEN=\n"),
    ({"OTHER": "shp_x"}, "SHIPIT_TOKEN=${OTHER}\nSHIPIT_URL=https://a\nSHIPIT_URL=https://b\n"),
    ({"SHIPIT_TOKEN": " shp_spaces \n"}, "SHIPIT_PORT=8001\nSHIPIT_MASTER_KEY=\n"),
]


@pytest.mark.parametrize(("environ", "dotenv"), CASES)
def test_the_client_reads_url_and_token_as_settings_does(
    environ: dict[str, str], dotenv: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in os.environ:
        if name.upper().startswith("SHIPIT_"):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    settings = Settings()
    expected = (settings.url, settings.token.get_secret_value().strip() if settings.token else "")
    assert client.client_settings() == expected


def test_a_directory_named_env_is_no_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.upper().startswith("SHIPIT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").mkdir()
    assert client.client_settings() == (Settings().url, "") == (client.DEFAULT_URL, "")


def test_only_an_http_url_without_a_proxy_skips_the_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    plain = client._tls_context("http://127.0.0.1:8000")
    # Never used for shipit itself; were it used, it would verify and trust nobody.
    assert not isinstance(plain, bool) and plain.check_hostname and plain.verify_mode == ssl.CERT_REQUIRED
    assert plain.get_ca_certs() == []
    assert client._tls_context("https://ship.example") is True
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")
    assert client._tls_context("http://127.0.0.1:8000") is True
