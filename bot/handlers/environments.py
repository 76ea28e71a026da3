"""Handlers of environments: promote, envs."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import Caller, Outcome, handles, queued_card
from core import environment_admin, projects, promotion
from core.context import Core


@handles(commands.Promote)
async def _promote(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Promote) -> Outcome:
    result = await promotion.promote(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, source=cmd.source, target=cmd.target
    )
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=cmd.app))


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
