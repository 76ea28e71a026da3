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
import logging
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import instance_state

from core import dialects, environment_admin, environments, jobs, observe, protection, readcache
from core.context import Core
from core.errors import Deferred, PermanentError, TransientError
from core.notices import (
    BUILD_KINDS,
    AppView,
    Audience,
    BuildView,
    Delivered,
    DeploymentView,
    Notice,
    Notifier,
    PreviewView,
    ProjectView,
    TargetView,
    project_view,
    ref_key,
)
from core.notices import targets as notice_targets
from storage import models

log = logging.getLogger(__name__)
_Row = TypeVar("_Row", bound=models.Base)

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
PREVIEW_BUILDING = "preview.building"  # an app that builds from source: the head commit is being built
PREVIEW_BUILD_FAILED = "preview.build_failed"  # ... and its build failed: nothing deployed
# `.deploy to ENV` waited for a build that failed (or was refused once built): the PR is told why.
PR_COMMAND_NOT_DEPLOYED = "pr_command.not_deployed"
APP_PAUSED = "app.paused"
APP_RESUMED = "app.resumed"
APP_PROTECTION_CHANGED = "app.protection_changed"

NOTIFY_JOB = jobs.NOTIFY_KIND

# The view types moved to core.notices; named here too for the code that reads them as events.X.
__all__ = [
    "AppView",
    "Audience",
    "BuildView",
    "Delivered",
    "DeploymentView",
    "Notice",
    "Notifier",
    "PreviewView",
    "ProjectView",
    "TargetView",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NewEvent:
    """One event to record: `emit_all` writes several in one statement."""

    kind: str
    dedupe_key: str
    project_id: int | None = None
    app_id: int | None = None
    deployment_id: int | None = None
    preview_id: int | None = None
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)


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
) -> int | None:
    """Record an event once; its id, or None when an event with this dedupe key already exists."""
    new = NewEvent(
        kind=kind, dedupe_key=dedupe_key, project_id=project_id, app_id=app_id,
        deployment_id=deployment_id, preview_id=preview_id, payload=payload or {},
    )  # fmt: skip
    return (await emit_all(session, ctx=ctx, events=[new]))[0]


async def emit_all(session: AsyncSession, *, ctx: Core, events: list[NewEvent]) -> list[int | None]:
    """Record each event once, all in one statement; per event the id of its row, or None when its
    dedupe key was already taken.  Notify jobs are queued only for the events actually inserted."""
    if not events:
        return []
    # One statement (issue 13): insert each row unless its dedupe key is taken, and get the inserted
    # rows back.  It replaces, per event, a look-up, a savepoint, the insert and the release.
    now = models.utcnow()
    values = [
        {
            "kind": e.kind,
            "dedupe_key": e.dedupe_key,
            "project_id": e.project_id,
            "app_id": e.app_id,
            "deployment_id": e.deployment_id,
            "preview_id": e.preview_id,
            "payload": e.payload,
            "created_at": now,
        }
        for e in events
    ]
    # Executed with a list of rows: SQLAlchemy's "insertmanyvalues" writes them as one multi-row
    # INSERT, from a statement built once and compiled once per dialect (a `.values([...])` statement
    # is compiled at every request: its cache key would hold the values).  A Core statement (no
    # autoflush, no ORM objects): the notify and deploy jobs added so far stay pending, to be written
    # together, and the callers need only the ids.
    stmt = _INSERT_EVENT[dialects.is_postgres(session)]
    # RETURNING lists only the rows inserted, in no promised order: matched by dedupe key.
    inserted = {key: id_ for id_, key in await session.execute(stmt, values)}
    ids = [inserted.get(e.dedupe_key) for e in events]
    if ctx.notifiers:
        shared = _Shared()
        for e, event_id in zip(events, ids, strict=True):
            if event_id is not None:
                await _queue_notifications(session, ctx=ctx, event=e, event_id=event_id, shared=shared)
    return ids


