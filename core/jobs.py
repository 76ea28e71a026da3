"""The durable job queue: a table in the same database, so a request and its job commit together.

PostgreSQL: claims use FOR UPDATE SKIP LOCKED and several replicas share the
queue; a statement that locks several job rows takes them in id order
(`_in_id_order`), so two transactions never deadlock on them.  SQLite: one
process owns the queue (transactions are serialised).
A partial unique index allows one *running* job per concurrency key, so two
replicas can never run two deploys of the same app at once.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, event, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, aliased

from core import dialects, observe
from storage import models

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"

# The notify job kind (core.events.NOTIFY_JOB, named here too so the queue needs no import of events).
NOTIFY_KIND = "notify"


@dataclass(frozen=True, kw_only=True)
class JobView:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    lease_owner: str


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    concurrency_key: str | None = None,
    run_at: dt.datetime | None = None,
    max_attempts: int = 8,
    fresh: bool = False,
) -> models.Job:
    """Add a job in the caller's transaction; a job with the same dedupe key is returned instead.

    `fresh=True` skips that look-up when the key cannot exist yet (it names a row just inserted), and
    leaves the row to the session's next flush (its `id` is unset until then); `enqueue_fresh` does
    the same without making the (unused) ORM object.
    """
    if fresh:
        row = _fresh_row(
            session, kind=kind, payload=payload, dedupe_key=dedupe_key, concurrency_key=concurrency_key,
            run_at=run_at, max_attempts=max_attempts,
        )  # fmt: skip
        return models.Job(**{c: row[c] for c in _PENDING_COLUMNS})
    if dedupe_key is not None:
        await write_pending(session)
        existing = await session.scalar(select(models.Job).where(models.Job.dedupe_key == dedupe_key))
        if existing is not None:
            return existing
    job = models.Job(
        kind=kind,
        payload=_traced(kind, payload),
        dedupe_key=dedupe_key,
        concurrency_key=concurrency_key,
        run_at=run_at or models.utcnow(),
        max_attempts=max_attempts,
        state=QUEUED,
    )
    session.add(job)
    await session.flush()
    session.info["jobs_enqueued"] = True
    return job


def enqueue_fresh(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    concurrency_key: str | None = None,
    run_at: dt.datetime | None = None,
    max_attempts: int = 8,
) -> None:
    """`enqueue(fresh=True)` for a caller that does not need the job: the key cannot exist yet (it
    names a row inserted in this transaction), and the row is written with the transaction's other
    fresh jobs in one multi-row INSERT just before it commits (or before jobs are next read in it)."""
    _fresh_row(
        session, kind=kind, payload=payload, dedupe_key=dedupe_key, concurrency_key=concurrency_key,
        run_at=run_at, max_attempts=max_attempts,
    )  # fmt: skip


def _traced(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    if observe.traceparent() is not None and "traceparent" not in payload:
        # The worker continues this trace (one trace per deploy: request -> job -> notifications).
        with observe.span(f"queue {kind}", job_kind=kind):
            return {**payload, "traceparent": observe.traceparent()}
    return payload


def _fresh_row(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str | None,
    concurrency_key: str | None,
    run_at: dt.datetime | None,
    max_attempts: int,
) -> dict[str, Any]:
    # Written just before the transaction commits (or before jobs are next read in it), together with
    # the request's other fresh jobs: one multi-row INSERT (issue 13), still in the caller's
    # transaction.
    row = {
        "kind": kind,
        "payload": _traced(kind, payload),
        "dedupe_key": dedupe_key,
        "concurrency_key": concurrency_key,
        "run_at": run_at or models.utcnow(),
        "max_attempts": max_attempts,
        "state": QUEUED,
        "attempts": 0,
        "finished_at": None,
    }
    session.info.setdefault(_PENDING, []).append(row)
    session.info["jobs_enqueued"] = True
    return row


_PENDING = "shipit.jobs_pending"
_PENDING_COLUMNS = ("kind", "payload", "dedupe_key", "concurrency_key", "run_at", "max_attempts", "state")


def cancel_with_pending(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str,
    concurrency_key: str | None = None,
    max_attempts: int = 8,
) -> None:
    """Cancel the queued job with this dedupe key in the transaction's one jobs INSERT, not with a
    statement of its own (issue 13): the row goes in as `cancelled` and, as the key is taken, the
    INSERT's ON CONFLICT turns the queued job into a cancelled one instead.  One already running
    (claimed) is left alone, as `cancel_where` does: its handler finds its subject gone.

    The other columns are the ones the job was enqueued with: they are written only if it never was
    (then it is a cancelled job that never ran), so the caller should ask only for jobs it knows of.
    """
    now = models.utcnow()
    session.info.setdefault(_PENDING, []).append(
        {
            "kind": kind,
            "payload": payload,
            "dedupe_key": dedupe_key,
            "concurrency_key": concurrency_key,
            "run_at": now,
            "max_attempts": max_attempts,
            "state": CANCELLED,
            "attempts": 0,
            "finished_at": now,
        }
    )


def _build_pending_inserts() -> dict[tuple[bool, bool], Any]:
    """The jobs INSERTs, built once (issue 13: a statement built per request costs more CPU than the
    database spends on it), keyed by (PostgreSQL?, any cancellation?).

    Core statements on the table, executed with the list of rows (one multi-row INSERT): every row has
    the same columns, None included, so they stay one statement; no ORM bulk machinery per row.
    """
    table = cast(Table, models.Job.__table__)
    built: dict[tuple[bool, bool], Any] = {}
    for postgres in (True, False):
        # Fresh jobs only: a plain INSERT, so a taken key still fails loudly.
        built[postgres, False] = insert(table)
        upsert: Any = postgresql_insert(table) if postgres else sqlite_insert(table)
        # Only a cancellation may land on a taken key, and only a queued job is cancelled by it; a fresh
        # job's key names a row inserted in this transaction, so it cannot be taken.
        built[postgres, True] = upsert.on_conflict_do_update(
            index_elements=["dedupe_key"],
            set_={"state": upsert.excluded.state, "finished_at": upsert.excluded.finished_at},
            where=and_(table.c.state == QUEUED, upsert.excluded.state == CANCELLED),
        )
    return built


_PENDING_INSERTS = _build_pending_inserts()


def _in_id_order(where: Callable[[Any], tuple[Any, ...]]) -> Any:
    """The ids of the job rows matching `where`, locked one by one in id order: on PostgreSQL every
    statement that locks several job rows takes them through this, so no two of our transactions
    ever wait for each other's rows in a cycle (a deadlock; PostgreSQL aborts one of them).

    An UPDATE has no ORDER BY and locks rows in whatever order its plan visits them (by some index,
    or where they lie on disk).  The PostgreSQL docs' defence against deadlocks is to take locks on
    several objects in one consistent order
    (https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-DEADLOCKS), and a SELECT
    applies its ORDER BY first and then locks the rows as it returns them
    (https://www.postgresql.org/docs/current/sql-select.html#SQL-FOR-UPDATE-SHARE).  FOR UPDATE, the
    strongest row lock: the statement that then changes the rows never has to wait for more.
    SQLite (one writer, no row locks) gets the same SELECT without the locking clause.
    """
    job = aliased(models.Job)  # not correlated with the statement it feeds, which names jobs too
    return select(job.id).where(*where(job)).order_by(job.id).with_for_update()


_LOCK_KEYS_IN_ID_ORDER = _in_id_order(lambda j: (j.dedupe_key.in_(bindparam("keys", expanding=True)),))


def _pending_insert(
    *, postgres: bool, rows: list[dict[str, Any]]
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """The INSERT for these pending rows, the rows to give it, and the keys of the jobs written
    before that it cancels.

    A job queued and then cancelled in this transaction goes in once, as the cancelled job the
    INSERT's ON CONFLICT would have made of it (issue 13: a batch of pushes supersedes every deploy
    it queued but the last); only the cancellation of a job written before needs the ON CONFLICT.
    New dicts: a savepoint's copy of the pending rows keeps the old ones."""
    if not any(r["state"] == CANCELLED for r in rows):
        return _PENDING_INSERTS[postgres, False], rows, []
    fresh: dict[str, int] = {}
    out: list[dict[str, Any] | None] = list(rows)
    earlier: list[str] = []
    for i, row in enumerate(rows):
        key = row["dedupe_key"]
        if row["state"] == QUEUED and key is not None:
            fresh[key] = i
        elif row["state"] == CANCELLED:
            if key not in fresh:
                earlier.append(key)
                continue
            j = fresh.pop(key)
            out[j] = {**rows[j], "state": CANCELLED, "finished_at": row["finished_at"]}
            out[i] = None
    return _PENDING_INSERTS[postgres, bool(earlier)], [r for r in out if r is not None], earlier


