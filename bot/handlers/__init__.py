"""Slack requests turned into core calls: parse, one transaction, render.

Everything here runs before Slack gets its answer, so it only does what the
core does in a transaction (cheap database writes); anything that talks to a
cluster is returned as a `later` follow-up that the channel runs after the ack.
One error policy for every command and button: a UserError is shown as written,
anything else shows a reference id and logs the traceback under it.

Adding a command: its `@commands.command` parser in bot/commands/<area>.py (usage, help,
examples) and its `@handles` handler in bot/handlers/<area>.py; this package refuses to import while a
command type the parser can make has no handler.
"""

from __future__ import annotations

# isort: off
from bot.handlers.base import (
    ANSWERED_INLINE,
    HANDLERS,
    LOG_FETCH_TIMEOUT,
    STATUS_OVERVIEW_LIMIT,
    Caller,
    Handler,
    Outcome,
    execute,
    failure,
    handles,
    missing_handlers,
    run_command,
)

# Each area module registers its handlers with @handles when imported.
from bot.handlers import deploys, secrets, addons, controls, projects, environments  # noqa: F401
from bot.handlers.buttons import run_action
# isort: on

# A command the parser makes but nothing handles would only show as "internal error": refuse to start.
if missing_handlers():
    raise RuntimeError(f"slack commands without a handler: {', '.join(missing_handlers())}")

__all__ = [
    "ANSWERED_INLINE",
    "HANDLERS",
    "LOG_FETCH_TIMEOUT",
    "STATUS_OVERVIEW_LIMIT",
    "Caller",
    "Handler",
    "Outcome",
    "execute",
    "failure",
    "handles",
    "missing_handlers",
    "run_action",
    "run_command",
]
