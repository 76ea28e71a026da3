"""The registry of the `/shipit` language: the `@command` decorator, the parse entry point, the helpers
every parser shares, and help.

Pure (no I/O, no core calls).  Slack sends the command text escaped (`&lt;`, `<https://…|…>` for anything
that looks like a link, `<@U1|name>` for mentions); `unescape` undoes that here once.  The parsers live in
the sibling modules, one per area; bot.commands imports them all, in the order help lists them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, UnionType
from typing import TypeVar, get_args, get_origin, get_type_hints

from core.errors import InvalidInput


@dataclass(frozen=True, kw_only=True)
class Command:
    """What a parser makes; each subclass has one handler in bot.handlers."""

    # The environment an app command addresses (`... to staging`, `... in staging`, `--env staging`);
    # None: the app's only one.
    env: str | None = None


@dataclass(frozen=True, kw_only=True)
class Help(Command):
    topic: str | None = None


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Spec:
    """One command of the language: everything help, suggestions and errors say about it, and its parser."""

    name: str
    usage: str
    summary: str
    examples: tuple[str, ...]
    parse: Callable[[str], Command]
    # The command types `parse` makes (read from its return annotation); each needs a handler.
    kinds: tuple[type[Command], ...]


C = TypeVar("C", bound=Command)
_REGISTRY: dict[str, Spec] = {}
# Read-only views of the registry, in the order the commands are declared (help lists them so).
BY_NAME: Mapping[str, Spec] = MappingProxyType(_REGISTRY)


def command(
    name: str, *, usage: str, summary: str, examples: tuple[str, ...]
) -> Callable[[Callable[[str], C]], Callable[[str], C]]:
    """Register a parser as the command `name`: adding a command is this one decorated function."""

    def register(parse: Callable[[str], C]) -> Callable[[str], C]:
        if name in _REGISTRY:
            raise ValueError(f"command {name} is registered twice")
        if not examples:
            raise ValueError(f"command {name} needs at least one example")
        returned = get_type_hints(parse)["return"]
        kinds = tuple(get_args(returned)) if get_origin(returned) is UnionType else (returned,)
        _REGISTRY[name] = Spec(name, usage, summary, examples, parse, kinds)
        return parse

    return register


class UsageError(InvalidInput):
    """The text does not parse; the message ends with the usage of the command meant."""

    def __init__(self, message: str, *, command: str | None) -> None:
        spec = BY_NAME.get(command or "")
        if spec is not None:
            message = f"{message}\nUsage: `/shipit {spec.usage}`\nExample: `/shipit {spec.examples[0]}`"
        else:
            message = f"{message}\n`/shipit help` lists the commands."
        super().__init__(message, field=command or "command")
        self.command = command


# ---------------------------------------------------------------- parsing

# <https://x.y|x.y>, <mailto:a@b|a@b>: Slack's link formatting.  Mentions (<@U…>, <#C…>, <!here>) stay.
_LINK = re.compile(r"<(?![@#!])([^<>|]+)(?:\|([^<>]*))?>")
QUOTES = "\"'\u201c\u201d\u2018\u2019"  # straight and curly: desktop Slack curls typed quotes


def unescape(text: str) -> str:
    """Undo Slack's escaping: links back to the text that was typed, then &amp; &lt; &gt;."""
    text = _LINK.sub(lambda m: m.group(2) if m.group(2) else m.group(1), text)
    # Slack escapes exactly these three; html.unescape would also turn "&copy" in a secret into ©.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def parse(text: str) -> Command:
    """Parse the text after `/shipit` (or after @shipit in a mention)."""
    text = unescape(text).strip()
    if not text:
        return Help()
    word, _, rest = text.partition(" ")
    name = word.lower()
    rest = rest.strip()
    spec = BY_NAME.get(name)
    if spec is None:
        raise unknown_command(name)
    rest, env = _environment(name, rest)
    parsed = spec.parse(rest)
    if env is None:
        return parsed
    if not hasattr(parsed, "app"):
        raise UsageError(f"`{name}` does not take an environment.", command=name)
    return dataclasses.replace(parsed, env=env)


# `--env staging` anywhere after the command; a trailing `to staging` / `in staging` on the commands
# whose last words are never free text (a lock reason may well end in "in production").
_ENV_FLAG = re.compile(r"(?:^|\s)--env(?:=|\s+)([a-z0-9]([-a-z0-9]*[a-z0-9])?)(?=\s|$)", re.IGNORECASE)
_ENV_TAIL = re.compile(r"\s+(?:to|in)\s+([a-z0-9]([-a-z0-9]*[a-z0-9])?)$", re.IGNORECASE)
_TAIL_COMMANDS = (
    "deploy",
    "diff",
    "rollback",
    "status",
    "usage",
    "revisions",
    "logs",
    "runs",
    "scale",
    "secrets",
)


def _environment(name: str, rest: str) -> tuple[str, str | None]:
    if name in ("promote", "envs", "help", "access", "apps"):
        return rest, None
    m = _ENV_FLAG.search(rest)
    if m is not None:
        return (rest[: m.start()] + rest[m.end() :]).strip(), m.group(1).lower()
    if name in _TAIL_COMMANDS:
        m = _ENV_TAIL.search(rest)
        if m is not None:
            return rest[: m.start()].strip(), m.group(1).lower()
    return rest, None


def unknown_command(name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
    shown = name if len(name) <= 30 else name[:30] + "…"
    if close:
        return UsageError(f"Unknown command `{shown}`. Did you mean `{close[0]}`?", command=close[0])
    return UsageError(f"Unknown command `{shown}`.", command=None)


def words_of(rest: str) -> list[str]:
    return rest.split()


def app_arg(words: list[str], command: str) -> str:
    if not words:
        raise UsageError(f"`{command}` needs an app name.", command=command)
    return words[0].lower()


def only_app(rest: str, command: str) -> str:
    """The app of a command that takes an app and nothing else (pause, resume, revisions, unlock)."""
    words = words_of(rest)
    app = app_arg(words, command)
    no_more(words[1:], command)
    return app


def no_more(words: list[str], command: str) -> None:
    if words:
        extra = " ".join(words)
        extra = extra if len(extra) <= 40 else extra[:40] + "…"
        raise UsageError(f"`{command}` does not take `{extra}`.", command=command)


def integer(value: str, *, command: str, name: str, low: int, high: int) -> int:
    if not value.isdigit():
        raise UsageError(f"{name} must be a whole number, got `{value[:20]}`.", command=command)
    number = int(value)
    if not low <= number <= high:
        raise UsageError(f"{name} must be between {low} and {high}, got {number}.", command=command)
    return number
