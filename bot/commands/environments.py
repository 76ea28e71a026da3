"""Environments: `promote` what runs in one to the next, `envs` lists them."""

from __future__ import annotations

from dataclasses import dataclass

from bot.commands.registry import Command, UsageError, app_arg, command, no_more, words_of


@dataclass(frozen=True, kw_only=True)
class Promote(Command):
    app: str
    source: str
    target: str


@dataclass(frozen=True, kw_only=True)
class Envs(Command):
    project: str | None = None


@command(
    "promote",
    usage="promote <app> <from-env> [to] <to-env>",
    summary="deploy to one environment exactly what runs in another (image digest and release command)",
    examples=("promote web staging production",),
)
def _parse_promote(rest: str) -> Promote:
    words = [w.lower() for w in words_of(rest)]
    app = app_arg(words, "promote")
    envs = [w for w in words[1:] if w != "to"]
    if len(envs) != 2:
        raise UsageError(
            "`promote` needs the app, the environment to take from and the one to deploy to.",
            command="promote",
        )
    return Promote(app=app, source=envs[0], target=envs[1])


@command(
    "envs",
    usage="envs [project]",
    summary="a project's environments in promotion order, and the apps in each",
    examples=("envs", "envs acme"),
)
def _parse_envs(rest: str) -> Envs:
    words = words_of(rest)
    no_more(words[1:], "envs")
    return Envs(project=words[0].lower() if words else None)
