"""`shipit previews`: the preview environments of pull requests."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt
from shipit.cli_client.output import show_json, table

previews_app = typer.Typer(help="Preview environments of pull requests.", no_args_is_help=True)


def _preview_line(p: dict[str, Any]) -> str:
    source = f" from fork {p['head_repo'] or '(deleted)'}" if p["is_fork"] else ""
    line = f"preview {p['namespace']} of {p['app']}: pull request #{p['pr']}{source} at {p['head_sha'][:7]}"
    line += f", {p['status']}"
    if p.get("deployment"):
        line += f", deploy #{p['deployment']} queued"
    return line


@previews_app.command("list")
def previews_list(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """The open previews of an app, and which wait for approval."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/previews", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["PR", "NAMESPACE", "STATUS", "COMMIT", "FORK", "APPROVED BY", "URL"],
        [
            [
                p["pr"],
                p["namespace"],
                p["status"],
                p["head_sha"][:7],
                (p["head_repo"] or "(deleted)") if p["is_fork"] else "-",
                p["approved_by"],
                p["url"],
            ]
            for p in rows
        ],
        empty=f"{app_name} has no open previews",
    )


@previews_app.command("approve")
def previews_approve(
    app_name: AppArg,
    number: Annotated[int, typer.Argument(help="Pull request number.", min=1)],
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy the waiting preview of a pull request from a fork (its current commit, without secrets)."""
    with api() as client:
        p = client.call("POST", f"/apps/{q(app_name)}/previews/{number}/approve", params={"env": environment})
    if as_json:
        show_json(p)
    else:
        typer.echo(_preview_line(p))
