"""Deploys, revisions and rollbacks: the life of a deploy (DESIGN.md section 3).

`request` does everything a channel needs in the caller's transaction (revision,
deployment, job, events, audit) and nothing slow, so channels answer at once.
`run_job` is the worker side: render, apply, watch.  It is written to be run
again after a crash: every step is idempotent and events are deduplicated, so a
resumed deploy ends exactly once with one set of notifications.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, claims, clusters, events, jobs, metrics, secrets, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor, Role
from core.kube.client import NamespaceOrigin, RolloutProgress
from core.kube.spec import Autoscaling, HealthCheck, IngressSpec, Resources, WorkloadSpec
from storage import models

log = logging.getLogger(__name__)

QUEUED = "queued"
AWAITING_APPROVAL = "awaiting_approval"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
SUPERSEDED = "superseded"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, SUPERSEDED, CANCELLED)
PENDING = (QUEUED, AWAITING_APPROVAL)

TRIGGERS = ("api", "cli", "web", "slack", "push", "pr", "rollback", "scale", "config")
DEPLOY_JOB = "deploy"


def snapshot_of(app: models.App) -> dict[str, Any]:
    """Everything about an app that shapes its workload, as stored in a revision."""
    return {
        "image": app.image,
        "replicas": app.replicas,
        "port": app.port,
        "env": dict(app.env or {}),
        "resources": {
            "cpu_request": app.cpu_request,
            "cpu_limit": app.cpu_limit,
            "memory_request": app.memory_request,
            "memory_limit": app.memory_limit,
        },
        "health": {
            "path": app.health_path,
            "port": app.health_port,
            "initial_delay_seconds": app.health_initial_delay,
            "period_seconds": app.health_period,
        }
        if app.health_path
        else None,
        "autoscaling": {
            "min_replicas": app.min_replicas,
            "max_replicas": app.max_replicas,
            "cpu_target_percent": app.cpu_target or 80,
        }
        if app.min_replicas is not None and app.max_replicas is not None
        else None,
        "domain": app.domain,
        "ingress_class": app.ingress_class,
        "tls_issuer": app.tls_issuer,
        "progress_deadline_seconds": app.progress_deadline_seconds,
    }


def workload_spec(
    *,
    ctx: Core,
    app_name: str,
    project: str,
    namespace: str,
    revision: int,
    snapshot: dict[str, Any],
    secret_data: dict[str, str],
    secret_checksum: str,
    preview: models.Preview | None = None,
    preview_env: dict[str, str] | None = None,
) -> WorkloadSpec:
    health = snapshot.get("health")
    scaling = snapshot.get("autoscaling")
    domain = snapshot.get("domain")
    env = dict(snapshot.get("env") or {})
    replicas = int(snapshot.get("replicas", 1))
    labels: dict[str, str] = {}
    if preview is not None:
        # Previews are small and short-lived: one replica, no HPA, their own host.
        env.update(preview_env or {})
        replicas, scaling = 1, None
        domain = preview.url.split("://", 1)[-1].split("/", 1)[0] if preview.url else None
        labels["shipit.dev/preview"] = str(preview.pr_number)
    ingress = None
    if domain:
        ingress = IngressSpec(
            host=domain,
            ingress_class=snapshot.get("ingress_class") or ctx.config.default_ingress_class,
            tls_cluster_issuer=snapshot.get("tls_issuer") or ctx.config.default_tls_issuer,
        )
    return WorkloadSpec(
        app=app_name,
        project=project,
        namespace=namespace,
        revision=revision,
        image=str(snapshot["image"]),
        replicas=replicas,
        port=int(snapshot.get("port", 8080)),
        env=env,
        secret_data=secret_data,
        secret_checksum=secret_checksum,
        resources=Resources(**snapshot.get("resources", {})),
        health=HealthCheck(**health) if health else None,
        autoscaling=Autoscaling(**scaling) if scaling else None,
        ingress=ingress,
        progress_deadline_seconds=int(snapshot.get("progress_deadline_seconds", 600)),
        extra_labels=labels,
    )


@dataclass(frozen=True, kw_only=True)
class Requested:
    deployment: models.Deployment
    created: bool  # False when the dedupe key matched an earlier request


async def _next_revision_number(session: AsyncSession, *, app_id: int) -> int:
    top = await session.scalar(
        select(func.max(models.Deployment.revision_number)).where(models.Deployment.app_id == app_id)
    )
    return int(top or 0) + 1


async def _lock_app(session: AsyncSession, *, app: models.App) -> None:
    # Serialises revision numbering per app on PostgreSQL; SQLite transactions are already serial.
    await session.execute(select(models.App.id).where(models.App.id == app.id).with_for_update())


async def request(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    image: str | None = None,
    trigger: str,
    dedupe_key: str | None = None,
    git_sha: str | None = None,
    git_ref: str | None = None,
    preview: models.Preview | None = None,
    snapshot: dict[str, Any] | None = None,
    rollback_of: int | None = None,
    reason: str | None = None,
) -> Requested:
    """Queue a deploy of `app_name`, optionally with a new image (or just a tag: `1.5`)."""
    # The role check comes before anything else, the dedupe key included: an earlier answer is only
    # ever returned to someone allowed to deploy this very app.
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="deploying")
    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger must be one of {', '.join(TRIGGERS)}", field="trigger")
    if dedupe_key is not None:
        earlier = await session.scalar(
            select(models.Deployment).where(models.Deployment.dedupe_key == dedupe_key)
        )
        if earlier is not None:
            if earlier.app_id != app.id:
                # Says nothing about what the key was used for.
                raise Conflict("this idempotency key was already used for another request; use a new one")
            return Requested(deployment=earlier, created=False)
    if app.locked_reason and preview is None:
        raise Conflict(f"{app.name} is locked by {app.locked_by}: {app.locked_reason}. Unlock it first.")
    # Only into a namespace the project owns, checked at every deploy (rollbacks and previews too).
    await claims.check_owned(
        session,
        cluster_id=app.cluster_id,
        namespace=preview.namespace if preview else app.namespace,
        project_id=app.project_id,
    )
    await _lock_app(session, app=app)

    if snapshot is None:
        if image is not None:  # "" is refused, not read as "redeploy as is"
            new_image = validation.requested_image(image, current=app.image)
            if preview is None:
                app.image = new_image  # the app now runs this image; previews leave the app alone
        else:
            new_image = app.image or ""
        if not new_image:
            raise InvalidInput(
                f"{app.name} has no image yet: give one, like ghcr.io/acme/web:1.4", field="image"
            )
        snapshot = {**snapshot_of(app), "image": new_image}

    number = await _next_revision_number(session, app_id=app.id)
    revision = models.Revision(
        app_id=app.id,
        number=number,
        image=str(snapshot["image"]),
        snapshot=snapshot,
        secret_checksum=await secrets.checksum(session, app_id=app.id),
        source="rollback" if rollback_of else ("preview" if preview else "deploy"),
        rollback_of=rollback_of,
        created_by=actor.subject,
    )
    session.add(revision)
    await session.flush()

    namespace = preview.namespace if preview else app.namespace
    needs_approval = app.protected and preview is None
    deployment = models.Deployment(
        app_id=app.id,
        revision_id=revision.id,
        revision_number=number,
        image=revision.image,
        preview_id=preview.id if preview else None,
        namespace=namespace,
        trigger=trigger,
        actor=actor.subject,
        status=AWAITING_APPROVAL if needs_approval else QUEUED,
        dedupe_key=dedupe_key,
        git_sha=git_sha,
        git_ref=git_ref,
        approval_expires_at=models.utcnow() + dt.timedelta(seconds=ctx.config.approval_ttl_seconds)
        if needs_approval
        else None,
        logs=[],
        notify_refs={},
    )
    session.add(deployment)
    await session.flush()

    await _supersede_older(session, ctx=ctx, deployment=deployment)
    if deployment.status == QUEUED:
        await _enqueue(session, deployment=deployment)
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_AWAITING_APPROVAL if needs_approval else events.DEPLOY_QUEUED,
        deployment=deployment,
        project_id=app.project_id,
        step="requested",
        payload={"reason": reason} if reason else {},
    )
    await audit.record(
        session,
        actor=actor,
        action="deploy.rollback" if rollback_of else "deploy.request",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "deployment": deployment.id,
            "revision": number,
            "image": revision.image,
            "trigger": trigger,
            "namespace": namespace,
            **({"rollback_of": rollback_of} if rollback_of else {}),
            **({"git_sha": git_sha} if git_sha else {}),
        },
    )
    await _prune_revisions(session, ctx=ctx, app_id=app.id)
    log.info(
        "deploy %s queued: app=%s revision=%s image=%s namespace=%s trigger=%s actor=%s status=%s",
        deployment.id, app.name, number, revision.image, namespace, trigger, actor.subject, deployment.status,
    )  # fmt: skip
    return Requested(deployment=deployment, created=True)


async def _enqueue(session: AsyncSession, *, deployment: models.Deployment) -> None:
    await jobs.enqueue(
        session,
        kind=DEPLOY_JOB,
        payload={"deployment_id": deployment.id},
        dedupe_key=f"deploy:{deployment.id}",
        concurrency_key=f"deploy:{deployment.app_id}:{deployment.namespace}",
        max_attempts=6,
    )


async def _supersede_older(session: AsyncSession, *, ctx: Core, deployment: models.Deployment) -> None:
    """A newer deploy of the same target replaces older ones that have not started."""
    older = list(
        await session.scalars(
            select(models.Deployment).where(
                models.Deployment.app_id == deployment.app_id,
                models.Deployment.namespace == deployment.namespace,
                models.Deployment.status.in_(PENDING),
                models.Deployment.id < deployment.id,
            )
        )
    )
    app = await session.get(models.App, deployment.app_id)
    deployment_project = app.project_id if app else None
    for old in older:
        old.status, old.finished_at = SUPERSEDED, models.utcnow()
        old.error = f"superseded by deploy #{deployment.id}"
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_SUPERSEDED,
            deployment=old,
            project_id=deployment_project,
            step="final",
            payload={"by": deployment.id},
        )
        metrics.DEPLOYS.labels(outcome=SUPERSEDED, trigger=old.trigger).inc()
    await jobs.cancel_where(session, dedupe_keys=[f"deploy:{o.id}" for o in older])


async def _prune_revisions(session: AsyncSession, *, ctx: Core, app_id: int) -> None:
    keep = ctx.config.revisions_kept
    numbers = list(
        await session.scalars(
            select(models.Revision.number)
            .where(models.Revision.app_id == app_id)
            .order_by(models.Revision.number.desc())
            .offset(keep)
        )
    )
    if not numbers:
        return
    in_use = select(models.Deployment.revision_id).where(
        models.Deployment.app_id == app_id, models.Deployment.status.in_((*PENDING, RUNNING))
    )
    old = await session.scalars(
        select(models.Revision).where(
            models.Revision.app_id == app_id,
            models.Revision.number.in_(numbers),
            models.Revision.id.not_in(in_use.where(models.Deployment.revision_id.is_not(None))),
        )
    )
    for rev in old:
        await session.execute(
            update(models.Deployment).where(models.Deployment.revision_id == rev.id).values(revision_id=None)
        )
        await session.delete(rev)


async def current_deployment(session: AsyncSession, *, app: models.App) -> models.Deployment | None:
    """The last deploy that succeeded on the app's own namespace: what is running now."""
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status == SUCCEEDED,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def roll_config(session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str) -> Requested | None:
    """After a secret or config change, deploy it, but only for an app that is already running."""
    app = await apps.get(session, actor=actor, name=app_name)
    if await current_deployment(session, app=app) is None:
        return None
    return await request(session, ctx=ctx, actor=actor, app_name=app.name, trigger="config")


