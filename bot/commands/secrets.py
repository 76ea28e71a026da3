"""Write-only secrets: `secrets set|list|unset`.  Secret values pass through here: no error message,
repr or `describe()` ever contains one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from bot.commands.registry import Command, UsageError, command, no_more


@dataclass(frozen=True, kw_only=True)
class SecretsSet(Command):
    app: str
    # repr=False: a command object that ends up in a log line or a traceback shows no value.
    values: dict[str, str] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class SecretsList(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class SecretsUnset(Command):
    app: str
    keys: tuple[str, ...]


# Desktop Slack turns typed quotes into curly ones; accept both as delimiters (never inside values).
_SECRET_PAIR = re.compile(
    r"\s*(?P<key>[^\s=]+)="
    r"(?:[\"\u201c](?P<dq>[^\"\u201c\u201d]*)[\"\u201d]"
    r"|['\u2018](?P<sq>[^'\u2018\u2019]*)['\u2019]"
    r"|(?P<bare>(?![\"'\u201c\u2018])\S*))(?=\s|$)",
    re.DOTALL,
)


_SECRETS_SUB = ("set", "list", "unset")


@command(
    "secrets",
    usage="secrets set <app> KEY=VALUE…  |  secrets list <app>  |  secrets unset <app> KEY…",
    summary="write-only secrets (never shown back; quote values with spaces); a change redeploys a running app",
    examples=(
        'secrets set web DATABASE_URL=postgres://db/web API_KEY="two words"',
        "secrets list web",
        "secrets unset web API_KEY",
    ),
)
def _parse_secrets(rest: str) -> SecretsSet | SecretsList | SecretsUnset:
    sub, _, after = rest.partition(" ")
    sub = sub.lower()
    if not sub:
        raise UsageError("`secrets` needs set, list or unset.", command="secrets")
    if sub in ("ls", "show", "get"):
        sub = "list"
    elif sub in ("rm", "delete", "del", "remove"):
        sub = "unset"
    elif sub == "add":
        sub = "set"
    if sub not in _SECRETS_SUB:
        close = difflib.get_close_matches(sub, _SECRETS_SUB, n=1, cutoff=0.5)
        hint = f" Did you mean `secrets {close[0]}`?" if close else ""
        # Never echo what followed: it may be a secret value typed in the wrong place.
        raise UsageError(f"`secrets` takes set, list or unset.{hint}", command="secrets")
    after = after.strip()
    app_word, _, tail = after.partition(" ")
    if not app_word:
        raise UsageError(f"`secrets {sub}` needs an app name.", command="secrets")
    app = app_word.lower()
    if sub == "list":
        no_more(tail.split(), "secrets")
        return SecretsList(app=app)
    if sub == "unset":
        keys = tuple(tail.split())
        if not keys:
            raise UsageError("`secrets unset` needs at least one KEY.", command="secrets")
        if any("=" in k for k in keys):
            raise UsageError("`secrets unset` takes keys only, without `=`.", command="secrets")
        return SecretsUnset(app=app, keys=keys)
    return SecretsSet(app=app, values=_secret_pairs(tail))


def _secret_pairs(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    pos, n = 0, 0
    text = text.rstrip()
    while pos < len(text):
        n += 1
        m = _SECRET_PAIR.match(text, pos)
        if m is None:
            # Say where, never what: the unparsable part may hold a value.
            raise UsageError(
                f"could not read item {n}: write KEY=VALUE, and quote values that contain spaces.",
                command="secrets",
            )
        key = m.group("key")
        value = next(v for v in (m.group("dq"), m.group("sq"), m.group("bare")) if v is not None)
        if key in values:
            raise UsageError(f"{key} is given twice.", command="secrets")
        values[key] = value
        pos = m.end()
    if not values:
        raise UsageError("`secrets set` needs at least one KEY=VALUE.", command="secrets")
    return values


def describe(command: Command) -> str:
    """A one-line, value-free description for logs."""
    if isinstance(command, SecretsSet):
        return f"secrets set {command.app} keys={','.join(sorted(command.values))}"
    return repr(command)
