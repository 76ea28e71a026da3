"""Approving the preview of a fork's head commit: `/shipit preview approve`, the API, or the
`shipit:preview` label on GitHub (by a project developer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, events, logctx
from core.context import Core
from core.errors import Conflict, NotFound, UserError
from core.gitops import BUILD, DEPLOY, SKIP, Decision, Outcome
from core.identity import Actor, Role
from core.previews.base import APPROVE_LABEL, DEPLOYING, deploy_head, expiry, open_count, preview_apps
from core.previews.opening import open_or_update
from storage import models

log = logging.getLogger(__name__)


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
    open_now = await open_count(session, app_id=app.id, other_than=number)
    if open_now >= app.preview_max_open:
        raise Conflict(
            f"{app.name} already has {open_now} open previews, the limit (preview_max_open="
            f"{app.preview_max_open}); close a pull request or raise the limit, then approve again"
        )
    now = models.utcnow()
    preview.approved_by = actor.subject
    preview.status = DEPLOYING
    preview.last_activity_at, preview.expires_at = now, expiry(app, now)
    await audit.record(
        session,
        actor=actor,
        action="preview.approve",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"pr": number, "sha": preview.head_sha, "head_repo": preview.head_repo},
    )
    ref = head_ref if head_ref is not None else await _pending_head_ref(session, preview=preview)
    decision = await deploy_head(session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=ref)
    if decision.action not in (DEPLOY, BUILD):  # BUILD: its commit is built first, then deployed
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
    _, with_previews = await preview_apps(session, repo=repo)
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