async def rollback(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    revision: int | None = None,
    trigger: str = "rollback",
    dedupe_key: str | None = None,
) -> Requested:
    """Deploy a copy of an older revision (default: the one before what runs now) and pause auto-deploy."""
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="rolling back")
    if revision is None:
        current = await current_deployment(session, app=app)
        if current is None:
            raise Conflict(f"{app.name} has no successful deploy to roll back from")
        candidates = await session.scalars(
            select(models.Deployment.revision_number)
            .where(
                models.Deployment.app_id == app.id,
                models.Deployment.preview_id.is_(None),
                models.Deployment.status == SUCCEEDED,
                models.Deployment.id < current.id,
                models.Deployment.revision_number != current.revision_number,
                models.Deployment.revision_id.is_not(None),
            )
            .order_by(models.Deployment.id.desc())
            .limit(1)
        )
        revision = next(iter(candidates), None)
        if revision is None:
            raise Conflict(f"{app.name} has no earlier successful revision to roll back to")
    target = await session.scalar(
        select(models.Revision).where(models.Revision.app_id == app.id, models.Revision.number == revision)
    )
    if target is None:
        kept = await revisions(session, actor=actor, app_name=app.name)
        numbers = ", ".join(str(r.number) for r in kept) or "none"
        raise NotFound(f"{app.name} has no revision {revision} (kept: {numbers})")
    snapshot = dict(target.snapshot)
    # The app's own config follows the rollback, so the next deploy starts from it.
    app.image = snapshot["image"]
    result = await request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        trigger=trigger,
        snapshot=snapshot,
        rollback_of=target.number,
        dedupe_key=dedupe_key,
        reason=f"roll back to revision {target.number}",
    )
    if result.created and not app.auto_deploy_paused:
        app.auto_deploy_paused = True
        app.paused_reason = (
            f"rolled back to revision {target.number} by {actor.name}; resume to deploy on push again"
        )
        await events.emit(
            session,
            ctx=ctx,
            kind=events.APP_PAUSED,
            dedupe_key=f"app:{app.id}:paused:{result.deployment.id}",
            project_id=app.project_id,
            app_id=app.id,
            payload={"reason": app.paused_reason},
        )
    return result


