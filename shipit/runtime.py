"""The composition root: builds the core once (engine, cipher, clients, notifiers, worker), tears it down."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import (
    addons,
    deliveries,
    deploys,
    events,
    image_policies,
    instance,
    keys,
    previews,
    readcache,
    retention,
    tasks,
    tokens,
    usage_history,
    web_sessions,
)
from core.context import Core, CoreConfig
from core.identity import SYSTEM
from core.kube.client import KubeClients
from core.notices import mail
from core.notices import registry as notice_registry
from core.worker import Handler, Worker, install_wakeup
from shipit import telemetry
from shipit.settings import Settings
from storage import db, migrate
from storage.crypto import Cipher, MasterKeyError, generate_key

log = logging.getLogger("shipit")


def resolve_master_key(settings: Settings) -> str:
    """The configured key, or one generated into the data dir on first run (with a loud warning)."""
    if settings.master_key is not None:
        return settings.master_key.get_secret_value()
    path = Path(settings.data_dir) / "master.key"
    if path.exists():
        log.warning(
            "SHIPIT_MASTER_KEY is not set: using the key in %s (set it explicitly in production)", path
        )
        return path.read_text().strip()
    db.private_dir(path.parent)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning(
        "\n%s\nSHIPIT_MASTER_KEY is not set: GENERATED a new master key into %s.\n"
        "Back it up: without it, stored secrets and kubeconfigs cannot be read.\n"
        "In production set SHIPIT_MASTER_KEY (make one with `shipit keys generate`).\n%s",
        "!" * 78, path, "!" * 78,
    )  # fmt: skip
    return key


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    core: Core
    worker: Worker | None = None
    worker_instance: instance.Instance | None = None
    extra_handlers: dict[str, Handler] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.core.sessionmaker

    remove_wakeup: Callable[[], None] | None = None

    def handlers(self) -> dict[str, Handler]:
        return {**job_handlers(), **self.extra_handlers}


def job_handlers() -> dict[str, Handler]:
    """Every job kind, in one place, the same on every replica whatever channels it has configured.

    Each handler runs with the core alone: a preview teardown needs only the cluster, and a notify
    job for a notifier this replica lacks is never claimed here (the worker claims notify jobs only
    for its own notifiers, see core.jobs.claim).  A replica without GitHub settings therefore runs
    or leaves every job; none fails for an unknown kind.
    """
    return {
        deploys.DEPLOY_JOB: Handler(run=deploys.run_job, failed=deploys.job_failed),
        events.NOTIFY_JOB: Handler(run=events.run_notify_job),
        addons.PROVISION_JOB: Handler(run=addons.run_provision_job, failed=addons.job_failed),
        addons.DESTROY_JOB: Handler(run=addons.run_destroy_job, failed=addons.job_failed),
        **previews.HANDLERS,
        **image_policies.HANDLERS,
    }


async def upgrade_database(engine: AsyncEngine) -> str | None:
    """Migrate to head; when that changed anything, change the read cache's stamp, so replicas still
    running the previous version (a rolling upgrade) drop copies of rows a migration may have moved."""
    before = await migrate.current(engine)
    if before is not None and before == migrate.head():
        return before  # every start after the first: alembic would load all the scripts to do nothing
    await migrate.upgrade(engine)
    after = await migrate.current(engine)
    if after != before:
        await readcache.bump(engine)
    return after


async def build(settings: Settings, *, migrate_db: bool = True) -> Runtime:
    engine = db.create_engine(settings.database_url)
    telemetry.instrument_engine(engine)
    if migrate_db:
        await upgrade_database(engine)
    cipher = Cipher(key=resolve_master_key(settings))
    sessionmaker = db.create_sessionmaker(engine)
    try:
        async with sessionmaker.begin() as session:
            await keys.verify(session, cipher=cipher)
    except MasterKeyError as e:
        await engine.dispose()
        raise MasterKeyError(f"wrong master key for {engine.url.render_as_string()}: {e}") from None
    config = CoreConfig(
        job_lease_seconds=settings.job_lease_seconds,
        job_poll_seconds=settings.job_poll_seconds,
        worker_concurrency=settings.worker_concurrency,
        approval_ttl_seconds=settings.approval_ttl_seconds,
        default_ingress_class=settings.ingress_class,
        default_tls_issuer=settings.tls_issuer,
        public_url=settings.url,
        project_creators=settings.project_creators,
        registry_pin_digests=settings.registry_pin_digests,
        registry_timeout_seconds=settings.registry_timeout_seconds,
        registry_insecure_hosts=tuple(
            h.strip().lower() for h in settings.registry_insecure_hosts.split(",") if h.strip()
        ),
        release_deadline_seconds=settings.release_deadline_seconds,
        release_ttl_seconds=settings.release_ttl_seconds,
        dry_run_timeout_seconds=settings.dry_run_timeout_seconds,
        addon_images={"postgres": settings.addon_postgres_image, "redis": settings.addon_redis_image},
        addon_storage_class=settings.addon_storage_class or None,
        addon_ready_poll_seconds=settings.addon_ready_poll_seconds,
    )
    core = Core(sessionmaker=sessionmaker, cipher=cipher, kube=KubeClients(), config=config)
    rt = Runtime(settings=settings, engine=engine, core=core, remove_wakeup=install_wakeup(core))

    # The kinds of notice core delivers by itself (email, Teams, Discord, webhooks): core/notices/registry.py.
    smtp = (
        mail.Smtp.parse(settings.smtp_url.get_secret_value(), sender=settings.smtp_from)
        if settings.smtp_url is not None and settings.smtp_url.get_secret_value()
        else None
    )
    if smtp is None:
        log.info("email notices are off: SHIPIT_SMTP_URL is not set")
    for notifier in notice_registry.build(ctx=core, smtp=smtp):
        core.notifiers[notifier.name] = notifier
        rt.closers.append(notifier.close)
    # Registry deploys with promote_to promote once they succeed (a durable notify job, like notices).
    promoter = image_policies.Promoter(ctx=core)
    core.notifiers[promoter.name] = promoter
    return rt


async def bootstrap_admin_token(rt: Runtime, *, write_to: Path | None = None) -> str | None:
    """On first start, create an admin token and return it (shown once, never stored in plain).

    With `write_to`, the token goes into that file, created 0600; an existing file is never
    overwritten (start fails, and no token is created).
    """
    written = False
    try:
        async with rt.sessionmaker.begin() as session:
            if await tokens.has_any(session):
                return None
            _, plaintext = await tokens.create(
                session, actor=SYSTEM, name="admin", subject="user:admin", is_admin=True
            )
            if write_to is not None:
                # Written before the commit: if the file cannot be written, no token exists either.
                _write_new_private_file(write_to, plaintext + "\n")
                written = True
    except BaseException:
        if written and write_to is not None:
            _remove(write_to)  # the commit failed: the file would hold a dead token
        raise
    return plaintext


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _write_new_private_file(path: Path, text: str) -> None:
    db.private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise RuntimeError(
            f"SHIPIT_BOOTSTRAP_TOKEN_FILE {path} exists: refusing to overwrite it; move it away and start again"
        ) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        _remove(path)
        raise


def retention_policy(settings: Settings) -> retention.Policy:
    def seconds(days: float) -> float | None:
        return days * 86400 if days > 0 else None

    return retention.Policy(
        jobs_seconds=seconds(settings.retention_jobs_days),
        events_seconds=seconds(settings.retention_events_days),
        deliveries_seconds=seconds(settings.retention_deliveries_days),
        builds_seconds=seconds(settings.retention_builds_days),
        builds_keep=settings.retention_builds_keep,
        runs_seconds=seconds(settings.retention_runs_days),
        runs_keep=settings.retention_runs_keep,
        usage_seconds=seconds(settings.retention_usage_days),
        usage_hourly_seconds=seconds(settings.retention_usage_hourly_days),
    )


PRUNE_EVERY_SECONDS = 3600.0


async def _maintenance(rt: Runtime) -> None:
    """Periodic chores: expire stale approvals, forget ended dashboard sessions, prune old rows.

    Cheap, idempotent, safe on every replica."""
    loop = asyncio.get_running_loop()
    next_prune = loop.time()
    every = rt.settings.usage_sample_seconds
    next_sample = loop.time()
    while True:
        try:
            async with rt.sessionmaker.begin() as session:
                await deploys.expire_approvals(session, ctx=rt.core)
                # A replayed slash command is refused by its signature after 5 minutes anyway.
                await deliveries.forget_older(session, prefix="slack-trigger", seconds=3600)
                await web_sessions.forget_ended(session)
        except Exception:
            log.exception("maintenance pass failed")
        if every > 0 and loop.time() >= next_sample:
            # Every replica samples: a slot's row is unique per app (core.usage_history says why).
            next_sample = loop.time() + every
            try:
                sampled = await usage_history.sample(rt.core, every=every)
                log.debug(
                    "usage sampling: slot %s, %d sample(s) stored from %d namespace list(s)",
                    sampled.slot.isoformat(), sampled.stored, sampled.namespaces,
                )  # fmt: skip
            except Exception:
                log.exception("usage sampling pass failed")
            try:
                # Completed hours into usage_hourly (the 30d window); each replica too, one row per hour.
                raw = rt.settings.retention_usage_days
                lookback = dt.timedelta(days=raw) if raw > 0 else None
                rolled = await usage_history.catch_up(rt.sessionmaker, lookback=lookback)
                if rolled:
                    log.debug("usage rollup: %d app hour(s) stored", rolled)
            except Exception:
                log.exception("usage rollup pass failed")
        if loop.time() >= next_prune:
            next_prune = loop.time() + PRUNE_EVERY_SECONDS
            try:
                pruned = await retention.prune(rt.sessionmaker, policy=retention_policy(rt.settings))
                if pruned != retention.Pruned():
                    log.info(
                        "retention: pruned %d job(s), %d event(s), %d webhook delivery record(s), "
                        "%d event mark(s), %d build(s) with %d Slack card mark(s), %d run(s), "
                        "%d usage sample(s), %d hourly rollup(s), %d unused reservation(s)",
                        pruned.jobs, pruned.events, pruned.deliveries, pruned.marks, pruned.builds,
                        pruned.build_marks, pruned.runs, pruned.usage_samples, pruned.usage_hourly,
                        pruned.held,
                    )  # fmt: skip
            except Exception:
                log.exception("retention pass failed")
        await asyncio.sleep(min(30.0, every) if every > 0 else 30.0)


async def start(rt: Runtime) -> None:
    if rt.settings.run_worker:
        # Held while the worker runs; a restart on this data dir then resumes our jobs at once.
        rt.worker_instance = instance.acquire(rt.settings.data_dir)
        rt.worker = Worker(ctx=rt.core, handlers=rt.handlers(), instance=rt.worker_instance)
        rt.worker.start()
        rt.background.append(asyncio.create_task(_maintenance(rt), name="shipit-maintenance"))
        poller = image_policies.poll_forever(ctx=rt.core, every=rt.settings.registry_poll_tick_seconds)
        rt.background.append(asyncio.create_task(poller, name="shipit-registry-poller"))


async def stop(rt: Runtime) -> None:
    await tasks.end(rt.background)
    if rt.worker is not None:
        await rt.worker.stop()
    if rt.worker_instance is not None:
        rt.worker_instance.release()
        rt.worker_instance = None
    for close in rt.closers:
        await close()
    await rt.core.kube.close()
    if rt.remove_wakeup is not None:
        rt.remove_wakeup()
        rt.remove_wakeup = None
    await rt.engine.dispose()
