"""What may run and how: scale, lock and unlock (an app, an environment, a project), pause and resume
auto-deploy, approve a fork's preview.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.commands.registry import Command, UsageError, app_arg, command, integer, no_more, only_app, words_of


@dataclass(frozen=True, kw_only=True)
class Scale(Command):
    app: str
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_target: int | None = None
    # Seconds the HPA waits before scaling down; "default": back to Kubernetes' (300); None: keep.
    scale_down_window: int | Literal["default"] | None = None
    autoscaling_off: bool = False


@dataclass(frozen=True, kw_only=True)
class Lock(Command):
    app: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Unlock(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class LockEnv(Command):
    where: str  # "staging" (the caller's one project with it) or "acme/staging"
    reason: str


@dataclass(frozen=True, kw_only=True)
class UnlockEnv(Command):
    where: str


@dataclass(frozen=True, kw_only=True)
class LockProject(Command):
    project: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class UnlockProject(Command):
    project: str


@dataclass(frozen=True, kw_only=True)
class Pause(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class Resume(Command):
    app: str


@dataclass(frozen=True, kw_only=True)
class PreviewApprove(Command):
    app: str
    number: int


@command(
    "scale",
    usage="scale <app> replicas=N  |  scale <app> min=N max=N [cpu=N] [window=SECONDS|default]  |  "
    "scale <app> auto off",
    summary="fixed replicas, or a HorizontalPodAutoscaler (window: how long it waits to scale down)",
    examples=(
        "scale web replicas=3",
        "scale web min=2 max=10 cpu=70",
        "scale web min=1 max=4 cpu=50 window=30",
        "scale web auto off",
    ),
)
def _parse_scale(rest: str) -> Scale:
    words = words_of(rest)
    app = app_arg(words, "scale")
    args = [w.lower() for w in words[1:]]
    if not args:
        raise UsageError("`scale` needs replicas=N, min=N max=N [cpu=N], or auto off.", command="scale")
    if args in (["auto", "off"], ["autoscaling", "off"], ["hpa", "off"]):
        return Scale(app=app, autoscaling_off=True)
    given: dict[str, int] = {}
    window: int | Literal["default"] | None = None
    aliases = {
        "replicas": "replicas", "min": "min", "max": "max", "cpu": "cpu",
        "window": "window", "scale_down_window": "window", "scale-down-window": "window",
    }  # fmt: skip
    for arg in args:
        key, eq, value = arg.partition("=")
        canonical = aliases.get(key)
        if not eq or canonical is None:
            raise UsageError(f"`scale` does not understand `{arg[:30]}`.", command="scale")
        if canonical in given or (canonical == "window" and window is not None):
            raise UsageError(f"{canonical} is given twice.", command="scale")
        if canonical == "window":
            # Seconds (30 or 30s), or `default` for Kubernetes' own 5 minutes.
            window = "default" if value == "default" else _window_seconds(value)
            continue
        high = 100 if canonical == "cpu" else 1000
        low = 0 if canonical == "replicas" else 1
        given[canonical] = integer(value.rstrip("%"), command="scale", name=canonical, low=low, high=high)
    if "replicas" in given:
        if len(given) > 1 or window is not None:
            raise UsageError("give either replicas=N or min/max/cpu/window, not both.", command="scale")
        return Scale(app=app, replicas=given["replicas"])
    return Scale(
        app=app,
        min_replicas=given.get("min"),
        max_replicas=given.get("max"),
        cpu_target=given.get("cpu"),
        scale_down_window=window,
    )


def _window_seconds(value: str) -> int:
    return integer(value.removesuffix("s"), command="scale", name="window", low=0, high=3600)


@command(
    "lock",
    usage="lock <app> <reason> | lock env <environment> <reason> | lock project <project> <reason>",
    summary="stop all deploys of an app, an environment or a whole project until unlocked",
    examples=("lock web release freeze", "lock env staging db migration", "lock project acme audit"),
)
def _parse_lock(rest: str) -> Lock | LockEnv | LockProject:
    app_word, _, reason = rest.partition(" ")
    if not app_word:
        raise UsageError("`lock` needs an app name and a reason.", command="lock")
    # `env` or `project` followed by a name scopes the lock (an app named `env` is locked from the CLI).
    scope = app_word.lower() if app_word.lower() in ("env", "project") and reason.split() else None
    if scope is not None:
        app_word, _, reason = reason.strip().partition(" ")
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("`lock` needs a reason, so people know why and whom to ask.", command="lock")
    if len(reason) > 300:
        raise UsageError("the reason is longer than 300 characters.", command="lock")
    if scope == "env":
        return LockEnv(where=app_word.lower(), reason=reason)
    if scope == "project":
        return LockProject(project=app_word.lower(), reason=reason)
    return Lock(app=app_word.lower(), reason=reason)


@command(
    "unlock",
    usage="unlock <app> | unlock env <environment> | unlock project <project>",
    summary="allow deploys again",
    examples=("unlock web", "unlock env staging", "unlock project acme"),
)
def _parse_unlock(rest: str) -> Unlock | UnlockEnv | UnlockProject:
    words = words_of(rest)
    if len(words) == 2 and words[0].lower() in ("env", "project"):
        if words[0].lower() == "env":
            return UnlockEnv(where=words[1].lower())
        return UnlockProject(project=words[1].lower())
    return Unlock(app=only_app(rest, "unlock"))


@command(
    "pause",
    usage="pause <app>",
    summary="stop automatic deploys (pushes); manual deploys still work",
    examples=("pause web",),
)
def _parse_pause(rest: str) -> Pause:
    return Pause(app=only_app(rest, "pause"))


@command("resume", usage="resume <app>", summary="deploy on push again", examples=("resume web",))
def _parse_resume(rest: str) -> Resume:
    return Resume(app=only_app(rest, "resume"))


@command(
    "preview",
    usage="preview approve <app> <pull request>",
    summary="deploy the waiting preview of a pull request from a fork (its current commit, without secrets)",
    examples=("preview approve web 42",),
)
def _parse_preview(rest: str) -> PreviewApprove:
    words = words_of(rest)
    if not words or words[0].lower() != "approve":
        raise UsageError("`preview` takes approve.", command="preview")
    if len(words) < 3:
        raise UsageError("`preview approve` needs an app and a pull request number.", command="preview")
    app = words[1].lower()
    number = integer(
        words[2].removeprefix("#"), command="preview", name="the pull request", low=1, high=10**9
    )
    no_more(words[3:], "preview")
    return PreviewApprove(app=app, number=number)
