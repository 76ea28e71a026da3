"""Handlers of project administration: notice targets and roles; and identities (link, whoami)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import Caller, Outcome, handles, ok
from core import identities, projects
from core.context import Core
from core.notices import targets as notice_targets


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


@handles(commands.Access)
async def _access(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Access) -> Outcome:
    await projects.set_access(
        session, actor=caller.actor, project_name=cmd.project, subject=cmd.subject, role=cmd.role
    )
    person = views.who(cmd.subject)
    if cmd.role is None:
        return ok(f"{person} no longer has a role in project *{views.esc(cmd.project)}*.")
    return ok(f"{person} is now *{cmd.role}* in project *{views.esc(cmd.project)}*.")


@handles(commands.Link)
async def _link(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Link) -> Outcome:
    code = await identities.start_link(session, actor=caller.actor, subject=cmd.subject)
    # The code goes only to the caller (the reply is ephemeral); nothing logs it.
    url = f"{core.config.public_url.rstrip('/')}/link/github?code={code}"
    return ok(views.link_code(subject=cmd.subject, code=code, url=url, minutes=15))


@handles(commands.Whoami)
async def _whoami(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Whoami) -> Outcome:
    subjects = await identities.subjects_of(session, subject=caller.actor.subject)
    return ok(views.whoami(subject=caller.actor.subject, subjects=subjects))
