"""Project administration: who holds which role (`access`), where notices go (`notify`)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from bot.commands.registry import Command, UsageError, command, no_more, words_of


@dataclass(frozen=True, kw_only=True)
class Access(Command):
    project: str
    subject: str  # slack:U123, github:login, user:name
    role: str | None  # None removes the member


@dataclass(frozen=True, kw_only=True)
class NotifyList(Command):
    project: str


@dataclass(frozen=True, kw_only=True)
class NotifyAdd(Command):
    project: str
    kind: str
    address: str
    events: str = "*"
    environment: str | None = None
    format: str = ""


@dataclass(frozen=True, kw_only=True)
class NotifyRemove(Command):
    project: str
    target_id: int


@dataclass(frozen=True, kw_only=True)
class NotifyTest(Command):
    project: str
    target_id: int


_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$")

ROLES = ("viewer", "developer", "admin", "owner", "none")


_NOTIFY_SUB = ("list", "add", "remove", "test")


@command(
    "access",
    usage="access <project> <@user> <role>",
    summary="give someone a role in a project: viewer, developer, admin, owner, or none to remove it",
    examples=("access acme @alice developer", "access acme @bob none"),
)
def _parse_access(rest: str) -> Access:
    words = words_of(rest)
    if len(words) != 3:
        raise UsageError("`access` needs a project, a person and a role.", command="access")
    project, who, role = words
    m = _USER.match(who)
    if m is not None:
        subject = f"slack:{m.group(1)}"
    elif re.fullmatch(r"[UW][A-Z0-9]{2,}", who):
        subject = f"slack:{who}"
    elif re.fullmatch(r"(slack|github|user):[\w.@-]+", who):
        subject = who
    else:
        raise UsageError(
            f"`{who[:40]}` is not a person: mention them (@alice) or write slack:U123 / github:login.",
            command="access",
        )
    role = role.lower()
    if role not in ROLES:
        close = difflib.get_close_matches(role, ROLES, n=1, cutoff=0.5)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise UsageError(
            f"role must be one of {', '.join(ROLES)}, got `{role[:20]}`.{hint}", command="access"
        )
    return Access(project=project.lower(), subject=subject, role=None if role == "none" else role)


@command(
    "notify",
    usage="notify list <project>  |  notify add <project> <kind> <address> [events=…] [env=…] [format=cloudevents]"
    "  |  notify remove <project> <id>  |  notify test <project> <id>",
    summary="where a project's notices go: slack, email, teams, discord, webhook, github",
    examples=(
        "notify list acme",
        "notify add acme email ops@acme.io events=failed,rolled_back env=production",
        "notify test acme 3",
        "notify remove acme 3",
    ),
)
def _parse_notify(rest: str) -> NotifyList | NotifyAdd | NotifyRemove | NotifyTest:
    words = words_of(rest)
    sub = words[0].lower() if words else ""
    if sub in ("rm", "delete"):
        sub = "remove"
    if sub not in _NOTIFY_SUB:
        raise UsageError("`notify` takes list, add, remove or test.", command="notify")
    if len(words) < 2:
        raise UsageError(f"`notify {sub}` needs a project name.", command="notify")
    project = words[1].lower()
    if sub == "list":
        no_more(words[2:], "notify")
        return NotifyList(project=project)
    if sub in ("remove", "test"):
        if len(words) < 3 or not words[2].lstrip("#").isdigit() or len(words[2]) > 18:
            raise UsageError(f"`notify {sub}` needs a target id (see `notify list`).", command="notify")
        no_more(words[3:], "notify")
        target_id = int(words[2].lstrip("#"))
        return (
            NotifyRemove(project=project, target_id=target_id)
            if sub == "remove"
            else NotifyTest(project=project, target_id=target_id)
        )
    if len(words) < 3:
        raise UsageError("`notify add` needs a kind and an address.", command="notify")
    kind = words[2].lower()
    address = words[3] if len(words) > 3 and "=" not in words[3] else ""
    options: dict[str, str] = {}
    for word in words[3 + (1 if address else 0) :]:
        key, eq, value = word.partition("=")
        if not eq or key.lower() not in ("events", "env", "format"):
            raise UsageError("`notify add` options are events=…, env=… and format=….", command="notify")
        options[key.lower()] = value
    return NotifyAdd(
        project=project,
        kind=kind,
        address=address,
        events=options.get("events") or "*",
        environment=options.get("env") or None,
        format=options.get("format", ""),
    )
