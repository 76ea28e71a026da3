"""Build commands: `shipit builds list APP` and `shipit builds logs APP ID` (core.builds)."""

from __future__ import annotations

from typing import Annotated

import typer

from shipit.cli_client.client import api, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt, env_flag
from shipit.cli_client.output import show_json, table, when

builds_app = typer.Typer(help="Builds from source (apps update APP --build).", no_args_is_help=True)


@builds_app.command("list")
def builds_list(
    app_name: AppArg,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An app's builds, newest first."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/builds", limit=limit, env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["ID", "STATUS", "SHA", "PACK", "DIGEST", "DEPLOY", "PR", "CREATED", "ERROR"],
        [
            [
                b["id"],
                b["status"],
                b["sha"][:7],
                b["pack"] or "",
                (b["digest"] or "")[:19],
                b["deployment"] or "",
                f"#{b['pr']}" if b.get("pr") else "",  # a pull request's preview build
                when(b["created_at"]),
                b["error"] or "",
            ]
            for b in rows
        ],
        empty=(
            f"{app_name} has no builds yet: "
            f"shipit apps update {app_name}{env_flag(environment)} --build --build-image REPO, then push"
        ),
    )


@builds_app.command("logs")
def builds_logs(
    app_name: AppArg,
    build_id: Annotated[int, typer.Argument(help="The build's id (shipit builds list).")],
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tail of a build's log, and its error."""
    with api() as client:
        b = client.get(f"/apps/{q(app_name)}/builds/{build_id}", env=environment)
    if as_json:
        show_json(b)
        return
    typer.echo(f"build #{b['id']} of {b['sha'][:7]} ({b['ref']}): {b['status']}")
    if b["log"]:
        typer.echo(b["log"].rstrip("\n"))
    if b["error"]:
        typer.echo(f"error: {b['error']}")


@builds_app.command("retry")
def builds_retry(
    app_name: AppArg,
    build_id: Annotated[int, typer.Argument(help="A failed build's id (shipit builds list).")],
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a failed build's commit again (its deploy follows if it succeeds)."""
    with api() as client:
        b = client.call("POST", f"/apps/{q(app_name)}/builds/{build_id}/retry", params={"env": environment})
    if as_json:
        show_json(b)
        return
    typer.echo(
        f"build #{b['id']} of {b['sha'][:7]} queued again (run {b['runs']}): "
        f"shipit builds logs {app_name} {b['id']}{env_flag(environment)}"
    )
