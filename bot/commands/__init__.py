"""The `/shipit` command language: text in, a typed command out, nothing else.

Pure (no I/O, no core calls) so every command and every mistake people make can
be unit-tested, and so the handlers stay thin.  Secret values pass through this
package: no error message, repr or `describe()` ever contains one.

Each command is one `@command(...)` parser: its usage, summary and examples live on
it, so help, "did you mean" and usage errors all read the same registry, and the
command types it makes come from its return annotation (bot.handlers checks that
each one has a handler).  The registry machinery is in `registry`; the parsers are
grouped by area in the sibling modules, imported below in the order help lists them.
"""

from __future__ import annotations

# isort: off
# The parsers register in import order, which is the order help lists the commands in.
from bot.commands import deploys, secrets, addons, controls, projects, identities, help, environments

# isort: on
from bot.commands.addons import AddonCreate, AddonDestroy, AddonList
from bot.commands.controls import (
    Lock,
    LockEnv,
    LockProject,
    Pause,
    PreviewApprove,
    Resume,
    Scale,
    Unlock,
    UnlockEnv,
    UnlockProject,
)
from bot.commands.deploys import (
    DEFAULT_LOG_LINES,
    MAX_LOG_LINES,
    RUNS_SHOWN,
    Apps,
    Deploy,
    Diff,
    Logs,
    Revisions,
    Rollback,
    Runs,
    Status,
    Usage,
)
from bot.commands.environments import Envs, Promote
from bot.commands.help import help_text
from bot.commands.identities import Link, Whoami
from bot.commands.projects import ROLES, Access, NotifyAdd, NotifyList, NotifyRemove, NotifyTest
from bot.commands.registry import (
    _REGISTRY,
    BY_NAME,
    Command,
    Help,
    Spec,
    UsageError,
    command,
    parse,
    unescape,
)
from bot.commands.secrets import SecretsList, SecretsSet, SecretsUnset, describe

# Every command, in the order declared (help lists them so).
SPECS: tuple[Spec, ...] = tuple(BY_NAME.values())

__all__ = [
    "BY_NAME",
    "DEFAULT_LOG_LINES",
    "MAX_LOG_LINES",
    "ROLES",
    "RUNS_SHOWN",
    "SPECS",
    "_REGISTRY",
    "Access",
    "AddonCreate",
    "AddonDestroy",
    "AddonList",
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
    "Runs",
    "Scale",
    "SecretsList",
    "SecretsSet",
    "SecretsUnset",
    "Spec",
    "Status",
    "Unlock",
    "UnlockEnv",
    "UnlockProject",
    "Usage",
    "UsageError",
    "Whoami",
    "addons",
    "command",
    "controls",
    "deploys",
    "describe",
    "environments",
    "help",
    "help_text",
    "identities",
    "parse",
    "projects",
    "secrets",
    "unescape",
]