def _cancelled_keys(*, postgres: bool, earlier: list[str]) -> list[str] | None:
    """PostgreSQL: the keys of the jobs written before that this INSERT cancels, when there are several.

    Its ON CONFLICT locks each existing row it lands on (whatever its state) in the order of the
    rows, which is not the id order every other statement that locks several job rows keeps
    (`_in_id_order`); those rows are locked in that order first.  One more statement, only when a
    transaction cancels two jobs or more that it did not queue itself: with one, the INSERT lands
    on one existing row at most (a fresh job's key names a row of this transaction).
    """
    return earlier if postgres and len(earlier) > 1 else None


async def write_pending(session: AsyncSession) -> None:
    """Insert the fresh jobs this transaction added so far (before anything reads the jobs table)."""
    if session.info.get(_PENDING):
        await session.run_sync(_write_pending)


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    rows = session.info.pop(_PENDING, None)
    if rows:
        postgres = (session.bind or session.get_bind()).dialect.name == "postgresql"
        stmt, rows, earlier = _pending_insert(postgres=postgres, rows=rows)
        keys = _cancelled_keys(postgres=postgres, earlier=earlier)
        if keys is not None:
            session.execute(_LOCK_KEYS_IN_ID_ORDER, {"keys": keys})
        session.execute(stmt, rows)


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)  # rolled back: they go with it
        session.info.pop(_SAVEPOINTS, None)


