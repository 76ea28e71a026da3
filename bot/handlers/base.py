"""The dispatch of Slack commands: who called (`Caller`), what they get back (`Outcome`), the
`@handles` registry of handlers per command type, the one error policy, and `run_command` / `execute`
(parse, one transaction, render).  The handlers themselves are in the sibling modules, by area.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from core import apps, deliveries, deploys, errors, logctx, validation
from core.context import Core
from core.errors import UserError
from core.identity import Actor
from core.notices import targets as notice_targets
from storage import models

log = logging.getLogger(__name__)
LOG_FETCH_TIMEOUT = 20.0
# `status` without an app reads each app in one transaction: keep it short (the rest is one more line).
STATUS_OVERVIEW_LIMIT = 10
# A slash command's trigger id, recorded under this prefix (a delivery, or a deployment's dedupe key).
TRIGGER_PREFIX = "slack-trigger"


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who clicked or typed, and where."""

    user_id: str
    user_name: str
    team_id: str | None
    channel_id: str | None
    # For handlers registered with @handles(..., keyed=True): the dedupe key their deployment carries,
    # which a replay of the same slash command (same trigger id) carries too; set by `execute`.
    replay_key: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(subject=f"slack:{self.user_id}", channel="slack", display=self.user_name or self.user_id)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    message: views.Message
    # Slow work (asking a cluster) that runs after Slack got its answer; its message replaces the first.
    later: Callable[[], Awaitable[views.Message]] | None = None
    duplicate: bool = False  # a retried delivery that was handled before: answer, do nothing


Handler = Callable[[AsyncSession, Core, Caller, Any], Awaitable[Outcome]]
H = TypeVar("H", bound=Handler)


# Command type -> its handler, filled by @handles; checked against the registry of bot.commands at import.
HANDLERS: dict[type[commands.Command], Handler] = {}
# Command types whose handler writes one deployment with `caller.replay_key` as its dedupe key: the
# deployment's unique key then refuses a replayed slash command, so no delivery record is written.
KEYED: set[type[commands.Command]] = set()


# Answered by `execute` itself, with no transaction: help reads nothing from the core.
ANSWERED_INLINE: tuple[type[commands.Command], ...] = (commands.Help,)


def handles(kind: type[commands.Command], *, keyed: bool = False) -> Callable[[H], H]:
    """Register the handler of one command type (one per type; see `missing_handlers`).

    `keyed`: on every successful run the handler inserts one deployment whose dedupe key is
    `caller.replay_key` (without looking it up first: deploys.request(dedupe_fresh=True)).
    """

    def register(fn: H) -> H:
        if kind in HANDLERS:
            raise ValueError(f"{kind.__name__} has two handlers")
        HANDLERS[kind] = fn
        if keyed:
            KEYED.add(kind)
        return fn

    return register


def missing_handlers() -> list[str]:
    """Command types the parser can make that nothing here handles (empty when all is wired)."""
    return [
        f"{spec.name}: {kind.__name__}"
        for spec in commands.BY_NAME.values()
        for kind in spec.kinds
        if kind not in HANDLERS and kind not in ANSWERED_INLINE
    ]


def ok(text: str) -> Outcome:
    return Outcome(message=views.reply(text))


def failure(exc: BaseException, *, what: str, caller: Caller) -> Outcome:
    """The one error policy of the Slack channel."""
    if isinstance(exc, errors.SeveralEnvironments):
        return Outcome(
            message=views.error(
                exc.ask(f"`--env NAME` after the command, e.g. `--env {exc.environments[0]}`")
            )
        )
    if isinstance(exc, UserError):
        return Outcome(message=views.error(str(exc)))
    # Ours with a safe message (a cluster that does not answer, say) but not the user's fault, or a crash.
    return Outcome(
        message=views.error(errors.report(exc, log=log, what=f"slack: {what} by {caller.user_id}").text)
    )


