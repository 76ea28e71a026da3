"""The buttons on a deploy card: approve, reject, cancel, roll back, promote.  Each (button, deploy)
acts once: a double click is answered, not run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from bot import views
from bot.handlers.base import Caller, Outcome, failure, ok, queued_card
from core import deliveries, deploys, environment_admin, logctx, promotion, protection
from core.context import Core

log = logging.getLogger(__name__)


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
    blog = logctx.deploy_logger(log, deployment=deployment_id, app=app_name)
    key = f"action:{action_id}:{deployment_id}"
    if action_id == views.ACTION_APPROVE:  # a deploy may need several persons' approvals: once per user
        key += f":{caller.user_id}"
    try:
        async with core.sessionmaker.begin() as session:
            if not await deliveries.first_time(session, source="slack", delivery_id=key, kind=action_id):
                blog.info("slack: %s by %s: already done; ignored", what, caller.user_id)
                return Outcome(
                    message=views.reply(f"That was already done for deploy #{deployment_id}."), duplicate=True
                )
            outcome = await act(session, core, caller, deployment_id, app_name)
    except Exception as e:
        return failure(e, what=what, caller=caller)
    blog.info("slack: %s by %s", what, caller.user_id)
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
        return ok(
            f":white_check_mark: You approved deploy #{deployment_id} of *{app}*{so_far}; it waits for more."
        )
    return ok(f":white_check_mark: You approved deploy #{deployment_id} of *{app}*; it is queued.")


async def _reject(session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str) -> Outcome:
    await deploys.approve(session, ctx=core, actor=caller.actor, deployment_id=deployment_id, approve=False)
    return ok(f":no_entry_sign: You rejected deploy #{deployment_id} of *{app}*.")


async def _cancel(session: AsyncSession, core: Core, caller: Caller, deployment_id: int, app: str) -> Outcome:
    await deploys.cancel(session, ctx=core, actor=caller.actor, deployment_id=deployment_id)
    return ok(f":no_entry_sign: You cancelled deploy #{deployment_id} of *{app}*.")


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
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=app))


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
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=app))


_ACTIONS: dict[str, Callable[[AsyncSession, Core, Caller, int, str], Awaitable[Outcome]]] = {
    views.ACTION_APPROVE: _approve,
    views.ACTION_REJECT: _reject,
    views.ACTION_CANCEL: _cancel,
    views.ACTION_ROLLBACK: _rollback_button,
    views.ACTION_PROMOTE: _promote_button,
}
