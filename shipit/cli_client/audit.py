"""`shipit audit`: who did what, when; a table, or every event since a date as JSON lines."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail
from shipit.cli_client.options import JsonOpt
from shipit.cli_client.output import show_json, table, when


def audit(
    target: Annotated[str | None, typer.Option(help="Only targets containing this, like app/web.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, like deploy.request.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOpt = False,
    since: Annotated[
        str | None, typer.Option(help="Everything from this date or time on (UTC), oldest first, all pages.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, or jsonl: one JSON object per line (an export).")
    ] = "table",
) -> None:
    """Who did what, when (the append-only audit log)."""
    if fmt not in ("table", "jsonl"):
        fail(f"--format: expected table or jsonl, got {fmt!r}")
    if since is not None:
        try:
            dt.datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since: expected a date like 2026-11-01 or a time like 2026-11-01T12:00, got {since!r}")
    with api() as client:
        if since is not None or fmt == "jsonl":
            _audit_export(client, target=target, action=action, since=since or "1970-01-01")
            return
        rows = client.get("/audit", target=target, action=action, limit=limit)
    if as_json:
        show_json(rows)
        return
    table(
        ["AT", "ACTOR", "CHANNEL", "ACTION", "TARGET", "DETAILS"],
        [
            [when(r["at"]), r["actor"], r["channel"], r["action"], r["target"], _details(r["details"])]
            for r in rows
        ],
        empty="no audit events",
    )


def _audit_export(client: Any, *, target: str | None, action: str | None, since: str) -> None:
    """Every audit event since `since`, oldest first, one JSON object per line, page after page."""
    after: int | None = None
    while True:
        rows = client.get("/audit", target=target, action=action, since=since, after_id=after, limit=1000)
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
        if len(rows) < 1000:
            return
        after = int(rows[-1]["id"])


def _details(details: dict[str, Any]) -> str:
    text = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in details.items() if v is not None
    )
    return text if len(text) <= 80 else text[:77] + "..."
