"""Handlers of `addons create|list|destroy`: one core call each; the list asks the cluster after the ack."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import Caller, Outcome, handles
from core import addons
from core.context import Core


@handles(commands.AddonCreate)
async def _addon_create(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.AddonCreate
) -> Outcome:
    addon = await addons.create(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, kind=cmd.kind, plan=cmd.plan, env=cmd.env
    )
    return Outcome(message=views.addon_changed(addons.view(addon, app=cmd.app)))


@handles(commands.AddonList)
async def _addon_list(session: AsyncSession, core: Core, caller: Caller, cmd: commands.AddonList) -> Outcome:
    # The role check now; the cluster is asked after Slack got its answer.
    where, rows = await addons.rows_for(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    if not rows:
        return Outcome(message=views.addon_list(cmd.app, []))

    async def live() -> views.Message:
        return views.addon_list(cmd.app, await addons.observed(ctx=core, where=where, rows=rows))

    return Outcome(message=views.addon_list(cmd.app, rows, pending=True), later=live)


@handles(commands.AddonDestroy)
async def _addon_destroy(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.AddonDestroy
) -> Outcome:
    addon = await addons.destroy(
        session,
        ctx=core,
        actor=caller.actor,
        app_name=cmd.app,
        kind=cmd.kind,
        delete_data=cmd.delete_data,
        env=cmd.env,
    )
    return Outcome(
        message=views.addon_changed(
            addons.view(addon, app=cmd.app), destroyed=True, delete_data=addon.delete_data
        )
    )
