"""The worker pool that runs jobs inside the service.

Each job runs under a lease renewed by a heartbeat; if the process dies the
lease runs out and any replica (or this one, restarted) claims the job again.
A process restarted on the same host and data dir does not wait for that: it
holds the instance lock (core/instance.py) and ends its predecessor's leases
at start.  Handlers are written to be re-run: apply is idempotent and watching
picks up wherever the cluster is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session

from core import errors, jobs, logctx, observe, tasks
from core.context import Core
from core.errors import Deferred, Paced, PermanentError, TransientError, UserError
from core.instance import Instance
from storage import db, models

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Handler:
    run: Callable[..., Coroutine[Any, Any, None]]  # run(ctx=, job=)
    # Called in its own transaction when the job fails for good.
    failed: Callable[..., Awaitable[None]] | None = None  # failed(session=, ctx=, job=, error=)


def install_wakeup(ctx: Core) -> Callable[[], None]:
    """Wake idle workers in this process as soon as a transaction that enqueued jobs commits.

    The same hook fires `ctx.deploys_changed` after a commit that wrote a deployment row, so the
    dashboard's live streams send the new state at once instead of at their next poll.

    The hook goes on a Session subclass made for this sessionmaker, not on SQLAlchemy's global
    Session class: two runtimes in one process (tests, benchmarks) then wake only their own
    workers, and the returned function removes the hook when the runtime stops.
    """
    base = ctx.sessionmaker.kw.get("sync_session_class") or Session
    own: type[Session] = type("ShipitSession", (base,), {})
    ctx.sessionmaker.configure(sync_session_class=own)

    def _before_flush(session: Session, *_: object) -> None:
        if any(isinstance(o, models.Deployment) for o in (*session.new, *session.dirty)):
            session.info["deploys_changed"] = True

    def _orm_execute(state: ORMExecuteState) -> None:
        # A deploy request writes its deployment rows with INSERT/UPDATE statements, not a flush.
        if state.is_insert or state.is_update or state.is_delete:
            # select(Deployment).from_statement(insert(...)): the INSERT is the statement's element.
            statement = getattr(state.statement, "element", state.statement)
            table = getattr(statement, "table", None)
            if getattr(table, "name", None) == models.Deployment.__tablename__:
                state.session.info["deploys_changed"] = True

    def _after_commit(session: object) -> None:
        info = getattr(session, "info", {})
        if info.pop("jobs_enqueued", False):
            ctx.jobs_ready.set()
        if info.pop("deploys_changed", False):
            ctx.deploys_changed.fire()

    event.listen(own, "before_flush", _before_flush)
    event.listen(own, "after_commit", _after_commit)
    event.listen(own, "do_orm_execute", _orm_execute)

    def remove() -> None:
        hooks: tuple[tuple[str, Callable[..., None]], ...] = (
            ("before_flush", _before_flush),
            ("after_commit", _after_commit),
            ("do_orm_execute", _orm_execute),
        )
        for name, fn in hooks:
            if event.contains(own, name, fn):
                event.remove(own, name, fn)

    return remove


@dataclass(eq=False, kw_only=True)
class _Held:
    """A job this worker runs, under its heartbeat."""

    job: jobs.JobView
    runner: asyncio.Task[None]
    # The loop time the claim or the last renewal that kept the job was sent: its lease runs from then.
    sent: float


class Worker:
    def __init__(
        self,
        *,
        ctx: Core,
        handlers: dict[str, Handler],
        concurrency: int | None = None,
        instance: Instance | None = None,
    ) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.concurrency = concurrency or ctx.config.worker_concurrency
        # Give the instance to one worker only: it takes over every other owner under its prefix.
        self.instance = instance
        self.owner = (
            instance.owner() if instance else f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._stray: set[asyncio.Task[set[int]]] = set()  # renewals given up on, left to finish on their own
        self._held: dict[int, _Held] = {}  # the jobs this worker runs, by id: what its heartbeat renews
        self._beat: asyncio.Task[None] | None = None
        self._beat_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        url = str(ctx.sessionmaker.kw["bind"].url)
        self._skip_locked = db.is_postgres(url)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="shipit-worker")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop claiming; give running jobs `grace` seconds, then cancel them and hand them back."""
        self._stopping.set()
        self.ctx.jobs_ready.set()
        if self._loop_task:
            await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            await tasks.end(pending, recancel_seconds=grace)  # a job handing itself back may take a while
        if self._beat is not None:
            await tasks.end([self._beat])

    async def _loop(self) -> None:
        log.info("worker %s started with %d slots", self.owner, self.concurrency)
        if self.instance is not None:
            await self._take_over_predecessors(self.instance)
        while not self._stopping.is_set():
            if len(self._tasks) >= self.concurrency:
                # Or until stop(): its grace period must not wait for a slot to free first.
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({*self._tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                continue
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("worker %s: claiming a job failed; retrying", self.owner)
                claimed = None
            if claimed is None:
                self.ctx.jobs_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.jobs_ready.wait(), self.ctx.config.job_poll_seconds)
                continue
            job, sent = claimed
            task = asyncio.create_task(self._run(job, claimed_at=sent), name=f"job-{job.id}-{job.kind}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _take_over_predecessors(self, instance: Instance) -> None:
        """Jobs a dead process of this instance was running become claimable now, not a lease later."""
        try:
            async with self.ctx.sessionmaker.begin() as session:
                ids = await jobs.release_predecessors(session, prefix=instance.prefix, keep=self.owner)
        except Exception:
            log.exception("worker %s: taking over interrupted jobs failed; they resume by lease", self.owner)
            return
        if ids:
            log.info(
                "worker %s: resuming %d job(s) a previous process left running: %s", self.owner, len(ids), ids
            )

    async def _claim(self) -> tuple[jobs.JobView, float] | None:
        """The next job and the loop time just before it was claimed (its lease runs from then on)."""
        sent = asyncio.get_running_loop().time()
        async with self.ctx.sessionmaker.begin() as session:
            job = await jobs.claim(
                session,
                owner=self.owner,
                lease_seconds=self.ctx.config.job_lease_seconds,
                skip_locked=self._skip_locked,
                # Only what this worker can run: other kinds wait for a replica that can.
                kinds=self.handlers.keys(),
                notifiers=self.ctx.notifiers.keys(),
            )
        return (job, sent) if job is not None else None

    async def _renew(self, job_ids: list[int]) -> set[int]:
        async with self.ctx.sessionmaker.begin() as session:
            return await jobs.renew(
                session, job_ids=job_ids, owner=self.owner, lease_seconds=self.ctx.config.job_lease_seconds
            )

    def _hold(self, job: jobs.JobView, runner: asyncio.Task[None], *, claimed_at: float) -> _Held:
        """Put a job under this worker's heartbeat (started here if no other job holds it running)."""
        held = _Held(job=job, runner=runner, sent=claimed_at)
        self._held[job.id] = held
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._heartbeat(), name="shipit-worker-heartbeat")
        else:
            self._beat_wake.set()  # its due time may come before the beat the heartbeat sleeps towards
        return held

    def _unhold(self, held: _Held, *, why: str | None = None) -> None:
        """Stop renewing a job's lease; with `why`, also stop its work if it still runs."""
        if self._held.get(held.job.id) is held:
            del self._held[held.job.id]
            if not self._held:
                self._beat_wake.set()  # nothing left to renew: the heartbeat ends now
        if why is not None and not held.runner.done():
            log.warning("job %s (%s): %s; stopping here", held.job.id, held.job.kind, why)
            held.runner.cancel()

    async def _heartbeat(self) -> None:
        """One heartbeat per worker: renew every job's lease every lease/3 in one statement, and stop
        a job's work before its lease can run out.

        Why two workers never work on one job: a job changes hands only in jobs.claim(), atomically
        (row lock with SKIP LOCKED on PostgreSQL, the single writer on SQLite), and only once its
        lease_until has passed.  The lease in the database ends no earlier than `sent + lease`, `sent`
        being when this worker sent its claim or the last renewal that kept the job; a renewal keeps
        a job only while this worker is still its owner.  Unless a renewal keeps it first, the job's
        work is cancelled at `sent + lease - margin`: before anyone else may claim the job, whether
        the database answered "not yours" or could not be reached at all.  (This assumes the hosts'
        clocks agree within the margin, lease/4.)  One transaction per beat for all jobs, not one per
        job: with 50 deploys running that was ~18 write transactions a second on an idle service.
        """
        try:
            await self._beat_until_idle()
        except Exception:
            # Never run a job without a lease: a heartbeat that broke stops the work it covered.
            log.exception("worker %s: heartbeat failed for good; stopping its jobs", self.owner)
            for held in list(self._held.values()):
                self._unhold(held, why="heartbeat stopped")

    async def _beat_until_idle(self) -> None:
        lease = self.ctx.config.job_lease_seconds
        interval, margin = lease / 3, lease / 4
        loop = asyncio.get_running_loop()
        not_before = 0.0  # after a failed renewal: when to try again
        while self._held:
            now = loop.time()
            for held in [h for h in self._held.values() if now >= h.sent + lease - margin]:
                self._unhold(held, why="lease not renewed in time")
            if not self._held:
                return
            oldest = min(h.sent for h in self._held.values())
            deadline, due = oldest + lease - margin, max(oldest + interval, not_before)
            if now < due:
                self._beat_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._beat_wake.wait(), min(due, deadline) - now)
                continue
            beating = list(self._held.values())
            # Not wait_for: it would wait for the cancelled renewal, which may be stuck in the driver
            # (a locked database) well past the deadline.
            renew = asyncio.create_task(self._renew([h.job.id for h in beating]))
            self._stray.add(renew)
            renew.add_done_callback(self._stray.discard)
            if not await self._wait_renewal(renew, beating, lease=lease, margin=margin):
                continue
            try:
                kept = renew.result()
            except Exception:
                log.warning("worker %s: heartbeat failed; trying again", self.owner, exc_info=True)
                not_before = loop.time() + min(1.0, interval)
                continue
            not_before = 0.0
            for held in beating:
                if self._held.get(held.job.id) is not held:
                    continue  # finished (or stopped) while the renewal ran
                if held.job.id in kept:
                    held.sent = now
                else:
                    self._unhold(held, why="lease lost to another worker")

    async def _wait_renewal(
        self, renew: asyncio.Task[set[int]], beating: list[_Held], *, lease: float, margin: float
    ) -> bool:
        """Wait for a renewal, stopping each job whose deadline passes meanwhile; False once none of
        `beating` is left to wait for (the renewal is then given up on, stuck in a locked database)."""
        loop = asyncio.get_running_loop()
        while True:
            if not any(self._held.get(h.job.id) is h for h in beating):
                renew.cancel()
                return False
            deadline = min(h.sent for h in self._held.values()) + lease - margin
            done, _ = await asyncio.wait({renew}, timeout=max(0.0, deadline - loop.time()))
            if done:
                return True
            now = loop.time()
            for held in [h for h in self._held.values() if now >= h.sent + lease - margin]:
                self._unhold(held, why="lease not renewed in time")

    async def _run(self, job: jobs.JobView, *, claimed_at: float) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            await self._finish(job, fail=f"no handler for job kind {job.kind!r}")
            return
        runner = asyncio.create_task(self._traced(handler, job))
        # The lines of a deploy's job name the deploy, also after the job's own log context has ended.
        jlog = logctx.deploy_logger(log, deployment=job.payload.get("deployment_id"))
        held = self._hold(job, runner, claimed_at=claimed_at)
        try:
            await runner
        except asyncio.CancelledError:
            if self._stopping.is_set():
                # Graceful stop: hand the job back so a restarted process resumes it at once.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._retry(job, error="worker stopped", delay=0))
            # Otherwise the lease was lost: another worker owns the job now.
            return
        except TransientError as e:
            delay = (
                e.retry_after if e.retry_after is not None else jobs.backoff_seconds(attempts=job.attempts)
            )
            # Paced: stopped by our own pacing before it sent anything, so not an attempt.
            paced = isinstance(e, Paced)
            if job.attempts >= job.max_attempts and not paced:
                await self._finish(job, fail=f"gave up after {job.attempts} attempts: {e}")
            else:
                # Our own pacing is routine under a burst (a line per card would cost CPU of its own).
                (jlog.debug if isinstance(e, Deferred) else jlog.warning)(
                    "job %s (%s) attempt %d: %s; retrying in %.1fs", job.id, job.kind, job.attempts, e, delay
                )
                await self._retry(job, error=str(e), delay=delay, counted=not paced)
        except (PermanentError, UserError) as e:
            jlog.warning("job %s (%s) failed: %s", job.id, job.kind, e)
            await self._finish(job, fail=str(e))
        except Exception as e:
            message = (
                f"{errors.report(e, log=jlog, what=f'job {job.id} ({job.kind})').text} ({type(e).__name__})"
            )
            if job.attempts >= job.max_attempts:
                await self._finish(job, fail=message)
            else:
                await self._retry(job, error=message, delay=jobs.backoff_seconds(attempts=job.attempts))
        else:
            await self._finish(job, fail=None)
        finally:
            self._unhold(held)

    async def _traced(self, handler: Handler, job: jobs.JobView) -> None:
        """Run the handler in the trace the job was queued in, with the job's ids in the log context."""
        payload = job.payload
        deploy_id = payload.get("deployment_id")
        with (
            observe.bind(deploy_id=deploy_id, job_id=job.id),
            observe.span(
                f"job {job.kind}",
                parent=payload.get("traceparent"),
                job_id=job.id,
                job_kind=job.kind,
                attempt=job.attempts,
                deploy_id=deploy_id,
                notifier=payload.get("notifier"),
            ),
        ):
            await handler.run(ctx=self.ctx, job=job)

    async def _retry(self, job: jobs.JobView, *, error: str, delay: float, counted: bool = True) -> None:
        async with self.ctx.sessionmaker.begin() as session:
            await jobs.retry(
                session, job_id=job.id, owner=self.owner, error=error, delay=delay, counted=counted
            )

    async def _finish(self, job: jobs.JobView, *, fail: str | None) -> None:
        async with self.ctx.sessionmaker.begin() as session:
            if fail is None:
                await jobs.complete(session, job_id=job.id, owner=self.owner)
                return
            if await jobs.fail(session, job_id=job.id, owner=self.owner, error=fail):
                handler = self.handlers.get(job.kind)
                if handler is not None and handler.failed is not None:
                    await handler.failed(session=session, ctx=self.ctx, job=job, error=fail)


async def run_until_idle(ctx: Core, *, handlers: dict[str, Handler], within: float = 60.0) -> None:
    """Drain the queue in the current task (CLI and tests): returns when nothing is runnable."""
    worker = Worker(ctx=ctx, handlers=handlers)
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        claimed = await worker._claim()
        if claimed is None:
            async with ctx.sessionmaker() as session:
                counts = await jobs.depth(session)
            if counts[jobs.RUNNING] == 0:
                return
            await asyncio.sleep(0.05)
            continue
        job, sent = claimed
        await worker._run(job, claimed_at=sent)
    raise TimeoutError("queue did not drain")


__all__ = ["AsyncSession", "Handler", "Worker", "install_wakeup", "run_until_idle"]
