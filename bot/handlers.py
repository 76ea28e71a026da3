"""Slack requests turned into core calls: parse, one transaction, render.

Everything here runs before Slack gets its answer, so it only does what the
core does in a transaction (cheap database writes); anything that talks to a
cluster is returned as a `later` follow-up that the channel runs after the ack.
One error policy for every command and button: a UserError is shown as written,
anything else shows a reference id and logs the traceback under it.

Adding a command: its `@commands.command` parser in bot/commands/<area>.py (usage, help,
examples) and its `@handles` handler here; this module refuses to import while a
command type the parser can make has no handler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from core import (
    apps,
    autoscaling,
    deliveries,
    deploys,
    dryrun,
    environment_admin,
    errors,
    identities,
    previews,
    projects,
    promotion,
    protection,
    secrets,
    status,
)
from core.context import Core
from core.errors import UserError
from core.identity import Actor
from core.notices import targets as notice_targets
from storage import models

log = logging.getLogger(__name__)

LOG_FETCH_TIMEOUT = 20.0
# `status` without an app reads each app in one transaction: keep it short (the rest is one more line).
STATUS_OVERVIEW_LIMIT = 10


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who clicked or typed, and where."""

    user_id: str
    user_name: str
    team_id: str | None
    channel_id: str | None

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
# Answered by `execute` itself, with no transaction: help reads nothing from the core.
ANSWERED_INLINE: tuple[type[commands.Command], ...] = (commands.Help,)


def handles(kind: type[commands.Command]) -> Callable[[H], H]:
    """Register the handler of one command type (one per type; see `missing_handlers`)."""

    def register(fn: H) -> H:
        if kind in HANDLERS:
            raise ValueError(f"{kind.__name__} has two handlers")
        HANDLERS[kind] = fn
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


def _ok(text: str) -> Outcome:
    return Outcome(message=views.reply(text))


def failure(exc: BaseException, *, what: str, caller: Caller) -> Outcome:
    """The one error policy of the Slack channel."""
    if isinstance(exc, UserError):
        return Outcome(message=views.error(str(exc)))
    # Ours with a safe message (a cluster that does not answer, say) but not the user's fault, or a crash.
    return Outcome(
        message=views.error(errors.report(exc, log=log, what=f"slack: {what} by {caller.user_id}").text)
    )


# ---------------------------------------------------------------- commands


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
    try:
        async with core.sessionmaker.begin() as session:
            # Recorded in the command's own transaction: one that failed can be sent again.
            if delivery_id is not None and not await deliveries.first_time(
                session, source="slack", delivery_id=delivery_id, kind=kind
            ):
                log.info("slack: %s (delivery %s) was handled before; ignored", what, delivery_id)
                return Outcome(message=views.reply("Already handled."), duplicate=True)
            if trigger_id is not None and not await deliveries.first_time(
                session, source="slack", prefix="slack-trigger", delivery_id=trigger_id, kind=kind
            ):
                log.warning(
                    "slack: %s by %s replayed (trigger %s); ignored", what, caller.user_id, trigger_id
                )
                return Outcome(message=views.reply("Already handled."), duplicate=True)
            outcome = await handler(session, core, caller, command)
    except Exception as e:
        return failure(e, what=what, caller=caller)
    log.info("slack: %s by %s (%s)", what, caller.user_id, caller.user_name)
    return outcome


@handles(commands.Deploy)
async def _deploy(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Deploy) -> Outcome:
    result = await deploys.request(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, image=cmd.image, trigger="slack", env=cmd.env
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=cmd.app))


@handles(commands.Diff)
async def _diff(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Diff) -> Outcome:
    # The role check and the rendering happen now; the cluster is asked after the ack.
    plan = await dryrun.plan(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, image=cmd.image, env=cmd.env
    )

    async def compare() -> views.Message:
        return views.dry_run(await dryrun.run(ctx=core, plan=plan))

    return Outcome(
        message=views.reply(
            f"Comparing *{views.esc(plan.app)}* `{views.esc(plan.spec.image)}` with the cluster (dry run)…"
        ),
        later=compare,
    )


@handles(commands.Rollback)
async def _rollback(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Rollback) -> Outcome:
    result = await deploys.rollback(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, revision=cmd.revision, env=cmd.env
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=cmd.app))


