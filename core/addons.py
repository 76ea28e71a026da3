"""Add-ons: a managed PostgreSQL or Redis for an app, Heroku-style, in the app's own namespace.

`create` records the add-on (its generated password only encrypted) and queues a provisioning job
in the request's transaction, so a crash never loses or doubles it.  The job applies the add-on's
Secret, headless Service and StatefulSet (core.kube.render_addons) with the ownership labels, and
looks again every few seconds until the StatefulSet's pod is ready; only then does the app get the
connection string as a secret (DATABASE_URL / REDIS_URL) and, if it runs, a config deploy that
rolls its pods onto it, as `secrets set` does.

`destroy` marks it deleting and queues a destroy job: it deletes what provisioning created (only
objects carrying shipit's labels for this app; anything else is refused and named), the data's
PersistentVolumeClaim only when asked, then the app's secret (only while it still holds the value
shipit put there) and the row.  Every step can run again: a second destroy, or the job resumed
after a crash, finishes whatever is left.

The password and the connection string (which holds it) never reach a log line, an answer, an audit
row or an error text: errors name objects and keys only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, claims, deploys, jobs, secrets, status, validation
from core.context import Core
from core.errors import Conflict, Deferred, InvalidInput, NotFound, PermanentError, ShipitError
from core.identity import SYSTEM, Actor, Role
from core.kube import render_addons as r
from core.kube.applying import NamespaceOrigin
from core.kube.client import Kube
from storage import models

log = logging.getLogger(__name__)

PROVISION_JOB = "addon.provision"
DESTROY_JOB = "addon.destroy"
PASSWORD_PURPOSE = "addon-password"
VIA = "addon"
# What `list` may show besides the recorded states: a ready add-on whose pod is not ready now.
UNAVAILABLE = "unavailable"
# Provisioning looks again every addon_ready_poll_seconds until the pod is ready; this many looks
# (about an hour at the default 10 s) and it is called failed.  Destroying retries transient errors.
PROVISION_ATTEMPTS = 360
# How long a read of the add-ons' states waits for the cluster (every channel: `observed`).
READ_SECONDS = 3.0
DESTROY_ATTEMPTS = 20
# What the channels offer (the dashboard's form): the kinds and plans `create` takes.
KINDS: tuple[str, ...] = r.KINDS
PLANS: tuple[str, ...] = tuple(r.PLANS)
DEFAULT_PLAN = r.DEFAULT_PLAN


# The cluster and namespace an app's add-ons live in, read in a transaction, used outside one.
Where = status.Target


@dataclass(frozen=True, kw_only=True)
class AddonView:
    """What a caller is shown: never the password or the connection string."""

    app: str
    kind: str
    plan: str
    state: str
    detail: str
    name: str
    namespace: str
    secret_key: str
    error: str | None


def _concurrency_key(addon: models.Addon) -> str:
    # Provisioning and destroying one add-on never run at the same time (jobs' concurrency key).
    return f"addon:{addon.app_id}:{addon.kind}"


def _kind(kind: str) -> str:
    if kind not in r.KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(r.KINDS)}", field="kind")
    return kind


async def _row(session: AsyncSession, *, app: models.App, kind: str) -> models.Addon | None:
    return await session.scalar(
        select(models.Addon).where(models.Addon.app_id == app.id, models.Addon.kind == kind)
    )


async def where(session: AsyncSession, *, ctx: Core, app: models.App) -> Where:
    return await status.target_of(session, ctx=ctx, app=app)


async def create(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    kind: str,
    plan: str | None = None,
    env: str | None = None,
) -> models.Addon:
    """Record the add-on and queue its provisioning; developers may (it runs beside their app)."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="creating add-ons")
    _kind(kind)
    plan = plan or r.DEFAULT_PLAN
    if plan not in r.PLANS:
        raise InvalidInput(f"plan must be one of {', '.join(r.PLANS)}", field="plan")
    existing = await _row(session, app=app, kind=kind)
    if existing is not None:
        raise Conflict(
            f"kind: {app.name} already has a {kind} add-on ({existing.state}); destroy it first",
            field="kind",
        )
    key = r.URL_KEYS[kind]
    if await secrets.value_digest(session, app_id=app.id, key=key) is not None:
        # Never overwrite a connection string someone set by hand (a developer may not set secrets).
        raise Conflict(
            f"kind: {app.name} already has a secret {key}; delete it (secrets delete) to use a {kind} add-on",
            field="kind",
        )
    password = pysecrets.token_urlsafe(32)  # URL-safe: goes into the connection string as it is
    addon = models.Addon(
        app_id=app.id,
        kind=kind,
        plan=plan,
        state=r.PROVISIONING,
        namespace=app.namespace,
        name=r.object_name(app=app.name, kind=kind),
        image=ctx.config.addon_images[kind],
        secret_key=key,
        password_enc=ctx.cipher.encrypt(password.encode(), purpose=PASSWORD_PURPOSE),
        created_by=actor.subject,
    )
    session.add(addon)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        # Another request created the same kind for this app meanwhile.
        raise Conflict(f"kind: {app.name} already has a {kind} add-on", field="kind") from None
    await _enqueue(session, addon=addon, kind=PROVISION_JOB)
    await audit.record(
        session,
        actor=actor,
        action="addon.create",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"kind": kind, "plan": plan, "name": addon.name, "namespace": addon.namespace},
    )
    return addon


