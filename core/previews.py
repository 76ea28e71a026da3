"""Preview environments: one namespace per pull request, with its own URL, deleted when done.

A pull request opened (or pushed to) deploys the app's image for the PR head
into `<app>-pr-<n>`, with one replica, no HPA, the app's secrets, its
preview-only env overrides and an Ingress at `<app>-pr-<n>.<preview domain>`
(the deploy core renders all of that from the Preview row).  Closing the PR,
or leaving it idle longer than the app's TTL, queues a teardown job that
deletes the namespace whole; the PREVIEW_CLOSED event then lets notifiers mark
the GitHub deployments inactive and update the PR comment.

Pull requests from forks run code nobody on the team has reviewed, so the
app's `previews_from_forks` decides (core.apps): `never` (the default) answers
with one PR comment and deploys nothing; `approved` keeps a Preview row in
`pending_approval` (nothing in the cluster) until a project developer
approves the head commit, by adding the `shipit:preview` label on GitHub or
with `/shipit preview approve` / the API; a later push needs a new approval,
as GitHub Actions does for forks.  Only `always` (admins only) gives a fork's
preview the app's secrets: deploys.py leaves them out otherwise.

The teardown job shares the concurrency key of the preview's deploys, so a
deploy and the deletion of its namespace never run at the same time.
`closed_at` is the source of truth: a PR reopened before its teardown ran
clears it, and the stale teardown then leaves the namespace alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, claims, clusters, deploys, events, jobs, logctx
from core.context import Core
from core.errors import Conflict, NotFound, TransientError, UserError
from core.gitops import DEPLOY, SKIP, WAIT, Decision, Outcome, github_actor, linked_apps, render_image
from core.identity import Actor, Role
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)

TEARDOWN_JOB = "preview.teardown"
OPENING_ACTIONS = ("opened", "reopened", "synchronize")

CREATING = "creating"
# A fork's head commit waits for a maintainer; nothing is deployed.  (previews.status holds 16 characters.)
AWAITING_APPROVAL = "pending_approval"
DEPLOYING = "deploying"
READY = "ready"
FAILED = "failed"
CLOSING = "closing"
CLOSED = "closed"

# Added to a pull request from a fork by a project developer, it approves the preview of its head commit.
APPROVE_LABEL = "shipit:preview"

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
            # A fork's preview waiting for approval runs nothing; counting it would let anyone
            # able to open pull requests use up the cap.
            models.Preview.status != AWAITING_APPROVAL,
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
    head_repo: str | None = None,
    is_fork: bool = False,
) -> Outcome:
    """opened / reopened / synchronize deploy the preview; closed tears it down.

    `head_repo` is where the head branch lives (None: a deleted fork); `is_fork` says it is not `repo`.
    """
    linked, with_previews = await _preview_apps(session, repo=repo)
    if not linked:
        return Outcome(summary=f"no app is linked to {repo}; no preview")
    if not with_previews:
        names = ", ".join(a.name for a in linked)
        return Outcome(summary=f"previews are off for the apps linked to {repo} ({names}); no preview")
    actor = github_actor(sender)
    decisions: list[Decision] = []
    for app in with_previews:
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
                    head_repo=head_repo,
                    is_fork=is_fork,
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
    head_repo: str | None = None,
    is_fork: bool = False,
) -> Decision:
    if is_fork and app.previews_from_forks not in (apps.FORKS_APPROVED, apps.FORKS_ALWAYS):
        return await _refuse_fork(session, ctx=ctx, app=app, repo=repo, number=number, head_repo=head_repo)
    waits = is_fork and app.previews_from_forks == apps.FORKS_APPROVED
    now = models.utcnow()
    preview = await session.scalar(
        select(models.Preview).where(models.Preview.app_id == app.id, models.Preview.pr_number == number)
    )
    if (preview is None or preview.closed_at is not None) and not waits:
        open_now = await _open_count(session, app_id=app.id, other_than=number)
        if open_now >= app.preview_max_open:
            return await _refuse(session, ctx=ctx, app=app, repo=repo, number=number, open_now=open_now)
    namespace = namespace_for(app_name=app.name, number=number)
    if preview is None:
        preview = models.Preview(app_id=app.id, pr_number=number, repo=repo, namespace=namespace)
        session.add(preview)
    if preview.closed_at is not None or preview.head_sha != head_sha:
        preview.approved_by = None  # an approval is for one commit of an open pull request
    preview.repo = repo
    preview.head_repo = head_repo
    preview.is_fork = is_fork
    preview.head_sha = head_sha
    preview.namespace = namespace
    preview.url = url_for(app=app, namespace=namespace, ctx=ctx)
    preview.status = AWAITING_APPROVAL if waits and preview.approved_by is None else DEPLOYING
    preview.last_activity_at = now
    preview.expires_at = _expiry(app, now)
    preview.closed_at = None
    await session.flush()
    if preview.status == AWAITING_APPROVAL:
        return await _await_approval(session, ctx=ctx, app=app, preview=preview, head_ref=head_ref)
    return await _deploy(session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=head_ref)


async def _deploy(
    session: AsyncSession, *, ctx: Core, app: models.App, actor: Actor, preview: models.Preview, head_ref: str
) -> Decision:
    number, namespace, head_sha = preview.pr_number, preview.namespace, preview.head_sha
    assert app.image_template is not None
    image = render_image(app.image_template, sha=head_sha, branch=head_ref)
    try:
        async with session.begin_nested():
            # The preview's namespace becomes the project's (refused when another project holds it).
            await claims.claim_created(
                session,
                cluster_id=app.cluster_id,
                namespace=namespace,
                project_id=app.project_id,
                actor=actor,
            )
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
                env=await apps.env_name(session, app=app),
            )
    except UserError as e:
        preview.status = FAILED
        return Decision(app=app.name, action=SKIP, reason=f"preview not deployed: {e}", preview=namespace)
    logctx.deploy_logger(log, deployment=result.deployment.id, app=app.name, namespace=namespace).info(
        "preview of %s (pr #%s @ %s)", image, number, head_sha[:7]
    )
    return Decision(
        app=app.name,
        action=DEPLOY,
        reason=f"preview {namespace}: deploy #{result.deployment.id} queued at {preview.url}",
        deployment_id=result.deployment.id,
        image=image,
        preview=namespace,
    )


def _fork_name(head_repo: str | None) -> str:
    return head_repo or "a deleted fork"


async def _refuse_fork(
    session: AsyncSession, *, ctx: Core, app: models.App, repo: str, number: int, head_repo: str | None
) -> Decision:
    message = (
        f"Previews from forks are off for `{app.name}`: this pull request comes from "
        f"{_fork_name(head_repo)}, so shipit deploys nothing for it."
    )
    # One comment per pull request, not one per push.
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_REFUSED,
        dedupe_key=f"preview-fork-refused:{app.id}:{repo.lower()}:{number}",
        project_id=app.project_id,
        app_id=app.id,
        payload={"repo": repo, "pr_number": number, "message": message, "head_repo": head_repo},
    )
    logctx.deploy_logger(log, app=app.name).info(
        "preview for %s#%s refused: from fork %s (never)", repo, number, head_repo
    )
    return Decision(
        app=app.name,
        action=SKIP,
        reason=f"no preview: pull request #{number} comes from {_fork_name(head_repo)} and previews "
        f"from forks are off for {app.name} (previews_from_forks=never)",
    )


async def _await_approval(
    session: AsyncSession, *, ctx: Core, app: models.App, preview: models.Preview, head_ref: str
) -> Decision:
    number, sha = preview.pr_number, preview.head_sha
    how = f"add the label `{APPROVE_LABEL}`, or `/shipit preview approve {app.name} {number}` in Slack"
    message = (
        f"Pull request #{number} comes from {_fork_name(preview.head_repo)}: its preview of "
        f"`{app.name}` waits until a project developer approves commit `{sha[:7]}` ({how})."
    )
    # The event also remembers the head branch, which the approval needs to render the image.
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_AWAITING_APPROVAL,
        dedupe_key=f"preview:{preview.id}:awaiting:{sha}",
        project_id=app.project_id,
        app_id=app.id,
        preview_id=preview.id,
        payload={
            "repo": preview.repo,
            "pr_number": number,
            "head_sha": sha,
            "head_ref": head_ref,
            "head_repo": preview.head_repo,
            "message": message,
        },
    )
    logctx.deploy_logger(log, app=app.name, namespace=preview.namespace).info(
        "preview: fork commit %s from %s waits for approval", sha[:7], preview.head_repo
    )
    return Decision(
        app=app.name,
        action=WAIT,
        reason=f"preview {preview.namespace} waits for approval of {sha[:7]} from "
        f"{_fork_name(preview.head_repo)}: label the pull request {APPROVE_LABEL} to deploy it",
        preview=preview.namespace,
    )


async def _pending_head_ref(session: AsyncSession, *, preview: models.Preview) -> str:
    """The head branch recorded when the preview's current commit started waiting."""
    rows = await session.scalars(
        select(models.Event)
        .where(
            models.Event.kind == events.PREVIEW_AWAITING_APPROVAL,
            models.Event.preview_id == preview.id,
        )
        .order_by(models.Event.id.desc())
        .limit(50)
    )
    for event in rows:
        payload = event.payload or {}
        if payload.get("head_sha") == preview.head_sha and isinstance(payload.get("head_ref"), str):
            return str(payload["head_ref"])
    return ""


