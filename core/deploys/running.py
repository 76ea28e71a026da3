"""The worker side: render, apply, watch, finish (and roll back automatically).

Written to be run again after a crash: every step is idempotent and events are deduplicated, so a
resumed deploy ends exactly once with one set of notifications.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    claims,
    clusters,
    events,
    identity,
    jobs,
    logctx,
    metrics,
    observe,
    registries,
    secrets,
    validation,
)
from core import revisions as snapshots  # `revisions` is this module's list of an app's revisions
from core.context import Core
from core.deploys.queries import (
    current_revision,
)
from core.deploys.request import (
    request,
)
from core.deploys.spec import workload_spec
from core.deploys.states import (
    AUTO_ROLLBACK,
    AWAITING_APPROVAL,
    FAILED,
    PENDING,
    QUEUED,
    ROLLBACK_TRIGGERS,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
)
from core.kube.applying import NamespaceOrigin
from core.kube.client import Kube
from core.kube.rules import RolloutProgress
from core.kube.spec import WorkloadSpec
from storage import models

log = logging.getLogger(__name__)


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
        deployment = (
            await session.get(models.Deployment, deployment_id, with_for_update=True)
            if validation.is_id(deployment_id)
            else None
        )
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
            logctx.deploy_logger(
                log, deployment=deployment.id, app=app.name, namespace=deployment.namespace
            ).info("resuming after a restart")
        # A fork's code never gets the app's secrets unless an admin chose previews_from_forks=always;
        # decided now, at apply time, so changing the setting holds for every later deploy.
        withhold = preview is not None and preview.is_fork and app.previews_from_forks != apps.FORKS_ALWAYS
        if withhold:
            logctx.deploy_logger(
                log, deployment=deployment.id, app=app.name, namespace=deployment.namespace
            ).info("preview of a fork, rendered without the app's secrets")
        snapshot = snapshots.of_revision(revision)
        secret_data, secret_checksum = (
            ({}, "")
            if withhold
            else await secrets.for_deploy(session, ctx=ctx, app_id=app.id, version=snapshot.secrets_version)
        )
        spec = workload_spec(
            ctx=ctx,
            app_name=app.name,
            project=project.name,
            namespace=deployment.namespace,
            revision=deployment.revision_number,
            snapshot=snapshot,
            secret_data=secret_data,
            secret_checksum=secret_checksum,
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
    observe.set_fields(app=plan.app_name, environment=plan.spec.namespace)  # this job's task only
    # Tag -> digest (recorded in the revision) and the pull secret: registry I/O, outside any transaction.
    spec = await registries.prepare(
        ctx=ctx, deployment_id=plan.deployment_id, project_id=plan.project_id, spec=plan.spec
    )
    plan = replace(plan, spec=spec)
    started = time.monotonic()
    dlog = logctx.deploy_logger(
        log, deployment=plan.deployment_id, app=plan.app_name, namespace=plan.spec.namespace
    )
    kube = await ctx.kube.get(key=str(plan.cluster_id), kubeconfig=plan.kubeconfig)
    if not await _release_phase(ctx=ctx, kube=kube, plan=plan):
        return
    # A namespace shipit created (previews, apps in new namespaces) must exist with our labels or not at all.
    with observe.span("deploy.apply", deploy_id=plan.deployment_id, app=plan.app_name):
        await kube.apply_workload(spec=plan.spec, namespace_origin=plan.namespace_origin)
    async with ctx.sessionmaker.begin() as session:
        deployment = await session.get(models.Deployment, plan.deployment_id)
        if deployment is not None and deployment.applied_at is None:
            deployment.applied_at = models.utcnow()
            metrics.DEPLOY_APPLY.observe((deployment.applied_at - plan.accepted_at).total_seconds())
    dlog.info("applied revision %s (%s)", plan.spec.revision, plan.spec.image)

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

    with observe.span("deploy.rollout", deploy_id=plan.deployment_id, app=plan.app_name):
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
    dlog.info("%s (%s)", "succeeded" if result.ok else "failed", result.reason)


async def _release_phase(*, ctx: Core, kube: Kube, plan: _Plan) -> bool:
    """Run the revision's release command (a migration, say) before anything of the app changes.

    True when there is none or it succeeded; False when it failed, and the deploy is then finished
    here as failed with the Job's reason, the Deployment, Service, HPA, Ingress and the app's Secret
    untouched (the Job reads a Secret of its own, see core.kube.render.render_release_secret).
    """
    spec = plan.spec
    if not spec.release_command:
        return True
    async with ctx.sessionmaker() as session:
        deployment = await session.get(models.Deployment, plan.deployment_id)
        if deployment is None:
            return False
        if deployment.applied_at is not None:
            # Resumed after the apply: the release succeeded before (its Job may be gone by now).
            return True
    dlog = logctx.deploy_logger(
        log, deployment=plan.deployment_id, app=plan.app_name, namespace=spec.namespace
    )
    deadline = ctx.config.release_deadline_seconds or spec.progress_deadline_seconds
    dlog.info("running the release command of revision %s", spec.revision)
    result = await kube.run_release(
        spec=spec,
        namespace_origin=plan.namespace_origin,
        active_deadline_seconds=deadline,
        ttl_seconds_after_finished=ctx.config.release_ttl_seconds,
        timeout=deadline + ctx.config.rollout_timeout_margin_seconds,
    )
    dlog.info("release job %s: %s", result.job, result.reason)
    if result.ok:
        return True
    async with ctx.sessionmaker.begin() as session:
        failed = await session.get(models.Deployment, plan.deployment_id, with_for_update=True)
        if failed is not None and failed.status == RUNNING:
            failed.logs = list(result.logs)
            await _finish(
                session, ctx=ctx, deployment=failed, status=FAILED, error=f"{result.reason}: {result.message}"
            )
    return False


async def _finish(
    session: AsyncSession, *, ctx: Core, deployment: models.Deployment, status: str, error: str | None = None
) -> None:
    deployment.status, deployment.finished_at, deployment.error = status, models.utcnow(), error
    app = await session.get(models.App, deployment.app_id)
    payload: dict[str, object] = {"error": error} if error else {}
    if status == SUCCEEDED:
        kind = (
            events.DEPLOY_ROLLED_BACK if deployment.trigger in ROLLBACK_TRIGGERS else events.DEPLOY_SUCCEEDED
        )
        if app is not None and deployment.preview_id is None:
            await _promote(session, ctx=ctx, app=app, deployment=deployment)
    else:
        kind = events.DEPLOY_FAILED
        if app is not None and deployment.preview_id is None:
            await _keep_current(session, ctx=ctx, app=app, deployment=deployment)
            rollback = await _auto_rollback(session, ctx=ctx, app=app, failed=deployment)
            if rollback is not None:
                payload.update(rolled_back_by=rollback.id, rolled_back_to=rollback.revision_number)
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
        payload=payload,
    )
    if deployment.trigger == AUTO_ROLLBACK:
        await _redraw_rolled_back(
            session, ctx=ctx, rollback=deployment, project_id=app.project_id if app else None
        )
    metrics.DEPLOYS_BY.labels(status, deployment.trigger).inc()


async def _redraw_rolled_back(
    session: AsyncSession, *, ctx: Core, rollback: models.Deployment, project_id: int | None
) -> None:
    """The failed deploy's card, status and webhook say how its rollback ended ("rolled back to revision N")."""
    failed = await session.scalar(
        select(models.Deployment).where(models.Deployment.rolled_back_by_id == rollback.id).limit(1)
    )
    if failed is None:
        return
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_FAILED,
        deployment=failed,
        project_id=project_id,
        step=f"rollback:{rollback.status}",
        payload={
            "error": failed.error,
            "rolled_back_by": rollback.id,
            "rolled_back_to": rollback.revision_number,
            "rollback_status": rollback.status,
        },
    )