async def run_command(
    *,
    core: Core,
    caller: Caller,
    text: str,
    delivery_id: str | None = None,
    trigger_id: str | None = None,
) -> Outcome:
    """A slash command or a mention: parse, execute, render; never raises.

    `delivery_id` (an event id) or `trigger_id` (a slash command's) makes it act once per id.
    """
    try:
        command = commands.parse(text)
    except UserError as e:
        return Outcome(message=views.error(str(e)))
    return await execute(
        core=core, caller=caller, command=command, delivery_id=delivery_id, trigger_id=trigger_id
    )


async def execute(
    *,
    core: Core,
    caller: Caller,
    command: commands.Command,
    delivery_id: str | None = None,
    trigger_id: str | None = None,
) -> Outcome:
    if isinstance(command, commands.Help):
        return Outcome(message=views.help_message(commands.help_text(command.topic)))
    what = commands.describe(command)
    handler = HANDLERS[type(command)]
    kind = type(command).__name__
    app, project = getattr(command, "app", None), getattr(command, "project", None)
    clog = logctx.deploy_logger(
        log,
        project=project if isinstance(project, str) else None,
        app=app if isinstance(app, str) else None,
        delivery=delivery_id or trigger_id,
    )
    replay = None
    if trigger_id is not None and type(command) in KEYED:
        # The trigger id goes into the deployment's dedupe key instead of a delivery record of its
        # own (issue 13: one statement less); a replay fails that INSERT and is answered below.
        replay = f"{TRIGGER_PREFIX}:{trigger_id}"
        caller = dataclasses.replace(caller, replay_key=replay)
    try:
        async with core.sessionmaker.begin() as session:
            # Recorded in the command's own transaction: one that failed can be sent again.
            if delivery_id is not None and not await deliveries.first_time(
                session, source="slack", delivery_id=delivery_id, kind=kind
            ):
                clog.info("slack: %s was handled before; ignored", what)
                return Outcome(message=views.reply("Already handled."), duplicate=True)
            if (
                trigger_id is not None
                and replay is None
                and not await deliveries.first_time(
                    session, source="slack", prefix=TRIGGER_PREFIX, delivery_id=trigger_id, kind=kind
                )
            ):
                clog.warning("slack: %s by %s replayed; ignored", what, caller.user_id)
                return Outcome(message=views.reply("Already handled."), duplicate=True)
            outcome = await handler(session, core, caller, command)
    except IntegrityError as e:
        if replay is not None and await _deployed_under(core, key=replay):
            clog.warning("slack: %s by %s replayed; ignored", what, caller.user_id)
            return Outcome(message=views.reply("Already handled."), duplicate=True)
        return failure(e, what=what, caller=caller)
    except Exception as e:
        return failure(e, what=what, caller=caller)
    clog.info("slack: %s by %s (%s)", what, caller.user_id, caller.user_name)
    return outcome


async def _deployed_under(core: Core, *, key: str) -> bool:
    """Whether a committed deployment carries this dedupe key (after its INSERT was refused)."""
    async with core.sessionmaker() as session:
        return await deploys.by_dedupe_key(session, key=validation.dedupe_key(key)) is not None


async def queued_card(
    session: AsyncSession, *, caller: Caller, result: deploys.Requested, app: str
) -> views.Message:
    deployment = result.deployment
    row = await session.get(models.App, deployment.app_id)  # already loaded by the core call
    channel = None
    if row is not None:
        project = await apps.project_of(session, app=row)
        channel = await notice_targets.slack_channel(session, project_id=project.id)
        if channel is None and caller.channel_id and result.created:
            # No project channel: the card goes where the command was typed (see bot.notifier).
            refs = dict(deployment.notify_refs or {})
            # With the workspace, so that the card is posted with that workspace's token (OAuth).
            origin = f"{caller.team_id}/{caller.channel_id}" if caller.team_id else caller.channel_id
            refs["slack"] = {**refs.get("slack", {}), "origin": origin}
            deployment.notify_refs = refs
            channel = caller.channel_id
    return views.queued(deployment=deployment, app=app, channel=channel, created=result.created)
