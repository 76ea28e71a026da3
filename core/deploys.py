"""Deploys, revisions and rollbacks: the life of a deploy (DESIGN.md section 3).

`request` does everything a channel needs in the caller's transaction (revision,
deployment, job, events, audit) and nothing slow, so channels answer at once.
`run_job` is the worker side: render, apply, watch.  It is written to be run
again after a crash: every step is idempotent and events are deduplicated, so a
resumed deploy ends exactly once with one set of notifications.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    audit,
    claims,
    clusters,
    events,
    identities,
    identity,
    jobs,
    logctx,
    metrics,
    observe,
    protection,
    registries,
    secrets,
    validation,
)
from core import revisions as snapshots  # `revisions` is this module's list of an app's revisions
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor, Role
from core.kube.applying import NamespaceOrigin
from core.kube.client import Kube
from core.kube.rules import RolloutProgress
from core.kube.spec import Autoscaling, HealthCheck, IngressSpec, Resources, WorkloadSpec
from storage import models

log = logging.getLogger(__name__)

QUEUED = "queued"
AWAITING_APPROVAL = "awaiting_approval"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
SUPERSEDED = "superseded"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, SUPERSEDED, CANCELLED)
PENDING = (QUEUED, AWAITING_APPROVAL)

AUTO_ROLLBACK = "auto-rollback"
TRIGGERS = (
    "api",
    "cli",
    "web",
    "slack",
    "push",
    "pr",
    "rollback",
    "scale",
    "config",
    "promote",
    "registry",
    AUTO_ROLLBACK,
)
ROLLBACK_TRIGGERS = ("rollback", AUTO_ROLLBACK)
DEPLOY_JOB = "deploy"


def workload_spec(
    *,
    ctx: Core,
    app_name: str,
    project: str,
    namespace: str,
    revision: int,
    snapshot: snapshots.Snapshot,
    secret_data: dict[str, str],
    secret_checksum: str,
    preview: models.Preview | None = None,
    preview_env: dict[str, str] | None = None,
) -> WorkloadSpec:
    """What the adapter applies, rendered from a revision's snapshot and nothing else."""
    snap = snapshot
    scaling = snap.autoscaling
    domain = snap.domain
    env = dict(snap.env)
    replicas = snap.replicas
    labels: dict[str, str] = {}
    if preview is not None:
        # Previews are small and short-lived: one replica, no HPA, their own host.
        env.update(preview_env or {})
        replicas, scaling = 1, None
        domain = preview.url.split("://", 1)[-1].split("/", 1)[0] if preview.url else None
        labels["shipit.dev/preview"] = str(preview.pr_number)
    ingress = None
    if domain:
        ingress = IngressSpec(
            host=domain,
            ingress_class=snap.ingress_class or ctx.config.default_ingress_class,
            tls_cluster_issuer=snap.tls_issuer or ctx.config.default_tls_issuer,
        )
    r, h = snap.resources, snap.health
    return WorkloadSpec(
        app=app_name,
        project=project,
        namespace=namespace,
        revision=revision,
        image=snap.image_ref,
        replicas=replicas,
        port=snap.port,
        env=env,
        secret_data=secret_data,
        secret_checksum=secret_checksum,
        resources=Resources(
            cpu_request=r.cpu_request,
            cpu_limit=r.cpu_limit,
            memory_request=r.memory_request,
            memory_limit=r.memory_limit,
        ),
        health=HealthCheck(
            path=h.path,
            port=h.port,
            initial_delay_seconds=h.initial_delay_seconds,
            period_seconds=h.period_seconds,
        )
        if h
        else None,
        autoscaling=Autoscaling(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            cpu_target_percent=scaling.cpu_target_percent,
        )
        if scaling
        else None,
        ingress=ingress,
        progress_deadline_seconds=snap.progress_deadline_seconds,
        extra_labels=labels,
        release_command=snap.release_command or None,
    )


@dataclass(frozen=True, kw_only=True)
class Requested:
    deployment: models.Deployment
    created: bool  # False when the dedupe key matched an earlier request
    # Held so the channel's answer finds them in the session (its identity map is weak): no re-read.
    app: models.App | None = None
    project: models.Project | None = None


async def _next_revision_number(session: AsyncSession, *, app_id: int) -> int:
    top = await session.scalar(
        select(func.max(models.Deployment.revision_number)).where(models.Deployment.app_id == app_id)
    )
    return int(top or 0) + 1


