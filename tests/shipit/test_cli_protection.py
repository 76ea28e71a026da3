"""`shipit envs ...`, `shipit projects lock|unlock` and `deploy --override-window` against the real service."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import httpx
import pytest
from click.testing import Result
from sqlalchemy import update
from typer.testing import CliRunner

from core import protection
from shipit import cli
from storage import models
from tests.conftest import LiveServer

APP = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}
BERLIN = ZoneInfo("Europe/Berlin")


class Cli:
    def __init__(self, live_server: LiveServer, token: str) -> None:
        self.env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": token}
        self.runner = CliRunner()

    async def __call__(self, *args: str) -> Result:
        return await asyncio.to_thread(self.runner.invoke, cli.app, list(args), env=self.env)


@pytest.fixture
def shipit(live_server: LiveServer, admin_token: str) -> Cli:
    return Cli(live_server, admin_token)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def error(result: Result) -> str:
    assert result.exit_code == 1, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


async def test_windows_override_locks_and_protection_from_the_cli(
    shipit: Cli, api: httpx.AsyncClient, offline: str, live_server: LiveServer
) -> None:
    r = await api.post("/api/v1/apps", json={**APP, "name": "web"})
    assert r.status_code == 201, r.text

    # A window that opens in two hours (from the clock, no waiting): now is outside it.
    opens = (dt.datetime.now(dt.UTC).astimezone(BERLIN) + dt.timedelta(hours=2)).replace(
        second=0, microsecond=0
    )
    closes = opens + dt.timedelta(hours=1)
    out = ok(
        await shipit(
            "envs", "window", "acme", "production", "--days", "mon-sun",
            "--from", f"{opens:%H:%M}", "--to", f"{closes:%H:%M}", "--tz", "Europe/Berlin",
        )
    )  # fmt: skip
    assert f"mon,tue,wed,thu,fri,sat,sun {opens:%H:%M}-{closes:%H:%M}" in out and "Europe/Berlin" in out
    refused = error(await shipit("deploy", "web", "1.1"))
    assert f"the next allowed time is {protection.show_time(opens, tz=BERLIN)}" in refused
    assert "deploy #" in ok(await shipit("deploy", "web", "1.1", "--override-window"))
    audit = (await api.get("/api/v1/audit", params={"action": "deploy.override_window"})).json()
    assert len(audit) == 1 and audit[0]["details"]["environment"] == "production"
    assert "any time" in ok(await shipit("envs", "window", "acme", "production", "--clear"))

    # A lock for two hours blocks; once its time is up it no longer does.
    out = ok(await shipit("envs", "lock", "acme", "production", "--reason", "db migration", "--for", "2h"))
    assert "by user:admin: db migration (until " in out
    assert "environment production is locked by user:admin until " in error(
        await shipit("deploy", "web", "1.2")
    )
    async with live_server.rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Environment).values(locked_until=models.utcnow() - dt.timedelta(minutes=1))
        )
    assert "locked" not in ok(await shipit("envs", "protection", "acme", "production"))
    assert "deploy #" in ok(await shipit("deploy", "web", "1.2"))

    # The project lock.
    assert "is locked by user:admin: audit" in ok(
        await shipit("projects", "lock", "acme", "--reason", "audit")
    )
    assert "project acme is locked by user:admin: audit" in error(await shipit("deploy", "web", "1.3"))
    # What holds now in an environment includes its project's lock (the environment's own is off).
    shown = ok(await shipit("envs", "protection", "acme", "production"))
    assert "project locked  by user:admin: audit" in shown and "\nlocked" not in shown, shown
    assert '"project_lock"' in ok(await shipit("envs", "protection", "acme", "production", "--json"))
    assert "is unlocked" in ok(await shipit("projects", "unlock", "acme"))
    assert "project locked" not in ok(await shipit("envs", "protection", "acme", "production"))

    # Protection: two approvals from admins, waiting at most two hours.
    out = ok(
        await shipit(
            "envs", "protect", "acme", "production", "--approvals", "2", "--approver-role", "admin",
            "--approval-ttl", "2h",
        )
    )  # fmt: skip
    assert "2 from the admin role, expire after 7200s" in out
    out = ok(await shipit("deploy", "web", "1.4"))
    assert "awaiting_approval" in out and "(0 of 2 approvals)" in out
    assert "not needed" in ok(await shipit("envs", "unprotect", "acme", "production"))

    # A freeze until a given time (in the environment's zone: Europe/Berlin, set above).
    assert "needs --until" in error(await shipit("envs", "freeze", "acme", "production"))
    until = (dt.datetime.now(BERLIN) + dt.timedelta(days=2)).replace(second=0, microsecond=0, tzinfo=None)
    out = ok(
        await shipit("envs", "freeze", "acme", "production", "--until", until.isoformat(), "--reason", "xmas")
    )
    assert "(xmas)" in out
    refused = error(await shipit("deploy", "web", "1.5"))
    assert "is frozen (xmas)" in refused
    assert protection.show_time(until.replace(tzinfo=BERLIN), tz=BERLIN) in refused
    ok(await shipit("envs", "freeze", "acme", "production", "--clear"))
    assert "deploy #" in ok(await shipit("deploy", "web", "1.5"))


async def test_bad_input_is_one_error_line(shipit: Cli, offline: str) -> None:
    assert "--approval-ttl" in error(
        await shipit("envs", "protect", "acme", "production", "--approval-ttl", "soon")
    )
    assert "time zone" in error(
        await shipit("envs", "window", "acme", "production", "--days", "mon", "--from", "09:00", "--to", "17:00",
                     "--tz", "Mars/Olympus")
    )  # fmt: skip
    assert "no environment named 'qa'" in error(await shipit("envs", "lock", "acme", "qa"))
