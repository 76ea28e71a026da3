"""Preview environments: one namespace per pull request, with its own URL, deleted when done.

A pull request opened (or pushed to) deploys the app's image for the PR head
into `<app>-pr-<n>`, with one replica, no HPA, the app's secrets, its
preview-only env overrides and an Ingress at `<app>-pr-<n>.<preview domain>`
(the deploy core renders all of that from the Preview row).  Closing the PR,
or leaving it idle longer than the app's TTL, queues a teardown job that
deletes the namespace whole; the PREVIEW_CLOSED event then lets notifiers mark
the GitHub deployments inactive and update the PR comment.

The teardown job shares the concurrency key of the preview's deploys, so a
deploy and the deletion of its namespace never run at the same time.
`closed_at` is the source of truth: a PR reopened before its teardown ran
clears it, and the stale teardown then leaves the namespace alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, clusters, deploys, events, jobs
from core.context import Core
from core.errors import Conflict, TransientError, UserError
from core.gitops import DEPLOY, SKIP, Decision, Outcome, github_actor, linked_apps, render_image
from core.identity import Actor
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)

TEARDOWN_JOB = "preview.teardown"
OPENING_ACTIONS = ("opened", "reopened", "synchronize")

CREATING = "creating"
DEPLOYING = "deploying"
READY = "ready"
FAILED = "failed"
CLOSING = "closing"
CLOSED = "closed"

# How long one teardown attempt waits for the namespace to be gone before retrying later.
NAMESPACE_GONE_WAIT_SECONDS = 60.0


def namespace_for(*, app_name: str, number: int) -> str:
    """`<app>-pr-<n>`, shortened on the app side to stay a DNS label (63 characters)."""
    suffix = f"-pr-{number}"
    return f"{app_name[: 63 - len(suffix)].rstrip('-')}{suffix}"


def url_for(*, app: models.App, namespace: str, ctx: Core) -> str:
    tls = app.tls_issuer or ctx.config.default_tls_issuer
    return f"{'https' if tls else 'http'}://{namespace}.{app.preview_domain}"


def _expiry(app: models.App, now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(hours=app.preview_ttl_hours)


def _deploy_concurrency_key(preview: models.Preview) -> str:
    # The same key deploys.py gives the deploy jobs of this namespace.
    return f"deploy:{preview.app_id}:{preview.namespace}"


async def _open_count(session: AsyncSession, *, app_id: int, other_than: int) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(models.Preview)
        .where(
            models.Preview.app_id == app_id,
            models.Preview.closed_at.is_(None),
            models.Preview.pr_number != other_than,
        )
    )
    return int(count or 0)


async def _preview_apps(session: AsyncSession, *, repo: str) -> tuple[list[models.App], list[models.App]]:
    """(apps linked to repo, those with previews on)."""
    linked = await linked_apps(session, repo=repo)
    return linked, [a for a in linked if a.previews_enabled and a.preview_domain and a.image_template]


async def on_pull_request(
    session: AsyncSession,
    *,
    ctx: Core,
    repo: str,
    number: int,
    action: str,
    head_sha: str,
    head_ref: str,
    sender: str,
) -> Outcome:
    """opened / reopened / synchronize deploy the preview; closed tears it down."""
    linked, apps = await _preview_apps(session, repo=repo)
    if not linked:
        return Outcome(summary=f"no app is linked to {repo}; no preview")
    if not apps:
        names = ", ".join(a.name for a in linked)
        return Outcome(summary=f"previews are off for the apps linked to {repo} ({names}); no preview")
    actor = github_actor(sender)
    decisions: list[Decision] = []
    for app in apps:
        if action in OPENING_ACTIONS:
            decisions.append(
                await open_or_update(
                    session,
                    ctx=ctx,
                    app=app,
                    actor=actor,
                    repo=repo,
                    number=number,
                    head_sha=head_sha,
                    head_ref=head_ref,
                )
            )
        elif action == "closed":
            decisions.append(
                await close(
                    session,
                    ctx=ctx,
                    app=app,
                    actor=actor,
                    number=number,
                    reason=f"pull request #{number} was closed",
                )
            )
        else:
            raise ValueError(f"previews do not handle pull_request action {action!r}")
    summary = "; ".join(f"{d.app}: {d.reason}" for d in decisions)
    return Outcome(summary=summary, decisions=decisions)


async def open_or_update(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    repo: str,
    number: int,
    head_sha: str,
    head_ref: str,
) -> Decision:
    now = models.utcnow()
    preview = await session.scalar(
        select(models.Preview).where(models.Preview.app_id == app.id, models.Preview.pr_number == number)
    )
    if preview is None or preview.closed_at is not None:
        open_now = await _open_count(session, app_id=app.id, other_than=number)
        if open_now >= app.preview_max_open:
            return await _refuse(session, ctx=ctx, app=app, repo=repo, number=number, open_now=open_now)
    namespace = namespace_for(app_name=app.name, number=number)
    if preview is None:
        preview = models.Preview(app_id=app.id, pr_number=number, repo=repo, namespace=namespace)
        session.add(preview)
    preview.repo = repo
    preview.head_sha = head_sha
    preview.namespace = namespace
    preview.url = url_for(app=app, namespace=namespace, ctx=ctx)
    preview.status = DEPLOYING
    preview.last_activity_at = now
    preview.expires_at = _expiry(app, now)
    preview.closed_at = None
    await session.flush()
    assert app.image_template is not None
    image = render_image(app.image_template, sha=head_sha, branch=head_ref)
    try:
        async with session.begin_nested():
            result = await deploys.request(
                session,
                ctx=ctx,
                actor=actor,
                app_name=app.name,
                image=image,
                trigger="pr",
                git_sha=head_sha,
                git_ref=f"refs/heads/{head_ref}",
                preview=preview,
                reason=f"preview of pull request #{number}",
            )
    except UserError as e:
        preview.status = FAILED
        return Decision(app=app.name, action=SKIP, reason=f"preview not deployed: {e}", preview=namespace)
    log.info(
        "preview %s of %s: deploy %s of %s (pr #%s @ %s)",
        namespace, app.name, result.deployment.id, image, number, head_sha[:7],
    )  # fmt: skip
    return Decision(
        app=app.name,
        action=DEPLOY,
        reason=f"preview {namespace}: deploy #{result.deployment.id} queued at {preview.url}",
        deployment_id=result.deployment.id,
        image=image,
        preview=namespace,
    )


async def _refuse(
    session: AsyncSession, *, ctx: Core, app: models.App, repo: str, number: int, open_now: int
) -> Decision:
    message = (
        f"No preview for this pull request: {app.name} already has {open_now} open previews, "
        f"the limit (preview_max_open={app.preview_max_open}). Close a pull request or raise the "
        "limit; the next push to this pull request tries again."
    )
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_REFUSED,
        dedupe_key=f"preview-refused:{app.id}:{repo.lower()}:{number}",
        project_id=app.project_id,
        app_id=app.id,
        payload={"repo": repo, "pr_number": number, "message": message, "limit": app.preview_max_open},
    )
    log.info("preview for %s#%s of %s refused: %d open (limit)", repo, number, app.name, open_now)
    return Decision(app=app.name, action=SKIP, reason=message)


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
    marker = now.isoformat()
    job = await jobs.enqueue(
        session,
        kind=TEARDOWN_JOB,
        payload={"preview_id": preview.id, "closed_at": marker, "reason": reason},
        dedupe_key=f"preview-teardown:{preview.id}:{marker}"[:200],
        concurrency_key=_deploy_concurrency_key(preview),
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
    log.info("preview %s of %s: teardown queued (%s)", preview.namespace, app.name, reason)
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


async def list_open(session: AsyncSession, *, app_id: int) -> list[models.Preview]:
    return list(
        await session.scalars(
            select(models.Preview)
            .where(models.Preview.app_id == app_id, models.Preview.closed_at.is_(None))
            .order_by(models.Preview.pr_number)
        )
    )


# ---------------------------------------------------------------- the worker side


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
        log.warning("preview %s of %s: %s", namespace, app_name, e)
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
    log.info("preview %s of %s deleted (%s)", namespace, app_name, job.payload.get("reason"))


HANDLERS = {TEARDOWN_JOB: Handler(run=run_teardown)}
