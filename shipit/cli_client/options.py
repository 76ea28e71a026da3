"""Flags and arguments several command groups share, spelled once, and the readers of their values."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from shipit.cli_client.client import fail

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Follow the deploy until it ends; exit 1 unless it succeeds.")
]


AppArg = Annotated[str, typer.Argument(help="App name.")]


# The environment an app command addresses (staging, production...); needed only when the app runs in
# several.  On `apps create/update`, where --env sets variables, an --env without "=" names it too.
EnvNameOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        "--environment",
        help="The environment (staging, production...) when the app runs in several.",
    ),
]


def env_flag(environment: str | None) -> str:
    """` --env NAME` for a command a hint suggests: without it an app in several environments is refused."""
    return f" --env {environment}" if environment else ""


EnvironmentOpt = Annotated[
    str | None, typer.Option("--environment", help="The environment (staging, production...).")
]


def parse_pairs(items: Sequence[str], *, what: str) -> dict[str, str]:
    """KEY=VALUE arguments.  A malformed one is named by position, never echoed (it may be a secret)."""
    out: dict[str, str] = {}
    for n, item in enumerate(items, start=1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{what} takes KEY=VALUE; item {n} has no KEY= in front")
        out[key.strip()] = value
    return out


def read_file(path: str, *, flag: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{flag}: {path} is not a text file")
    except OSError as e:
        fail(f"{flag}: cannot read {path}: {e.strerror or e}")


def stdin_if_dash(value: str | None, *, flag: str) -> str | None:
    if value != "-":
        return value
    text = sys.stdin.read()
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        fail(f"{flag} -: read nothing from stdin")
    return text
