"""Scaling: fixed replicas, or a HorizontalPodAutoscaler (min, max, cpu target).

A scale change is a config change like any other: it makes a new revision and
deploys it, so it shows up in history and can be rolled back.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, deploys, validation
from core.context import Core
from core.errors import InvalidInput
from core.identity import Actor, Role


async def scale(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    cpu_target: int | None = None,
    autoscaling_off: bool = False,
    trigger: str = "scale",
    env: str | None = None,
) -> deploys.Requested:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    env = await apps.env_name(session, app=app)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="scaling")
    changes = apps.AppChanges()
    if replicas is not None:
        if min_replicas is not None or max_replicas is not None:
            raise InvalidInput("give either replicas or min/max, not both", field="replicas")
        changes.replicas = validation.int_range(replicas, field="replicas", low=0, high=1000)
        changes.min_replicas = changes.max_replicas = changes.cpu_target = None
    elif autoscaling_off:
        changes.min_replicas = changes.max_replicas = changes.cpu_target = None
    elif min_replicas is not None or max_replicas is not None or cpu_target is not None:
        lo = min_replicas if min_replicas is not None else app.min_replicas
        hi = max_replicas if max_replicas is not None else app.max_replicas
        if lo is None or hi is None:
            raise InvalidInput(
                "autoscaling needs both min and max", field="min_replicas" if lo is None else "max_replicas"
            )
        cpu = cpu_target if cpu_target is not None else (app.cpu_target or 80)
        validation.autoscaling(min_replicas=lo, max_replicas=hi, cpu_target=cpu)
        changes.min_replicas, changes.max_replicas, changes.cpu_target = lo, hi, cpu
    else:
        raise InvalidInput("say replicas=N, or min=N max=N [cpu=N], or auto off", field="replicas")
    await apps.update(session, ctx=ctx, actor=actor, name=app.name, changes=changes, env=env)
    return await deploys.request(session, ctx=ctx, actor=actor, app_name=app.name, trigger=trigger, env=env)