async def _enqueue(session: AsyncSession, *, addon: models.Addon, kind: str) -> None:
    # No dedupe key: an add-on's id can come back after its row is deleted (SQLite reuses the
    # highest rowid), and a dedupe key would then answer with the old, finished job.
    await jobs.enqueue(
        session,
        kind=kind,
        payload={"addon_id": addon.id, "app_id": addon.app_id, "kind": addon.kind},
        concurrency_key=_concurrency_key(addon),
        max_attempts=PROVISION_ATTEMPTS if kind == PROVISION_JOB else DESTROY_ATTEMPTS,
    )


async def destroy(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    kind: str,
    delete_data: bool = False,
    env: str | None = None,
) -> models.Addon:
    """Mark the add-on deleting and queue its removal; admins and owners only, as deleting secrets.

    Again on one already deleting: a job already queued or running is not doubled; one that failed
    (an object that is not shipit's was in the way) is queued anew and finishes the job.
    """
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="destroying add-ons")
    _kind(kind)
    addon = await _row(session, app=app, kind=kind)
    if addon is None:
        raise NotFound(f"{app.name} has no {kind} add-on")
    addon.delete_data = addon.delete_data or delete_data  # once asked for, a retry keeps it
    pending = await session.scalar(
        select(models.Job.id)
        .where(
            models.Job.kind == DESTROY_JOB,
            models.Job.concurrency_key == _concurrency_key(addon),
            models.Job.state.in_((jobs.QUEUED, jobs.RUNNING)),
        )
        .limit(1)
    )
    addon.state, addon.error = r.DELETING, None
    if pending is None:
        await _enqueue(session, addon=addon, kind=DESTROY_JOB)
    await audit.record(
        session,
        actor=actor,
        action="addon.destroy",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"kind": kind, "name": addon.name, "delete_data": addon.delete_data},
    )
    await session.flush()
    return addon


async def rows_for(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None = None
) -> tuple[Where, list[models.Addon]]:
    """The app's add-ons and where they live; viewers may look."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="listing add-ons")
    rows = list(
        await session.scalars(
            select(models.Addon).where(models.Addon.app_id == app.id).order_by(models.Addon.kind)
        )
    )
    return await where(session, ctx=ctx, app=app), rows


def view(addon: models.Addon, *, app: str, state: str | None = None, detail: str = "") -> AddonView:
    return AddonView(
        app=app,
        kind=addon.kind,
        plan=addon.plan,
        state=state or addon.state,
        detail=detail,
        name=addon.name,
        namespace=addon.namespace,
        secret_key=addon.secret_key,
        error=addon.error,
    )


async def _observe(kube: Kube, *, namespace: str, app: str, kind: str) -> r.Observed:
    name = r.object_name(app=app, kind=kind)
    statefulset = await kube.get(kind="StatefulSet", name=name, namespace=namespace)
    claim = None
    if statefulset is not None:
        claim = await kube.get(
            kind="PersistentVolumeClaim", name=r.claim_name(app=app, kind=kind), namespace=namespace
        )
    return r.observe(statefulset, claim)


async def observed(*, ctx: Core, where: Where, rows: list[models.Addon]) -> list[AddonView]:
    """Each add-on's state as the cluster tells it (no transaction held while it answers).

    Recorded `deleting` and `failed` are shown as they are.  Otherwise `ready` only when the
    StatefulSet's pod is ready now; a ready add-on whose pod is not is `unavailable`.  A cluster
    slower than READ_SECONDS gets the recorded states: a page or a Slack answer never waits on it.
    """
    if not rows:
        return []
    try:
        async with asyncio.timeout(READ_SECONDS):
            return await _observed(ctx=ctx, where=where, rows=rows)
    except TimeoutError:
        return [view(a, app=where.app, detail="the cluster did not answer in time") for a in rows]


async def _observed(*, ctx: Core, where: Where, rows: list[models.Addon]) -> list[AddonView]:
    out: list[AddonView] = []
    kube: Kube | None = None
    for addon in rows:
        if addon.state in (r.DELETING, r.FAILED):
            out.append(view(addon, app=where.app))
            continue
        try:
            kube = kube or await ctx.kube.get(key=str(where.cluster_id), kubeconfig=where.kubeconfig)
            seen = await _observe(kube, namespace=addon.namespace, app=where.app, kind=addon.kind)
        except ShipitError as e:
            out.append(view(addon, app=where.app, detail=f"cluster not reached: {e}"))
            continue
        if addon.state == r.READY:
            state = r.READY if seen.state == r.READY else UNAVAILABLE
        else:
            state = r.PROVISIONING
        detail = seen.detail
        if addon.state == r.PROVISIONING and seen.state == r.READY:
            detail = f"database ready; {addon.secret_key} is being handed to the app"
        elif addon.state == r.PROVISIONING and seen.state == "missing":
            detail = "waiting for the provisioning job"
        out.append(view(addon, app=where.app, state=state, detail=detail))
    return out


# -- the jobs -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Work:
    addon_id: int
    where: Where
    spec: r.AddonSpec
    namespace_origin: NamespaceOrigin
    delete_data: bool


async def _load(session: AsyncSession, *, ctx: Core, payload: dict[str, Any]) -> models.Addon | None:
    """The job's add-on, if it is still the one the job was queued for (ids can come back)."""
    addon_id = payload.get("addon_id")
    if not isinstance(addon_id, int) or not validation.is_id(addon_id):
        return None
    addon = await session.get(models.Addon, addon_id, with_for_update=True)
    if addon is None or addon.app_id != payload.get("app_id") or addon.kind != payload.get("kind"):
        return None
    return addon


