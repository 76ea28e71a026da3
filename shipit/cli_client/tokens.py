"""`shipit tokens` and `shipit whoami`: API tokens, and who the one in SHIPIT_TOKEN is."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api
from shipit.cli_client.options import JsonOpt
from shipit.cli_client.output import show_json, table, when

tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def whoami(as_json: JsonOpt = False) -> None:
    """Who the API token in SHIPIT_TOKEN is."""
    with api() as client:
        me = client.get("/me")
    if as_json:
        show_json(me)
    else:
        typer.echo(f"{me['subject']}{' (global admin)' if me['admin'] else ''} at {client.url}")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="What the token is for, like ci or alice-laptop.")],
    subject: Annotated[
        str | None, typer.Option(help="Who it acts as, like user:ci (admins only; default: you).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="A global admin token (admins only).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token.  It is shown once and stored only as a hash."""
    body: dict[str, Any] = {"name": name, "admin": admin}
    if subject:
        body["subject"] = subject
    with api() as client:
        t = client.call("POST", "/tokens", body=body)
    if as_json:
        show_json(t)
        return
    typer.echo(
        f"created token {t['id']} ({t['name']}) for {t['subject']}{', global admin' if t['admin'] else ''}. "
        "It is shown ONCE, store it now:",
        err=True,
    )
    typer.echo(t["token"])


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """API tokens (yours, or all of them for an admin)."""
    with api() as client:
        rows = client.get("/tokens")
    if as_json:
        show_json(rows)
        return
    table(
        ["ID", "NAME", "PREFIX", "SUBJECT", "ADMIN", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                t["id"],
                t["name"],
                t["prefix"] + "...",
                t["subject"],
                t["admin"],
                when(t["created_at"]),
                when(t["last_used_at"]),
                when(t["revoked_at"]),
            ]
            for t in rows
        ],
        empty="no tokens",
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see tokens list).")], as_json: JsonOpt = False
) -> None:
    """Revoke an API token; it stops working at once."""
    with api() as client:
        t = client.call("DELETE", f"/tokens/{token_id}")
    if as_json:
        show_json(t)
    else:
        typer.echo(f"revoked token {t['id']} ({t['name']}, {t['subject']})")
