"""How the CLI prints: aligned tables, `key  value` lines, JSON, and a deploy it follows to the end."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Any

import typer

from shipit.cli_client.client import Api, fail
from shipit.cli_client.options import env_flag

POLL_SECONDS = 1.0
FINAL = ("succeeded", "failed", "superseded", "cancelled")


def show_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> None:
    if not rows:
        typer.echo(empty)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields_out(pairs: Sequence[tuple[str, Any]]) -> None:
    """`key   value` lines, aligned, skipping empty values."""
    shown = [(k, _cell(v)) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in shown), default=0)
    for key, value in shown:
        typer.echo(f"{key.ljust(width)}  {value}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def deploy_line(d: dict[str, Any]) -> str:
    line = f"deploy #{d['id']} {d['status']}: {d['app']} {d['image']} (revision {d['revision']})"
    if d["status"] == "running" and d.get("desired"):
        line += f", {d['ready']}/{d['desired']} ready"
    if d["status"] == "awaiting_approval":
        if d.get("approvals_needed"):
            line += f" ({d.get('approvals') or 0} of {d['approvals_needed']} approvals)"
        line += f"; someone else on the project approves it with `shipit approve {d['id']}`"
    if d.get("error") and d["status"] != "succeeded":
        line += f" - {d['error']}"
    return line


def follow(
    client: Api, deployment: dict[str, Any], *, quiet: bool, environment: str | None = None
) -> dict[str, Any]:
    """Poll the deploy until it is final, printing each change unless quiet; returns the final state."""
    d, last = deployment, None
    try:
        while True:
            seen = (d["status"], d["ready"], d["desired"])
            if seen != last and not quiet:
                typer.echo(deploy_line(d))
            last = seen
            if d["status"] in FINAL:
                break
            time.sleep(POLL_SECONDS)
            d = client.get(f"/deploys/{d['id']}")
    except KeyboardInterrupt:
        # The environment the command named, or `status` is refused for an app in several.
        status = f"shipit status {d['app']}{env_flag(environment)}"
        typer.echo(f"stopped waiting; deploy #{d['id']} carries on (`{status}`)", err=True)
        raise typer.Exit(130) from None
    if d.get("logs") and not quiet:
        typer.echo("last log lines:")
        for line in d["logs"]:
            typer.echo(f"  {line}")
    return d


def deployed(
    client: Api,
    d: dict[str, Any] | None,
    *,
    wait: bool,
    as_json: bool,
    envelope: dict[str, Any] | None = None,
    environment: str | None = None,
) -> None:
    """Print a deploy the API just accepted (inside `envelope` for --json), and follow it with --wait.

    With --wait the command exits 1 unless the deploy succeeded, after printing it either way.
    """
    if d is not None and wait:
        d = follow(client, d, quiet=as_json, environment=environment)
    if as_json:
        show_json({**envelope, "deployment": d} if envelope is not None else d)
    elif d is not None and not wait:
        typer.echo(deploy_line(d))
    if d is not None and wait and d["status"] != "succeeded":
        fail(f"deploy #{d['id']} {d['status']}: {d.get('error') or 'no reason given'}")