@dataclasses.dataclass
class _Shared:
    """What the events of one `emit_all` look up alike, read once for all of them (issue 13: a batch
    of pushes emits two events a push, all of one project and app).  Nothing is written between
    them, so each answer holds for every event."""

    projects: dict[int, ProjectView] = dataclasses.field(default_factory=dict)
    environments: dict[int, str | None] = dataclasses.field(default_factory=dict)  # app id -> its environment
    targets: dict[int | None, list[models.NotificationTarget]] = dataclasses.field(default_factory=dict)
    wanted: dict[str, list[tuple[str, Notifier]]] = dataclasses.field(default_factory=dict)  # by kind
    # (project id, notifier, kind, environment) -> where `notice_targets.route` sends such an event
    routes: dict[tuple[Any, ...], list[TargetView | None]] = dataclasses.field(default_factory=dict)


def _insert_event(upsert: Any) -> Any:
    table = models.Event.__table__
    stmt = upsert(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
    return stmt.returning(table.c.id, table.c.dedupe_key)


# Keyed by "is it PostgreSQL" (the other dialect is SQLite).
_INSERT_EVENT = {True: _insert_event(postgresql_insert), False: _insert_event(sqlite_insert)}


async def _queue_notifications(
    session: AsyncSession, *, ctx: Core, event: NewEvent, event_id: int, shared: _Shared
) -> None:
    kind, project_id, app_id = event.kind, event.project_id, event.app_id
    deployment_id, preview_id = event.deployment_id, event.preview_id
    wanted = shared.wanted.get(kind)
    if wanted is None:
        wanted = shared.wanted[kind] = [(name, n) for name, n in ctx.notifiers.items() if n.wants(kind)]
    if not wanted:
        return
    deployment = None
    if not app_id and deployment_id:
        deployment = await _held(session, models.Deployment, deployment_id)
    of_app = app_id or (deployment.app_id if deployment else None)
    if of_app is not None and of_app in shared.environments:
        environment = shared.environments[of_app]
    else:
        environment = await _environment(session, app_id=of_app)
        if of_app is not None:
            shared.environments[of_app] = environment
    rows = shared.targets.get(project_id)
    if rows is None:
        rows = shared.targets[project_id] = await notice_targets.of_project(session, project_id=project_id)
    # Where each notifier sends it; the audience is built only for an event that goes somewhere.
    routed = []
    for name, notifier in wanted:
        key = (project_id, name, kind, environment)
        targets = shared.routes.get(key)
        if targets is None:
            targets = shared.routes[key] = notice_targets.route(
                rows, notifier=name, kind=kind, environment=environment
            )
        if targets:
            routed.append((name, notifier, targets))
    if not routed:
        return
    if deployment is None and deployment_id:
        deployment = await _held(session, models.Deployment, deployment_id)
    audience = await _audience(
        session, kind=kind, project_id=project_id, deployment=deployment, preview_id=preview_id,
        environment=environment, shared=shared,
    )  # fmt: skip
    # Serialise each notifier's deliveries per target and deployment so a card is posted before it is
    # updated; each target has its own jobs, so a slow or dead target never holds up another.
    subject = _subject(event)
    for name, notifier, targets in routed:
        for target in targets:
            if not notifier.wants_event(dataclasses.replace(audience, target=target)):
                continue
            tag = f"t{target.id}" if target is not None else "t0"
            jobs.enqueue_fresh(
                session,
                kind=NOTIFY_JOB,
                payload={"event_id": event_id, "notifier": name, "target": target.id if target else None},
                dedupe_key=f"notify:{name}:{event_id}:{tag}",
                concurrency_key=f"notify:{name}:{tag}:{subject}",
                max_attempts=10,
            )


def _subject(event: NewEvent) -> str:
    """What an event's notify jobs are serialised by: its build (a build's events share one line,
    whether or not the build got a deploy: its Slack card), else its deploy, preview or app."""
    if event.kind in BUILD_KINDS and event.payload.get("build") is not None:
        return f"b{event.payload['build']}"
    if event.deployment_id:
        return f"d{event.deployment_id}"
    return f"p{event.preview_id}" if event.preview_id else f"a{event.app_id}"


async def _audience(
    session: AsyncSession,
    *,
    kind: str,
    project_id: int | None,
    deployment: models.Deployment | None,
    preview_id: int | None,
    environment: str | None,
    shared: _Shared,
) -> Audience:
    view = shared.projects.get(project_id) if project_id else None
    if project_id and view is None:
        project = await _held(session, models.Project, project_id)
        if project is not None:
            view = shared.projects[project_id] = project_view(project)
    return Audience(
        kind=kind,
        project=view,
        trigger=deployment.trigger if deployment else None,
        git_sha=deployment.git_sha if deployment else None,
        preview=bool(preview_id or (deployment is not None and deployment.preview_id)),
        refs=dict(deployment.notify_refs or {}) if deployment else {},
        environment=environment,
    )


async def _held(session: AsyncSession, cls: type[_Row], id_: int) -> _Row | None:
    """`session.get` of a row the session holds, loaded and current, without its trip through the
    async bridge (issue 13: a batch of pushes' events read their deploy, app and project ~6 times
    a push); anything else goes through `session.get`."""
    held: _Row | None = session.sync_session.identity_map.get(
        readcache.mapper_of(cls).identity_key_from_primary_key((id_,))
    )
    if held is not None and not instance_state(held).expired_attributes:
        return held
    return await session.get(cls, id_)


async def _environment(session: AsyncSession, *, app_id: int | None) -> str | None:
    """The name of the environment an app runs in: what targets are routed by."""
    app = await _held(session, models.App, app_id) if app_id else None
    return (await environments.of_app(session, app=app)).name if app is not None else None


async def emit_for_deployment(
    session: AsyncSession,
    *,
    ctx: Core,
    kind: str,
    deployment: models.Deployment,
    project_id: int | None,
    step: str,
    payload: dict[str, Any] | None = None,
) -> int | None:
    """`emit` for a deploy's own events: one per deploy and `step` (requested, started, final...)."""
    new = of_deployment(kind=kind, deployment=deployment, project_id=project_id, step=step, payload=payload)
    return (await emit_all(session, ctx=ctx, events=[new]))[0]


def of_deployment(
    *,
    kind: str,
    deployment: models.Deployment,
    project_id: int | None,
    step: str,
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    """A deploy's own event, one per deploy and `step`, to pass to `emit_all` with others."""
    return of_deploy(
        kind=kind, deployment_id=deployment.id, app_id=deployment.app_id, preview_id=deployment.preview_id,
        project_id=project_id, step=step, payload=payload,
    )  # fmt: skip


def of_deploy(
    *,
    kind: str,
    deployment_id: int,
    app_id: int,
    preview_id: int | None,
    project_id: int | None,
    step: str,
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    """`of_deployment` from the deploy's ids, for a caller that holds them (no row attributes read)."""
    return NewEvent(
        kind=kind,
        dedupe_key=f"deploy:{deployment_id}:{step}",
        project_id=project_id,
        app_id=app_id,
        deployment_id=deployment_id,
        preview_id=preview_id,
        payload=payload or {},
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


async def deployment_view(
    session: AsyncSession,
    *,
    deployment: models.Deployment,
    revision: models.Revision | None = None,
    position: int | None = None,
) -> DeploymentView:
    """The deployment's read model with everything it shows: digest, rollback, approvals, queue place.

    `revision`: its revision when the caller holds it already (a request just wrote it), not read again;
    `position`: its place in the queue when the caller knows it already (a request learnt it), not counted.
    """
    if revision is None or revision.id != deployment.revision_id:
        revision = (
            await session.get(models.Revision, deployment.revision_id) if deployment.revision_id else None
        )
    rollback = (
        await session.get(models.Deployment, deployment.rolled_back_by_id)
        if deployment.rolled_back_by_id
        else None
    )
    return deployment_view_of(
        deployment,
        revision=revision,
        rollback=rollback,
        tally=await protection.tally(session, deployment=deployment),
        queue_position=position
        if position is not None and deployment.status == "queued"
        else await queue_position(session, deployment=deployment),
    )


def deployment_view_of(
    deployment: models.Deployment,
    *,
    revision: models.Revision | None = None,
    rollback: models.Deployment | None = None,
    tally: protection.Tally | None = None,
    queue_position: int | None = None,
) -> DeploymentView:
    """The one mapping of a deployment row to its read model, from what the caller has loaded.

    Without `revision` (or with another one) there is no digest and the row's own revision number;
    without `tally` no approval counts: a list reads many rows and loads only what it shows.
    """
    own = revision if revision is not None and revision.id == deployment.revision_id else None
    snapshot = (own.snapshot or {}) if own is not None else {}
    return DeploymentView(
        approvals=tally.approvals if tally else None,
        approvals_needed=tally.needed if tally else None,
        approvers=tally.approvers if tally else (),
        rolled_back_by=deployment.rolled_back_by_id,
        rolled_back_to=rollback.revision_number if rollback else None,
        rollback_status=rollback.status if rollback else None,
        id=deployment.id,
        status=deployment.status,
        trigger=deployment.trigger,
        actor=deployment.actor,
        image=deployment.image,
        revision=own.number if own is not None else deployment.revision_number,
        namespace=deployment.namespace,
        error=deployment.error,
        logs=list(deployment.logs or []),
        ready=deployment.ready,
        desired=deployment.desired,
        queue_position=queue_position,
        approved_by=deployment.approved_by,
        rejected_by=protection.rejected_by(deployment),
        git_sha=deployment.git_sha,
        git_ref=deployment.git_ref,
        created_at=deployment.created_at,
        started_at=deployment.started_at,
        finished_at=deployment.finished_at,
        refs=dict(deployment.notify_refs or {}),
        digest=_str_or_none(snapshot.get("digest")),
        digest_note=_str_or_none(snapshot.get("digest_note")),
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
        environments=len(await environments.list_for(session, project_id=app.project_id)),
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


async def build_notice(
    session: AsyncSession, *, event: models.Event, target: TargetView | None = None, attempt: int = 1
) -> Notice:
    # Project, app and cluster change rarely: the read cache's copies (one stamp read per job, which
    # the environments' look-ups below need anyway) instead of three statements a job (issue 13).
    project = await readcache.get(session, models.Project, event.project_id) if event.project_id else None
    app = await readcache.get(session, models.App, event.app_id) if event.app_id else None
    cluster = await readcache.get(session, models.Cluster, app.cluster_id) if app else None
    deployment, revision = (
        await _deployment_and_revision(session, deployment_id=event.deployment_id)
        if event.deployment_id
        else (None, None)
    )
    preview_id = event.preview_id or (deployment.preview_id if deployment else None)
    preview = await session.get(models.Preview, preview_id) if preview_id else None
    return Notice(
        event_id=event.id,
        kind=event.kind,
        created_at=event.created_at,
        payload=dict(event.payload or {}),
        project=project_view(project) if project else None,
        app=await _with_environments(
            session, app=app, view=app_view(app, cluster_name=cluster.name if cluster else "")
        )
        if app
        else None,
        deployment=await deployment_view(session, deployment=deployment, revision=revision)
        if deployment
        else None,
        preview=preview_view(preview) if preview else None,
        target=target,
        environment=(await environments.of_app(session, app=app)).name if app else None,
        attempt=attempt,
        build=await _build_view(session, event=event) if event.kind in BUILD_KINDS else None,
    )


async def _build_view(session: AsyncSession, *, event: models.Event) -> BuildView | None:
    """The build a build event is about, as it is now; from the event's payload if the row is gone."""
    p = dict(event.payload or {})
    if not isinstance(p.get("build"), int):
        return None
    row = await session.get(models.Build, p["build"])
    if row is not None:
        return BuildView(
            id=row.id, runs=row.runs, sha=row.sha, ref=row.ref, actor=row.actor, status=row.status,
            image=row.image, digest=row.digest, error=row.error, deployment_id=row.deployment_id,
            pr_number=row.pr_number,
        )  # fmt: skip
    return BuildView(
        id=p["build"], runs=0, sha=str(p.get("sha") or ""), ref=str(p.get("ref") or ""),
        actor=str(p.get("actor") or ""), status=str(p.get("status") or "?"), image="",
        digest=p.get("digest") if isinstance(p.get("digest"), str) else None,
        error=p.get("error") if isinstance(p.get("error"), str) else None, deployment_id=None,
        pr_number=None,
    )  # fmt: skip


async def _deployment_and_revision(
    session: AsyncSession, *, deployment_id: int
) -> tuple[models.Deployment | None, models.Revision | None]:
    """The deployment a notice is about and its revision, in one statement (a notify job read them
    one after the other)."""
    row = (await session.execute(_DEPLOYMENT_AND_REVISION, {"deployment_id": deployment_id})).first()
    return (row[0], row[1]) if row is not None else (None, None)


_DEPLOYMENT_AND_REVISION = (
    select(models.Deployment, models.Revision)
    .outerjoin(models.Revision, models.Revision.id == models.Deployment.revision_id)
    .where(models.Deployment.id == bindparam("deployment_id"))
)


async def run_notify_job(*, ctx: Core, job: jobs.JobView) -> None:
    """Job handler: deliver one event to one target of one notifier, then remember what it returned.

    The target's delivery state (last success or failure and why, consecutive failures) is kept on
    its row; a target failing again and again is marked failing and retried less often.
    """
    name = str(job.payload["notifier"])
    notifier = ctx.notifiers.get(name)
    if notifier is None:
        log.warning("notify job %s: notifier %s is not configured in this process; dropped", job.id, name)
        return
    target_id = job.payload.get("target")
    async with ctx.sessionmaker() as session:
        event = await session.get(models.Event, int(job.payload["event_id"]))
        if event is None:
            return
        target = None
        if target_id is not None:
            target = await notice_targets.view(session, target_id=int(target_id))
            if target is None:
                return  # removed since: nothing to send
        notice = await build_notice(session, event=event, target=target, attempt=job.attempts)
    with observe.span(f"notify {name}", notifier=name, event=notice.kind, deploy_id=event.deployment_id):
        try:
            delivered = await notifier.deliver(notice)
        except Deferred:
            raise  # paced, not failed: the target's state stays as it is (and no write for it)
        except (TransientError, PermanentError) as e:
            failures = await notice_targets.record(ctx.sessionmaker, target=target, error=str(e))
            if isinstance(e, TransientError) and failures >= notice_targets.FAILING_AFTER:
                wait = max(e.retry_after or 0.0, notice_targets.FAILING_RETRY_SECONDS)
                raise TransientError(str(e), retry_after=wait) from None
            raise
        except Exception as e:
            await notice_targets.record(
                ctx.sessionmaker, target=target, error=f"internal error: {type(e).__name__}"
            )
            raise
    await notice_targets.record(ctx.sessionmaker, target=target, error=None)
    if delivered is None or (not delivered.deployment_refs and delivered.preview_comment_id is None):
        return  # nothing to remember: no transaction
    key = ref_key(name, target)
    async with ctx.sessionmaker.begin() as session:
        if delivered.deployment_refs is not None and notice.deployment is not None:
            deployment = await session.get(models.Deployment, notice.deployment.id)
            if deployment is not None:
                refs = dict(deployment.notify_refs or {})
                refs[key] = {**refs.get(key, {}), **delivered.deployment_refs}
                deployment.notify_refs = refs
        if delivered.preview_comment_id is not None and notice.preview is not None:
            preview = await session.get(models.Preview, notice.preview.id)
            if preview is not None:
                preview.comment_id = delivered.preview_comment_id
