"""Closing previews: a closed pull request or an idle one (the reaper) queues a teardown job that deletes
the namespace whole; the job shares the preview's deploy concurrency key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, builds, clusters, deploys, events, jobs, logctx
from core.context import Core
from core.errors import Conflict, TransientError
from core.gitops import DEPLOY, SKIP, Decision
from core.identity import Actor
from core.previews.base import (
    CLOSED,
    CLOSING,
    NAMESPACE_GONE_WAIT_SECONDS,
    TEARDOWN_JOB,
    deploy_concurrency_key,
)
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)


async def close(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    number: int,
    reason: str,
) -> Decision:
    preview = await session.scalar(
        select(models.Preview).where(models.Preview.app_id == app.id, models.Preview.pr_number == number)
    )
    if preview is None or preview.closed_at is not None:
        return Decision(app=app.name, action=SKIP, reason=f"no open preview for pull request #{number}")
    await _start_teardown(session, ctx=ctx, app=app, actor=actor, preview=preview, reason=reason)
    return Decision(
        app=app.name,
        action=DEPLOY,
        reason=f"preview {preview.namespace} is being deleted",
        preview=preview.namespace,
    )


async def _start_teardown(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    preview: models.Preview,
    reason: str,
) -> models.Job:
    now = models.utcnow()
    preview.closed_at = now
    preview.status = CLOSING
    # Deploys of this preview that have not started would only recreate what we delete.
    pending = await session.scalars(
        select(models.Deployment.id).where(
            models.Deployment.preview_id == preview.id, models.Deployment.status.in_(deploys.PENDING)
        )
    )
    for deployment_id in list(pending):
        await deploys.cancel(session, ctx=ctx, actor=actor, deployment_id=deployment_id)
    if app.build_enabled:
        # Nor would its builds still queued (one building ends without deploying: closed_at is set).
        await builds.cancel_for_pull_request(session, ctx=ctx, app=app, number=preview.pr_number)
    marker = now.isoformat()
    job = await jobs.enqueue(
        session,
        kind=TEARDOWN_JOB,
        payload={"preview_id": preview.id, "closed_at": marker, "reason": reason},
        dedupe_key=f"preview-teardown:{preview.id}:{marker}"[:200],
        concurrency_key=deploy_concurrency_key(preview),
        max_attempts=10,
    )
    await audit.record(
        session,
        actor=actor,
        action="preview.close",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"pr": preview.pr_number, "namespace": preview.namespace, "reason": reason},
    )
    logctx.deploy_logger(log, app=app.name, namespace=preview.namespace).info(
        "preview: teardown queued (%s)", reason
    )
    return job


async def reap(session: AsyncSession, *, ctx: Core, now: dt.datetime | None = None) -> list[str]:
    """Queue the teardown of previews idle past their app's TTL; returns their namespaces."""
    now = now or models.utcnow()
    stale = list(
        await session.scalars(
            select(models.Preview).where(models.Preview.closed_at.is_(None), models.Preview.expires_at < now)
        )
    )
    reaped: list[str] = []
    for preview in stale:
        app = await session.get(models.App, preview.app_id)
        if app is None:
            continue
        actor = Actor(subject="system:preview-reaper", channel="system", display="shipit", is_admin=True)
        await _start_teardown(
            session,
            ctx=ctx,
            app=app,
            actor=actor,
            preview=preview,
            reason=f"no activity for {app.preview_ttl_hours} hours",
        )
        reaped.append(preview.namespace)
    return reaped


async def reap_forever(*, ctx: Core, every: float) -> None:
    """The reaper: every `every` seconds, queue teardowns of idle previews.  Safe on every replica
    (a preview is closed once: the second replica finds closed_at set)."""
    while True:
        await asyncio.sleep(every)
        try:
            async with ctx.sessionmaker.begin() as session:
                reaped = await reap(session, ctx=ctx)
            if reaped:
                log.info("preview reaper: tearing down idle %s", ", ".join(reaped))
        except Exception:
            log.exception("preview reaper pass failed; trying again in %.0fs", every)


async def run_teardown(*, ctx: Core, job: jobs.JobView) -> None:
    preview_id, marker = int(job.payload["preview_id"]), str(job.payload["closed_at"])
    async with ctx.sessionmaker() as session:
        preview = await session.get(models.Preview, preview_id)
        if preview is None or preview.closed_at is None or preview.closed_at.isoformat() != marker:
            log.info("preview %s: reopened since its teardown was queued; leaving it", preview_id)
            return
        app = await session.get(models.App, preview.app_id)
        cluster = await session.get(models.Cluster, app.cluster_id) if app else None
        if app is None or cluster is None:
            return
        project = await session.get(models.Project, app.project_id)
        assert project is not None
        namespace, app_name = preview.namespace, app.name
        kube = await ctx.kube.get(key=str(cluster.id), kubeconfig=clusters.kubeconfig(cluster, ctx=ctx))
    try:
        deleting = await kube.delete_namespace(name=namespace, project=project.name)
    except Conflict as e:
        # Not shipit's namespace (its deploy was refused too): close the preview, leave the namespace.
        logctx.deploy_logger(log, app=app_name, namespace=namespace).warning("preview: %s", e)
        deleting = False
    # Wait for the namespace to be gone so a reopened PR does not deploy into a terminating one.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NAMESPACE_GONE_WAIT_SECONDS
    delay = 0.1
    while deleting and await kube.namespace_exists(name=namespace):
        if loop.time() > deadline:
            raise TransientError(f"namespace {namespace} is still terminating", retry_after=10)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    async with ctx.sessionmaker.begin() as session:
        preview = await session.get(models.Preview, preview_id, with_for_update=True)
        if preview is None or preview.closed_at is None or preview.closed_at.isoformat() != marker:
            return
        preview.status = CLOSED
        deployments = list(
            await session.scalars(
                select(models.Deployment)
                .where(models.Deployment.preview_id == preview.id)
                .order_by(models.Deployment.id)
            )
        )
        payload: dict[str, Any] = {
            "reason": job.payload.get("reason"),
            "namespace": namespace,
            "deployment_refs": [dict(d.notify_refs or {}) for d in deployments if d.notify_refs],
        }
        await events.emit(
            session,
            ctx=ctx,
            kind=events.PREVIEW_CLOSED,
            dedupe_key=f"preview:{preview.id}:closed:{marker}"[:200],
            project_id=app.project_id,
            app_id=preview.app_id,
            deployment_id=deployments[-1].id if deployments else None,
            preview_id=preview.id,
            payload=payload,
        )
    logctx.deploy_logger(log, app=app_name, namespace=namespace).info(
        "preview deleted (%s)", job.payload.get("reason")
    )


HANDLERS = {TEARDOWN_JOB: Handler(run=run_teardown)}