async def revisions(session: AsyncSession, *, actor: Actor, app_name: str) -> list[models.Revision]:
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="listing revisions")
    return list(
        await session.scalars(
            select(models.Revision)
            .where(models.Revision.app_id == app.id)
            .order_by(models.Revision.number.desc())
        )
    )


async def _authorized(
    session: AsyncSession, *, actor: Actor, deployment_id: int, role: Role, action: str, lock: bool = False
) -> tuple[models.Deployment, models.App]:
    """A deploy by id, after the role check; one of a project the caller is not in is just missing."""
    missing = NotFound(f"no deploy #{deployment_id}")
    app_id = await session.scalar(
        select(models.Deployment.app_id).where(models.Deployment.id == deployment_id)
    )
    app = await session.get(models.App, app_id) if app_id is not None else None
    if app is None:
        raise missing
    await apps.authorize(session, actor=actor, app=app, role=role, action=action, missing=missing)
    deployment = await session.get(models.Deployment, deployment_id, with_for_update=lock or None)
    if deployment is None:
        raise missing
    return deployment, app


async def get(session: AsyncSession, *, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, _ = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.VIEWER, action="reading deploys"
    )
    return deployment


async def history(
    session: AsyncSession, *, actor: Actor, app_name: str, limit: int = 20
) -> list[models.Deployment]:
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading deploys")
    return list(
        await session.scalars(
            select(models.Deployment)
            .where(models.Deployment.app_id == app.id)
            .order_by(models.Deployment.id.desc())
            .limit(limit)
        )
    )


