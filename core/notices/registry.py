"""Every kind of notice, in one place: the names a target may have, and the notifiers core builds.

Slack and GitHub are built by their channels (bot/, webhooks/) and plugged in by shipit; the kinds
below them core delivers by itself.  Adding a kind: a module in core/notices/, one line in BUILT_IN
(and KINDS), and its flag in shipit/cli_notify.py.
"""

from __future__ import annotations

from collections.abc import Callable

from core.context import Core
from core.notices import Notifier, discord, mail, teams, webhook

# Every kind a target may be, in the order lists show them.
KINDS = ("slack", "github", "email", "teams", "discord", "webhook")
# Kinds that deliver without any row: Slack to the channel a command was typed in, GitHub to each
# app's own repository.  A project with rows of such a kind uses its rows instead.  The registry's
# promoter is no target at all but a listener on deploy outcomes: it has no rows, so always its default.
DEFAULT_TARGET = frozenset({"slack", "github", "registry-promote"})
# Kinds whose address is a URL holding a secret: shown as scheme://host/… only.
SECRET_URLS = frozenset({"teams", "discord"})

BUILT_IN: dict[str, Callable[[Core, mail.Smtp | None], Notifier]] = {
    "email": lambda ctx, smtp: mail.EmailNotifier(ctx=ctx, smtp=smtp),
    "teams": lambda ctx, smtp: teams.TeamsNotifier(ctx=ctx),
    "discord": lambda ctx, smtp: discord.DiscordNotifier(ctx=ctx),
    "webhook": lambda ctx, smtp: webhook.WebhookNotifier(ctx=ctx),
}


def build(*, ctx: Core, smtp: mail.Smtp | None) -> list[Notifier]:
    return [make(ctx, smtp) for make in BUILT_IN.values()]
