"""What every part of the previews package shares: the states of a Preview row, its namespace and
URL, the open-preview cap, and deploying a preview's head commit.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, builds, claims, deploys, events, logctx
from core.context import Core
from core.errors import UserError
from core.gitops import BUILD, DEPLOY, SKIP, Decision, linked_apps, render_image
from core.identity import Actor
from storage import models

log = logging.getLogger(__name__)

TEARDOWN_JOB = "preview.teardown"
OPENING_ACTIONS = ("opened", "reopened", "synchronize")

CREATING = "creating"
# A fork's head commit waits for a maintainer; nothing is deployed.  (previews.status holds 16 characters.)
AWAITING_APPROVAL = "pending_approval"
DEPLOYING = "deploying"
# An app that builds from source: the head commit's build runs; its success deploys the preview.
BUILDING = "building"
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
    return linked, [
        a
        for a in linked
        if a.previews_enabled
        and a.preview_domain
        and (a.image_template or (a.build_enabled and a.build_image))
    ]


async def deploy_head(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    preview: models.Preview,
    head_ref: str,
    image: str | None = None,
) -> Decision:
    """Deploy the preview's head commit: `image`, else the app's image template rendered for it; an
    app that builds from source builds the commit first (`build_head`), and deploys once built."""
    number, namespace, head_sha = preview.pr_number, preview.namespace, preview.head_sha
    if image is None and app.build_enabled and app.build_image:
        return await build_head(session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=head_ref)
    if image is None:
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


async def build_head(
    session: AsyncSession, *, ctx: Core, app: models.App, actor: Actor, preview: models.Preview, head_ref: str
) -> Decision:
    """The build of the head commit for the preview (core.builds.queue, in the caller's transaction):
    a digest already pushed for it (the branch's build) is deployed at once; otherwise the preview
    waits in `building` until the build ends (after_build)."""
    number, namespace, sha = preview.pr_number, preview.namespace, preview.head_sha
    queued = await builds.queue(
        session, ctx=ctx, app=app, actor=actor, sha=sha, ref=f"refs/heads/{head_ref}", pr_number=number
    )
    build = queued.build
    if build.status == builds.SUCCEEDED and build.digest:
        return await deploy_head(
            session, ctx=ctx, app=app, actor=actor, preview=preview, head_ref=head_ref,
            image=f"{build.image}@{build.digest}",
        )  # fmt: skip
    if build.status == builds.FAILED:
        await build_failed(session, ctx=ctx, app=app, preview=preview, build=build)
        return Decision(
            app=app.name,
            action=SKIP,
            reason=f"preview {namespace} not deployed: build #{build.id} of {sha[:7]} failed "
            f"({build.error or 'see its log'}); `{await builds.logs_command(session, app=app, build=build)}` shows why",
            build_id=build.id,
            preview=namespace,
        )
    preview.status = BUILDING
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_BUILDING,
        dedupe_key=f"preview:{preview.id}:building:{sha}:{build.id}:{build.runs}",
        project_id=app.project_id,
        app_id=app.id,
        preview_id=preview.id,
        payload={"build": build.id, "sha": sha, "pr_number": number, "status": build.status},
    )
    logctx.deploy_logger(log, app=app.name, namespace=namespace).info(
        "preview of pr #%s waits for build #%s of %s (%s)", number, build.id, sha[:7], build.status
    )
    return Decision(
        app=app.name,
        action=BUILD,
        reason=f"preview {namespace}: build #{build.id} of {sha[:7]} "
        f"{'queued' if queued.created else build.status}; deployed at {preview.url} once built",
        build_id=build.id,
        preview=namespace,
    )


async def build_failed(
    session: AsyncSession, *, ctx: Core, app: models.App, preview: models.Preview, build: models.Build
) -> None:
    """The preview's build failed: nothing deployed; the PR comment says so and names the log command."""
    preview.status = FAILED
    await events.emit(
        session,
        ctx=ctx,
        kind=events.PREVIEW_BUILD_FAILED,
        dedupe_key=f"preview:{preview.id}:build-failed:{build.id}:{build.runs}",
        project_id=app.project_id,
        app_id=app.id,
        preview_id=preview.id,
        payload={
            "build": build.id,
            "sha": build.sha,
            "pr_number": preview.pr_number,
            "error": build.error,
            "logs": await builds.logs_command(session, app=app, build=build),
        },
    )


async def after_build(session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build) -> None:
    """A build ended (core.builds.BuildDone, in its transaction): the open previews waiting for its
    commit are deployed with the digest, through deploy_head, or marked failed.  A preview closed
    (or moved to a newer commit) meanwhile no longer waits: a late build never brings it back."""
    waiting = list(
        await session.scalars(
            select(models.Preview)
            .where(
                models.Preview.app_id == app.id,
                models.Preview.head_sha == build.sha,
                models.Preview.closed_at.is_(None),
                # failed: its build failed before, and `shipit builds retry` ran it again
                models.Preview.status.in_((BUILDING, FAILED)),
            )
            .order_by(models.Preview.id)
            .with_for_update()
        )
    )
    for preview in waiting:
        if build.status != builds.SUCCEEDED or not build.digest:
            await build_failed(session, ctx=ctx, app=app, preview=preview, build=build)
            continue
        preview.status = DEPLOYING
        decision = await deploy_head(
            session, ctx=ctx, app=app, actor=builds.actor_of(build), preview=preview,
            head_ref=build.ref.removeprefix("refs/heads/"), image=f"{build.image}@{build.digest}",
        )  # fmt: skip
        if build.pr_number == preview.pr_number and decision.deployment_id is not None:
            build.deployment_id = decision.deployment_id
        logctx.deploy_logger(log, app=app.name, namespace=preview.namespace).info(
            "preview: build #%s of %s ended: %s", build.id, build.sha[:7], decision.reason
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
