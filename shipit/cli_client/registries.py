"""`shipit registries`: credentials for private registries (the password only ever goes in)."""

from __future__ import annotations

from typing import Annotated

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import JsonOpt, stdin_if_dash
from shipit.cli_client.output import show_json, table, when

registries_app = typer.Typer(
    help="Credentials for private registries (passwords are write-only).", no_args_is_help=True
)

RegistryProjectOpt = Annotated[
    str | None,
    typer.Option("--project", help="The project whose credentials these are (default: global, admins only)."),
]


@registries_app.command("add")
def registries_add(
    host: Annotated[str, typer.Argument(help="Registry host, like ghcr.io or registry.local:5000.")],
    username: Annotated[str, typer.Option("--username", "-u", help="Registry user name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password (or token) from stdin.")
    ] = False,
    project: RegistryProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store credentials for a registry: deploys pull with them and pin tags to digests.  Replaces old ones."""
    if not password_stdin:
        fail(
            "give the password on stdin with --password-stdin (never as an argument: it would stay in history)"
        )
    password = stdin_if_dash("-", flag="--password-stdin") or ""
    with api() as client:
        result = client.call(
            "POST",
            "/registries",
            body={"host": host, "username": username, "password": password, "project": project},
        )
    if as_json:
        show_json(result)
        return
    where = f"project {project}" if project else "every project"
    verb = "stored" if result["created"] else "replaced"
    typer.echo(f"{verb} credentials for {result['host']} as {result['username']} ({where})")


@registries_app.command("list")
def registries_list(project: RegistryProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Registries with credentials: host, project and user name (never the password)."""
    with api() as client:
        rows = client.get("/registries", project=project)
    if as_json:
        show_json(rows)
        return
    table(
        ["HOST", "PROJECT", "USERNAME", "BY", "UPDATED"],
        [
            [r["host"], r["project"] or "(global)", r["username"], r["created_by"], when(r["updated_at"])]
            for r in rows
        ],
        empty="no registry credentials",
    )


@registries_app.command("remove")
def registries_remove(
    host: Annotated[str, typer.Argument(help="Registry host.")], project: RegistryProjectOpt = None
) -> None:
    """Forget credentials for a registry; the next deploy of each app removes its pull secret."""
    with api() as client:
        client.call("DELETE", f"/registries/{q(host)}", params={"project": project} if project else None)
    typer.echo(f"removed credentials for {host}" + (f" (project {project})" if project else " (global)"))