@dataclass(frozen=True, kw_only=True)
class Approval:
    preview: models.Preview
    decision: Decision


async def approve(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, number: int, env: str | None = None
) -> Approval:
    """A project developer approves the waiting preview of a pull request from a fork (Slack, API)."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    return await _approve(session, ctx=ctx, app=app, actor=actor, number=number)


async def _approve(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    number: int,
    sha: str | None = None,
    head_ref: str | None = None,
) -> Approval:
    """Approve the preview's head commit (`sha`: only if it still is that commit) and deploy it."""
    await apps.authorize(
        session, actor=actor, app=app, role=Role.DEVELOPER, action="approving a preview from a fork"
    )
    preview = await session.scalar(
        select(models.Preview)
        .where(models.Preview.app_id == app.id, models.Preview.pr_number == number)
        .with_for_update()
    )
    if preview is None or preview.closed_at is not None:
        raise NotFound(
            f"{app.name} has no open preview for pull request #{number}; one is made when the pull "
            "request is opened or pushed to"
        )
    if not preview.is_fork:
        raise Conflict(f"pull request #{number} is not from a fork: its previews need no approval")
    if app.previews_from_forks != apps.FORKS_APPROVED:
        raise Conflict(
            f"{app.name} has previews_from_forks={app.previews_from_forks}: there is nothing to approve"
        )
    if sha is not None and sha != preview.head_sha:
        raise Conflict(
            f"pull request #{number} is at {preview.head_sha[:7]} now, not {sha[:7]}: approve the new commit"
        )
    if preview.approved_by is not None:
        raise Conflict(
            f"commit {preview.head_sha[:7]} of pull request #{number} was already approved by "
            f"{preview.approved_by}"
        )
    open_now = await _open_count(session, app_id=app.id, other_than=number)
    if open_now >= app.preview_max_open:
        raise Conflict(
            f"{app.name} already has {open_now} open previews, the limit (preview_max_open="
            f"{app.preview_max_open}); close a pull request or raise the limit, then approve again"
        )
    now = models.utcnow()
    preview.approved_by = actor.subject
    preview.status = DEPLOYING
    preview.last_activity_at, preview.expires_at = now, _expiry(app, now)
    await audit.record(
        session,
        actor=actor,
        action="preview.approve",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"pr": number, "sha": preview.head_sha, "head_repo": preview.head_repo},
    )
    ref = head_ref if head_ref is not None else await _pending_head_ref(session, preview=preview)
    decision = await _deploy(session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=ref)
    if decision.action != DEPLOY:
        raise Conflict(decision.reason)  # nothing approved: the transaction is rolled back
    logctx.deploy_logger(log, app=app.name, namespace=preview.namespace).info(
        "preview: %s approved %s", actor.subject, preview.head_sha[:7]
    )
    return Approval(preview=preview, decision=decision)