async def _lock_app(session: AsyncSession, *, app: models.App) -> None:
    # Serialises revision numbering per app on PostgreSQL; SQLite transactions are already serial
    # (BEGIN IMMEDIATE), so there the statement would only cost a round trip.
    if session.get_bind().dialect.name == "sqlite":
        return
    await session.execute(select(models.App.id).where(models.App.id == app.id).with_for_update())


async def request(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    image: str | None = None,
    trigger: str,
    dedupe_key: str | None = None,
    git_sha: str | None = None,
    git_ref: str | None = None,
    preview: models.Preview | None = None,
    snapshot: snapshots.Snapshot | None = None,
    rollback_of: int | None = None,
    reason: str | None = None,
    rerun: models.Revision | None = None,
    notify_refs: dict[str, Any] | None = None,
    override_window: bool = False,
    env: str | None = None,
) -> Requested:
    """Queue a deploy of `app_name`, optionally with a new image (or just a tag: `1.5`).

    The deploy is a candidate: the app's settings (apps.image and the rest) and its current revision
    move only when the rollout succeeds.  `rerun` deploys an existing revision again as it is (the
    automatic rollback to the current revision) instead of writing a new one.
    """
    # The role check comes before anything else, the dedupe key included: an earlier answer is only
    # ever returned to someone allowed to deploy this very app.
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    # Held for the whole request: the session's identity map is weak, and the events emitted below
    # would read the project again once `authorize` let go of it (issue 13: statements per request).
    project = await apps.project_of(session, app=app)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="deploying")
    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger must be one of {', '.join(TRIGGERS)}", field="trigger")
    if git_ref is not None:
        # Shown and matched by prefix only (refs/tags/...): a ref longer than the column is cut, not refused.
        git_ref = git_ref[: validation.limit(models.Deployment, "git_ref")]
    if dedupe_key is not None:
        dedupe_key = validation.dedupe_key(dedupe_key)
        earlier = await session.scalar(
            select(models.Deployment).where(models.Deployment.dedupe_key == dedupe_key)
        )
        if earlier is not None:
            if earlier.app_id != app.id:
                # Says nothing about what the key was used for.
                raise Conflict("this idempotency key was already used for another request; use a new one")
            return Requested(deployment=earlier, created=False)
    automatic = trigger == AUTO_ROLLBACK
    if app.locked_reason and preview is None and not automatic:
        raise Conflict(f"{app.name} is locked by {app.locked_by}: {app.locked_reason}. Unlock it first.")
    # The environment's and project's locks, windows and freezes; how many approvals it will need.
    gate = await protection.check_request(
        session, actor=actor, app=app, trigger=trigger, preview=preview is not None, automatic=automatic,
        rollback=trigger in ROLLBACK_TRIGGERS or rollback_of is not None, override_window=override_window,
        default_ttl_seconds=ctx.config.approval_ttl_seconds,
    )  # fmt: skip
    # Only into a namespace the project owns, checked at every deploy (rollbacks and previews too).
    await claims.check_owned(
        session,
        cluster_id=app.cluster_id,
        namespace=preview.namespace if preview else app.namespace,
        project_id=app.project_id,
    )
    await _lock_app(session, app=app)

    if rerun is not None:
        revision = rerun
        number = rerun.number
    else:
        if snapshot is None:
            # Built on the app's settings, which follow its current (good) revision: never on a failed one.
            await secrets.ensure_version(session, ctx=ctx, app=app)
            if image is not None:  # "" is refused, not read as "redeploy as is"
                new_image = validation.requested_image(image, current=app.image)
            elif preview is None:
                # A scale or config change while a deploy is on its way keeps that deploy's image
                # (it would otherwise undo it); if that rollout fails, the rollback supersedes this.
                new_image = await _image_on_its_way(session, app=app) or app.image or ""
            else:
                new_image = app.image or ""
            if not new_image:
                raise InvalidInput(
                    f"{app.name} has no image yet: give one, like ghcr.io/acme/web:1.4", field="image"
                )
            snapshot = snapshots.from_app(app).replace(image=new_image)
        _, checksum = await secrets.for_deploy(
            session, ctx=ctx, app_id=app.id, version=snapshot.secrets_version
        )
        number = await _next_revision_number(session, app_id=app.id)
        revision = models.Revision(
            app_id=app.id,
            number=number,
            image=snapshot.image,
            snapshot=snapshot.to_json(),
            secret_checksum=checksum,
            secrets_version=snapshot.secrets_version,
            source="rollback" if rollback_of else ("preview" if preview else "deploy"),
            rollback_of=rollback_of,
            created_by=actor.subject,
        )
        session.add(revision)
        await session.flush()

    namespace = preview.namespace if preview else app.namespace
    # An automatic rollback redeploys what was already approved and ran: it does not wait.
    needs_approval = gate.needs_approval and preview is None and not automatic
    deployment = models.Deployment(
        app_id=app.id,
        revision_id=revision.id,
        revision_number=number,
        image=revision.image,
        preview_id=preview.id if preview else None,
        namespace=namespace,
        trigger=trigger,
        actor=actor.subject,
        status=AWAITING_APPROVAL if needs_approval else QUEUED,
        dedupe_key=dedupe_key,
        git_sha=git_sha,
        git_ref=git_ref,
        approval_expires_at=models.utcnow() + dt.timedelta(seconds=gate.approval_ttl_seconds)
        if needs_approval
        else None,
        logs=[],
        # Set before the queued event is emitted, so notifiers can tell whom to report to (a PR comment).
        notify_refs=dict(notify_refs or {}),
    )
    session.add(deployment)
    await session.flush()

    await _supersede_older(session, ctx=ctx, deployment=deployment)
    if deployment.status == QUEUED:
        await _enqueue(session, deployment=deployment)
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_AWAITING_APPROVAL if needs_approval else events.DEPLOY_QUEUED,
        deployment=deployment,
        project_id=app.project_id,
        step="requested",
        payload={"reason": reason} if reason else {},
    )
    await audit.record(
        session,
        actor=actor,
        action="deploy.rollback" if rollback_of or automatic else "deploy.request",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "deployment": deployment.id,
            "revision": number,
            "image": revision.image,
            "trigger": trigger,
            "namespace": namespace,
            **({"rollback_of": rollback_of} if rollback_of else {}),
            **({"git_sha": git_sha} if git_sha else {}),
        },
    )
    await protection.record_override(session, actor=actor, app=app, gate=gate, deployment_id=deployment.id)
    if rerun is not None or number > ctx.config.revisions_kept:  # else fewer revisions than kept
        await _prune_revisions(session, ctx=ctx, app_id=app.id)
    logctx.deploy_logger(log, deployment=deployment.id, app=app.name, namespace=namespace).info(
        "queued: revision=%s image=%s trigger=%s actor=%s status=%s",
        number, revision.image, trigger, actor.subject, deployment.status,
    )  # fmt: skip
    return Requested(deployment=deployment, created=True, app=app, project=project)