async def _promote(
    session: AsyncSession, *, ctx: Core, app: models.App, deployment: models.Deployment
) -> None:
    """The rollout succeeded: its revision is now the app's current one, and the app's settings say so."""
    revision = await session.get(models.Revision, deployment.revision_id) if deployment.revision_id else None
    if revision is None:
        return
    app.current_revision_id = revision.id
    snapshot = snapshots.of_revision(revision)
    if deployment.trigger in ROLLBACK_TRIGGERS:
        # The whole snapshot comes back, secrets included, so the next change builds on it.
        snapshots.apply_to_app(snapshot, app=app)
        await secrets.restore(session, ctx=ctx, app=app, version=snapshot.secrets_version)
    else:
        # Everything else was taken from the app's settings; only the image moves on success.
        app.image = snapshot.image


async def _keep_current(
    session: AsyncSession, *, ctx: Core, app: models.App, deployment: models.Deployment
) -> None:
    """A failed rollout leaves the app as its current revision says: later changes never build on it."""
    current = await current_revision(session, app=app)
    failed = await session.get(models.Revision, deployment.revision_id) if deployment.revision_id else None
    if current is None or failed is None or failed.id == current.id:
        return
    good, bad = snapshots.of_revision(current), snapshots.of_revision(failed)
    reverted = snapshots.revert_on_app(failed=bad, current=good, app=app)
    if bad.secrets_version != good.secrets_version and app.secrets_version == bad.secrets_version:
        await secrets.restore(session, ctx=ctx, app=app, version=good.secrets_version)
        reverted.append("secrets")
    if reverted:
        logctx.deploy_logger(
            log, deployment=deployment.id, app=app.name, namespace=deployment.namespace
        ).info("failed: back to revision %s (%s)", current.number, ", ".join(reverted))