# A savepoint rolled back takes its jobs with it, and gives back those it wrote that were queued
# before it: the jobs waiting are then what they were when it began (the database forgot the rest).
_SAVEPOINTS = "shipit.jobs_pending_at_savepoint"


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.setdefault(_SAVEPOINTS, {})[transaction] = list(session.info.get(_PENDING, ()))


@event.listens_for(Session, "after_soft_rollback")
def _back_to_savepoint(session: Session, previous_transaction: SessionTransaction) -> None:
    marks = session.info.get(_SAVEPOINTS)
    if previous_transaction.nested and marks and previous_transaction in marks:
        session.info[_PENDING] = marks.pop(previous_transaction)


async def claim(
    session: AsyncSession,
    *,
    owner: str,
    lease_seconds: float,
    skip_locked: bool,
    kinds: Collection[str] | None = None,
    notifiers: Collection[str] | None = None,
    orphan_after: float = 600.0,
) -> JobView | None:
    """Take the next runnable job (or one whose lease ran out) for `owner`.

    `kinds`: only jobs of these kinds (those this worker has handlers for); other kinds stay queued
    for a replica that can run them instead of failing here.  `notifiers`: of the notify jobs, only
    those for these notifiers (their concurrency key is "notify:<notifier>:..."); one that no
    replica has claimed for `orphan_after` seconds is taken anyway (and dropped by its handler), so
    a notifier switched off everywhere does not leave its jobs queued for ever.
    """
    await write_pending(session)
    now = models.utcnow()
    q = _claim_query(
        kinds=tuple(sorted(kinds)) if kinds is not None else None,
        notifiers=tuple(sorted(notifiers)) if notifiers is not None else None,
        skip_locked=skip_locked,
    )
    params = {"now": now, "orphan_before": now - dt.timedelta(seconds=orphan_after)}
    row = (await session.execute(q, params)).first()
    if row is None:
        return None
    job_id, kind, payload, attempts, max_attempts = row
    take = {
        "job_id": job_id,
        "owner": owner,
        "until": now + dt.timedelta(seconds=lease_seconds),
        "attempts": attempts + 1,
    }
    try:
        if dialects.is_postgres(session):
            # Another replica may start a job with the same concurrency key between our SELECT and
            # UPDATE: the unique index refuses ours, and the savepoint keeps the transaction usable.
            async with session.begin_nested():
                await session.execute(_TAKE, take)
        else:
            # One writer at a time: no one else can have started it since the SELECT above.
            await session.execute(_TAKE, take)
    except IntegrityError:
        return None
    return JobView(
        id=job_id,
        kind=kind,
        payload=dict(payload),
        attempts=attempts + 1,
        max_attempts=max_attempts,
        lease_owner=owner,
    )


# The claim's statements, built once (per worker's kinds and notifiers) with the times as parameters:
# every job starts with a claim, and building and keying the statement anew each time was most of a
# claim's CPU (issue 13: a notify job is only a few statements in all).  Columns, not ORM rows: the
# claim needs five values, and the take is one UPDATE instead of a flush.
_CLAIM_QUERIES: dict[tuple[tuple[str, ...] | None, tuple[str, ...] | None, bool], Any] = {}


