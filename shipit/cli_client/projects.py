"""`shipit projects`: projects, their members and roles, and where each may deploy."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.clusters import show_grants
from shipit.cli_client.options import JsonOpt, stdin_if_dash
from shipit.cli_client.output import show_json, table, when

projects_app = typer.Typer(help="Projects, their members and roles.", no_args_is_help=True)


@projects_app.command("list")
def projects_list(as_json: JsonOpt = False) -> None:
    """The projects you can see."""
    with api() as client:
        rows = client.get("/projects")
    if as_json:
        show_json(rows)
        return
    table(
        ["NAME", "SLACK CHANNEL", "WEBHOOK", "CREATED"],
        [[p["name"], p["slack_channel"], _webhook(p), when(p["created_at"])] for p in rows],
        empty="no projects yet: shipit projects create NAME",
    )


def _webhook(p: dict[str, Any]) -> str:
    if not p.get("webhook_url"):
        return "-"
    return f"{p['webhook_url']}{' (signed)' if p.get('webhook_signed') else ''}"


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name (a DNS label).")],
    slack_channel: Annotated[str | None, typer.Option(help="Slack channel for deploy cards.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Send signed deploy events to this URL.")] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="HMAC-SHA256 key for the webhook ('-' reads stdin).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project; you become its owner."""
    body = {
        "name": name,
        "slack_channel": slack_channel,
        "webhook_url": webhook_url,
        "webhook_secret": stdin_if_dash(webhook_secret, flag="--webhook-secret"),
    }
    with api() as client:
        p = client.call("POST", "/projects", body={k: v for k, v in body.items() if v is not None})
    if as_json:
        show_json(p)
    else:
        typer.echo(f"created project {p['name']}; you are its owner")


@projects_app.command("delete")
def projects_delete(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Delete a project (owners); refused while it still has apps."""
    with api() as client:
        client.call("DELETE", f"/projects/{q(name)}")
    typer.echo(f"deleted project {name}")


@projects_app.command("update")
def projects_update(
    name: Annotated[str, typer.Argument(help="Project name.")],
    slack_channel: Annotated[str | None, typer.Option(help="Slack channel ('' to clear).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Webhook URL ('' to clear).")] = None,
    webhook_secret: Annotated[str | None, typer.Option(help="Webhook key ('-' reads stdin).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a project's notification settings."""
    body = {
        "slack_channel": slack_channel,
        "webhook_url": webhook_url,
        "webhook_secret": stdin_if_dash(webhook_secret, flag="--webhook-secret"),
    }
    with api() as client:
        p = client.call(
            "PATCH", f"/projects/{q(name)}", body={k: v for k, v in body.items() if v is not None}
        )
    if as_json:
        show_json(p)
    else:
        typer.echo(f"updated project {p['name']}")


@projects_app.command("members")
def projects_members(
    name: Annotated[str, typer.Argument(help="Project name.")], as_json: JsonOpt = False
) -> None:
    """Who has which role in a project."""
    with api() as client:
        rows = client.get(f"/projects/{q(name)}/members")
    if as_json:
        show_json(rows)
        return
    table(["SUBJECT", "ROLE"], [[m["subject"], m["role"]] for m in rows], empty="no members")


@projects_app.command("grants")
def projects_grants(
    project: Annotated[str, typer.Argument(help="Project name.")], as_json: JsonOpt = False
) -> None:
    """Where a project may deploy: the clusters it is granted and the namespaces it owns."""
    show_grants(
        f"/projects/{q(project)}/grants",
        as_json=as_json,
        empty=f"{project} may use no cluster yet: a global admin runs shipit clusters grant CLUSTER {project}",
    )


@projects_app.command("access")
def projects_access(
    project: Annotated[str, typer.Argument(help="Project name.")],
    subject: Annotated[str, typer.Argument(help="Who: user:alice, slack:U123, github:octocat.")],
    role: Annotated[str | None, typer.Argument(help="viewer, developer, admin or owner.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Take the subject's role away.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Grant a role in a project (or take it away with --remove)."""
    if remove and role:
        fail("give either a ROLE or --remove, not both")
    if not remove and not role:
        fail("ROLE is required (viewer, developer, admin or owner), or pass --remove")
    with api() as client:
        if remove:
            client.call("DELETE", f"/projects/{q(project)}/members/{q(subject)}")
            result: dict[str, Any] = {"project": project, "subject": subject, "role": None}
        else:
            result = client.call("PUT", f"/projects/{q(project)}/members/{q(subject)}", body={"role": role})
    if as_json:
        show_json(result)
    elif remove:
        typer.echo(f"{subject} has no role in {project} any more")
    else:
        typer.echo(f"{result['subject']} is {result['role']} in {project}")
