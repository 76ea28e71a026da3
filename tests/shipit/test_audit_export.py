"""The audit log is kept and exportable: /api/v1/audit?since=&after_id= pages, `shipit audit --format jsonl`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import httpx
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from shipit import cli
from storage import models
from tests.conftest import LiveServer

pytestmark = pytest.mark.both_databases

SINCE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


async def _seed(live_server: LiveServer, *, before: int, after: int) -> None:
    rows = [
        {
            "at": SINCE - dt.timedelta(days=1) if i < before else SINCE + dt.timedelta(minutes=i),
            "actor": "user:alice",
            "channel": "api",
            "action": "deploy.request",
            "target": f"app/web{i}",
            "details": {"n": i},
        }
        for i in range(before + after)
    ]
    async with live_server.rt.sessionmaker.begin() as session:
        await session.execute(insert(models.AuditEvent), rows)


async def test_api_pages_oldest_first_from_since(live_server: LiveServer, api: httpx.AsyncClient) -> None:
    await _seed(live_server, before=3, after=5)
    first = (
        await api.get("/api/v1/audit", params={"since": "2026-11-01", "action": "deploy.request", "limit": 3})
    ).json()
    assert [r["details"]["n"] for r in first] == [3, 4, 5]
    rest = (
        await api.get(
            "/api/v1/audit",
            params={
                "since": "2026-11-01",
                "action": "deploy.request",
                "after_id": first[-1]["id"],
                "limit": 3,
            },
        )
    ).json()
    assert [r["details"]["n"] for r in rest] == [6, 7]
    newest = (await api.get("/api/v1/audit", params={"action": "deploy.request", "limit": 2})).json()
    assert [r["details"]["n"] for r in newest] == [7, 6]  # without since: newest first, as before


async def test_cli_exports_every_page_as_jsonl(live_server: LiveServer, admin_token: str) -> None:
    await _seed(live_server, before=10, after=2100)  # more than two pages of 1000
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": admin_token}
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli.app,
        ["audit", "--since", "2026-11-01", "--action", "deploy.request", "--format", "jsonl"],
        env=env,
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["details"]["n"] for r in rows] == list(range(10, 2110))
    assert len({r["id"] for r in rows}) == len(rows)

    bad = await asyncio.to_thread(CliRunner().invoke, cli.app, ["audit", "--since", "yesterday"], env=env)
    assert bad.exit_code != 0 and "--since" in bad.stderr
