"""The request hook: `check_request` refuses a deploy into a locked project or environment, or
outside its windows, and says what it needs (approvals, an admin's override).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, environments, identity
from core.errors import Conflict
from core.identity import Actor, Role
from core.protection.locks import lock_of, lock_text
from core.protection.windows import Blocked, blocked_at, freezes_of, show_time, windows_of, zone
from storage import models


@dataclass(frozen=True, kw_only=True)
class Gate:
    """What `core.deploys.request` needs to know about the environment of a deploy."""

    environment: models.Environment
    needs_approval: bool
    approval_ttl_seconds: float
    overridden: Blocked | None  # a window or freeze an admin deployed through


async def check_request(
    session: AsyncSession,
    *,
    actor: Actor,
    app: models.App,
    trigger: str,
    preview: bool,
    automatic: bool,
    rollback: bool,
    override_window: bool,
    default_ttl_seconds: float,
    now: dt.datetime | None = None,
) -> Gate:
    """Refuse a deploy into a locked project or environment, or outside its windows; say what it needs.

    Previews run in their own namespaces and are not held (as the per-app lock does not hold them).
    """
    env = await environments.of_app(session, app=app)
    now = now or models.utcnow()
    overridden = None
    if preview is False and not automatic:
        project = await session.get(models.Project, app.project_id)
        plock = lock_of(project, now=now) if project is not None else None
        if plock is not None and project is not None:
            raise Conflict(lock_text(f"project {project.name}", plock))
        elock = lock_of(env, now=now)
        if elock is not None:
            raise Conflict(lock_text(f"environment {env.name}", elock))
        if not rollback:
            tz = zone(env.timezone or "UTC")
            blocked = blocked_at(
                now, windows=windows_of(env.windows), freezes=freezes_of(env.freezes, tz=tz), tz=tz
            )
            if blocked is not None:
                if not override_window:
                    raise Conflict(_blocked_text(env, blocked, tz=tz))
                if project is not None:
                    await identity.require(
                        session,
                        actor=actor,
                        project=project,
                        role=Role.ADMIN,
                        action="deploying outside a window",
                    )
                overridden = blocked
    ttl = env.approval_ttl_seconds or default_ttl_seconds
    return Gate(
        environment=env,
        needs_approval=(app.protected or env.protected) and not preview and not automatic,
        approval_ttl_seconds=float(ttl),
        overridden=overridden,
    )


def _blocked_text(env: models.Environment, blocked: Blocked, *, tz: ZoneInfo) -> str:
    if blocked.freeze is not None:
        why = f"environment {env.name} is frozen" + (
            f" ({blocked.freeze.reason})" if blocked.freeze.reason else ""
        )
    else:
        why = f"environment {env.name} is outside its deploy windows"
    if blocked.next_allowed is None:
        return f"{why}, and no window opens again. An admin may deploy with override_window."
    return (
        f"{why}: the next allowed time is {show_time(blocked.next_allowed, tz=tz)}. "
        "A project admin may deploy now with override_window."
    )


async def record_override(
    session: AsyncSession, *, actor: Actor, app: models.App, gate: Gate, deployment_id: int
) -> None:
    """An admin deployed through a window or freeze: said in the audit log, with what was overridden."""
    if gate.overridden is None:
        return
    b = gate.overridden
    await audit.record(
        session,
        actor=actor,
        action="deploy.override_window",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "deployment": deployment_id,
            "environment": gate.environment.name,
            "blocked_by": b.why,
            "next_allowed": b.next_allowed.isoformat() if b.next_allowed else None,
            **({"freeze_reason": b.freeze.reason} if b.freeze else {}),
        },
    )