def _claim_query(
    *, kinds: tuple[str, ...] | None, notifiers: tuple[str, ...] | None, skip_locked: bool
) -> Any:
    key = (kinds, notifiers, skip_locked)
    q = _CLAIM_QUERIES.get(key)
    if q is not None:
        return q
    job = models.Job
    now = bindparam("now", type_=models.UTCDateTime())
    busy_keys = select(job.concurrency_key).where(job.state == RUNNING, job.concurrency_key.is_not(None))
    q = (
        select(job.id, job.kind, job.payload, job.attempts, job.max_attempts)
        .where(
            or_(
                and_(
                    job.state == QUEUED,
                    job.run_at <= now,
                    or_(job.concurrency_key.is_(None), job.concurrency_key.not_in(busy_keys)),
                ),
                and_(job.state == RUNNING, job.lease_until < now),
            )
        )
        .order_by(job.run_at, job.id)
        .limit(1)
    )
    if kinds is not None:
        q = q.where(job.kind.in_(kinds))
    if notifiers is not None:
        q = q.where(
            or_(
                job.kind != NOTIFY_KIND,
                job.run_at < bindparam("orphan_before", type_=models.UTCDateTime()),
                *(job.concurrency_key.startswith(f"notify:{n}:", autoescape=True) for n in notifiers),
            )
        )
    if skip_locked:
        q = q.with_for_update(skip_locked=True)
    if len(_CLAIM_QUERIES) < 64:  # a handful of workers' kinds; a bound, not a tuning knob
        _CLAIM_QUERIES[key] = q
    return q


_TAKE = (
    update(models.Job)
    .where(models.Job.id == bindparam("job_id"))
    .values(
        state=RUNNING,
        lease_owner=bindparam("owner"),
        lease_until=bindparam("until", type_=models.UTCDateTime()),
        attempts=bindparam("attempts"),
    )
    .execution_options(synchronize_session=False)
)


async def heartbeat(session: AsyncSession, *, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False means the lease was lost (another worker took the job)."""
    return job_id in await renew(session, job_ids=[job_id], owner=owner, lease_seconds=lease_seconds)


async def renew(
    session: AsyncSession, *, job_ids: Collection[int], owner: str, lease_seconds: float
) -> set[int]:
    """Extend the leases of all these jobs in one statement; the ids returned are those still held.

    A worker's one heartbeat for every job it runs: an id missing from the answer was lost (taken
    over after its lease ran out, finished, or handed back), and only that job has to stop.
    """
    if not job_ids:
        return set()
    until = models.utcnow() + dt.timedelta(seconds=lease_seconds)
    if dialects.is_postgres(session):
        kept = await session.scalars(
            _RENEW_IN_ID_ORDER, {"ids": sorted(job_ids), "owner": owner, "until": until}
        )
        return set(kept.all())
    stmt = (
        update(models.Job)
        .where(
            models.Job.id.in_(sorted(job_ids)), models.Job.lease_owner == owner, models.Job.state == RUNNING
        )
        .values(lease_until=until)
    )
    bind = session.bind if session.bind is not None else session.get_bind()
    if bind.dialect.update_returning:
        return set((await session.scalars(stmt.returning(models.Job.id))).all())
    # SQLite before 3.35: the rows this transaction just renewed are still its own to read back.
    await session.execute(stmt)
    return set(
        await session.scalars(
            select(models.Job.id).where(
                models.Job.id.in_(sorted(job_ids)),
                models.Job.lease_owner == owner,
                models.Job.state == RUNNING,
            )
        )
    )


def _build_renew() -> Any:
    """The heartbeat's renewal on PostgreSQL, built once: one statement still, its rows locked in id
    order before the UPDATE touches them (`_in_id_order`).  A renewal the heartbeat gave up on may
    still run in the database beside the next beat, and a lease taken over is in two workers' lists."""
    ids: Any = bindparam("ids", expanding=True)
    owner: Any = bindparam("owner")
    held = _in_id_order(lambda j: (j.id.in_(ids), j.lease_owner == owner, j.state == RUNNING))
    return (
        update(models.Job)
        .where(models.Job.id.in_(held))
        .values(lease_until=bindparam("until", type_=models.UTCDateTime()))
        .returning(models.Job.id)
        .execution_options(synchronize_session=False)
    )


_RENEW_IN_ID_ORDER = _build_renew()


