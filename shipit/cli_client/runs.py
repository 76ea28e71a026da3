"""One-off commands: `shipit run APP -- CMD ARGS...` and `shipit runs list|show|logs|cancel` (core.runs)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer

from shipit.cli_client.client import Api, api, fail, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt, env_flag
from shipit.cli_client.output import POLL_SECONDS, fields_out, show_json, table, when

runs_app = typer.Typer(
    help="One-off commands run with `shipit run` (Jobs in the app's image).", no_args_is_help=True
)

RunArg = Annotated[str, typer.Argument(help="The run's name (shipit runs list APP).")]


def _params(environment: str | None, **more: Any) -> dict[str, Any]:
    return {**({"env": environment} if environment else {}), **more}


def _print_logs(client: Api, path: str, *, environment: str | None, follow: bool) -> None:
    for line in client.lines(path, params=_params(environment, follow=str(follow).lower())):
        typer.echo(line)


def attach(client: Api, run: dict[str, Any], *, app_name: str, environment: str | None) -> dict[str, Any]:
    """Print the run's log until it ends (following it while it runs); the run once finished.

    A followed run log ends when the run does (core.runs.log_lines), so no stream outlives it.
    """
    path = f"/apps/{q(app_name)}/runs/{q(run['name'])}"
    r = run
    while r["state"] == "running" and not r["pod"]:
        time.sleep(POLL_SECONDS)
        r = client.get(path, **_params(environment))
    if r["pod"]:
        _print_logs(client, f"{path}/logs", environment=environment, follow=r["state"] == "running")
    while r["state"] == "running":
        r = client.get(path, **_params(environment))
        if r["state"] == "running":
            time.sleep(POLL_SECONDS)
    return r


def _verdict(r: dict[str, Any]) -> None:
    if r["state"] == "succeeded":
        return
    why = r["reason"] or "failed"
    if r["exit_code"] is not None:
        why += f", exit code {r['exit_code']}"
    fail(f"run {r['name']} failed ({why}){': ' + r['message'] if r['message'] else ''}")


def run(
    app_name: AppArg,
    command: Annotated[
        list[str], typer.Argument(help="The command and its arguments, after `--`; run as given, no shell.")
    ],
    environment: EnvNameOpt = None,
    timeout: Annotated[
        int | None, typer.Option("--timeout", help="Seconds before the cluster stops it (default 1800).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start it and return; do not follow.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a one-off command in the app's current image, env and secrets (`shipit run web -- rake db:seed`).

    Follows its log to the end, then exits 0 when it succeeded and 1 when it failed.
    """
    body: dict[str, Any] = {"command": command}
    if timeout is not None:
        body["timeout_seconds"] = timeout
    with api() as client:
        r = client.call("POST", f"/apps/{q(app_name)}/runs", body=body, params=_params(environment))
        if detach:
            if as_json:
                show_json(r)
            else:
                typer.echo(
                    f"run {r['name']} started (revision {r['revision']}): "
                    f"shipit runs logs {app_name} {r['name']}{env_flag(environment)}"
                )
            return
        if not as_json:
            typer.echo(f"run {r['name']} started (revision {r['revision']}, {r['image']})", err=True)
        try:
            r = attach(client, r, app_name=app_name, environment=environment)
        except KeyboardInterrupt:
            typer.echo(
                f"stopped following; run {r['name']} carries on "
                f"(`shipit runs cancel {app_name} {r['name']}{env_flag(environment)}` stops it)",
                err=True,
            )
            raise typer.Exit(130) from None
    if as_json:
        show_json(r)
    _verdict(r)


def _duration(r: dict[str, Any]) -> str:
    """How long it ran, when both ends are known ("-" while it runs or for a run never seen ending)."""
    try:
        took = dt.datetime.fromisoformat(r["finished_at"]) - dt.datetime.fromisoformat(r["started_at"])
    except (TypeError, ValueError):
        return "-"
    seconds = max(int(took.total_seconds()), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@runs_app.command("list")
def runs_list(
    app_name: AppArg,
    environment: EnvNameOpt = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (at most 200).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """An app's one-off runs, newest first: who ran which program, when, and how it ended.

    The history outlives the runs' Jobs; a run whose Job is gone before shipit saw it end is unknown.
    """
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/runs", **_params(environment, limit=limit))
    if as_json:
        show_json(rows)
        return
    table(
        ["RUN", "STATUS", "EXIT", "STARTED", "FINISHED", "TOOK", "ACTOR", "PROGRAM", "REVISION", "REASON"],
        [
            [
                r["name"],
                r["state"],
                "" if r["exit_code"] is None else r["exit_code"],
                when(r["started_at"]),
                when(r["finished_at"]),
                _duration(r),
                r["actor"] or "-",
                r["program"],
                r["revision"] or "",
                r["reason"] or "",
            ]
            for r in rows
        ],
        empty=f"{app_name} has no runs: shipit run {app_name}{env_flag(environment)} -- COMMAND",
    )


@runs_app.command("show")
def runs_show(
    app_name: AppArg, run_name: RunArg, environment: EnvNameOpt = None, as_json: JsonOpt = False
) -> None:
    """One run: its state, and why it failed."""
    with api() as client:
        r = client.get(f"/apps/{q(app_name)}/runs/{q(run_name)}", **_params(environment))
    if as_json:
        show_json(r)
        return
    fields_out(
        [
            (k, r[k])
            for k in (
                "name",
                "state",
                "reason",
                "exit_code",
                "message",
                "program",
                "args",
                "actor",
                "revision",
                "image",
                "pod",
                "started_at",
                "finished_at",
                "timeout_seconds",
            )
        ]
    )


@runs_app.command("logs")
def runs_logs(app_name: AppArg, run_name: RunArg, environment: EnvNameOpt = None) -> None:
    """Follow a run's log to its end; exits 1 when the run failed (as `shipit run` does)."""
    with api() as client:
        r = client.get(f"/apps/{q(app_name)}/runs/{q(run_name)}", **_params(environment))
        try:
            r = attach(client, r, app_name=app_name, environment=environment)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    _verdict(r)


@runs_app.command("cancel")
def runs_cancel(
    app_name: AppArg, run_name: RunArg, environment: EnvNameOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop a run: its Job is deleted, with its pod."""
    with api() as client:
        r = client.call("DELETE", f"/apps/{q(app_name)}/runs/{q(run_name)}", params=_params(environment))
    if as_json:
        show_json(r)
        return
    typer.echo(f"run {r['name']} cancelled (it was {r['state']})")
