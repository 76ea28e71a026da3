"""A pull request opened, reopened or pushed to: deploy its preview, refuse it (the cap, a fork when
forks are off), or keep a fork's commit waiting for approval; closed: tear it down.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, builds, events, logctx
from core.context import Core
from core.gitops import SKIP, WAIT, Decision, Outcome, github_actor
from core.identity import Actor
from core.previews.base import (
    APPROVE_LABEL,
    AWAITING_APPROVAL,
    DEPLOYING,
    OPENING_ACTIONS,
    deploy_head,
    expiry,
    fork_name,
    namespace_for,
    open_count,
    preview_apps,
    url_for,
)
from core.previews.teardown import close
from storage import models

log = logging.getLogger(__name__)


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
    linked, with_previews = await preview_apps(session, repo=repo)
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
    if app.build_enabled:
        await builds.lock(session, app=app, sha=head_sha)  # before the preview row (builds.lock)
    now = models.utcnow()
    preview = await session.scalar(
        select(models.Preview).where(models.Preview.app_id == app.id, models.Preview.pr_number == number)
    )
    if (preview is None or preview.closed_at is not None) and not waits:
        open_now = await open_count(session, app_id=app.id, other_than=number)
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
    preview.expires_at = expiry(app, now)
    preview.closed_at = None
    await session.flush()
    if preview.status == AWAITING_APPROVAL:
        return await _await_approval(session, ctx=ctx, app=app, preview=preview, head_ref=head_ref)
    return await deploy_head(session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=head_ref)


async def _refuse_fork(
    session: AsyncSession, *, ctx: Core, app: models.App, repo: str, number: int, head_repo: str | None
) -> Decision:
    message = (
        f"Previews from forks are off for `{app.name}`: this pull request comes from "
        f"{fork_name(head_repo)}, so shipit deploys nothing for it."
    )
    await _refused(
        session, ctx=ctx, app=app, repo=repo, number=number, why="preview-fork-refused", message=message,
        head_repo=head_repo,
    )  # fmt: skip
    logctx.deploy_logger(log, app=app.name).info(
        "preview for %s#%s refused: from fork %s (never)", repo, number, head_repo
    )
    return Decision(
        app=app.name,
        action=SKIP,
        reason=f"no preview: pull request #{number} comes from {fork_name(head_repo)} and previews "
        f"from forks are off for {app.name} (previews_from_forks=never)",
    )


async def _await_approval(
    session: AsyncSession, *, ctx: Core, app: models.App, preview: models.Preview, head_ref: str
) -> Decision:
    number, sha = preview.pr_number, preview.head_sha
    how = f"add the label `{APPROVE_LABEL}`, or `/shipit preview approve {app.name} {number}` in Slack"
    message = (
        f"Pull request #{number} comes from {fork_name(preview.head_repo)}: its preview of "
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
        f"{fork_name(preview.head_repo)}: label the pull request {APPROVE_LABEL} to deploy it",
        preview=preview.namespace,
    )


async def _refuse(
    session: AsyncSession, *, ctx: Core, app: models.App, repo: str, number: int, open_now: int
) -> Decision:
    message = (
        f"No preview for this pull request: {app.name} already has {open_now} open previews, "
        f"the limit (preview_max_open={app.preview_max_open}). Close a pull request or raise the "
        "limit; the next push to this pull request tries again."
    )
    await _refused(
        session, ctx=ctx, app=app, repo=repo, number=number, why="preview-refused", message=message,
        limit=app.preview_max_open,
    )  # fmt: skip
    logctx.deploy_logger(log, app=app.name).info(
        "preview for %s#%s refused: %d open (limit)", repo, number, open_now
    )
    return Decision(app=app.name, action=SKIP, reason=message)


async def _refused(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    repo: str,
    number: int,
    why: str,
    message: str,
    **extra: Any,
) -> None:
    """The PR comment that says why there is no preview: one per pull request and reason, not one per push."""
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_REFUSED,
        dedupe_key=f"{why}:{app.id}:{repo.lower()}:{number}",
        project_id=app.project_id,
        app_id=app.id,
        payload={"repo": repo, "pr_number": number, "message": message, **extra},
    )