async def _queued(
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
            refs["slack"] = {**refs.get("slack", {}), "origin": caller.channel_id}
            deployment.notify_refs = refs
            channel = caller.channel_id
    return views.queued(deployment=deployment, app=app, channel=channel, created=result.created)


@handles(commands.Status)
async def _status(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Status) -> Outcome:
    if cmd.app is None:
        rows = await apps.list_visible(session, actor=caller.actor)
        found = [
            await status.read(
                session, actor=caller.actor, app_name=a.name, env=await apps.env_name(session, app=a)
            )
            for a in rows[:STATUS_OVERVIEW_LIMIT]
        ]
        return Outcome(message=views.status_overview(found, more=max(0, len(rows) - len(found))))
    st = await status.read(session, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    target = await status.target(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)

    async def live() -> views.Message:
        return views.app_status(await status.with_live(ctx=core, status=st, target=target))

    return Outcome(message=views.app_status(st, live_pending=True), later=live)


@handles(commands.Apps)
async def _apps(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Apps) -> Outcome:
    rows = await apps.list_visible(session, actor=caller.actor)
    names = {a.id: await apps.env_name(session, app=a) for a in rows}  # one query per environment
    return Outcome(message=views.app_list(rows, environments=names))


@handles(commands.Revisions)
async def _revisions(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Revisions) -> Outcome:
    rows = await deploys.revisions(session, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    app = await apps.get(session, actor=caller.actor, name=cmd.app, env=cmd.env)
    current = await deploys.current_revision(session, app=app)
    return Outcome(message=views.revision_list(app.name, rows, current=current.number if current else None))


@handles(commands.Logs)
async def _logs(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Logs) -> Outcome:
    target = await status.target(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)

    async def fetch() -> views.Message:
        lines: list[str] = []
        async for line in status.logs(ctx=core, target=target, tail_lines=cmd.lines, follow=False):
            lines.append(line)
        return views.log_lines(target.app, lines[-cmd.lines :], asked=cmd.lines)

    return Outcome(
        message=views.reply(f"Fetching the last {cmd.lines} log lines of *{target.app}*…"), later=fetch
    )


@handles(commands.SecretsSet)
async def _secrets_set(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.SecretsSet
) -> Outcome:
    change = await deploys.set_secrets(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, values=cmd.values, env=cmd.env
    )
    return Outcome(message=await _secrets_changed(session, caller=caller, change=change, removed=False))


async def _secrets_changed(
    session: AsyncSession, *, caller: Caller, change: deploys.SecretChange, removed: bool
) -> views.Message:
    queued = None
    if change.redeploy is not None:
        queued = await _queued(session, caller=caller, result=change.redeploy, app=change.app.name)
    return views.secrets_changed(app=change.app.name, keys=change.keys, removed=removed, queued=queued)


@handles(commands.SecretsList)
async def _secrets_list(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.SecretsList
) -> Outcome:
    rows = await secrets.list_keys(session, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    return Outcome(message=views.secret_keys(cmd.app, [r.key for r in rows]))


@handles(commands.SecretsUnset)
async def _secrets_unset(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.SecretsUnset
) -> Outcome:
    change = await deploys.unset_secrets(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, keys=list(cmd.keys), env=cmd.env
    )
    return Outcome(message=await _secrets_changed(session, caller=caller, change=change, removed=True))


@handles(commands.NotifyList)
async def _notify_list(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.NotifyList
) -> Outcome:
    rows = await notice_targets.list_for(session, actor=caller.actor, project=cmd.project)
    return Outcome(message=views.notify_targets(cmd.project, rows))


@handles(commands.NotifyAdd)
async def _notify_add(session: AsyncSession, core: Core, caller: Caller, cmd: commands.NotifyAdd) -> Outcome:
    row = await notice_targets.add(
        session, ctx=core, actor=caller.actor, project=cmd.project, kind=cmd.kind, address=cmd.address,
        environment=cmd.environment, events=cmd.events, format=cmd.format,
    )  # fmt: skip
    return Outcome(message=views.notify_targets(cmd.project, [notice_targets.listed(row)]))


@handles(commands.NotifyRemove)
async def _notify_remove(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.NotifyRemove
) -> Outcome:
    await notice_targets.remove(session, actor=caller.actor, project=cmd.project, target_id=cmd.target_id)
    return Outcome(message=views.reply(f"Removed target #{cmd.target_id} of *{views.esc(cmd.project)}*."))


@handles(commands.NotifyTest)
async def _notify_test(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.NotifyTest
) -> Outcome:
    async def send() -> views.Message:
        # After the answer, in transactions of its own: sending may take seconds.
        t = await notice_targets.test(
            ctx=core, actor=caller.actor, project=cmd.project, target_id=cmd.target_id
        )
        return views.notify_tested(cmd.target_id, ok=t.ok, message=t.message)

    return Outcome(message=views.reply(f"Sending a test notice to target #{cmd.target_id}…"), later=send)


@handles(commands.Scale)
async def _scale(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Scale) -> Outcome:
    result = await autoscaling.scale(
        session,
        ctx=core,
        actor=caller.actor,
        app_name=cmd.app,
        replicas=cmd.replicas,
        min_replicas=cmd.min_replicas,
        max_replicas=cmd.max_replicas,
        cpu_target=cmd.cpu_target,
        autoscaling_off=cmd.autoscaling_off,
        env=cmd.env,
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=cmd.app))


@handles(commands.Lock)
async def _lock(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Lock) -> Outcome:
    app = await apps.set_flag(
        session, actor=caller.actor, name=cmd.app, flag="lock", on=True, reason=cmd.reason, env=cmd.env
    )
    return _ok(
        f":lock: *{app.name}* is locked: {views.esc(cmd.reason)}. `/shipit unlock {app.name}` to undo."
    )


@handles(commands.Unlock)
async def _unlock(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Unlock) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="lock", on=False, env=cmd.env)
    return _ok(f":unlock: *{app.name}* is unlocked.")


@handles(commands.LockEnv)
async def _lock_env(session: AsyncSession, core: Core, caller: Caller, cmd: commands.LockEnv) -> Outcome:
    project, env = await protection.resolve_env(session, actor=caller.actor, where=cmd.where)
    await protection.lock_env(session, actor=caller.actor, project=project, env=env, reason=cmd.reason)
    return _ok(
        f":lock: Environment *{project}/{env}* is locked: {views.esc(cmd.reason)}. "
        f"`/shipit unlock env {project}/{env}` to undo."
    )


@handles(commands.UnlockEnv)
async def _unlock_env(session: AsyncSession, core: Core, caller: Caller, cmd: commands.UnlockEnv) -> Outcome:
    project, env = await protection.resolve_env(session, actor=caller.actor, where=cmd.where)
    await protection.unlock_env(session, actor=caller.actor, project=project, env=env)
    return _ok(f":unlock: Environment *{project}/{env}* is unlocked.")


@handles(commands.LockProject)
async def _lock_project(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.LockProject
) -> Outcome:
    p = await protection.lock_project(session, actor=caller.actor, project=cmd.project, reason=cmd.reason)
    return _ok(
        f":lock: Project *{p.name}* is locked: {views.esc(cmd.reason)}. `/shipit unlock project {p.name}` to undo."
    )


@handles(commands.UnlockProject)
async def _unlock_project(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.UnlockProject
) -> Outcome:
    p = await protection.unlock_project(session, actor=caller.actor, project=cmd.project)
    return _ok(f":unlock: Project *{p.name}* is unlocked.")


@handles(commands.Pause)
async def _pause(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Pause) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="pause", on=True, env=cmd.env)
    return _ok(
        f":double_vertical_bar: Auto-deploy of *{app.name}* is paused; manual deploys still work. "
        f"`/shipit resume {app.name}` to deploy on push again."
    )


@handles(commands.Resume)
async def _resume(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Resume) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="pause", on=False, env=cmd.env)
    return _ok(f":arrow_forward: *{app.name}* deploys on push again.")


