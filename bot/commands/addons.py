"""Add-ons from Slack: `addons create|list|destroy`, the same rules as the API and the CLI."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from bot.commands.registry import Command, UsageError, command, no_more

_KINDS = ("postgres", "redis")
_PLANS = ("small", "medium")
_SUB = ("create", "list", "destroy")


@dataclass(frozen=True, kw_only=True)
class AddonCreate(Command):
    app: str
    kind: str
    plan: str = "small"


@dataclass(frozen=True, kw_only=True)
class AddonList(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class AddonDestroy(Command):
    app: str
    kind: str
    delete_data: bool = False


@command(
    "addons",
    usage="addons create <app> postgres|redis [small|medium]  |  addons list <app>  |  "
    "addons destroy <app> postgres|redis [--delete-data]",
    summary="managed PostgreSQL and Redis next to an app; the app gets DATABASE_URL / REDIS_URL when ready",
    examples=("addons create web postgres", "addons list web", "addons destroy web redis --delete-data"),
)
def _parse_addons(rest: str) -> AddonCreate | AddonList | AddonDestroy:
    words = rest.split()
    sub = words[0].lower() if words else ""
    sub = {"add": "create", "ls": "list", "rm": "destroy", "delete": "destroy", "remove": "destroy"}.get(
        sub, sub
    )
    if sub not in _SUB:
        close = difflib.get_close_matches(sub, _SUB, n=1, cutoff=0.5)
        hint = f" Did you mean `addons {close[0]}`?" if close else ""
        raise UsageError(f"`addons` takes create, list or destroy.{hint}", command="addons")
    if len(words) < 2:
        raise UsageError(f"`addons {sub}` needs an app name.", command="addons")
    app, tail = words[1].lower(), words[2:]
    if sub == "list":
        no_more(tail, "addons")
        return AddonList(app=app)
    if not tail or tail[0].lower() not in _KINDS:
        raise UsageError(f"`addons {sub}` needs the kind: postgres or redis.", command="addons")
    kind, tail = tail[0].lower(), tail[1:]
    if sub == "create":
        plan = tail[0].lower() if tail else "small"
        if plan not in _PLANS:
            raise UsageError("the plan is small or medium.", command="addons")
        no_more(tail[1:], "addons")
        return AddonCreate(app=app, kind=kind, plan=plan)
    delete_data = bool(tail) and tail[0].lower() == "--delete-data"
    no_more(tail[1:] if delete_data else tail, "addons")
    return AddonDestroy(app=app, kind=kind, delete_data=delete_data)