async def approve(
    session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int, approve: bool = True
) -> models.Deployment:
    """A second person approves (or rejects) a deploy of a protected app."""
    verb = "approving" if approve else "rejecting"
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action=f"{verb} deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status != AWAITING_APPROVAL:
        raise Conflict(f"deploy #{deployment.id} is {deployment.status}, not awaiting approval")
    if approve and deployment.actor == actor.subject:
        raise PermissionDenied("nobody approves their own deploy: ask someone else on the project")
    if deployment.approval_expires_at and deployment.approval_expires_at < models.utcnow():
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
        raise Conflict(f"deploy #{deployment.id} waited too long for approval and expired; request it again")
    if approve:
        deployment.status, deployment.approved_by = QUEUED, actor.subject
        await _enqueue(session, deployment=deployment)
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_QUEUED,
            deployment=deployment,
            project_id=app.project_id,
            step="approved",
            payload={"approved_by": actor.subject},
        )
    else:
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"rejected by {actor.name}"
        )
    await audit.record(
        session,
        actor=actor,
        action="deploy.approve" if approve else "deploy.reject",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id},
    )
    return deployment


async def cancel(session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action="cancelling deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status not in PENDING:
        raise Conflict(
            f"deploy #{deployment.id} is {deployment.status}; only queued deploys can be cancelled"
        )
    await _finish_pending(
        session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"cancelled by {actor.name}"
    )
    await audit.record(
        session,
        actor=actor,
        action="deploy.cancel",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id},
    )
    return deployment


