"""Deploys and what runs: deploy, diff, rollback, status, usage, apps, revisions, logs, runs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.commands.registry import (
    QUOTES,
    Command,
    UsageError,
    app_arg,
    command,
    integer,
    no_more,
    only_app,
    words_of,
)

MAX_LOG_LINES = 500
DEFAULT_LOG_LINES = 50
RUNS_SHOWN = 10  # `runs`: the newest one-off runs, as the dashboard's Runs section shows
_REVISION = re.compile(r"^(?:r|rev|#)?(\d{1,9})$", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Deploy(Command):
    app: str
    image: str | None = None


@dataclass(frozen=True, kw_only=True)
class Diff(Command):
    app: str
    image: str | None = None  # None: the app's current image with its current settings


@dataclass(frozen=True, kw_only=True)
class Rollback(Command):
    app: str
    revision: int | None = None


@dataclass(frozen=True, kw_only=True)
class Status(Command):
    app: str | None = None


@dataclass(frozen=True, kw_only=True)
class Usage(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class Apps(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Revisions(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class Logs(Command):
    app: str
    lines: int = DEFAULT_LOG_LINES


@dataclass(frozen=True, kw_only=True)
class Runs(Command):
    app: str


@command(
    "deploy",
    usage="deploy <app> <image|tag>",
    summary="deploy an image, or a new tag of the current image",
    examples=("deploy web ghcr.io/acme/web:1.4", "deploy web 1.5"),
)
def _parse_deploy(rest: str) -> Deploy:
    words = words_of(rest)
    app = app_arg(words, "deploy")
    # A command cut short (or `deploy web ""`) must not restart production with what already runs.
    if len(words) < 2 or not words[1].strip(QUOTES):
        raise UsageError(
            f"`deploy` needs an image or a tag; to redeploy what runs now, give its tag "
            f"(`/shipit status {app}` shows it).",
            command="deploy",
        )
    no_more(words[2:], "deploy")
    return Deploy(app=app, image=words[1])


@command(
    "diff",
    usage="diff <app> [image|tag]",
    summary="what a deploy would change on the cluster, field by field; changes nothing",
    examples=("diff web 1.6", "diff web"),
)
def _parse_diff(rest: str) -> Diff:
    words = words_of(rest)
    app = app_arg(words, "diff")
    image = words[1] if len(words) > 1 and words[1].strip(QUOTES) else None
    no_more(words[2:], "diff")
    return Diff(app=app, image=image)


@command(
    "rollback",
    usage="rollback <app> [revision]",
    summary="go back to the previous good revision (or a given one); pauses auto-deploy",
    examples=("rollback web", "rollback web 3"),
)
def _parse_rollback(rest: str) -> Rollback:
    words = words_of(rest)
    app = app_arg(words, "rollback")
    revision = None
    if len(words) > 1:
        m = _REVISION.match(words[1])
        if m is None:
            raise UsageError(
                f"the revision must be a number (see `/shipit revisions {app}`), got `{words[1][:20]}`.",
                command="rollback",
            )
        revision = int(m.group(1))
    no_more(words[2:], "rollback")
    return Rollback(app=app, revision=revision)


@command(
    "status",
    usage="status [app]",
    summary="what runs now and what is queued",
    examples=("status", "status web"),
)
def _parse_status(rest: str) -> Status:
    words = words_of(rest)
    no_more(words[1:], "status")
    return Status(app=words[0].lower() if words else None)


@command(
    "usage",
    usage="usage <app>",
    summary="CPU and memory the app's pods use now, against their requests and limits",
    examples=("usage web", "usage web --env staging"),
)
def _parse_usage(rest: str) -> Usage:
    return Usage(app=only_app(rest, "usage"))


@command("apps", usage="apps", summary="the apps you can see", examples=("apps",))
def _parse_apps(rest: str) -> Apps:
    no_more(words_of(rest), "apps")
    return Apps()


@command(
    "revisions", usage="revisions <app>", summary="the revisions kept for an app", examples=("revisions web",)
)
def _parse_revisions(rest: str) -> Revisions:
    return Revisions(app=only_app(rest, "revisions"))


@command(
    "logs",
    usage="logs <app> [lines]",
    summary=(
        f"the app's last log lines, shared among its pods (default {DEFAULT_LOG_LINES}, at most {MAX_LOG_LINES})"
    ),
    examples=("logs web", "logs web 200"),
)
def _parse_logs(rest: str) -> Logs:
    words = words_of(rest)
    app = app_arg(words, "logs")
    lines = DEFAULT_LOG_LINES
    if len(words) > 1:
        lines = integer(
            words[1].removeprefix("lines="), command="logs", name="lines", low=1, high=MAX_LOG_LINES
        )
    no_more(words[2:], "logs")
    return Logs(app=app, lines=lines)


@command(
    "runs",
    usage="runs <app> [env=<env>]",
    summary=f"the app's newest {RUNS_SHOWN} one-off runs and how they ended (starting one is `shipit run`)",
    examples=("runs web", "runs web env=staging"),
)
def _parse_runs(rest: str) -> Runs:
    words = words_of(rest)
    app = app_arg(words, "runs")
    env = None
    # `env=staging` as the usage says; `--env staging` and `in staging` are read before this, as everywhere.
    if len(words) > 1 and words[1].lower().startswith("env=") and words[1][4:]:
        env = words[1][4:].lower()
        words = words[:1] + words[2:]
    no_more(words[1:], "runs")
    return Runs(app=app, env=env)
