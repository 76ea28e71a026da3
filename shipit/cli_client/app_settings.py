"""The app settings `apps create` and `apps update` take: one entry each, in the order --help lists them.

Both commands put a `settings` parameter where the options go and decorate themselves with
`options(...)`: the entries below become typer options there, and their values arrive as one dict
that `body` turns into the API's fields.  A new setting is one `Setting` here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import typer

from shipit.cli_client.client import fail

Command = Literal["create", "update"]
F = TypeVar("F", bound=Callable[..., Any])


def _on_off(value: str) -> bool:
    word = value.lower()
    if word not in ("on", "off"):
        fail("--auto-rollback takes on or off")
    return word == "on"


@dataclass(frozen=True, kw_only=True)
class Setting:
    name: str  # the parameter; the option is --name-with-dashes unless `flags` spells it
    type: Any  # str, int, bool or list[str]: the option is optional, None meaning "not given"
    help: str
    field: str = ""  # the API's field, when it is not `name`
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    parse: Callable[[Any], Any] | None = None  # the flag's value -> the API's
    only: Command | None = None  # taken by one command only
    workload: bool = True  # False: shipit's own setting, which no deploy writes to the cluster

    def parameter(self) -> inspect.Parameter:
        option = typer.Option(*self.flags, help=self.help, metavar=self.metavar)
        annotation: Any = Annotated[self.type | None, option]
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
        )


SETTINGS: tuple[Setting, ...] = (
    Setting(name="image", type=str, help="Container image, like ghcr.io/acme/web:1.4."),
    Setting(name="replicas", type=int, help="Fixed number of pods (without autoscaling)."),
    Setting(name="port", type=int, help="Container port (default 8080)."),
    # `env` and `unset_env` are the commands' own: create sends the pairs, update merges them.
    Setting(
        name="env", type=list[str], flags=("--env", "-e"), help="KEY=VALUE environment variable; repeatable."
    ),
    Setting(
        name="unset_env",
        type=list[str],
        flags=("--unset-env",),
        help="Remove an environment variable; repeatable.",
        only="update",
    ),
    Setting(name="cpu_request", type=str, help="CPU request (default 100m)."),
    Setting(name="cpu_limit", type=str, help="CPU limit (default 500m)."),
    Setting(name="memory_request", type=str, help="Memory request (default 128Mi)."),
    Setting(name="memory_limit", type=str, help="Memory limit (default 256Mi)."),
    Setting(name="health_path", type=str, help="HTTP path for liveness/readiness probes."),
    Setting(name="health_port", type=int, help="Probe port (default: the container port)."),
    Setting(name="health_initial_delay", type=int, help="Seconds before the first probe."),
    Setting(name="health_period", type=int, help="Seconds between probes."),
    Setting(name="min_replicas", type=int, help="Autoscaling: fewest pods."),
    Setting(name="max_replicas", type=int, help="Autoscaling: most pods."),
    Setting(name="cpu_target", type=int, help="Autoscaling: target CPU use in percent (1-100)."),
    Setting(
        name="scale_down_window",
        type=int,
        metavar="SECONDS",
        help="Autoscaling: seconds the HPA waits before scaling down (0-3600; default Kubernetes' 300).",
    ),
    Setting(name="domain", type=str, help="Serve on this host (Ingress + TLS); '' removes it."),
    Setting(
        name="protected",
        type=bool,
        flags=("--protected/--unprotected",),
        help="Deploys need approval from a second person.",
        workload=False,
    ),
    Setting(
        name="progress_deadline",
        type=int,
        field="progress_deadline_seconds",
        help="Seconds a rollout may take before it fails.",
    ),
    Setting(name="git_repo", type=str, help="GitHub repository owner/name to deploy from.", workload=False),
    Setting(name="git_branch", type=str, help="Branch whose pushes deploy.", workload=False),
    Setting(
        name="image_template",
        type=str,
        help="Image built for a commit, like ghcr.io/acme/web:{sha}.",
        workload=False,
    ),
    Setting(name="deploy_on", type=str, help="Deploy on 'push' or after 'ci' passes.", workload=False),
    Setting(
        name="build",
        type=bool,
        field="build_enabled",
        flags=("--build/--no-build",),
        help="Build pushed commits from source (their Dockerfile, or a detected pack) and deploy the image.",
        workload=False,
    ),
    Setting(
        name="build_context",
        type=str,
        metavar="DIR",
        help="The repository's directory to build (default: its root).",
        workload=False,
    ),
    Setting(
        name="build_image",
        type=str,
        metavar="REPO",
        help="Repository the built images are pushed to, like registry.acme.dev/acme/web (tagged with the sha).",
        workload=False,
    ),
    Setting(
        name="previews",
        type=bool,
        field="previews_enabled",
        flags=("--previews/--no-previews",),
        help="A preview environment per pull request.",
        workload=False,
    ),
    Setting(name="preview_domain", type=str, help="Base domain of preview URLs.", workload=False),
    Setting(name="preview_ttl_hours", type=int, help="Hours an idle preview lives.", workload=False),
    Setting(
        name="previews_from_forks",
        type=str,
        flags=("--previews-from-forks",),
        metavar="never|approved|always",
        help="Pull requests from forks: no preview (never), one once a project developer approves "
        "each commit (approved, without the app's secrets), or always (with secrets; admins only).",
        workload=False,
    ),
    Setting(
        name="release_command",
        type=str,
        flags=("--release-command",),
        help="Run this (sh -c) as a Job with the new image, env and secrets before each rollout; "
        "the deploy fails, and nothing changes, if it fails. '' removes it.",
    ),
    Setting(
        name="auto_rollback",
        type=str,
        flags=("--auto-rollback",),
        metavar="on|off",
        help="When a rollout fails, deploy the current revision again by itself (default on).",
        parse=_on_off,
        workload=False,
    ),
)
_OWN = ("env", "unset_env")
_SHIPIT_ONLY = frozenset(s.field or s.name for s in SETTINGS if not s.workload)


def reaches_workload(fields: Iterable[str]) -> bool:
    """Whether a change of these API fields shows on the cluster once deployed (env does)."""
    return any(f not in _SHIPIT_ONLY for f in fields)


def options(command: Command) -> Callable[[F], F]:
    """Replace the command's `settings` parameter by one option per setting; their values arrive in it."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        ours = [s.parameter() for s in SETTINGS if s.only in (None, command)]
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            params.extend(ours if p.name == "settings" else [p])
        names = {p.name for p in ours}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            settings = {k: kwargs.pop(k) for k in names}
            return func(settings=settings, **kwargs)

        # typer reads the signature: the settings' options stand where `settings` stood.
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


def body(settings: dict[str, Any]) -> dict[str, Any]:
    """The API's fields for the settings given (None: not given), `env` and `unset_env` left out."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value = settings.get(s.name)
        if value is None or s.name in _OWN:
            continue
        out[s.field or s.name] = s.parse(value) if s.parse else value
    return out