async def _auto_rollback(
    session: AsyncSession, *, ctx: Core, app: models.App, failed: models.Deployment
) -> models.Deployment | None:
    """Deploy the current good revision again after a failed rollout, as an ordinary visible deploy.

    Not for an app that turned it off, one with nothing good to go back to (first deploy), a failed
    automatic rollback (no loops), a redeploy of the current revision itself, or when a newer deploy
    of another image is already waiting (it runs next and would be superseded by ours).
    """
    if not app.auto_rollback or failed.trigger == AUTO_ROLLBACK or failed.rolled_back_by_id is not None:
        return None
    current = await current_revision(session, app=app)
    if current is None or current.id == failed.revision_id:
        return None
    # A newer deploy of another image is the fix on its way: leave it be.  Newer changes built on the
    # failed image (a scale during the rollout) are superseded by the rollback; their settings stay
    # on the app for the next deploy.
    other = await session.scalar(
        select(models.Deployment.id).where(
            models.Deployment.app_id == app.id,
            models.Deployment.namespace == failed.namespace,
            models.Deployment.status.in_(PENDING),
            models.Deployment.id > failed.id,
            models.Deployment.image != failed.image,
        )
    )
    if other is not None:
        return None
    result = await request(
        session,
        ctx=ctx,
        actor=identity.SYSTEM,
        app_name=app.name,
        trigger=AUTO_ROLLBACK,
        rerun=current,
        rollback_of=current.number,
        dedupe_key=f"auto-rollback:{failed.id}",
        reason=f"deploy #{failed.id} failed: roll back to revision {current.number}",
        env=await apps.env_name(session, app=app),
    )
    failed.rolled_back_by_id = result.deployment.id
    logctx.deploy_logger(log, deployment=failed.id, app=app.name, namespace=failed.namespace).info(
        "failed: rolling back to revision %s (deploy %s)", current.number, result.deployment.id
    )
    return result.deployment


async def job_failed(*, session: AsyncSession, ctx: Core, job: jobs.JobView, error: str) -> None:
    """The deploy job failed for good (permanent error or retries exhausted)."""
    deployment = await session.get(models.Deployment, int(job.payload["deployment_id"]), with_for_update=True)
    if deployment is None or deployment.status in TERMINAL:
        return
    await _finish(session, ctx=ctx, deployment=deployment, status=FAILED, error=error)