async def _image_on_its_way(session: AsyncSession, *, app: models.App) -> str | None:
    """The image of the newest queued or running deploy of the app (not one waiting for approval)."""
    return await session.scalar(
        select(models.Deployment.image)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.namespace == app.namespace,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status.in_((QUEUED, RUNNING)),
            models.Deployment.trigger != AUTO_ROLLBACK,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def _enqueue(session: AsyncSession, *, deployment: models.Deployment) -> None:
    await jobs.enqueue(
        session,
        kind=DEPLOY_JOB,
        payload={"deployment_id": deployment.id},
        dedupe_key=f"deploy:{deployment.id}",
        concurrency_key=f"deploy:{deployment.app_id}:{deployment.namespace}",
        max_attempts=6,
        fresh=True,  # the key names a deployment inserted in this transaction: it cannot exist yet
    )


async def _supersede_older(session: AsyncSession, *, ctx: Core, deployment: models.Deployment) -> None:
    """A newer deploy of the same target replaces older ones that have not started."""
    older = list(
        await session.scalars(
            select(models.Deployment).where(
                models.Deployment.app_id == deployment.app_id,
                models.Deployment.namespace == deployment.namespace,
                models.Deployment.status.in_(PENDING),
                models.Deployment.id < deployment.id,
            )
        )
    )
    app = await session.get(models.App, deployment.app_id)
    deployment_project = app.project_id if app else None
    for old in older:
        old.status, old.finished_at = SUPERSEDED, models.utcnow()
        old.error = f"superseded by deploy #{deployment.id}"
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_SUPERSEDED,
            deployment=old,
            project_id=deployment_project,
            step="final",
            payload={"by": deployment.id},
        )
        metrics.DEPLOYS.labels(outcome=SUPERSEDED, trigger=old.trigger).inc()
    await jobs.cancel_where(session, dedupe_keys=[f"deploy:{o.id}" for o in older])


