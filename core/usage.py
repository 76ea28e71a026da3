"""What an app's pods use: the `usage` command of every channel (`kubectl top`, scoped to one app).

CPU and memory per pod from the cluster's Metrics API (metrics-server), against what the deploy asked
for each pod (the current revision's requests and limits) and, when autoscaling is on, the HPA's CPU
target: the HPA compares the pods' average CPU use with their request, so `cpu_of_requests_percent`
is the figure it scales on.

As in core.status, the database is read first (role check, settings) and the cluster asked after,
with no transaction open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, clusters, deploys, quantities, usage_history
from core import revisions as snapshots
from core.context import Core
from core.identity import Actor, Role
from storage import models


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """Per pod (shipit renders one container per pod): the requests and limits the deploy wrote."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    cpu_request_millicores: float
    cpu_limit_millicores: float
    memory_request_bytes: int
    memory_limit_bytes: int


@dataclass(frozen=True, kw_only=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    cpu_target_percent: int
    scale_down_window_seconds: int | None  # None: Kubernetes' default (300 s)


@dataclass(frozen=True, kw_only=True)
class Figures:
    """Use, and use as a share of requests and limits (None when that amount is zero)."""

    cpu_millicores: float
    memory_bytes: int
    cpu_of_requests_percent: float | None
    cpu_of_limits_percent: float | None
    memory_of_requests_percent: float | None
    memory_of_limits_percent: float | None


@dataclass(frozen=True, kw_only=True)
class PodUsage:
    pod: str
    usage: Figures
    window: str
    timestamp: str


@dataclass(frozen=True, kw_only=True)
class AppUsage:
    app: str
    project: str
    environment: str
    namespace: str
    revision: int | None  # the revision whose requests/limits are compared (None: the app's settings)
    per_pod: Allocation
    autoscaling: Autoscaling | None
    pods: list[PodUsage]
    total: Figures  # summed over pods; percentages against the pods' summed requests and limits
    history: usage_history.History  # the stored samples per window (core.usage_history), and hints


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the database said, to be completed by the cluster: no ORM object, no open transaction."""

    app: str
    project: str
    environment: str
    namespace: str
    cluster_id: int
    kubeconfig: str = field(repr=False)  # decrypted credentials: never in a log line
    revision: int | None
    per_pod: Allocation
    autoscaling: Autoscaling | None
    history: usage_history.History


async def plan(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None = None
) -> Plan:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading usage")
    project = await apps.project_of(session, app=app)
    cluster = await session.get(models.Cluster, app.cluster_id)
    assert cluster is not None
    revision = await deploys.current_revision(session, app=app)
    # What runs is the current revision's; before any deploy, what the first one would write.
    snap = snapshots.of_revision(revision) if revision else snapshots.from_app(app)
    r = snap.resources
    scaling = snap.autoscaling
    history = await usage_history.summary(
        session,
        app_id=app.id,
        cpu_request=r.cpu_request,
        cpu_limit=r.cpu_limit,
        memory_request=r.memory_request,
        memory_limit=r.memory_limit,
    )
    return Plan(
        app=app.name,
        project=project.name,
        environment=await apps.env_name(session, app=app),
        namespace=app.namespace,
        cluster_id=cluster.id,
        kubeconfig=clusters.kubeconfig(cluster, ctx=ctx),
        revision=revision.number if revision else None,
        per_pod=Allocation(
            cpu_request=r.cpu_request,
            cpu_limit=r.cpu_limit,
            memory_request=r.memory_request,
            memory_limit=r.memory_limit,
            cpu_request_millicores=quantities.millicores(r.cpu_request, field="cpu_request"),
            cpu_limit_millicores=quantities.millicores(r.cpu_limit, field="cpu_limit"),
            memory_request_bytes=quantities.bytes_of(r.memory_request, field="memory_request"),
            memory_limit_bytes=quantities.bytes_of(r.memory_limit, field="memory_limit"),
        ),
        autoscaling=Autoscaling(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            cpu_target_percent=scaling.cpu_target_percent,
            scale_down_window_seconds=scaling.scale_down_window_seconds,
        )
        if scaling
        else None,
        history=history,
    )


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 1) if whole > 0 else None


def figures(*, cpu_millicores: float, memory_bytes: int, allocation: Allocation, pods: int = 1) -> Figures:
    a = allocation
    return Figures(
        cpu_millicores=round(cpu_millicores, 3),
        memory_bytes=memory_bytes,
        cpu_of_requests_percent=_percent(cpu_millicores, a.cpu_request_millicores * pods),
        cpu_of_limits_percent=_percent(cpu_millicores, a.cpu_limit_millicores * pods),
        memory_of_requests_percent=_percent(memory_bytes, a.memory_request_bytes * pods),
        memory_of_limits_percent=_percent(memory_bytes, a.memory_limit_bytes * pods),
    )


async def read(*, ctx: Core, plan: Plan) -> AppUsage:
    """Ask the cluster; errors.NoMetricsApi when it has no Metrics API."""
    kube = await ctx.kube.get(key=str(plan.cluster_id), kubeconfig=plan.kubeconfig)
    measured = await kube.pod_metrics(namespace=plan.namespace, app=plan.app)
    pods: list[PodUsage] = []
    total_cpu, total_memory = 0.0, 0
    for m in measured:
        cpu = sum(quantities.millicores(c, field="cpu") for c, _ in m.containers.values())
        memory = sum(quantities.bytes_of(mem, field="memory") for _, mem in m.containers.values())
        total_cpu += cpu
        total_memory += memory
        pods.append(
            PodUsage(
                pod=m.pod,
                usage=figures(cpu_millicores=cpu, memory_bytes=memory, allocation=plan.per_pod),
                window=m.window,
                timestamp=m.timestamp,
            )
        )
    return AppUsage(
        app=plan.app,
        project=plan.project,
        environment=plan.environment,
        namespace=plan.namespace,
        revision=plan.revision,
        per_pod=plan.per_pod,
        autoscaling=plan.autoscaling,
        pods=pods,
        total=figures(
            cpu_millicores=total_cpu, memory_bytes=total_memory, allocation=plan.per_pod, pods=len(pods)
        ),
        history=plan.history,
    )
