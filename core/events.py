"""Domain events and the outbox that carries them to notifiers.

An event is written in the same transaction as the state change that caused
it, with a dedupe key, so a retried job or a resumed deploy never emits the
same notification twice.  For each registered notifier that wants the event a
`notify` job is queued beside it; delivery retries with backoff (honouring
Retry-After) and a notifier failing never fails the deploy.

Notifiers get a `Notice` built from the *current* state at delivery time, so a
card updated late still shows the truth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import environment_admin, environments, jobs, observe
from core.context import Core
from storage import models

log = logging.getLogger(__name__)

DEPLOY_QUEUED = "deploy.queued"
DEPLOY_AWAITING_APPROVAL = "deploy.awaiting_approval"
DEPLOY_STARTED = "deploy.started"
DEPLOY_PROGRESS = "deploy.progress"
DEPLOY_SUCCEEDED = "deploy.succeeded"
DEPLOY_FAILED = "deploy.failed"
DEPLOY_ROLLED_BACK = "deploy.rolled_back"
DEPLOY_SUPERSEDED = "deploy.superseded"
DEPLOY_CANCELLED = "deploy.cancelled"
PREVIEW_READY = "preview.ready"
PREVIEW_CLOSED = "preview.closed"
PREVIEW_REFUSED = "preview.refused"
PREVIEW_AWAITING_APPROVAL = "preview.awaiting_approval"  # a fork's commit waits for a maintainer
APP_PAUSED = "app.paused"
APP_RESUMED = "app.resumed"
APP_PROTECTION_CHANGED = "app.protection_changed"

NOTIFY_JOB = jobs.NOTIFY_KIND


@dataclass(frozen=True, kw_only=True)
class ProjectView:
    id: int
    name: str
    slack_channel: str | None
    webhook_url: str | None


@dataclass(frozen=True, kw_only=True)
class AppView:
    id: int
    name: str
    namespace: str
    cluster: str
    image: str | None
    protected: bool
    auto_deploy_paused: bool
    paused_reason: str | None
    git_repo: str | None
    github_environment: str | None
    domain: str | None = None  # the app's public host, for links such as GitHub's environment_url
    environment: str | None = None  # the environment this app row runs in
    # The next environment in the project's order where the app also runs: what a card offers to promote to.
    next_environment: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeploymentView:
    id: int
    status: str
    trigger: str
    actor: str
    image: str
    revision: int | None
    namespace: str
    error: str | None
    logs: list[str]
    ready: int
    desired: int
    queue_position: int | None
    approved_by: str | None
    git_sha: str | None
    git_ref: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    refs: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None  # what the image tag was pinned to at deploy time
    digest_note: str | None = None  # why it was deployed by tag instead
    # A failed deploy that shipit rolled back by itself: the rollback deploy, its revision and status.
    rolled_back_by: int | None = None
    rolled_back_to: int | None = None
    rollback_status: str | None = None

    @property
    def outcome(self) -> str:
        """The status in words, a failure's automatic rollback included: what every channel shows."""
        if self.status != "failed" or self.rolled_back_by is None:
            return self.status
        match self.rollback_status:
            case "succeeded":
                return f"failed, rolled back to revision {self.rolled_back_to}"
            case "failed" | "cancelled" | "superseded":
                return f"failed, and the rollback to revision {self.rolled_back_to} {self.rollback_status}"
            case _:
                return f"failed, rolling back to revision {self.rolled_back_to}"

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "superseded", "cancelled")

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@dataclass(frozen=True, kw_only=True)
class PreviewView:
    id: int
    pr_number: int
    repo: str
    head_sha: str
    namespace: str
    url: str | None
    status: str
    comment_id: int | None
    head_repo: str | None = None
    is_fork: bool = False
    approved_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class Notice:
    event_id: int
    kind: str
    created_at: dt.datetime
    payload: dict[str, Any]
    project: ProjectView | None
    app: AppView | None
    deployment: DeploymentView | None
    preview: PreviewView | None


@dataclass(frozen=True, kw_only=True)
class Delivered:
    """What a notifier wants remembered for next time, e.g. the Slack message ts."""

    deployment_refs: dict[str, Any] | None = None
    preview_comment_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Audience:
    """What a notifier may look at, at emit time, to decline an event before a job is queued for it."""

    kind: str
    project: ProjectView | None
    trigger: str | None
    git_sha: str | None
    preview: bool