async def _prune_revisions(session: AsyncSession, *, ctx: Core, app_id: int) -> None:
    keep = ctx.config.revisions_kept
    app = await session.get(models.App, app_id)
    current_id = app.current_revision_id if app else None
    numbers = list(
        await session.scalars(
            select(models.Revision.number)
            .where(models.Revision.app_id == app_id)
            .order_by(models.Revision.number.desc())
            .offset(keep)
        )
    )
    if not numbers:
        return
    in_use = select(models.Deployment.revision_id).where(
        models.Deployment.app_id == app_id, models.Deployment.status.in_((*PENDING, RUNNING))
    )
    old = await session.scalars(
        select(models.Revision).where(
            models.Revision.app_id == app_id,
            models.Revision.number.in_(numbers),
            models.Revision.id.not_in(in_use.where(models.Deployment.revision_id.is_not(None))),
            # What runs now is what a rollback or the next change needs: never pruned.
            models.Revision.id != (current_id or 0),
        )
    )
    for rev in old:
        await session.execute(
            update(models.Deployment).where(models.Deployment.revision_id == rev.id).values(revision_id=None)
        )
        await session.delete(rev)
    if app is not None:
        await session.flush()
        await secrets.prune_versions(session, app=app, keep=secrets.VERSIONS_KEPT)


