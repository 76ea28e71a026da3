"""Handlers of write-only secrets: set, list, unset (a change redeploys a running app)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import Caller, Outcome, handles, queued_card
from core import deploys, secrets
from core.context import Core


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
        queued = await queued_card(session, caller=caller, result=change.redeploy, app=change.app.name)
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