async def on_label(
    session: AsyncSession,
    *,
    ctx: Core,
    repo: str,
    number: int,
    label: str,
    head_sha: str,
    head_ref: str,
    sender: str,
    head_repo: str | None = None,
    is_fork: bool = False,
    closed: bool = False,
) -> Outcome:
    """pull_request.labeled: the shipit:preview label approves the preview of a fork's head commit.

    The labeler acts as `github:<login>` WITHOUT the admin rights a push gets (gitops.github_actor):
    a label is an approval only when that subject holds the developer role (or more) in the app's
    project; anyone else is answered with the reason and nothing happens.
    """
    if label != APPROVE_LABEL:
        return Outcome(summary=f"label {label!r} means nothing to shipit; {APPROVE_LABEL} approves previews")
    if not is_fork:
        return Outcome(summary=f"pull request #{number} is not from a fork: its previews need no approval")
    if closed:
        return Outcome(summary=f"pull request #{number} is closed; nothing to approve")
    _, with_previews = await _preview_apps(session, repo=repo)
    waiting = [a for a in with_previews if a.previews_from_forks == apps.FORKS_APPROVED]
    if not waiting:
        return Outcome(
            summary=f"no app linked to {repo} deploys previews from forks after approval; nothing to approve"
        )
    actor = Actor(subject=f"github:{sender}", channel="github", display=sender)
    decisions: list[Decision] = []
    for app in waiting:
        try:
            async with session.begin_nested():
                exists = await session.scalar(
                    select(models.Preview.id).where(
                        models.Preview.app_id == app.id,
                        models.Preview.pr_number == number,
                        models.Preview.closed_at.is_(None),
                    )
                )
                if exists is None:
                    # Opened before the app took previews from forks: the label both opens and approves.
                    await open_or_update(
                        session, ctx=ctx, app=app, actor=actor, repo=repo, number=number,
                        head_sha=head_sha, head_ref=head_ref, head_repo=head_repo, is_fork=True,
                    )  # fmt: skip
                approval = await _approve(
                    session, ctx=ctx, app=app, actor=actor, number=number, sha=head_sha, head_ref=head_ref
                )
        except UserError as e:
            logctx.deploy_logger(log, app=app.name).info(
                "label %s on %s#%s by %s ignored: %s", label, repo, number, sender, e
            )
            decisions.append(Decision(app=app.name, action=SKIP, reason=f"not approved: {e}"))
            continue
        decisions.append(approval.decision)
    summary = "; ".join(f"{d.app}: {d.reason}" for d in decisions)
    return Outcome(summary=summary, decisions=decisions)


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
    logctx.deploy_logger(log, app=app.name).info(
        "preview for %s#%s refused: %d open (limit)", repo, number, open_now
    )
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
