"""Block Kit builders: every message shipit shows in Slack is shaped here, not in handlers.

Pure functions from core's view types to (fallback text, blocks).  Anything a
person typed (lock reasons, error texts) is escaped, so a reason that says
`<!channel>` cannot ping a channel.  Nothing here ever receives a secret value.

The package: `blocks` (Message, escaping, buttons, plain replies), `cards` (the deploy card) and
`replies` (answers to commands); every public name is re-exported, so callers keep `views.X`.
"""

from __future__ import annotations

from bot.views.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_PROMOTE,
    ACTION_REJECT,
    ACTION_ROLLBACK,
    ACTIONS,
    MAX_TEXT,
    Block,
    Message,
    button_value,
    channel_ref,
    duration,
    env_flag,
    error,
    esc,
    help_message,
    long_message,
    parse_button_value,
    reply,
    split_channel,
    who,
)
from bot.views.cards import THREAD_LOG_LINES, build_card, card, card_text, failure_thread
from bot.views.replies import (
    DRY_RUN_LINES,
    addon_changed,
    addon_list,
    app_list,
    app_status,
    dry_run,
    environments,
    link_code,
    log_lines,
    notify_targets,
    notify_tested,
    preview_approved,
    queued,
    revision_list,
    secret_keys,
    secrets_changed,
    status_overview,
    whoami,
)

__all__ = [
    "ACTIONS",
    "ACTION_APPROVE",
    "ACTION_CANCEL",
    "ACTION_PROMOTE",
    "ACTION_REJECT",
    "ACTION_ROLLBACK",
    "DRY_RUN_LINES",
    "MAX_TEXT",
    "THREAD_LOG_LINES",
    "Block",
    "Message",
    "addon_changed",
    "addon_list",
    "app_list",
    "app_status",
    "build_card",
    "button_value",
    "card",
    "card_text",
    "channel_ref",
    "dry_run",
    "duration",
    "env_flag",
    "environments",
    "error",
    "esc",
    "failure_thread",
    "help_message",
    "link_code",
    "log_lines",
    "long_message",
    "notify_targets",
    "notify_tested",
    "parse_button_value",
    "preview_approved",
    "queued",
    "reply",
    "revision_list",
    "secret_keys",
    "secrets_changed",
    "split_channel",
    "status_overview",
    "who",
    "whoami",
]
