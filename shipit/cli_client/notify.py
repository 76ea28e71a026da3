"""`shipit notify`: where a project's notices go (Slack, GitHub, email, Teams, Discord, webhooks).

Like every API command, a call to the REST API (/api/v1/projects/{project}/notify) and nothing more.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import JsonOpt, stdin_if_dash
from shipit.cli_client.output import show_json, table, when

notify_app = typer.Typer(help="Notification targets: where a project's notices go.", no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(help="Project name.")]
TargetArg = Annotated[int, typer.Argument(help="Target id (see `shipit notify list`).", min=1)]


@notify_app.command("add")
def notify_add(
    project: ProjectArg,
    email: Annotated[str | None, typer.Option("--email", help="Send email to this address.")] = None,
    teams: Annotated[
        str | None, typer.Option("--teams", help="Microsoft Teams incoming webhook URL.")
    ] = None,
    discord: Annotated[str | None, typer.Option("--discord", help="Discord channel webhook URL.")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="Signed outgoing webhook URL.")] = None,
    slack_channel: Annotated[
        str | None, typer.Option("--slack-channel", help="Slack channel id for the live deploy card.")
    ] = None,
    github: Annotated[
        bool, typer.Option("--github", help="Report deploys to each app's GitHub repository.")
    ] = False,
    kind: Annotated[str | None, typer.Option("--kind", help="Any other kind, with --address.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="The address for --kind.")] = None,
    events: Annotated[
        str, typer.Option("--events", help="'*' or a comma list such as failed,rolled_back.")
    ] = "*",
    env: Annotated[
        str | None, typer.Option("--env", help="Only this environment (default: every one).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="Webhooks: 'cloudevents' for CloudEvents 1.0 (structured mode).")
    ] = "",
    secret: Annotated[
        str | None, typer.Option("--secret", help="Webhooks: signing key ('-' reads stdin).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a target: `shipit notify add acme --email ops@acme.io --events failed,rolled_back --env production`."""
    given: list[tuple[str, str]] = [
        (k, v)
        for k, v in (
            ("email", email),
            ("teams", teams),
            ("discord", discord),
            ("webhook", webhook),
            ("slack", slack_channel),
        )
        if v is not None
    ]
    if github:
        given.append(("github", ""))
    if kind is not None:
        given.append((kind, address or ""))
    if len(given) != 1:
        fail("give exactly one of --email, --teams, --discord, --webhook, --slack-channel, --github, --kind")
    [(the_kind, the_address)] = given
    body: dict[str, Any] = {"kind": the_kind, "address": the_address, "events": events, "format": fmt}
    if env is not None:
        body["environment"] = env
    secret_value = stdin_if_dash(secret, flag="--secret")
    if secret_value is not None:
        body["secret"] = secret_value
    with api() as client:
        t = client.call("POST", f"/projects/{q(project)}/notify", body=body)
    if as_json:
        show_json(t)
        return
    typer.echo(f"added target #{t['id']}: {_describe(t)}")


def _describe(t: dict[str, Any]) -> str:
    where = t["address"] or "each app's repository"
    text = f"{t['kind']} {where}, events {t['events']}, environment {t['environment'] or '*'}"
    if t.get("format"):
        text += f", format {t['format']}"
    if t.get("secret") == "set":
        text += ", secret: set"
    return text


def _state(t: dict[str, Any]) -> str:
    if t["failing"]:
        return f"FAILING ({t['failures']} in a row)"
    if t["failures"]:
        return f"{t['failures']} failure(s)"
    return "ok" if t["last_success_at"] else "-"


@notify_app.command("list")
def notify_list(project: ProjectArg, as_json: JsonOpt = False) -> None:
    """A project's targets, with each one's last success and last failure (and why)."""
    with api() as client:
        rows = client.get(f"/projects/{q(project)}/notify")
    if as_json:
        show_json(rows)
        return
    table(
        ["ID", "KIND", "ADDRESS", "ENV", "EVENTS", "SECRET", "STATE", "LAST OK", "LAST FAILURE", "WHY"],
        [
            [
                t["id"],
                t["kind"] + (f" ({t['format']})" if t["format"] else ""),
                t["address"] or "(each app's repository)",
                t["environment"] or "*",
                t["events"],
                t["secret"],
                _state(t),
                when(t["last_success_at"]),
                when(t["last_failure_at"]),
                t["last_error"],
            ]
            for t in rows
        ],
        empty=f"project {project} has no notification targets",
    )


@notify_app.command("remove")
def notify_remove(project: ProjectArg, target_id: TargetArg) -> None:
    """Remove a target: nothing more is sent to it."""
    with api() as client:
        client.call("DELETE", f"/projects/{q(project)}/notify/{target_id}")
    typer.echo(f"removed target #{target_id} of project {project}")


@notify_app.command("test")
def notify_test(project: ProjectArg, target_id: TargetArg, as_json: JsonOpt = False) -> None:
    """Send a sample notice to one target now and print what happened (exit 1 if it failed)."""
    with api() as client:
        result = client.call("POST", f"/projects/{q(project)}/notify/{target_id}/test")
    if as_json:
        show_json(result)
    else:
        outcome = "ok" if result["ok"] else "FAILED"
        typer.echo(f"target #{target_id} ({_describe(result['target'])}): {outcome}: {result['message']}")
    if not result["ok"]:
        raise typer.Exit(1)
