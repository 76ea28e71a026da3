"""`shipit envs`: a project's environments in promotion order (their protection is in protection)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import JsonOpt
from shipit.cli_client.output import show_json, table

envs_app = typer.Typer(
    help="A project's environments (staging -> production), in order.", no_args_is_help=True
)
ProjectArg = Annotated[str, typer.Argument(help="Project name.")]
EnvArg = Annotated[str, typer.Argument(help="Environment name.")]


def _env_line(e: dict[str, Any]) -> str:
    where = f"{e['cluster'] or '-'}/{e['namespace'] or '-'}"
    return (
        f"{e['project']} {e['name']} (position {e['position']}, {where}): {', '.join(e['apps']) or 'no apps'}"
    )


@envs_app.command("list")
def envs_list(project: ProjectArg, as_json: JsonOpt = False) -> None:
    """A project's environments, in promotion order."""
    with api() as client:
        rows = client.get(f"/projects/{q(project)}/environments")
    if as_json:
        show_json(rows)
        return
    table(
        ["ENV", "CLUSTER", "NAMESPACE", "APPS"],
        [[e["name"], e["cluster"] or "-", e["namespace"] or "-", ", ".join(e["apps"]) or "-"] for e in rows],
        empty=f"{project} has no environments",
    )


@envs_app.command("create")
def envs_create(
    project: ProjectArg,
    name: EnvArg,
    cluster: Annotated[str | None, typer.Option(help="Default cluster of apps created in it.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Default namespace of apps created in it.")] = None,
    after: Annotated[str | None, typer.Option(help="Place it right after this environment.")] = None,
    before: Annotated[str | None, typer.Option(help="Place it right before this environment.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an environment (last, or --after/--before another); then `shipit apps create APP --env NAME`."""
    body = {"name": name, "cluster": cluster, "namespace": namespace, "after": after, "before": before}
    with api() as client:
        e = client.call(
            "POST",
            f"/projects/{q(project)}/environments",
            body={k: v for k, v in body.items() if v is not None},
        )
    if as_json:
        show_json(e)
    else:
        typer.echo(f"created environment {_env_line(e)}")


@envs_app.command("update")
def envs_update(
    project: ProjectArg,
    name: EnvArg,
    cluster: Annotated[str | None, typer.Option(help="Default cluster ('' clears).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Default namespace ('' clears).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an environment's default cluster/namespace (apps already there stay where they are)."""
    body = {k: v for k, v in {"cluster": cluster, "namespace": namespace}.items() if v is not None}
    if not body:
        fail("nothing to change: give --cluster or --namespace")
    with api() as client:
        e = client.call("PATCH", f"/projects/{q(project)}/environments/{q(name)}", body=body)
    if as_json:
        show_json(e)
    else:
        typer.echo(f"updated environment {_env_line(e)}")


@envs_app.command("delete")
def envs_delete(project: ProjectArg, name: EnvArg) -> None:
    """Delete an environment that has no apps."""
    with api() as client:
        client.call("DELETE", f"/projects/{q(project)}/environments/{q(name)}")
    typer.echo(f"deleted environment {name} of {project}")
