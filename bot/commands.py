"""The `/shipit` command language: text in, a typed command out, nothing else.

Pure (no I/O, no core calls) so every command and every mistake people make can
be unit-tested, and so the handlers stay thin.  Slack sends the command text
escaped (`&lt;`, `<https://…|…>` for anything that looks like a link, `<@U1|name>`
for mentions); we undo that here once.  Secret values pass through this module:
no error message, repr or `describe()` ever contains one.

Each command is one `@command(...)` parser: its usage, summary and examples live on
it, so help, "did you mean" and usage errors all read the same registry, and the
command types it makes come from its return annotation (bot.handlers checks that
each one has a handler).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, UnionType
from typing import TypeVar, get_args, get_origin, get_type_hints

from core.errors import InvalidInput

MAX_LOG_LINES = 500
DEFAULT_LOG_LINES = 50


ROLES = ("viewer", "developer", "admin", "owner", "none")


# ---------------------------------------------------------------- the commands


@dataclass(frozen=True, kw_only=True)
class Command:
    """What a parser makes; each subclass has one handler in bot.handlers."""

    # The environment an app command addresses (`... to staging`, `... in staging`, `--env staging`);
    # None: the app's only one.
    env: str | None = None


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


@dataclass(frozen=True, kw_only=True)
class Scale(Command):
    app: str
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_target: int | None = None
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


@dataclass(frozen=True, kw_only=True)
class Access(Command):
    project: str
    subject: str  # slack:U123, github:login, user:name
    role: str | None  # None removes the member


@dataclass(frozen=True, kw_only=True)
class Link(Command):
    subject: str  # github:login, the identity to prove


@dataclass(frozen=True, kw_only=True)
class Whoami(Command):
    pass


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


def describe(command: Command) -> str:
    """A one-line, value-free description for logs."""
    if isinstance(command, SecretsSet):
        return f"secrets set {command.app} keys={','.join(sorted(command.values))}"
    return repr(command)


# ---------------------------------------------------------------- parsing

# <https://x.y|x.y>, <mailto:a@b|a@b>: Slack's link formatting.  Mentions (<@U…>, <#C…>, <!here>) stay.
_LINK = re.compile(r"<(?![@#!])([^<>|]+)(?:\|([^<>]*))?>")
_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$")
# Desktop Slack turns typed quotes into curly ones; accept both as delimiters (never inside values).
_SECRET_PAIR = re.compile(
    r"\s*(?P<key>[^\s=]+)="
    r"(?:[\"\u201c](?P<dq>[^\"\u201c\u201d]*)[\"\u201d]"
    r"|['\u2018](?P<sq>[^'\u2018\u2019]*)['\u2019]"
    r"|(?P<bare>(?![\"'\u201c\u2018])\S*))(?=\s|$)",
    re.DOTALL,
)
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
_REVISION = re.compile(r"^(?:r|rev|#)?(\d{1,9})$", re.IGNORECASE)


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
        raise _unknown_command(name)
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
_TAIL_COMMANDS = ("deploy", "diff", "rollback", "status", "revisions", "logs", "scale", "secrets")


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


def _unknown_command(name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
    shown = name if len(name) <= 30 else name[:30] + "…"
    if close:
        return UsageError(f"Unknown command `{shown}`. Did you mean `{close[0]}`?", command=close[0])
    return UsageError(f"Unknown command `{shown}`.", command=None)


def _words(rest: str) -> list[str]:
    return rest.split()


def _app(words: list[str], command: str) -> str:
    if not words:
        raise UsageError(f"`{command}` needs an app name.", command=command)
    return words[0].lower()


def _no_more(words: list[str], command: str) -> None:
    if words:
        extra = " ".join(words)
        extra = extra if len(extra) <= 40 else extra[:40] + "…"
        raise UsageError(f"`{command}` does not take `{extra}`.", command=command)


def _int(value: str, *, command: str, name: str, low: int, high: int) -> int:
    if not value.isdigit():
        raise UsageError(f"{name} must be a whole number, got `{value[:20]}`.", command=command)
    number = int(value)
    if not low <= number <= high:
        raise UsageError(f"{name} must be between {low} and {high}, got {number}.", command=command)
    return number


@command(
    "deploy",
    usage="deploy <app> <image|tag>",
    summary="deploy an image, or a new tag of the current image",
    examples=("deploy web ghcr.io/acme/web:1.4", "deploy web 1.5"),
)
def _parse_deploy(rest: str) -> Deploy:
    words = _words(rest)
    app = _app(words, "deploy")
    # A command cut short (or `deploy web ""`) must not restart production with what already runs.
    if len(words) < 2 or not words[1].strip(_QUOTES):
        raise UsageError(
            f"`deploy` needs an image or a tag; to redeploy what runs now, give its tag "
            f"(`/shipit status {app}` shows it).",
            command="deploy",
        )
    _no_more(words[2:], "deploy")
    return Deploy(app=app, image=words[1])


@command(
    "diff",
    usage="diff <app> [image|tag]",
    summary="what a deploy would change on the cluster, field by field; changes nothing",
    examples=("diff web 1.6", "diff web"),
)
def _parse_diff(rest: str) -> Diff:
    words = _words(rest)
    app = _app(words, "diff")
    image = words[1] if len(words) > 1 and words[1].strip(_QUOTES) else None
    _no_more(words[2:], "diff")
    return Diff(app=app, image=image)


@command(
    "rollback",
    usage="rollback <app> [revision]",
    summary="go back to the previous good revision (or a given one); pauses auto-deploy",
    examples=("rollback web", "rollback web 3"),
)
def _parse_rollback(rest: str) -> Rollback:
    words = _words(rest)
    app = _app(words, "rollback")
    revision = None
    if len(words) > 1:
        m = _REVISION.match(words[1])
        if m is None:
            raise UsageError(
                f"the revision must be a number (see `/shipit revisions {app}`), got `{words[1][:20]}`.",
                command="rollback",
            )
        revision = int(m.group(1))
    _no_more(words[2:], "rollback")
    return Rollback(app=app, revision=revision)


@command(
    "status",
    usage="status [app]",
    summary="what runs now and what is queued",
    examples=("status", "status web"),
)
def _parse_status(rest: str) -> Status:
    words = _words(rest)
    _no_more(words[1:], "status")
    return Status(app=words[0].lower() if words else None)


@command("apps", usage="apps", summary="the apps you can see", examples=("apps",))
def _parse_apps(rest: str) -> Apps:
    _no_more(_words(rest), "apps")
    return Apps()


@command(
    "revisions", usage="revisions <app>", summary="the revisions kept for an app", examples=("revisions web",)
)
def _parse_revisions(rest: str) -> Revisions:
    words = _words(rest)
    app = _app(words, "revisions")
    _no_more(words[1:], "revisions")
    return Revisions(app=app)


@command(
    "logs",
    usage="logs <app> [lines]",
    summary=f"the last log lines of the app's pods (default {DEFAULT_LOG_LINES}, at most {MAX_LOG_LINES})",
    examples=("logs web", "logs web 200"),
)
def _parse_logs(rest: str) -> Logs:
    words = _words(rest)
    app = _app(words, "logs")
    lines = DEFAULT_LOG_LINES
    if len(words) > 1:
        lines = _int(words[1].removeprefix("lines="), command="logs", name="lines", low=1, high=MAX_LOG_LINES)
    _no_more(words[2:], "logs")
    return Logs(app=app, lines=lines)


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
        _no_more(tail.split(), "secrets")
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


@command(
    "scale",
    usage="scale <app> replicas=N  |  scale <app> min=N max=N [cpu=N]  |  scale <app> auto off",
    summary="fixed replicas, or a HorizontalPodAutoscaler",
    examples=("scale web replicas=3", "scale web min=2 max=10 cpu=70", "scale web auto off"),
)
def _parse_scale(rest: str) -> Scale:
    words = _words(rest)
    app = _app(words, "scale")
    args = [w.lower() for w in words[1:]]
    if not args:
        raise UsageError("`scale` needs replicas=N, min=N max=N [cpu=N], or auto off.", command="scale")
    if args in (["auto", "off"], ["autoscaling", "off"], ["hpa", "off"]):
        return Scale(app=app, autoscaling_off=True)
    given: dict[str, int] = {}
    aliases = {"replicas": "replicas", "min": "min", "max": "max", "cpu": "cpu"}
    for arg in args:
        key, eq, value = arg.partition("=")
        canonical = aliases.get(key)
        if not eq or canonical is None:
            raise UsageError(f"`scale` does not understand `{arg[:30]}`.", command="scale")
        if canonical in given:
            raise UsageError(f"{canonical} is given twice.", command="scale")
        high = 100 if canonical == "cpu" else 1000
        low = 0 if canonical == "replicas" else 1
        given[canonical] = _int(value.rstrip("%"), command="scale", name=canonical, low=low, high=high)
    if "replicas" in given:
        if len(given) > 1:
            raise UsageError("give either replicas=N or min/max/cpu, not both.", command="scale")
        return Scale(app=app, replicas=given["replicas"])
    return Scale(
        app=app, min_replicas=given.get("min"), max_replicas=given.get("max"), cpu_target=given.get("cpu")
    )


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
    words = _words(rest)
    if len(words) == 2 and words[0].lower() in ("env", "project"):
        if words[0].lower() == "env":
            return UnlockEnv(where=words[1].lower())
        return UnlockProject(project=words[1].lower())
    app = _app(words, "unlock")
    _no_more(words[1:], "unlock")
    return Unlock(app=app)


@command(
    "pause",
    usage="pause <app>",
    summary="stop automatic deploys (pushes); manual deploys still work",
    examples=("pause web",),
)
def _parse_pause(rest: str) -> Pause:
    words = _words(rest)
    app = _app(words, "pause")
    _no_more(words[1:], "pause")
    return Pause(app=app)


@command("resume", usage="resume <app>", summary="deploy on push again", examples=("resume web",))
def _parse_resume(rest: str) -> Resume:
    words = _words(rest)
    app = _app(words, "resume")
    _no_more(words[1:], "resume")
    return Resume(app=app)


@command(
    "preview",
    usage="preview approve <app> <pull request>",
    summary="deploy the waiting preview of a pull request from a fork (its current commit, without secrets)",
    examples=("preview approve web 42",),
)
def _parse_preview(rest: str) -> PreviewApprove:
    words = _words(rest)
    if not words or words[0].lower() != "approve":
        raise UsageError("`preview` takes approve.", command="preview")
    if len(words) < 3:
        raise UsageError("`preview approve` needs an app and a pull request number.", command="preview")
    app = words[1].lower()
    number = _int(words[2].removeprefix("#"), command="preview", name="the pull request", low=1, high=10**9)
    _no_more(words[3:], "preview")
    return PreviewApprove(app=app, number=number)


@command(
    "access",
    usage="access <project> <@user> <role>",
    summary="give someone a role in a project: viewer, developer, admin, owner, or none to remove it",
    examples=("access acme @alice developer", "access acme @bob none"),
)
def _parse_access(rest: str) -> Access:
    words = _words(rest)
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


_NOTIFY_SUB = ("list", "add", "remove", "test")


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
    words = _words(rest)
    sub = words[0].lower() if words else ""
    if sub in ("rm", "delete"):
        sub = "remove"
    if sub not in _NOTIFY_SUB:
        raise UsageError("`notify` takes list, add, remove or test.", command="notify")
    if len(words) < 2:
        raise UsageError(f"`notify {sub}` needs a project name.", command="notify")
    project = words[1].lower()
    if sub == "list":
        _no_more(words[2:], "notify")
        return NotifyList(project=project)
    if sub in ("remove", "test"):
        if len(words) < 3 or not words[2].lstrip("#").isdigit() or len(words[2]) > 18:
            raise UsageError(f"`notify {sub}` needs a target id (see `notify list`).", command="notify")
        _no_more(words[3:], "notify")
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


@command(
    "link",
    usage="link github <login>",
    summary="prove a GitHub login is also you, so your roles hold there too (a one-time code)",
    examples=("link github octocat",),
)
def _parse_link(rest: str) -> Link:
    words = _words(rest)
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
    _no_more(_words(rest), "whoami")
    return Whoami()


@command(
    "help",
    usage="help [command]",
    summary="this list, or one command in detail",
    examples=("help", "help scale"),
)
def _parse_help(rest: str) -> Help:
    words = _words(rest)
    topic = words[0].lower() if words else None
    if topic is not None and topic not in BY_NAME:
        raise _unknown_command(topic)
    return Help(topic=topic)


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
    words = [w.lower() for w in _words(rest)]
    app = _app(words, "promote")
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
    words = _words(rest)
    _no_more(words[1:], "envs")
    return Envs(project=words[0].lower() if words else None)


# Every command, in the order declared above (help lists them so).
SPECS: tuple[Spec, ...] = tuple(BY_NAME.values())


# ---------------------------------------------------------------- help


def help_text(topic: str | None = None) -> str:
    if topic is not None:
        spec = BY_NAME[topic]
        examples = "\n".join(f"• `/shipit {e}`" for e in spec.examples)
        return f"*`/shipit {spec.usage}`*\n{spec.summary}\nExamples:\n{examples}"
    lines = ["*shipit* deploys, rolls back, scales and keeps secrets from Slack. Commands:"]
    for spec in BY_NAME.values():
        lines.append(f"• `/shipit {spec.usage}` — {spec.summary}. e.g. `/shipit {spec.examples[0]}`")
    lines.append("Deploy cards in the project channel carry Approve / Reject / Cancel / Roll back buttons.")
    return "\n".join(lines)


__all__ = [
    "BY_NAME",
    "SPECS",
    "Access",
    "Apps",
    "Command",
    "Deploy",
    "Diff",
    "Envs",
    "Help",
    "Link",
    "Lock",
    "LockEnv",
    "LockProject",
    "Logs",
    "NotifyAdd",
    "NotifyList",
    "NotifyRemove",
    "NotifyTest",
    "Pause",
    "PreviewApprove",
    "Promote",
    "Resume",
    "Revisions",
    "Rollback",
    "Scale",
    "SecretsList",
    "SecretsSet",
    "SecretsUnset",
    "Spec",
    "Status",
    "Unlock",
    "UnlockEnv",
    "UnlockProject",
    "UsageError",
    "Whoami",
    "command",
    "describe",
    "help_text",
    "parse",
    "unescape",
]