async def _finish_pending(
    session: AsyncSession, *, ctx: Core, deployment: models.Deployment, status: str, error: str
) -> None:
    deployment.status, deployment.error, deployment.finished_at = status, error, models.utcnow()
    await jobs.cancel_where(session, dedupe_keys=[f"deploy:{deployment.id}"])
    app = await session.get(models.App, deployment.app_id)
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_CANCELLED,
        deployment=deployment,
        project_id=app.project_id if app else None,
        step="final",
        payload={"reason": error},
    )
    metrics.DEPLOYS.labels(outcome=status, trigger=deployment.trigger).inc()


async def expire_approvals(session: AsyncSession, *, ctx: Core) -> int:
    stale = list(
        await session.scalars(
            select(models.Deployment).where(
                models.Deployment.status == AWAITING_APPROVAL,
                models.Deployment.approval_expires_at < models.utcnow(),
            )
        )
    )
    for deployment in stale:
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
    return len(stale)


# ---------------------------------------------------------------- the worker side


@dataclass(frozen=True, kw_only=True)
class _Plan:
    deployment_id: int
    app_name: str
    app_id: int
    project_id: int
    cluster_id: int
    kubeconfig: str
    spec: WorkloadSpec
    trigger: str
    preview_id: int | None
    namespace_origin: NamespaceOrigin
    accepted_at: dt.datetime


async def _start(ctx: Core, *, deployment_id: int) -> _Plan | None:
    async with ctx.sessionmaker.begin() as session:
        deployment = await session.get(models.Deployment, deployment_id, with_for_update=True)
        if deployment is None or deployment.status in TERMINAL or deployment.status == AWAITING_APPROVAL:
            return None
        app = await session.get(models.App, deployment.app_id)
        revision = (
            await session.get(models.Revision, deployment.revision_id) if deployment.revision_id else None
        )
        if app is None or revision is None:
            deployment.status, deployment.error = FAILED, "its revision no longer exists"
            deployment.finished_at = models.utcnow()
            return None
        cluster = await session.get(models.Cluster, app.cluster_id)
        assert cluster is not None
        project = await session.get(models.Project, app.project_id)
        assert project is not None
        preview = await session.get(models.Preview, deployment.preview_id) if deployment.preview_id else None
        # The claim decides how the namespace is treated: one shipit created must carry our labels.
        # Checked again here because a grant can be revoked while the deploy waits in the queue.
        claim = await claims.claim_of(session, cluster_id=cluster.id, namespace=deployment.namespace)
        if claim is None or claim.project_id != app.project_id:
            deployment.status, deployment.finished_at = FAILED, models.utcnow()
            deployment.error = f"namespace {deployment.namespace} is no longer held by project {project.name}"
            return None
        if deployment.status == QUEUED:
            deployment.status, deployment.started_at = RUNNING, models.utcnow()
            await events.emit_for_deployment(
                session,
                ctx=ctx,
                kind=events.DEPLOY_STARTED,
                deployment=deployment,
                project_id=app.project_id,
                step="started",
            )
        else:
            log.info(
                "deploy %s: resuming after a restart (app=%s namespace=%s)",
                deployment.id,
                app.name,
                deployment.namespace,
            )
        # A fork's code never gets the app's secrets unless an admin chose previews_from_forks=always;
        # decided now, at apply time, so changing the setting holds for every later deploy.
        withhold = preview is not None and preview.is_fork and app.previews_from_forks != apps.FORKS_ALWAYS
        if withhold:
            log.info("deploy %s: preview of a fork, rendered without the app's secrets", deployment.id)
        spec = workload_spec(
            ctx=ctx,
            app_name=app.name,
            project=project.name,
            namespace=deployment.namespace,
            revision=deployment.revision_number,
            snapshot=revision.snapshot,
            secret_data={} if withhold else await secrets.values_for_deploy(session, ctx=ctx, app_id=app.id),
            secret_checksum="" if withhold else await secrets.checksum(session, app_id=app.id),
            preview=preview,
            preview_env=dict(app.preview_env or {}),
        )
        return _Plan(
            deployment_id=deployment.id,
            app_name=app.name,
            app_id=app.id,
            project_id=app.project_id,
            cluster_id=cluster.id,
            kubeconfig=clusters.kubeconfig(cluster, ctx=ctx),
            spec=spec,
            trigger=deployment.trigger,
            preview_id=deployment.preview_id,
            namespace_origin="created" if claim.origin == claims.CREATED else "granted",
            accepted_at=deployment.created_at,
        )


