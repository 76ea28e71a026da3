"""Handlers of what may run: locks (app, environment, project), pause and resume, approving a fork's preview."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import Caller, Outcome, handles, ok
from core import apps, previews, protection
from core.context import Core


@handles(commands.Lock)
async def _lock(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Lock) -> Outcome:
    app = await apps.set_flag(
        session, actor=caller.actor, name=cmd.app, flag="lock", on=True, reason=cmd.reason, env=cmd.env
    )
    undo = f"/shipit unlock {app.name}{views.env_flag(cmd.env)}"
    return ok(f":lock: *{app.name}* is locked: {views.esc(cmd.reason)}. `{undo}` to undo.")


@handles(commands.Unlock)
async def _unlock(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Unlock) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="lock", on=False, env=cmd.env)
    return ok(f":unlock: *{app.name}* is unlocked.")


@handles(commands.LockEnv)
async def _lock_env(session: AsyncSession, core: Core, caller: Caller, cmd: commands.LockEnv) -> Outcome:
    project, env = await protection.resolve_env(session, actor=caller.actor, where=cmd.where)
    await protection.lock_env(session, actor=caller.actor, project=project, env=env, reason=cmd.reason)
    return ok(
        f":lock: Environment *{project}/{env}* is locked: {views.esc(cmd.reason)}. "
        f"`/shipit unlock env {project}/{env}` to undo."
    )


@handles(commands.UnlockEnv)
async def _unlock_env(session: AsyncSession, core: Core, caller: Caller, cmd: commands.UnlockEnv) -> Outcome:
    project, env = await protection.resolve_env(session, actor=caller.actor, where=cmd.where)
    await protection.unlock_env(session, actor=caller.actor, project=project, env=env)
    return ok(f":unlock: Environment *{project}/{env}* is unlocked.")


@handles(commands.LockProject)
async def _lock_project(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.LockProject
) -> Outcome:
    p = await protection.lock_project(session, actor=caller.actor, project=cmd.project, reason=cmd.reason)
    return ok(
        f":lock: Project *{p.name}* is locked: {views.esc(cmd.reason)}. `/shipit unlock project {p.name}` to undo."
    )


@handles(commands.UnlockProject)
async def _unlock_project(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.UnlockProject
) -> Outcome:
    p = await protection.unlock_project(session, actor=caller.actor, project=cmd.project)
    return ok(f":unlock: Project *{p.name}* is unlocked.")


@handles(commands.Pause)
async def _pause(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Pause) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="pause", on=True, env=cmd.env)
    return ok(
        f":double_vertical_bar: Auto-deploy of *{app.name}* is paused; manual deploys still work. "
        f"`/shipit resume {app.name}{views.env_flag(cmd.env)}` to deploy on push again."
    )


@handles(commands.Resume)
async def _resume(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Resume) -> Outcome:
    app = await apps.set_flag(session, actor=caller.actor, name=cmd.app, flag="pause", on=False, env=cmd.env)
    return ok(f":arrow_forward: *{app.name}* deploys on push again.")


@handles(commands.PreviewApprove)
async def _preview_approve(
    session: AsyncSession, core: Core, caller: Caller, cmd: commands.PreviewApprove
) -> Outcome:
    approval = await previews.approve(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, number=cmd.number, env=cmd.env
    )
    return Outcome(message=views.preview_approved(app=cmd.app, approval=approval))