async def _work(session: AsyncSession, *, ctx: Core, addon: models.Addon) -> _Work:
    app = await session.get(models.App, addon.app_id)
    assert app is not None  # the add-on row goes with its app (ON DELETE CASCADE)
    at = await where(session, ctx=ctx, app=app)
    claim = await claims.claim_of(session, cluster_id=at.cluster_id, namespace=addon.namespace)
    if claim is None or claim.project_id != app.project_id:
        raise PermanentError(f"namespace {addon.namespace} is no longer held by project {at.project}")
    spec = r.AddonSpec(
        kind=addon.kind,
        plan=addon.plan,
        project=at.project,
        app=app.name,
        namespace=addon.namespace,
        image=addon.image,
        password=ctx.cipher.decrypt(addon.password_enc, purpose=PASSWORD_PURPOSE).decode(),
        storage_class=ctx.config.addon_storage_class,
    )
    return _Work(
        addon_id=addon.id,
        where=at,
        spec=spec,
        namespace_origin="created" if claim.origin == claims.CREATED else "granted",
        delete_data=addon.delete_data,
    )


async def run_provision_job(*, ctx: Core, job: jobs.JobView) -> None:
    async with ctx.sessionmaker.begin() as session:
        addon = await _load(session, ctx=ctx, payload=job.payload)
        if addon is None or addon.state != r.PROVISIONING:
            return  # destroyed (or being destroyed) since it was queued
        work = await _work(session, ctx=ctx, addon=addon)
    spec, at = work.spec, work.where
    kube = await ctx.kube.get(key=str(at.cluster_id), kubeconfig=at.kubeconfig)
    await kube.ensure_namespace(
        name=spec.namespace, project=spec.project, namespace_origin=work.namespace_origin
    )
    await kube.apply(manifests=r.render_addon(spec))
    seen = await _observe(kube, namespace=spec.namespace, app=spec.app, kind=spec.kind)
    if seen.state != r.READY:
        # Waiting is pacing, not a failure: logged at debug by the worker, counted against the attempts.
        log.debug(
            "add-on %s of app %s in %s not ready yet: %s", spec.kind, spec.app, spec.namespace, seen.detail
        )
        raise Deferred(
            f"{spec.kind} add-on of {spec.app} not ready yet: {seen.detail}",
            retry_after=ctx.config.addon_ready_poll_seconds,
        )
    async with ctx.sessionmaker.begin() as session:
        addon = await _load(session, ctx=ctx, payload=job.payload)
        if addon is None or addon.state == r.DELETING:
            return
        app = await session.get(models.App, addon.app_id)
        assert app is not None
        url = r.connection_url(spec)
        ours = secrets.digest_of(ctx, key=addon.secret_key, value=url)
        held = await secrets.value_digest(session, app_id=app.id, key=addon.secret_key)
        if held is not None and held != ours:
            raise PermanentError(
                f"{app.name} got a secret {addon.secret_key} of its own while the {addon.kind} add-on "
                "was provisioned; it was left as it is: delete it and create the add-on again"
            )
        changed = await secrets.put_managed(
            session, ctx=ctx, actor=SYSTEM, app=app, key=addon.secret_key, value=url, via=VIA
        )
        addon.state, addon.error = r.READY, None
        await audit.record(
            session,
            actor=SYSTEM,
            action="addon.ready",
            target=f"app/{app.name}",
            project_id=app.project_id,
            details={"kind": addon.kind, "name": addon.name, "secret_key": addon.secret_key},
        )
        if changed:
            # As `secrets set`: an app already running rolls its pods onto the new secret.
            await deploys.roll_config(
                session, ctx=ctx, actor=SYSTEM, app_name=app.name, env=await apps.env_name(session, app=app)
            )
    log.info("add-on %s of app %s in %s is ready", spec.kind, spec.app, spec.namespace)


