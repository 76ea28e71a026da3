"""Scaling: fixed replicas, or a HorizontalPodAutoscaler (min, max, cpu target, downscale window).

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
    scale_down_window: int | None = apps.UNSET,
    autoscaling_off: bool = False,
    trigger: str = "scale",
    env: str | None = None,
) -> deploys.Requested:
    """`scale_down_window`: seconds the HPA waits before scaling down; None sets Kubernetes' default back,
    UNSET keeps the app's.  A fixed count or autoscaling off clears it; it cannot be given with them."""
    window_given = scale_down_window is not apps.UNSET
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    env = await apps.env_name(session, app=app)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="scaling")
    changes = apps.AppChanges()
    if (replicas is not None or autoscaling_off) and window_given:
        validation.no_scale_down_window_without_autoscaling(scale_down_window)
    if replicas is not None:
        if min_replicas is not None or max_replicas is not None:
            raise InvalidInput("give either replicas or min/max, not both", field="replicas")
        changes.replicas = validation.int_range(replicas, field="replicas", low=0, high=1000)
        changes.min_replicas = changes.max_replicas = changes.cpu_target = changes.scale_down_window = None
    elif autoscaling_off:
        changes.min_replicas = changes.max_replicas = changes.cpu_target = changes.scale_down_window = None
    elif min_replicas is not None or max_replicas is not None or cpu_target is not None or window_given:
        lo = min_replicas if min_replicas is not None else app.min_replicas
        hi = max_replicas if max_replicas is not None else app.max_replicas
        if lo is None and hi is None and cpu_target is None:
            # Only a window, for an app without autoscaling: say what it needs.
            validation.no_scale_down_window_without_autoscaling(scale_down_window)
        if lo is None or hi is None:
            raise InvalidInput(
                "autoscaling needs both min and max", field="min_replicas" if lo is None else "max_replicas"
            )
        cpu = cpu_target if cpu_target is not None else (app.cpu_target or 80)
        window = scale_down_window if window_given else app.scale_down_window
        validation.autoscaling(min_replicas=lo, max_replicas=hi, cpu_target=cpu, scale_down_window=window)
        changes.min_replicas, changes.max_replicas, changes.cpu_target = lo, hi, cpu
        changes.scale_down_window = window
    else:
        raise InvalidInput("say replicas=N, or min=N max=N [cpu=N] [window=N], or auto off", field="replicas")
    await apps.update(session, ctx=ctx, actor=actor, name=app.name, changes=changes, env=env)
    return await deploys.request(session, ctx=ctx, actor=actor, app_name=app.name, trigger=trigger, env=env)
