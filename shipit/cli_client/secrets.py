"""`shipit secrets`: app secrets, write-only: no command prints a value."""

from __future__ import annotations

from typing import Annotated

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt, WaitOpt, parse_pairs, stdin_if_dash
from shipit.cli_client.output import deployed, show_json, table, when

secrets_app = typer.Typer(help="App secrets (write-only: values are never shown).", no_args_is_help=True)


@secrets_app.command("set")
def secrets_set(
    app_name: AppArg,
    pairs: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE pairs (prefer --value - to keep values out of history)."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Secret name (with --value).")] = None,
    value: Annotated[
        str | None, typer.Option("--value", help="Secret value; '-' reads it from stdin.", show_default=False)
    ] = None,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Do not roll the pods now; the next deploy picks it up.")
    ] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set secrets of an app; a deployed app rolls its pods to pick them up.  Values are never shown."""
    values = parse_pairs(pairs or [], what="secrets set")
    if (key is None) != (value is None):
        fail("--key and --value go together")
    if key is not None:
        values[key] = stdin_if_dash(value, flag="--value") or ""
    if not values:
        fail("give KEY=VALUE pairs, or --key KEY --value VALUE")
    with api() as client:
        result = client.call(
            "PUT",
            f"/apps/{q(app_name)}/secrets",
            body={"values": values},
            params={"deploy": "false" if no_deploy else "true", "env": environment},
        )
        if not as_json:
            typer.echo(
                f"set {', '.join(result['keys'])} on {app_name} (values are stored encrypted and never shown)"
            )
        deployed(
            client,
            result["deployment"],
            wait=wait,
            as_json=as_json,
            envelope={"keys": result["keys"]},
            environment=environment,
        )


@secrets_app.command("list")
def secrets_list(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """The names of an app's secrets (never their values)."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/secrets", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["KEY", "UPDATED"],
        [[s["key"], when(s["updated_at"])] for s in rows],
        empty=f"{app_name} has no secrets",
    )


@secrets_app.command("delete")
def secrets_delete(
    app_name: AppArg,
    keys: Annotated[list[str] | None, typer.Argument(help="Secret names.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Secret name; repeatable.")] = None,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Do not roll the pods now.")] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete secrets of an app; a deployed app rolls its pods once."""
    wanted = list(dict.fromkeys([*(keys or []), *(key or [])]))
    if not wanted:
        fail("give the KEY(s) to delete")
    with api() as client:
        # Check them all first, so a typo deletes nothing.
        have = {s["key"] for s in client.get(f"/apps/{q(app_name)}/secrets", env=environment)}
        missing = [k for k in wanted if k not in have]
        if missing:
            fail(f"keys: {app_name} has no secret {', '.join(missing)}")
        deployment = None
        for n, k in enumerate(wanted, start=1):
            last = n == len(wanted)
            result = client.call(
                "DELETE",
                f"/apps/{q(app_name)}/secrets/{q(k)}",
                params={"deploy": "true" if last and not no_deploy else "false", "env": environment},
            )
            deployment = result.get("deployment") if last else None
        if not as_json:
            typer.echo(f"deleted {', '.join(wanted)} from {app_name}")
        deployed(
            client, deployment, wait=wait, as_json=as_json, envelope={"keys": wanted}, environment=environment
        )