class Notifier(Protocol):
    name: str

    def wants(self, kind: str) -> bool: ...

    async def deliver(self, notice: Notice) -> Delivered | None:
        """Send it.  Raise core.errors.TransientError (with retry_after) to be retried."""
        ...


async def emit(
    session: AsyncSession,
    *,
    ctx: Core,
    kind: str,
    dedupe_key: str,
    project_id: int | None = None,
    app_id: int | None = None,
    deployment_id: int | None = None,
    preview_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> models.Event | None:
    """Record an event once; returns None when an event with this dedupe key already exists."""
    if await session.scalar(select(models.Event.id).where(models.Event.dedupe_key == dedupe_key)):
        return None
    row = models.Event(
        kind=kind,
        dedupe_key=dedupe_key,
        project_id=project_id,
        app_id=app_id,
        deployment_id=deployment_id,
        preview_id=preview_id,
        payload=payload or {},
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        return None
    # Serialise each notifier's deliveries per deployment so a card is posted before it is updated.
    subject = f"d{deployment_id}" if deployment_id else f"p{preview_id}" if preview_id else f"a{app_id}"
    audience: Audience | None = None
    for name, notifier in ctx.notifiers.items():
        if not notifier.wants(kind):
            continue
        # Optional finer filter, so that no job is queued for a delivery that would do nothing.
        wants_event = getattr(notifier, "wants_event", None)
        if wants_event is not None:
            if audience is None:
                audience = await _audience(session, kind=kind, project_id=project_id, deployment_id=deployment_id,
                                           preview_id=preview_id)  # fmt: skip
            if not wants_event(audience):
                continue
        await jobs.enqueue(
            session,
            kind=NOTIFY_JOB,
            payload={"event_id": row.id, "notifier": name},
            dedupe_key=f"notify:{name}:{row.id}",
            concurrency_key=f"notify:{name}:{subject}",
            max_attempts=10,
            fresh=True,
        )
    return row


async def _audience(
    session: AsyncSession,
    *,
    kind: str,
    project_id: int | None,
    deployment_id: int | None,
    preview_id: int | None,
) -> Audience:
    project = await session.get(models.Project, project_id) if project_id else None
    deployment = await session.get(models.Deployment, deployment_id) if deployment_id else None
    return Audience(
        kind=kind,
        project=ProjectView(
            id=project.id,
            name=project.name,
            slack_channel=project.slack_channel,
            webhook_url=project.webhook_url,
        )
        if project
        else None,
        trigger=deployment.trigger if deployment else None,
        git_sha=deployment.git_sha if deployment else None,
        preview=bool(preview_id or (deployment is not None and deployment.preview_id)),
    )


async def emit_for_deployment(
    session: AsyncSession,
    *,
    ctx: Core,
    kind: str,
    deployment: models.Deployment,
    project_id: int | None,
    step: str,
    payload: dict[str, Any] | None = None,
) -> models.Event | None:
    """`emit` for a deploy's own events: one per deploy and `step` (requested, started, final...)."""
    return await emit(
        session,
        ctx=ctx,
        kind=kind,
        dedupe_key=f"deploy:{deployment.id}:{step}",
        project_id=project_id,
        app_id=deployment.app_id,
        deployment_id=deployment.id,
        preview_id=deployment.preview_id,
        payload=payload,
    )


async def queue_position(session: AsyncSession, *, deployment: models.Deployment) -> int | None:
    if deployment.status != "queued":
        return None
    ahead = await session.scalar(
        select(func.count())
        .select_from(models.Deployment)
        .where(
            models.Deployment.app_id == deployment.app_id,
            models.Deployment.namespace == deployment.namespace,
            models.Deployment.status.in_(["queued", "running"]),
            models.Deployment.id < deployment.id,
        )
    )
    return int(ahead or 0) + 1


async def deployment_view(session: AsyncSession, *, deployment: models.Deployment) -> DeploymentView:
    revision = await session.get(models.Revision, deployment.revision_id) if deployment.revision_id else None
    rollback = (
        await session.get(models.Deployment, deployment.rolled_back_by_id)
        if deployment.rolled_back_by_id
        else None
    )
    return DeploymentView(
        rolled_back_by=rollback.id if rollback else None,
        rolled_back_to=rollback.revision_number if rollback else None,
        rollback_status=rollback.status if rollback else None,
        id=deployment.id,
        status=deployment.status,
        trigger=deployment.trigger,
        actor=deployment.actor,
        image=deployment.image,
        revision=revision.number if revision else deployment.revision_number,
        namespace=deployment.namespace,
        error=deployment.error,
        logs=list(deployment.logs or []),
        ready=deployment.ready,
        desired=deployment.desired,
        queue_position=await queue_position(session, deployment=deployment),
        approved_by=deployment.approved_by,
        git_sha=deployment.git_sha,
        git_ref=deployment.git_ref,
        created_at=deployment.created_at,
        started_at=deployment.started_at,
        finished_at=deployment.finished_at,
        refs=dict(deployment.notify_refs or {}),
        digest=_str_or_none(revision.snapshot.get("digest")) if revision and revision.snapshot else None,
        digest_note=_str_or_none(revision.snapshot.get("digest_note"))
        if revision and revision.snapshot
        else None,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def app_view(app: models.App, *, cluster_name: str) -> AppView:
    return AppView(
        id=app.id,
        name=app.name,
        namespace=app.namespace,
        cluster=cluster_name,
        image=app.image,
        protected=app.protected,
        auto_deploy_paused=app.auto_deploy_paused,
        paused_reason=app.paused_reason,
        git_repo=app.git_repo,
        github_environment=app.github_environment,
        domain=app.domain,
    )


async def _with_environments(session: AsyncSession, *, app: models.App, view: AppView) -> AppView:
    following = await environment_admin.next_after(session, app=app)
    return dataclasses.replace(
        view,
        environment=(await environments.of_app(session, app=app)).name,
        next_environment=following.name if following else None,
    )


def preview_view(preview: models.Preview) -> PreviewView:
    return PreviewView(
        id=preview.id,
        pr_number=preview.pr_number,
        repo=preview.repo,
        head_sha=preview.head_sha,
        namespace=preview.namespace,
        url=preview.url,
        status=preview.status,
        comment_id=preview.comment_id,
        head_repo=preview.head_repo,
        is_fork=bool(preview.is_fork),
        approved_by=preview.approved_by,
    )


async def build_notice(session: AsyncSession, *, event: models.Event) -> Notice:
    project = await session.get(models.Project, event.project_id) if event.project_id else None
    app = await session.get(models.App, event.app_id) if event.app_id else None
    cluster = await session.get(models.Cluster, app.cluster_id) if app else None
    deployment = await session.get(models.Deployment, event.deployment_id) if event.deployment_id else None
    preview_id = event.preview_id or (deployment.preview_id if deployment else None)
    preview = await session.get(models.Preview, preview_id) if preview_id else None
    return Notice(
        event_id=event.id,
        kind=event.kind,
        created_at=event.created_at,
        payload=dict(event.payload or {}),
        project=ProjectView(
            id=project.id,
            name=project.name,
            slack_channel=project.slack_channel,
            webhook_url=project.webhook_url,
        )
        if project
        else None,
        app=await _with_environments(
            session, app=app, view=app_view(app, cluster_name=cluster.name if cluster else "")
        )
        if app
        else None,
        deployment=await deployment_view(session, deployment=deployment) if deployment else None,
        preview=preview_view(preview) if preview else None,
    )


async def run_notify_job(*, ctx: Core, job: jobs.JobView) -> None:
    """Job handler: deliver one event to one notifier, then remember what it returned."""
    name = str(job.payload["notifier"])
    notifier = ctx.notifiers.get(name)
    if notifier is None:
        log.warning("notify job %s: notifier %s is not configured in this process; dropped", job.id, name)
        return
    async with ctx.sessionmaker() as session:
        event = await session.get(models.Event, int(job.payload["event_id"]))
        if event is None:
            return
        notice = await build_notice(session, event=event)
    with observe.span(f"notify {name}", notifier=name, event=notice.kind, deploy_id=event.deployment_id):
        delivered = await notifier.deliver(notice)
    if delivered is None:
        return
    async with ctx.sessionmaker.begin() as session:
        if delivered.deployment_refs is not None and notice.deployment is not None:
            deployment = await session.get(models.Deployment, notice.deployment.id)
            if deployment is not None:
                refs = dict(deployment.notify_refs or {})
                refs[name] = {**refs.get(name, {}), **delivered.deployment_refs}
                deployment.notify_refs = refs
        if delivered.preview_comment_id is not None and notice.preview is not None:
            preview = await session.get(models.Preview, notice.preview.id)
            if preview is not None:
                preview.comment_id = delivered.preview_comment_id