@handles(commands.PreviewApprove)
async def _preview_approve(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.PreviewApprove
) -> Outcome:
    approval = await previews.approve(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, number=cmd.number, env=cmd.env
    )
    return Outcome(message=views.preview_approved(app=cmd.app, approval=approval))


@handles(commands.Access)
async def _access(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Access) -> Outcome:
    await projects.set_access(
        session, actor=caller.actor, project_name=cmd.project, subject=cmd.subject, role=cmd.role
    )
    person = views.who(cmd.subject)
    if cmd.role is None:
        return _ok(f"{person} no longer has a role in project *{views.esc(cmd.project)}*.")
    return _ok(f"{person} is now *{cmd.role}* in project *{views.esc(cmd.project)}*.")


@handles(commands.Link)
async def _link(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Link) -> Outcome:
    code = await identities.start_link(session, actor=caller.actor, subject=cmd.subject)
    # The code goes only to the caller (the reply is ephemeral); nothing logs it.
    url = f"{core.config.public_url.rstrip('/')}/link/github?code={code}"
    return _ok(views.link_code(subject=cmd.subject, code=code, url=url, minutes=15))


@handles(commands.Whoami)
async def _whoami(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Whoami) -> Outcome:
    subjects = await identities.subjects_of(session, subject=caller.actor.subject)
    return _ok(views.whoami(subject=caller.actor.subject, subjects=subjects))


@handles(commands.Promote)
async def _promote(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Promote) -> Outcome:
    result = await promotion.promote(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, source=cmd.source, target=cmd.target
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=cmd.app))


