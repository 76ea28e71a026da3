"""Who you are: `link` a GitHub login to your Slack identity, `whoami`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.commands.registry import Command, UsageError, command, no_more, words_of


@dataclass(frozen=True, kw_only=True)
class Link(Command):
    subject: str  # github:login, the identity to prove


@dataclass(frozen=True, kw_only=True)
class Whoami(Command):
    pass


@command(
    "link",
    usage="link github <login>",
    summary="prove a GitHub login is also you, so your roles hold there too (a one-time code)",
    examples=("link github octocat",),
)
def _parse_link(rest: str) -> Link:
    words = words_of(rest)
    if len(words) != 2 or words[0].lower() != "github":
        raise UsageError("`link` takes github and your GitHub login.", command="link")
    login = words[1].removeprefix("@")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", login):
        raise UsageError(f"`{login[:40]}` is not a GitHub login.", command="link")
    return Link(subject=f"github:{login.lower()}")


@command(
    "whoami", usage="whoami", summary="who shipit takes you for: your linked identities", examples=("whoami",)
)
def _parse_whoami(rest: str) -> Whoami:
    no_more(words_of(rest), "whoami")
    return Whoami()
