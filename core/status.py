"""What is running and what is queued: the `status` and `logs` commands of every channel.

Reading the database and asking the cluster are separate steps, so no
transaction is held open while the Kubernetes API answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, clusters, deploys, events
from core.context import Core
from core.errors import Conflict, ShipitError
from core.identity import Actor, Role
from core.kube.rules import DeploymentStatus
from core.kube.watching import LogLine as LogLine  # the lines `log_lines` gives, for its callers
from storage import models


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where an app lives: read in a transaction, used outside one while the cluster answers."""

    app_id: int
    app: str
    project: str
    namespace: str
    cluster_id: int
    kubeconfig: str


@dataclass(frozen=True, kw_only=True)
class AppStatus:
    app: str
    project: str
    cluster: str
    namespace: str
    image: str | None
    locked: str | None
    paused: str | None
    current: events.DeploymentView | None  # the last deploy that rolled out well
    active: list[events.DeploymentView]
    # The app's current revision (what runs, what changes build on) and the last finished attempt
    # to change it, which may have failed: shown separately, never mixed.
    current_revision: int | None = None
    current_image: str | None = None
    last_attempt: events.DeploymentView | None = None
    last_outcome: str | None = None  # e.g. "failed, rolled back to revision 3"
    live: DeploymentStatus | None = None
    live_error: str | None = None


async def target(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None = None
) -> Target:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading status")
    return await target_of(session, ctx=ctx, app=app)


async def target_of(session: AsyncSession, *, ctx: Core, app: models.App) -> Target:
    """Where `app` lives, its cluster's kubeconfig decrypted: the caller has checked the role."""
    cluster = await session.get(models.Cluster, app.cluster_id)
    assert cluster is not None
    project = await apps.project_of(session, app=app)
    return Target(
        app_id=app.id,
        app=app.name,
        project=project.name,
        namespace=app.namespace,
        cluster_id=cluster.id,
        kubeconfig=clusters.kubeconfig(cluster, ctx=ctx),
    )


async def read(session: AsyncSession, *, actor: Actor, app_name: str, env: str | None = None) -> AppStatus:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading status")
    project = await apps.project_of(session, app=app)
    cluster = await session.get(models.Cluster, app.cluster_id)
    current = await deploys.current_deployment(session, app=app)
    revision = await deploys.current_revision(session, app=app)
    attempt = await deploys.last_attempt(session, app=app)
    view = await events.deployment_view(session, deployment=attempt) if attempt else None
    active = await session.scalars(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.status.in_((deploys.QUEUED, deploys.AWAITING_APPROVAL, deploys.RUNNING)),
        )
        .order_by(models.Deployment.id)
    )
    return AppStatus(
        app=app.name,
        project=project.name,
        cluster=cluster.name if cluster else "",
        namespace=app.namespace,
        image=app.image,
        locked=f"{app.locked_reason} ({app.locked_by})" if app.locked_reason else None,
        paused=app.paused_reason if app.auto_deploy_paused else None,
        current=await events.deployment_view(session, deployment=current) if current else None,
        active=[await events.deployment_view(session, deployment=d) for d in active],
        current_revision=revision.number if revision else None,
        current_image=revision.image if revision else None,
        last_attempt=view,
        last_outcome=view.outcome if view else None,
    )


async def live(*, ctx: Core, target: Target) -> DeploymentStatus | None:
    kube = await ctx.kube.get(key=str(target.cluster_id), kubeconfig=target.kubeconfig)
    return await kube.deployment_status(namespace=target.namespace, name=target.app)


async def with_live(*, ctx: Core, status: AppStatus, target: Target) -> AppStatus:
    try:
        observed = await live(ctx=ctx, target=target)
    except ShipitError as e:
        return AppStatus(**{**status.__dict__, "live_error": str(e)})
    return AppStatus(**{**status.__dict__, "live": observed})


async def log_lines(
    *, ctx: Core, target: Target, tail_lines: int, follow: bool, shared_tail: bool = False
) -> AsyncGenerator[LogLine, None]:
    """The app's pod log lines, each with the pod and container that wrote it: tail_lines per pod, or
    with shared_tail for the whole app (see Watcher.pod_logs)."""
    kube = await ctx.kube.get(key=str(target.cluster_id), kubeconfig=target.kubeconfig)
    # Closed with this generator (a client gone mid-follow): the per-pod streams stop at once.
    async with contextlib.aclosing(
        kube.pod_logs(
            namespace=target.namespace,
            app=target.app,
            tail_lines=tail_lines,
            follow=follow,
            shared_tail=shared_tail,
        )
    ) as lines:
        async for line in lines:
            yield line


async def logs(
    *, ctx: Core, target: Target, tail_lines: int, follow: bool, shared_tail: bool = False
) -> AsyncGenerator[str, None]:
    """log_lines as text: each line prefixed with its pod when the app has several."""
    async with contextlib.aclosing(
        log_lines(ctx=ctx, target=target, tail_lines=tail_lines, follow=follow, shared_tail=shared_tail)
    ) as lines:
        async for line in lines:
            yield line.text


async def remove_workload(*, ctx: Core, target: Target) -> list[str]:
    """Delete what shipit applied for an app (HPA first, so it cannot scale what is going away).

    Only objects labelled as this project's app are deleted; returns why each other object under
    the app's names was left alone.
    """
    kube = await ctx.kube.get(key=str(target.cluster_id), kubeconfig=target.kubeconfig)
    kept: list[str] = []
    for kind, name in (
        ("HorizontalPodAutoscaler", target.app),
        ("Ingress", target.app),
        ("Service", target.app),
        ("Deployment", target.app),
        ("Secret", f"{target.app}-secrets"),
        ("Secret", f"{target.app}-registry"),  # the pull secret, when the image's registry had credentials
    ):
        try:
            await kube.delete(
                kind=kind, name=name, namespace=target.namespace, project=target.project, app=target.app
            )
        except Conflict as e:
            kept.append(str(e))
    return kept
