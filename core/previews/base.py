"""What every part of the previews package shares: the states of a Preview row, its namespace and
URL, the open-preview cap, and deploying a preview's head commit.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, claims, deploys, logctx
from core.context import Core
from core.errors import UserError
from core.gitops import DEPLOY, SKIP, Decision, linked_apps, render_image
from core.identity import Actor
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


def expiry(app: models.App, now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(hours=app.preview_ttl_hours)


def deploy_concurrency_key(preview: models.Preview) -> str:
    # The same key deploys.py gives the deploy jobs of this namespace.
    return f"deploy:{preview.app_id}:{preview.namespace}"


async def open_count(session: AsyncSession, *, app_id: int, other_than: int) -> int:
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


async def preview_apps(session: AsyncSession, *, repo: str) -> tuple[list[models.App], list[models.App]]:
    """(apps linked to repo, those with previews on)."""
    linked = await linked_apps(session, repo=repo)
    return linked, [a for a in linked if a.previews_enabled and a.preview_domain and a.image_template]


async def deploy_head(
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


def fork_name(head_repo: str | None) -> str:
    return head_repo or "a deleted fork"


async def list_open(session: AsyncSession, *, app_id: int) -> list[models.Preview]:
    return list(
        await session.scalars(
            select(models.Preview)
            .where(models.Preview.app_id == app_id, models.Preview.closed_at.is_(None))
            .order_by(models.Preview.pr_number)
        )
    )
