"""`shipit addons`: managed databases (PostgreSQL, Redis) next to an app; no command shows a password."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt
from shipit.cli_client.output import show_json, table

addons_app = typer.Typer(help="Add-ons: managed PostgreSQL and Redis for an app.", no_args_is_help=True)

KindArg = Annotated[str, typer.Argument(help="postgres or redis.")]


def _line(a: dict[str, Any]) -> str:
    why = a.get("error") or a.get("detail")
    return f"{a['kind']} add-on of {a['app']} ({a['plan']}): {a['state']}" + (f": {why}" if why else "")


@addons_app.command("create")
def addons_create(
    app_name: AppArg,
    kind: KindArg,
    plan: Annotated[str, typer.Option("--plan", help="small or medium.")] = "small",
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Provision a database for an app; the app gets DATABASE_URL / REDIS_URL once it is ready."""
    with api() as client:
        result = client.call(
            "POST",
            f"/apps/{q(app_name)}/addons",
            body={"kind": kind, "plan": plan},
            params={"env": environment},
        )
    if as_json:
        show_json(result)
        return
    typer.echo(_line(result))
    typer.echo(f"{result['secret_key']} is set on {app_name} when the database is ready (see `addons list`)")


@addons_app.command("list")
def addons_list(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """An app's add-ons and their state, as the cluster reports it."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/addons", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["KIND", "PLAN", "STATE", "SECRET", "DETAIL"],
        [[a["kind"], a["plan"], a["state"], a["secret_key"], a.get("error") or a["detail"]] for a in rows],
        empty=f"{app_name} has no add-ons",
    )


@addons_app.command("destroy")
def addons_destroy(
    app_name: AppArg,
    kind: KindArg,
    delete_data: Annotated[
        bool, typer.Option("--delete-data", help="Also delete its volume: the data is gone for good.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an add-on and its secret from the app; its data volume is kept unless --delete-data."""
    if not yes:
        what = "and its DATA" if delete_data else "(its data volume is kept)"
        try:
            sure = typer.confirm(f"Destroy the {kind} add-on of {app_name} {what}?")
        except typer.Abort:
            sure = False
        if not sure:
            fail(f"{kind} add-on of {app_name} not destroyed (pass --yes to skip this question)")
    with api() as client:
        result = client.call(
            "DELETE",
            f"/apps/{q(app_name)}/addons/{q(kind)}",
            params={"delete_data": "true" if delete_data else "false", "env": environment},
        )
    if as_json:
        show_json(result)
        return
    typer.echo(_line(result))