async def release_predecessors(session: AsyncSession, *, prefix: str, keep: str) -> list[int]:
    """End the leases of running jobs whose owner was an earlier, dead process of this instance.

    The caller proves those processes are dead by holding the instance's lock (core/instance.py);
    `keep` is the caller's own owner.  Only the lease ends here: the jobs then change hands through
    claim(), the one place where a job ever gets a new owner.
    """
    await write_pending(session)
    # Locked in id order (`_in_id_order`): the UPDATE below then finds every row already its own.
    ids = list(
        await session.scalars(
            _in_id_order(
                lambda j: (
                    j.state == RUNNING,
                    j.lease_owner.startswith(prefix, autoescape=True),
                    j.lease_owner != keep,
                )
            )
        )
    )
    if ids:
        await session.execute(
            update(models.Job)
            .where(
                models.Job.id.in_(ids),
                models.Job.state == RUNNING,
                models.Job.lease_owner.startswith(prefix, autoescape=True),
                models.Job.lease_owner != keep,
            )
            .values(lease_until=models.utcnow() - dt.timedelta(seconds=1))
        )
        session.info["jobs_enqueued"] = True  # wake the workers: these can be claimed now
    return ids


async def _owned(session: AsyncSession, *, job_id: int, owner: str) -> models.Job | None:
    job = await session.get(models.Job, job_id, with_for_update=True)
    if job is None or job.lease_owner != owner or job.state != RUNNING:
        return None
    return job


async def complete(session: AsyncSession, *, job_id: int, owner: str) -> bool:
    """Mark the job done if `owner` still holds it; False: it does not (the lease was lost).

    One conditional UPDATE, not a locked read and a flush: every job ends here, and a notify job is
    only a few statements in all (issue 13).  The WHERE is the check `_owned` makes, atomically."""
    result = await session.execute(_COMPLETE, {"job_id": job_id, "owner": owner, "now": models.utcnow()})
    return bool(result.rowcount)  # type: ignore[attr-defined]


_COMPLETE = (
    update(models.Job)
    .where(models.Job.id == bindparam("job_id"), models.Job.lease_owner == bindparam("owner"))
    .where(models.Job.state == RUNNING)
    .values(state=DONE, finished_at=bindparam("now", type_=models.UTCDateTime()), lease_until=None)
    .execution_options(synchronize_session=False)
)


async def fail(session: AsyncSession, *, job_id: int, owner: str, error: str) -> bool:
    job = await _owned(session, job_id=job_id, owner=owner)
    if job is None:
        return False
    job.state, job.finished_at, job.lease_until, job.last_error = FAILED, models.utcnow(), None, error
    return True


def backoff_seconds(*, attempts: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter around the midpoint, so retries do not stampede."""
    delay: float = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto


async def retry(
    session: AsyncSession, *, job_id: int, owner: str, error: str, delay: float, counted: bool = True
) -> bool:
    """Hand the job back to the queue, to run again after `delay`, if `owner` still holds it.

    One conditional UPDATE, as `complete`: under a burst of cards most notify jobs come back here
    once (paced, `Deferred`) before they run.  `counted=False` (our own pacing, which stopped the
    job before it did anything): the claim's attempt is given back, so `attempts` above 1 still
    means an earlier run may have done its work (a notifier then looks before sending again)."""
    result = await session.execute(
        _RETRY if counted else _RETRY_UNCOUNTED,
        {
            "job_id": job_id,
            "owner": owner,
            "error": error,
            "run_at": models.utcnow() + dt.timedelta(seconds=delay),
        },
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    session.info["jobs_enqueued"] = True
    return True


_RETRY = (
    update(models.Job)
    .where(models.Job.id == bindparam("job_id"), models.Job.lease_owner == bindparam("owner"))
    .where(models.Job.state == RUNNING)
    .values(
        state=QUEUED,
        lease_owner=None,
        lease_until=None,
        last_error=bindparam("error"),
        run_at=bindparam("run_at", type_=models.UTCDateTime()),
    )
    .execution_options(synchronize_session=False)
)
_RETRY_UNCOUNTED = _RETRY.values(attempts=models.Job.attempts - 1)


async def cancel_where(session: AsyncSession, *, dedupe_keys: list[str]) -> None:
    """Cancel queued jobs (a superseded or cancelled deploy's job)."""
    await write_pending(session)
    if not dedupe_keys:
        return
    # Its rows locked in id order on PostgreSQL (`_in_id_order`); SQLite reads the same ids first.
    queued = _in_id_order(lambda j: (j.dedupe_key.in_(dedupe_keys), j.state == QUEUED))
    await session.execute(
        update(models.Job)
        .where(models.Job.id.in_(queued))
        .values(state=CANCELLED, finished_at=models.utcnow())
    )


async def depth(session: AsyncSession) -> dict[str, int]:
    await write_pending(session)
    from sqlalchemy import func

    rows = await session.execute(
        select(models.Job.state, func.count())
        .where(models.Job.state.in_([QUEUED, RUNNING]))
        .group_by(models.Job.state)
    )
    counts = {QUEUED: 0, RUNNING: 0}
    for state, n in rows.all():
        counts[state] = n
    return counts