async def current_deployment(session: AsyncSession, *, app: models.App) -> models.Deployment | None:
    """The last deploy that succeeded on the app's own namespace: what is running now."""
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status == SUCCEEDED,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def last_attempt(session: AsyncSession, *, app: models.App) -> models.Deployment | None:
    """The newest finished deploy on the app's own namespace, whatever its outcome.

    Automatic rollbacks are left out: they answer an attempt, which then says it was rolled back.
    """
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status.in_((SUCCEEDED, FAILED)),
            models.Deployment.trigger != AUTO_ROLLBACK,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def roll_config(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None = None
) -> Requested | None:
    """After a secret or config change, deploy it, but only for an app that is already running."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    if app.current_revision_id is None and await current_deployment(session, app=app) is None:
        return None
    return await request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        trigger="config",
        env=await apps.env_name(session, app=app),
    )


@dataclass(frozen=True, kw_only=True)
class SecretChange:
    app: models.App
    keys: list[str]
    # The deploy that rolls the pods onto the new values; None when nothing runs yet (the first deploy
    # takes them) or the caller asked for no redeploy.
    redeploy: Requested | None


async def set_secrets(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    values: dict[str, str],
    redeploy: bool = True,
    env: str | None = None,
) -> SecretChange:
    """Set secrets and, for a running app, redeploy so the pods get them: the rule of every channel."""
    app = await secrets.set_values(session, ctx=ctx, actor=actor, app_name=app_name, values=values, env=env)
    rolled = (
        await roll_config(session, ctx=ctx, actor=actor, app_name=app.name, env=env) if redeploy else None
    )
    return SecretChange(app=app, keys=sorted(values), redeploy=rolled)


async def unset_secrets(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    keys: list[str],
    redeploy: bool = True,
    env: str | None = None,
) -> SecretChange:
    """Remove secrets and, for a running app, redeploy so the pods lose them (as `set_secrets`)."""
    removed = await secrets.unset(session, ctx=ctx, actor=actor, app_name=app_name, keys=keys, env=env)
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    rolled = (
        await roll_config(session, ctx=ctx, actor=actor, app_name=app.name, env=env) if redeploy else None
    )
    return SecretChange(app=app, keys=removed, redeploy=rolled)


async def rollback_target(
    session: AsyncSession, *, app: models.App, before: models.Deployment | None = None
) -> int:
    """The revision a rollback without a number goes back to, whatever the channel.

    The newest successful deploy of the app's own namespace before `before` (default: what runs now)
    that ran another revision, one still kept.  The Roll back button of a deploy card passes its deploy.
    """
    if before is None:
        before = await current_deployment(session, app=app)
        if before is None:
            raise Conflict(f"{app.name} has no successful deploy to roll back from")
        missing = f"{app.name} has no earlier successful revision to roll back to"
    else:
        missing = f"{app.name} has no successful deploy before #{before.id} to roll back to"
    revision = await session.scalar(
        select(models.Deployment.revision_number)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status == SUCCEEDED,
            models.Deployment.id < before.id,
            models.Deployment.revision_number != before.revision_number,
            models.Deployment.revision_id.is_not(None),
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )
    if revision is None:
        raise Conflict(missing)
    return revision


async def rollback(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    revision: int | None = None,
    from_deployment: int | None = None,
    trigger: str = "rollback",
    dedupe_key: str | None = None,
    notify_refs: dict[str, Any] | None = None,
    env: str | None = None,
) -> Requested:
    """Deploy a copy of an older revision and pause auto-deploy.

    Without `revision`: the one `rollback_target` picks, before what runs now or before the deploy
    `from_deployment` (a deploy card's Roll back button: run again what ran before that deploy).
    """
    if env is None and from_deployment is not None and validation.is_id(from_deployment):
        # A card's Roll back button names a deploy: that deploy's environment is the one meant.
        card = await session.get(models.Deployment, from_deployment)
        row = await session.get(models.App, card.app_id) if card is not None else None
        if row is not None and row.name == app_name:
            env = await apps.env_name(session, app=row)
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    env = await apps.env_name(session, app=app)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="rolling back")
    if revision is None:
        before = None
        if from_deployment is not None:
            ok = validation.is_id(from_deployment)
            before = await session.get(models.Deployment, from_deployment) if ok else None
            if before is None or before.app_id != app.id or before.preview_id is not None:
                raise NotFound(f"no deploy #{from_deployment} of {app.name}")
        revision = await rollback_target(session, app=app, before=before)
    validation.int_range(revision, field="revision", low=1, high=validation.INT32_MAX)
    target = await session.scalar(
        select(models.Revision).where(models.Revision.app_id == app.id, models.Revision.number == revision)
    )
    if target is None:
        kept = await revisions(session, actor=actor, app_name=app.name, env=env)
        numbers = ", ".join(str(r.number) for r in kept) or "none"
        raise NotFound(f"{app.name} has no revision {revision} (kept: {numbers})")
    # The whole snapshot, secrets version included; the app's settings follow once it rolls out.
    snapshot = snapshots.of_revision(target)
    result = await request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        trigger=trigger,
        snapshot=snapshot,
        rollback_of=target.number,
        dedupe_key=dedupe_key,
        reason=f"roll back to revision {target.number}",
        notify_refs=notify_refs,
        env=env,
    )
    if result.created and not app.auto_deploy_paused:
        app.auto_deploy_paused = True
        app.paused_reason = (
            f"rolled back to revision {target.number} by {actor.name}; resume to deploy on push again"
        )
        await events.emit(
            session,
            ctx=ctx,
            kind=events.APP_PAUSED,
            dedupe_key=f"app:{app.id}:paused:{result.deployment.id}",
            project_id=app.project_id,
            app_id=app.id,
            payload={"reason": app.paused_reason},
        )
    return result


async def revisions(
    session: AsyncSession, *, actor: Actor, app_name: str, env: str | None = None
) -> list[models.Revision]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="listing revisions")
    return list(
        await session.scalars(
            select(models.Revision)
            .where(models.Revision.app_id == app.id)
            .order_by(models.Revision.number.desc())
        )
    )


async def _authorized(
    session: AsyncSession, *, actor: Actor, deployment_id: int, role: Role, action: str, lock: bool = False
) -> tuple[models.Deployment, models.App]:
    """A deploy by id, after the role check; one of a project the caller is not in is just missing."""
    missing = NotFound(f"no deploy #{deployment_id}")
    if not validation.is_id(deployment_id):
        raise missing
    app_id = await session.scalar(
        select(models.Deployment.app_id).where(models.Deployment.id == deployment_id)
    )
    app = await session.get(models.App, app_id) if app_id is not None else None
    if app is None:
        raise missing
    await apps.authorize(session, actor=actor, app=app, role=role, action=action, missing=missing)
    deployment = await session.get(models.Deployment, deployment_id, with_for_update=lock or None)
    if deployment is None:
        raise missing
    return deployment, app


async def get(session: AsyncSession, *, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, _ = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.VIEWER, action="reading deploys"
    )
    return deployment


async def history(
    session: AsyncSession, *, actor: Actor, app_name: str, limit: int = 20, env: str | None = None
) -> list[models.Deployment]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading deploys")
    return list(
        await session.scalars(
            select(models.Deployment)
            .where(models.Deployment.app_id == app.id)
            .order_by(models.Deployment.id.desc())
            .limit(limit)
        )
    )


async def approve(
    session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int, approve: bool = True
) -> models.Deployment:
    """A second person approves (or rejects) a deploy of a protected app."""
    verb = "approving" if approve else "rejecting"
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action=f"{verb} deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status != AWAITING_APPROVAL:
        raise Conflict(f"deploy #{deployment.id} is {deployment.status}, not awaiting approval")
    # Another person, not another account: a Slack request is not approved from the same human's GitHub.
    if approve and deployment.actor in await identities.subjects_of(session, subject=actor.subject):
        raise PermissionDenied("nobody approves their own deploy: ask someone else on the project")
    if deployment.approval_expires_at and deployment.approval_expires_at < models.utcnow():
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
        raise Conflict(f"deploy #{deployment.id} waited too long for approval and expired; request it again")
    # The environment's approver role, one approval per person, none from the requester's own identities.
    tally = await protection.approve(session, actor=actor, app=app, deployment=deployment, approve=approve)
    if tally is not None and not tally.complete:
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_AWAITING_APPROVAL,
            deployment=deployment,
            project_id=app.project_id,
            step=f"approval:{tally.approvals}",
            payload={"approved_by": actor.subject, "approvals": tally.approvals, "needed": tally.needed},
        )
    elif approve:
        deployment.status, deployment.approved_by = QUEUED, actor.subject
        await _enqueue(session, deployment=deployment)
        await events.emit_for_deployment(
            session,
            ctx=ctx,
            kind=events.DEPLOY_QUEUED,
            deployment=deployment,
            project_id=app.project_id,
            step="approved",
            payload={"approved_by": actor.subject},
        )
    else:
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"rejected by {actor.name}"
        )
    await audit.record(
        session,
        actor=actor,
        action="deploy.approve" if approve else "deploy.reject",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id, **({"approvals": tally.text} if tally else {})},
    )
    return deployment


async def cancel(session: AsyncSession, *, ctx: Core, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, app = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.DEVELOPER, action="cancelling deploys",
        lock=True,
    )  # fmt: skip
    if deployment.status not in PENDING:
        raise Conflict(
            f"deploy #{deployment.id} is {deployment.status}; only queued deploys can be cancelled"
        )
    await _finish_pending(
        session, ctx=ctx, deployment=deployment, status=CANCELLED, error=f"cancelled by {actor.name}"
    )
    await audit.record(
        session,
        actor=actor,
        action="deploy.cancel",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"deployment": deployment.id},
    )
    return deployment


async def _finish_pending(
    session: AsyncSession, *, ctx: Core, deployment: models.Deployment, status: str, error: str
) -> None:
    deployment.status, deployment.error, deployment.finished_at = status, error, models.utcnow()
    await jobs.cancel_where(session, dedupe_keys=[f"deploy:{deployment.id}"])
    app = await session.get(models.App, deployment.app_id)
    await events.emit_for_deployment(
        session,
        ctx=ctx,
        kind=events.DEPLOY_CANCELLED,
        deployment=deployment,
        project_id=app.project_id if app else None,
        step="final",
        payload={"reason": error},
    )
    metrics.DEPLOYS.labels(outcome=status, trigger=deployment.trigger).inc()


async def expire_approvals(session: AsyncSession, *, ctx: Core) -> int:
    stale = list(
        await session.scalars(
            select(models.Deployment).where(
                models.Deployment.status == AWAITING_APPROVAL,
                models.Deployment.approval_expires_at < models.utcnow(),
            )
        )
    )
    for deployment in stale:
        await _finish_pending(
            session, ctx=ctx, deployment=deployment, status=CANCELLED, error="approval expired"
        )
    return len(stale)


# ---------------------------------------------------------------- the worker side


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
    metrics.DEPLOYS.labels(outcome=status, trigger=deployment.trigger).inc()


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


async def current_revision(session: AsyncSession, *, app: models.App) -> models.Revision | None:
    """The revision that last rolled out well on the app's own namespace: what runs."""
    if app.current_revision_id is None:
        return None
    return await session.get(models.Revision, app.current_revision_id)


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