async def run_job(*, ctx: Core, job: jobs.JobView) -> None:
    plan = await _start(ctx, deployment_id=int(job.payload["deployment_id"]))
    if plan is None:
        return
    started = time.monotonic()
    where = f"deploy {plan.deployment_id} app={plan.app_name} namespace={plan.spec.namespace}"
    kube = await ctx.kube.get(key=str(plan.cluster_id), kubeconfig=plan.kubeconfig)
    # A namespace shipit created (previews, apps in new namespaces) must exist with our labels or not at all.
    await kube.apply_workload(spec=plan.spec, namespace_origin=plan.namespace_origin)
    async with ctx.sessionmaker.begin() as session:
        deployment = await session.get(models.Deployment, plan.deployment_id)
        if deployment is not None and deployment.applied_at is None:
            deployment.applied_at = models.utcnow()
            metrics.DEPLOY_APPLY.observe((deployment.applied_at - plan.accepted_at).total_seconds())
    log.info("%s: applied revision %s (%s)", where, plan.spec.revision, plan.spec.image)

    last: tuple[int, int] = (-1, -1)

    async def progress(p: RolloutProgress) -> None:
        nonlocal last
        if (p.ready, p.desired) == last:
            return
        last = (p.ready, p.desired)
        async with ctx.sessionmaker.begin() as session:
            deployment = await session.get(models.Deployment, plan.deployment_id)
            if deployment is None or deployment.status != RUNNING:
                return
            deployment.ready, deployment.desired = p.ready, p.desired
            await events.emit_for_deployment(
                session,
                ctx=ctx,
                kind=events.DEPLOY_PROGRESS,
                deployment=deployment,
                project_id=plan.project_id,
                step=f"progress:{p.ready}/{p.desired}",
                payload={"ready": p.ready, "desired": p.desired},
            )

    result = await kube.wait_rollout(
        namespace=plan.spec.namespace,
        name=plan.app_name,
        timeout=plan.spec.progress_deadline_seconds + ctx.config.rollout_timeout_margin_seconds,
        on_progress=progress,
    )
    async with ctx.sessionmaker.begin() as session:
        deployment = await session.get(models.Deployment, plan.deployment_id, with_for_update=True)
        if deployment is None or deployment.status != RUNNING:
            return
        deployment.ready, deployment.desired = result.ready, result.desired
        if result.ok:
            await _finish(session, ctx=ctx, deployment=deployment, status=SUCCEEDED)
        else:
            deployment.logs = list(result.logs)
            await _finish(
                session,
                ctx=ctx,
                deployment=deployment,
                status=FAILED,
                error=f"{result.reason}: {result.message}",
            )
    metrics.DEPLOY_DURATION.observe(time.monotonic() - started)
    log.info("%s: %s (%s)", where, "succeeded" if result.ok else "failed", result.reason)


async def _finish(
    session: AsyncSession, *, ctx: Core, deployment: models.Deployment, status: str, error: str | None = None
) -> None:
    deployment.status, deployment.finished_at, deployment.error = status, models.utcnow(), error
    app = await session.get(models.App, deployment.app_id)
    if status == SUCCEEDED:
        kind = events.DEPLOY_ROLLED_BACK if deployment.trigger == "rollback" else events.DEPLOY_SUCCEEDED
    else:
        kind = events.DEPLOY_FAILED
    if deployment.preview_id:
        preview = await session.get(models.Preview, deployment.preview_id)
        # A fork's newer commit waiting for approval keeps saying so while an older one finishes.
        if preview is not None and preview.status not in ("closed", "pending_approval"):
            preview.status = "ready" if status == SUCCEEDED else "failed"
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=kind,
        deployment=deployment,
        project_id=app.project_id if app else None,
        step="final",
        payload={"error": error} if error else {},
    )
    metrics.DEPLOYS.labels(outcome=status, trigger=deployment.trigger).inc()


async def job_failed(*, session: AsyncSession, ctx: Core, job: jobs.JobView, error: str) -> None:
    """The deploy job failed for good (permanent error or retries exhausted)."""
    deployment = await session.get(models.Deployment, int(job.payload["deployment_id"]), with_for_update=True)
    if deployment is None or deployment.status in TERMINAL:
        return
    await _finish(session, ctx=ctx, deployment=deployment, status=FAILED, error=error)