@handles(commands.Envs)
async def _envs(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Envs) -> Outcome:
    project = cmd.project
    if project is None:
        mine = await projects.list_visible(session, actor=caller.actor)
        if len(mine) != 1:
            names = ", ".join(p.name for p in mine) or "none"
            raise commands.UsageError(f"Say which project: {names}.", command="envs")
        project = mine[0].name
    return Outcome(
        message=views.environments(
            project, await environment_admin.list_views(session, actor=caller.actor, project=project)
        )
    )


# A command the parser makes but nothing handles would only show as "internal error": refuse to start.
if missing_handlers():
    raise RuntimeError(f"slack commands without a handler: {', '.join(missing_handlers())}")


# ---------------------------------------------------------------- card buttons


async def run_action(*, core: Core, caller: Caller, action_id: str, value: str) -> Outcome:
    """A button on a deploy card.  Each (button, deploy) acts once: a double click is answered, not run."""
    what = f"button {action_id}"
    try:
        deployment_id, app_name = views.parse_button_value(value)
    except (ValueError, KeyError, TypeError):
        return Outcome(message=views.error("This button is not one of shipit's."))
    what = f"button {action_id} on deploy {deployment_id} ({app_name})"
    act = _ACTIONS.get(action_id)
    if act is None:
        return Outcome(message=views.error(f"Unknown button {action_id}."))
    key = f"action:{action_id}:{deployment_id}"
    if action_id == views.ACTION_APPROVE:  # a deploy may need several persons' approvals: once per user
        key += f":{caller.user_id}"
    try:
        async with core.sessionmaker.begin() as session:
            if not await deliveries.first_time(session, source="slack", delivery_id=key, kind=action_id):
                log.info("slack: %s by %s: already done; ignored", what, caller.user_id)
                return Outcome(
                    message=views.reply(f"That was already done for deploy #{deployment_id}."), duplicate=True
                )
            outcome = await act(session, core, caller, deployment_id, app_name)
    except Exception as e:
        return failure(e, what=what, caller=caller)
    log.info("slack: %s by %s", what, caller.user_id)
    return outcome


async def _approve(
    session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str
) -> Outcome:
    d = await deploys.approve(
        session, ctx=core, actor=caller.actor, deployment_id=deployment_id, approve=True
    )
    if d.status == deploys.AWAITING_APPROVAL:  # an environment that needs more than one approval
        t = await protection.tally(session, deployment=d)
        so_far = f" ({t.text})" if t else ""
        return _ok(
            f":white_check_mark: You approved deploy #{deployment_id} of *{app}*{so_far}; it waits for more."
        )
    return _ok(f":white_check_mark: You approved deploy #{deployment_id} of *{app}*; it is queued.")


async def _reject(session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str) -> Outcome:
    await deploys.approve(session, ctx=core, actor=caller.actor, deployment_id=deployment_id, approve=False)
    return _ok(f":no_entry_sign: You rejected deploy #{deployment_id} of *{app}*.")


async def _cancel(session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str) -> Outcome:
    await deploys.cancel(session, ctx=core, actor=caller.actor, deployment_id=deployment_id)
    return _ok(f":no_entry_sign: You cancelled deploy #{deployment_id} of *{app}*.")


async def _rollback_button(
    session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str
) -> Outcome:
    # "Roll back" on a card means: run again what ran before this deploy (core picks the revision).
    result = await deploys.rollback(
        session,
        ctx=core,
        actor=caller.actor,
        app_name=app,
        from_deployment=deployment_id,
        dedupe_key=f"slack:rollback-from:{deployment_id}",
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=app))


async def _promote_button(
    session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str
) -> Outcome:
    # "Promote to <next>" on a success card: what runs in that deploy's environment goes to the next one.
    source, target = await environment_admin.promotion_of_card(
        session, deployment_id=deployment_id, app_name=app
    )
    result = await promotion.promote(
        session,
        ctx=core,
        actor=caller.actor,
        app_name=app,
        source=source,
        target=target,
        dedupe_key=f"slack:promote-from:{deployment_id}",
    )
    return Outcome(message=await _queued(session, caller=caller, result=result, app=app))


_ACTIONS: dict[str, Callable[[AsyncSession, Core, Caller, int, str], Awaitable[Outcome]]] = {
    views.ACTION_APPROVE: _approve,
    views.ACTION_REJECT: _reject,
    views.ACTION_CANCEL: _cancel,
    views.ACTION_ROLLBACK: _rollback_button,
    views.ACTION_PROMOTE: _promote_button,
}