async def run_destroy_job(*, ctx: Core, job: jobs.JobView) -> None:
    async with ctx.sessionmaker.begin() as session:
        addon = await _load(session, ctx=ctx, payload=job.payload)
        if addon is None or addon.state != r.DELETING:
            return
        app = await session.get(models.App, addon.app_id)
        assert app is not None
        at = await where(session, ctx=ctx, app=app)
        kind, namespace, project_id, delete_data = (
            addon.kind,
            addon.namespace,
            app.project_id,
            addon.delete_data,
        )
    kube = await ctx.kube.get(key=str(at.cluster_id), kubeconfig=at.kubeconfig)
    targets = r.owned_objects(app=at.app, kind=kind)
    if delete_data:
        targets.append(("PersistentVolumeClaim", r.claim_name(app=at.app, kind=kind)))
    refused: list[str] = []
    for object_kind, name in targets:
        try:
            gone = await kube.delete(
                kind=object_kind, name=name, namespace=namespace, project=at.project, app=at.app
            )
        except Conflict as e:
            refused.append(str(e))
            continue
        if gone:
            # Each deletion is its own audited step: a crash after it leaves the record behind.
            async with ctx.sessionmaker.begin() as session:
                await audit.record(
                    session,
                    actor=SYSTEM,
                    action="addon.delete_object",
                    target=f"app/{at.app}",
                    project_id=project_id,
                    details={"kind": kind, "object": f"{object_kind}/{name}", "namespace": namespace},
                )
    if refused:
        raise Conflict("; ".join(refused))
    async with ctx.sessionmaker.begin() as session:
        row = await _load(session, ctx=ctx, payload=job.payload)
        if row is None or row.state != r.DELETING:
            return
        app = await session.get(models.App, row.app_id)
        assert app is not None
        password = ctx.cipher.decrypt(row.password_enc, purpose=PASSWORD_PURPOSE).decode()
        spec = r.AddonSpec(
            kind=row.kind, plan=row.plan, project=at.project, app=app.name, namespace=row.namespace,
            image=row.image, password=password,
        )  # fmt: skip
        ours = secrets.digest_of(ctx, key=row.secret_key, value=r.connection_url(spec))
        removed = await secrets.remove_managed(
            session, ctx=ctx, actor=SYSTEM, app=app, key=row.secret_key, digest=ours, via=VIA
        )
        kept = [] if row.delete_data else [r.claim_name(app=app.name, kind=row.kind)]
        await audit.record(
            session,
            actor=SYSTEM,
            action="addon.destroyed",
            target=f"app/{app.name}",
            project_id=app.project_id,
            details={"kind": row.kind, "name": row.name, "secret_removed": removed, "claims_kept": kept},
        )
        await session.delete(row)
        await session.flush()
        if removed:
            await deploys.roll_config(
                session, ctx=ctx, actor=SYSTEM, app_name=app.name, env=await apps.env_name(session, app=app)
            )
    log.info("add-on %s of app %s in %s destroyed", kind, at.app, namespace)


async def job_failed(*, session: AsyncSession, ctx: Core, job: jobs.JobView, error: str) -> None:
    """A provisioning or destroy job that failed for good: the add-on says failed, and why."""
    addon = await _load(session, ctx=ctx, payload=job.payload)
    if addon is None:
        return
    addon.state, addon.error = r.FAILED, error[:2000]
    app = await session.get(models.App, addon.app_id)
    await audit.record(
        session,
        actor=SYSTEM,
        action="addon.failed",
        target=f"app/{app.name if app else addon.app_id}",
        project_id=app.project_id if app else None,
        details={"kind": addon.kind, "job": job.kind, "error": error[:500]},
    )
