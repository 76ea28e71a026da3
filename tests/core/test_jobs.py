"""The durable job queue, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select, text, update

from core import jobs
from core.errors import PermanentError, TransientError
from core.worker import Handler, Worker
from shipit.runtime import Runtime
from storage import db, models
from tests.helpers import eventually

pytestmark = pytest.mark.both_databases


def _skip_locked(rt: Runtime) -> bool:
    return db.is_postgres(str(rt.engine.url))


async def _claim(rt: Runtime, owner: str, lease: float = 30) -> jobs.JobView | None:
    async with rt.sessionmaker.begin() as session:
        return await jobs.claim(session, owner=owner, lease_seconds=lease, skip_locked=_skip_locked(rt))


async def test_enqueue_claim_complete(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="k", payload={"x": 1})
    claimed = await _claim(rt, "a")
    assert (
        claimed is not None and claimed.id == job.id and claimed.payload == {"x": 1} and claimed.attempts == 1
    )
    assert await _claim(rt, "b") is None
    async with rt.sessionmaker.begin() as session:
        assert await jobs.complete(session, job_id=job.id, owner="a")
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and row.state == jobs.DONE and row.finished_at is not None


async def test_dedupe_key_makes_one_job(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        first = await jobs.enqueue(session, kind="k", payload={}, dedupe_key="same")
    async with rt.sessionmaker.begin() as session:
        second = await jobs.enqueue(session, kind="k", payload={}, dedupe_key="same")
    assert first.id == second.id
    async with rt.sessionmaker() as session:
        assert len(list(await session.scalars(select(models.Job)))) == 1


async def test_a_savepoint_rolled_back_takes_its_queued_jobs_and_cancellations_with_it(rt: Runtime) -> None:
    """Fresh jobs and cancellations wait in memory for the transaction's one jobs INSERT: a savepoint
    rolled back must undo those it made, and give back the ones it wrote that were queued before it."""
    async with rt.sessionmaker.begin() as session:
        jobs.enqueue_fresh(session, kind="k", payload={}, dedupe_key="kept")
        jobs.enqueue_fresh(session, kind="k", payload={}, dedupe_key="released")
        with pytest.raises(LookupError):
            async with session.begin_nested():
                jobs.enqueue_fresh(session, kind="k", payload={}, dedupe_key="gone")
                jobs.cancel_with_pending(session, kind="k", payload={}, dedupe_key="kept")
                await jobs.write_pending(session)  # inside the savepoint: "kept" too
                raise LookupError("rolled back")
        async with session.begin_nested():
            jobs.enqueue_fresh(session, kind="k", payload={}, dedupe_key="inner")
    async with rt.sessionmaker() as session:
        states = {j.dedupe_key: j.state for j in await session.scalars(select(models.Job))}
    assert states == {"kept": jobs.QUEUED, "released": jobs.QUEUED, "inner": jobs.QUEUED}


async def test_a_job_queued_and_cancelled_in_one_transaction_is_written_once_cancelled(rt: Runtime) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            statements.append(statement)

    event.listen(rt.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with rt.sessionmaker.begin() as session:
            jobs.enqueue_fresh(session, kind="k", payload={"n": 1}, dedupe_key="first")
            jobs.enqueue_fresh(session, kind="k", payload={"n": 2}, dedupe_key="second")
            jobs.cancel_with_pending(session, kind="k", payload={"n": 1}, dedupe_key="first")
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", record)
    async with rt.sessionmaker() as session:
        rows = {j.dedupe_key: j for j in await session.scalars(select(models.Job))}
    assert {k: (j.state, j.payload, j.finished_at is not None) for k, j in rows.items()} == {
        "first": (jobs.CANCELLED, {"n": 1}, True),
        "second": (jobs.QUEUED, {"n": 2}, False),
    }
    assert len(statements) == 1 and "ON CONFLICT" not in statements[0].upper()


async def test_one_running_job_per_concurrency_key(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        a1 = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app-a")
        a2 = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app-a")
        b1 = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app-b")
    first = await _claim(rt, "w1")
    second = await _claim(rt, "w2")
    assert first is not None and second is not None
    assert {first.id, second.id} == {a1.id, b1.id}, "a2 must wait while a1 runs"
    assert await _claim(rt, "w3") is None
    async with rt.sessionmaker.begin() as session:
        await jobs.complete(session, job_id=a1.id, owner="w1" if first.id == a1.id else "w2")
    third = await _claim(rt, "w3")
    assert third is not None and third.id == a2.id


async def test_a_claim_that_loses_the_concurrency_key_race_takes_nothing_and_its_transaction_goes_on(
    rt: Runtime,
) -> None:
    """PostgreSQL: B's SELECT cannot see A's uncommitted start of a job with the same concurrency key,
    so B tries to start the other one; the unique index makes B wait for A, then refuses it.  B takes
    nothing and its transaction stays usable (the refused UPDATE is inside its own savepoint)."""
    if not _skip_locked(rt):
        pytest.skip("SQLite serialises whole write transactions: no claim runs beside another")
    async with rt.sessionmaker.begin() as session:
        first = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app-a")
        second = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app-a")
    async with rt.sessionmaker() as a:
        await a.begin()
        taken = await jobs.claim(a, owner="a", lease_seconds=30, skip_locked=True)
        assert taken is not None and taken.id == first.id

        async def claim_b() -> tuple[jobs.JobView | None, int]:
            async with rt.sessionmaker.begin() as b:
                got = await jobs.claim(b, owner="b", lease_seconds=30, skip_locked=True)
                still = await b.scalar(select(models.Job.id).where(models.Job.id == second.id))
                return got, int(still or 0)

        b_task = asyncio.create_task(claim_b())

        async def waiting_on_a_lock() -> int:
            async with rt.engine.connect() as conn:
                return int(
                    await conn.scalar(
                        text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                    )
                    or 0
                )

        await eventually(waiting_on_a_lock, what="B waiting for A's start of the first job")
        await a.commit()
    got, still = await b_task
    assert got is None and still == second.id
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, second.id)
        assert row is not None and row.state == jobs.QUEUED and row.lease_owner is None


async def test_expired_lease_is_claimed_again_and_the_old_owner_loses_it(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app")
    assert await _claim(rt, "dead", lease=30) is not None
    assert await _claim(rt, "alive") is None
    async with rt.sessionmaker.begin() as session:  # the owner died: its lease runs out
        await session.execute(
            update(models.Job)
            .where(models.Job.id == job.id)
            .values(lease_until=models.utcnow() - dt.timedelta(seconds=1))
        )
    again = await _claim(rt, "alive")
    assert again is not None and again.id == job.id and again.attempts == 2
    async with rt.sessionmaker.begin() as session:
        assert not await jobs.complete(session, job_id=job.id, owner="dead")
        assert not await jobs.heartbeat(session, job_id=job.id, owner="dead", lease_seconds=30)
        assert await jobs.complete(session, job_id=job.id, owner="alive")


async def _job_row(rt: Runtime, job_id: int) -> models.Job:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job_id)
    assert row is not None
    return row


async def test_a_live_lease_is_never_taken_by_another_worker(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="k", payload={})
    held = await _claim(rt, "host-a/one/aaa:1", lease=30)
    assert held is not None
    # Many workers at once, on PostgreSQL truly concurrent: none of them gets the job.
    rivals = [f"host-b/two/{i}:1" for i in range(8)]
    assert await asyncio.gather(*(_claim(rt, owner) for owner in rivals)) == [None] * len(rivals)
    async with rt.sessionmaker.begin() as session:
        for owner in rivals:
            assert not await jobs.heartbeat(session, job_id=job.id, owner=owner, lease_seconds=30)
            assert not await jobs.complete(session, job_id=job.id, owner=owner)
            assert not await jobs.fail(session, job_id=job.id, owner=owner, error="x")
            assert not await jobs.retry(session, job_id=job.id, owner=owner, error="x", delay=0)
        # Another instance's take-over leaves it alone, and so does this instance's own live owner.
        assert await jobs.release_predecessors(session, prefix="host-b/two/", keep=rivals[0]) == []
        assert await jobs.release_predecessors(session, prefix="host-a/one/", keep=held.lease_owner) == []
    assert await _claim(rt, "host-b/two/late:1") is None
    row = await _job_row(rt, job.id)
    assert (row.state, row.lease_owner, row.attempts) == (jobs.RUNNING, "host-a/one/aaa:1", 1)
    async with rt.sessionmaker.begin() as session:
        assert await jobs.heartbeat(session, job_id=job.id, owner=held.lease_owner, lease_seconds=30)
        assert await jobs.complete(session, job_id=job.id, owner=held.lease_owner)


async def test_an_expired_lease_goes_to_exactly_one_of_many_claimants(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="k", payload={}, concurrency_key="app")
    assert await _claim(rt, "dead", lease=30) is not None
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Job)
            .where(models.Job.id == job.id)
            .values(lease_until=models.utcnow() - dt.timedelta(seconds=1))
        )
    won = [v for v in await asyncio.gather(*(_claim(rt, f"w{i}") for i in range(8))) if v is not None]
    assert len(won) == 1 and won[0].attempts == 2
    assert (await _job_row(rt, job.id)).lease_owner == won[0].lease_owner


async def test_a_restarted_instance_ends_only_its_dead_predecessors_leases(rt: Runtime) -> None:
    owners = {
        "predecessor": "my_host/abc/0ld:1",
        "other_instance": "my_host/xyz/1:1",
        "other_host": "myXhost/abc/2:1",  # '_' is a LIKE wildcard: it must not match here
        "self": "my_host/abc/n3w:1",
    }
    ids: dict[str, int] = {}
    for name, owner in owners.items():
        async with rt.sessionmaker.begin() as session:
            ids[name] = (await jobs.enqueue(session, kind="k", payload={}, concurrency_key=name)).id
        claimed = await _claim(rt, owner, lease=30)
        assert claimed is not None and claimed.id == ids[name]
    async with rt.sessionmaker.begin() as session:
        released = await jobs.release_predecessors(session, prefix="my_host/abc/", keep=owners["self"])
    assert released == [ids["predecessor"]]
    again = await _claim(rt, owners["self"])
    assert again is not None and again.id == ids["predecessor"] and again.attempts == 2
    assert await _claim(rt, "anyone") is None  # the others still hold live leases
    async with rt.sessionmaker.begin() as session:
        assert not await jobs.heartbeat(
            session, job_id=ids["predecessor"], owner=owners["predecessor"], lease_seconds=30
        )


async def test_a_worker_that_loses_its_lease_stops_the_work_and_leaves_the_job_alone(rt: Runtime) -> None:
    rt.core.config.job_lease_seconds = 1.5
    started, stopped = asyncio.Event(), asyncio.Event()

    async def forever(*, ctx: object, job: jobs.JobView) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="forever", payload={})
    worker = Worker(ctx=rt.core, handlers={"forever": Handler(run=forever)})
    worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        async with rt.sessionmaker.begin() as session:  # another worker took it (say, after a long pause)
            await session.execute(
                update(models.Job).where(models.Job.id == job.id).values(lease_owner="thief")
            )
        await asyncio.wait_for(stopped.wait(), 10)
    finally:
        await worker.stop()
    row = await _job_row(rt, job.id)
    assert (row.state, row.lease_owner, row.attempts) == (jobs.RUNNING, "thief", 1)


async def test_a_worker_that_cannot_renew_stops_before_its_lease_runs_out(rt: Runtime) -> None:
    """The database is locked by someone else: the heartbeat hangs, the fence stops the work anyway."""
    rt.core.config.job_lease_seconds = 4.0
    started, stopped = asyncio.Event(), asyncio.Event()
    stopped_at: list[dt.datetime] = []

    async def forever(*, ctx: object, job: jobs.JobView) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped_at.append(models.utcnow())
            stopped.set()

    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="forever", payload={})
    worker = Worker(ctx=rt.core, handlers={"forever": Handler(run=forever)})
    other = db.create_engine(str(rt.engine.url.render_as_string(hide_password=False)))
    worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        async with other.begin() as conn:  # BEGIN IMMEDIATE on SQLite: every writer waits
            if _skip_locked(rt):
                await conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            lease_until = await conn.scalar(select(models.Job.lease_until).where(models.Job.id == job.id))
            await asyncio.wait_for(stopped.wait(), 10)
    finally:
        await other.dispose()
        await worker.stop()
    assert lease_until is not None and stopped_at
    # Stopped while the lease in the database still ran: nobody else could have claimed it yet.
    assert stopped_at[0] < lease_until.replace(tzinfo=stopped_at[0].tzinfo)


@contextmanager
def _lease_renewals(rt: Runtime) -> Iterator[list[tuple[str, Any]]]:
    """Every statement that renews leases (and only those), with its parameters, as sent."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        flat = " ".join(statement.split())
        if flat.startswith("UPDATE jobs SET lease_until="):
            seen.append((flat, parameters))

    event.listen(rt.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", record)


async def _until(check: Any, *, within: float = 15.0) -> None:
    """Wait for check() (a bool, or an awaitable of one) to hold: a bound on a hang, not a timing."""

    async def poll() -> None:
        while not (await r if inspect.isawaitable(r := check()) else r):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), within)


async def _has_state(rt: Runtime, job_id: int, state: str) -> bool:
    return (await _job_row(rt, job_id)).state == state


async def test_renew_extends_only_the_leases_still_held_in_one_statement(rt: Runtime) -> None:
    ids = []
    for i in range(5):
        async with rt.sessionmaker.begin() as session:
            ids.append((await jobs.enqueue(session, kind="k", payload={}, concurrency_key=f"k{i}")).id)
        assert (await _claim(rt, "me", lease=30)) is not None
    held, stolen, done, handed_back, never = ids
    async with rt.sessionmaker.begin() as session:
        await session.execute(update(models.Job).where(models.Job.id == stolen).values(lease_owner="thief"))
        assert await jobs.complete(session, job_id=done, owner="me")
        assert await jobs.retry(session, job_id=handed_back, owner="me", error="x", delay=3600)
        await session.execute(
            update(models.Job).where(models.Job.id == never).values(state=jobs.CANCELLED, lease_owner=None)
        )
    before = {i: (await _job_row(rt, i)).lease_until for i in ids}
    with _lease_renewals(rt) as seen:
        async with rt.sessionmaker.begin() as session:
            kept = await jobs.renew(session, job_ids=ids, owner="me", lease_seconds=300)
    assert kept == {held}
    assert len(seen) == 1, seen
    after = {i: (await _job_row(rt, i)).lease_until for i in ids}
    assert after[held] is not None and before[held] is not None and after[held] > before[held]
    assert {i: after[i] for i in ids if i != held} == {i: before[i] for i in ids if i != held}
    async with rt.sessionmaker.begin() as session:
        assert await jobs.renew(session, job_ids=[], owner="me", lease_seconds=300) == set()


async def _blocked(rt: Runtime, pid: int) -> bool:
    """PostgreSQL: whether the backend `pid` waits for a lock another transaction holds."""
    async with rt.engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT cardinality(pg_blocking_pids(:pid)) > 0"), {"pid": pid}))


async def _backend_pid(session: Any) -> int:
    return int(await session.scalar(text("SELECT pg_backend_pid()")))


async def test_overlapping_renewals_lock_their_rows_in_id_order_and_wait_instead_of_deadlocking(
    rt: Runtime,
) -> None:
    """PostgreSQL: an UPDATE locks rows in whatever order its plan visits them.  Two transactions that
    renew overlapping leases (a renewal the heartbeat gave up on, still in the database, and the next
    beat) must lock them in one order, or each can hold a row the other waits for: a deadlock, and
    one of them aborted.  Here the other transaction holds the lower row; the beat, planned to visit
    the rows where they lie on disk (the higher id first), must wait for it holding nothing, so the
    other can go on to the higher row and commit."""
    if not _skip_locked(rt):
        pytest.skip("SQLite: one writer at a time and no row locks, so no lock order either")
    ids = []
    for i in range(2):
        async with rt.sessionmaker.begin() as session:
            ids.append((await jobs.enqueue(session, kind="k", payload={}, concurrency_key=f"k{i}")).id)
        assert await _claim(rt, "me", lease=30) is not None
    low, high = sorted(ids)
    async with rt.sessionmaker.begin() as session:  # a newer version of the lower row, after the higher
        await session.execute(
            update(models.Job)
            .where(models.Job.id == low)
            .values(lease_until=models.utcnow() + dt.timedelta(seconds=30))
        )
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(text("SELECT id FROM jobs ORDER BY ctid"))) == [high, low]
    pids: list[int] = []

    async def beat() -> set[int]:
        async with rt.sessionmaker.begin() as session:
            pids.append(await _backend_pid(session))
            # The plan a big table or a long list of ids may get: the rows visited where they lie.
            await session.execute(text("SET LOCAL enable_indexscan = off"))
            await session.execute(text("SET LOCAL enable_bitmapscan = off"))
            return await jobs.renew(session, job_ids=[low, high], owner="me", lease_seconds=300)

    async def beat_waits() -> bool:
        return bool(pids) and await _blocked(rt, pids[0])

    beating: asyncio.Task[set[int]] | None = None
    try:
        async with rt.sessionmaker() as other:
            await other.begin()
            assert await jobs.renew(other, job_ids=[low], owner="me", lease_seconds=60) == {low}
            beating = asyncio.create_task(beat())
            await eventually(beat_waits, what="the beat waiting for the lower row")
            # On to the higher row, as a renewal of both in id order does: a beat that had locked it
            # already (visiting it first) would now wait for this transaction, and this one for it.
            assert await jobs.renew(other, job_ids=[high], owner="me", lease_seconds=60) == {high}
            await other.commit()
        assert await beating == {low, high}
    finally:
        if beating is not None and not beating.done():
            await asyncio.gather(beating, return_exceptions=True)
    leases = {i: (await _job_row(rt, i)).lease_until for i in (low, high)}
    assert leases[low] == leases[high], "the beat renewed both, after the other transaction"


@pytest.mark.parametrize("at_commit", [True, False], ids=["at-commit", "write-pending"])
async def test_cancelling_several_jobs_in_one_insert_locks_their_rows_in_id_order(
    rt: Runtime, at_commit: bool
) -> None:
    """PostgreSQL: the jobs INSERT's ON CONFLICT locks each existing row it lands on, in the order of
    its rows.  A request that cancels two queued jobs (superseding two deploys, the higher job first)
    must take them in id order too: here it waits for the other transaction's lower row holding
    nothing, so the other can go on to the higher one and commit.  The INSERT goes as the request's
    commit begins, or earlier when something reads the jobs table (`write_pending`)."""
    if not _skip_locked(rt):
        pytest.skip("SQLite: one writer at a time and no row locks, so no lock order either")
    async with rt.sessionmaker.begin() as session:
        low = (await jobs.enqueue(session, kind="k", payload={}, dedupe_key="job:low")).id
        high = (await jobs.enqueue(session, kind="k", payload={}, dedupe_key="job:high")).id
    assert low < high
    pids: list[int] = []

    async def supersede() -> None:
        async with rt.sessionmaker.begin() as session:
            pids.append(await _backend_pid(session))
            for key in ("job:high", "job:low"):
                jobs.cancel_with_pending(session, kind="k", payload={}, dedupe_key=key)
            if not at_commit:
                await jobs.write_pending(session)

    async def superseding_waits() -> bool:
        return bool(pids) and await _blocked(rt, pids[0])

    superseding: asyncio.Task[None] | None = None
    try:
        async with rt.sessionmaker() as other:
            await other.begin()
            await jobs.cancel_where(other, dedupe_keys=["job:low"])
            superseding = asyncio.create_task(supersede())
            await eventually(superseding_waits, what="the request waiting for the lower row")
            await jobs.cancel_where(other, dedupe_keys=["job:high"])
            await other.commit()
        await superseding
    finally:
        if superseding is not None and not superseding.done():
            await asyncio.gather(superseding, return_exceptions=True)
    assert {(await _job_row(rt, i)).state for i in (low, high)} == {jobs.CANCELLED}


async def test_one_beat_renews_every_running_job_of_a_worker_in_one_statement(rt: Runtime) -> None:
    rt.core.config.job_lease_seconds = 3.0  # a beat a second
    n = 6
    started: set[int] = set()

    async def block(*, ctx: object, job: jobs.JobView) -> None:
        started.add(job.id)
        await asyncio.Event().wait()

    async with rt.sessionmaker.begin() as session:
        ids = [(await jobs.enqueue(session, kind="block", payload={})).id for _ in range(n)]
    worker = Worker(ctx=rt.core, handlers={"block": Handler(run=block)}, concurrency=n)
    with _lease_renewals(rt) as seen:
        worker.start()
        try:
            await _until(lambda: len(started) == n)
            mark = len(seen)
            await _until(lambda: len(seen) >= mark + 2)
            beats = seen[mark : mark + 2]
            # The second beat began after the first committed: every row holds one beat's lease.
            async with rt.sessionmaker() as session:
                rows = list(await session.scalars(select(models.Job).where(models.Job.id.in_(ids))))
        finally:
            await worker.stop(grace=0)
    for statement, parameters in beats:
        assert set(ids) <= set(parameters), (statement, parameters)
    assert {(r.state, r.lease_owner) for r in rows} == {(jobs.RUNNING, worker.owner)}
    assert len({r.lease_until for r in rows}) == 1, "one statement set one lease for all"


async def test_a_lease_lost_stops_that_job_only_and_a_finished_job_is_no_longer_renewed(rt: Runtime) -> None:
    rt.core.config.job_lease_seconds = 3.0
    started: set[int] = set()
    stopped: set[int] = set()
    release: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def block(*, ctx: object, job: jobs.JobView) -> None:
        started.add(job.id)
        try:
            await release[job.id].wait()
        except asyncio.CancelledError:
            stopped.add(job.id)
            raise

    async with rt.sessionmaker.begin() as session:
        ids = [(await jobs.enqueue(session, kind="block", payload={})).id for _ in range(4)]
    lost, finished, *kept = ids
    worker = Worker(ctx=rt.core, handlers={"block": Handler(run=block)}, concurrency=4)
    with _lease_renewals(rt) as seen:
        worker.start()
        try:
            await _until(lambda: len(started) == 4)
            release[finished].set()
            await _until(lambda: _has_state(rt, finished, jobs.DONE))
            async with rt.sessionmaker.begin() as session:  # another worker took it (say, after a long pause)
                await session.execute(
                    update(models.Job).where(models.Job.id == lost).values(lease_owner="thief")
                )
            await _until(lambda: lost in stopped)
            mark = len(seen)
            await _until(lambda: len(seen) >= mark + 1)
            after = seen[mark]
            rows = {i: await _job_row(rt, i) for i in ids}
            stopped_before_the_end = set(stopped)
        finally:
            await worker.stop(grace=0)
    assert stopped_before_the_end == {lost}, "only the job whose lease was lost stops"
    # The next beat renews only what still runs: neither the lost job nor the finished one.
    assert set(kept) <= set(after[1]) and not {lost, finished} & set(after[1]), after
    assert (rows[lost].state, rows[lost].lease_owner, rows[lost].attempts) == (jobs.RUNNING, "thief", 1)
    assert rows[finished].state == jobs.DONE
    assert {(rows[i].state, rows[i].lease_owner) for i in kept} == {(jobs.RUNNING, worker.owner)}


async def test_a_worker_that_cannot_renew_stops_every_job_it_runs_before_its_lease_runs_out(
    rt: Runtime,
) -> None:
    """Several jobs under the one heartbeat: each stops while its own lease in the database still runs."""
    rt.core.config.job_lease_seconds = 4.0
    started: set[int] = set()
    stopped_at: dict[int, dt.datetime] = {}

    async def forever(*, ctx: object, job: jobs.JobView) -> None:
        started.add(job.id)
        try:
            await asyncio.Event().wait()
        finally:
            stopped_at[job.id] = models.utcnow()

    async with rt.sessionmaker.begin() as session:
        ids = [(await jobs.enqueue(session, kind="forever", payload={})).id for _ in range(3)]
    worker = Worker(ctx=rt.core, handlers={"forever": Handler(run=forever)})
    other = db.create_engine(str(rt.engine.url.render_as_string(hide_password=False)))
    worker.start()
    try:
        await _until(lambda: len(started) == len(ids))
        async with other.begin() as conn:  # BEGIN IMMEDIATE on SQLite: every writer waits
            if _skip_locked(rt):
                await conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            rows = await conn.execute(
                select(models.Job.id, models.Job.lease_until).where(models.Job.id.in_(ids))
            )
            leases = {job_id: lease_until for job_id, lease_until in rows}
            await _until(lambda: len(stopped_at) == len(ids))
    finally:
        await other.dispose()
        await worker.stop()
    for job_id in ids:
        lease_until = leases[job_id]
        assert lease_until is not None
        # Stopped while its lease in the database still ran: nobody else could have claimed it yet.
        assert stopped_at[job_id] < lease_until.replace(tzinfo=stopped_at[job_id].tzinfo), job_id


async def test_future_run_at_waits(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        await jobs.enqueue(session, kind="k", payload={}, run_at=models.utcnow() + dt.timedelta(hours=1))
    assert await _claim(rt, "w") is None


async def _drain(rt: Runtime, workers: list[Worker], *, expected: int) -> None:
    for w in workers:
        w.start()
    try:
        for _ in range(600):
            async with rt.sessionmaker() as session:
                states = list(await session.scalars(select(models.Job.state)))
            if len(states) == expected and all(s in (jobs.DONE, jobs.FAILED) for s in states):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"queue did not drain: {states}")
    finally:
        for w in workers:
            await w.stop()


async def test_transient_errors_retry_with_backoff_then_succeed(rt: Runtime) -> None:
    calls: list[int] = []

    async def flaky(*, ctx: object, job: jobs.JobView) -> None:
        calls.append(job.attempts)
        if job.attempts < 3:
            raise TransientError("API unreachable", retry_after=0.05)

    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="flaky", payload={})
    await _drain(rt, [Worker(ctx=rt.core, handlers={"flaky": Handler(run=flaky)}, concurrency=2)], expected=1)
    assert calls == [1, 2, 3]
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and row.state == jobs.DONE and row.last_error == "API unreachable"


async def test_permanent_error_fails_at_once_and_calls_the_failed_hook(rt: Runtime) -> None:
    failed: list[str] = []

    async def broken(*, ctx: object, job: jobs.JobView) -> None:
        raise PermanentError("spec.replicas: invalid")

    async def on_failed(*, session: object, ctx: object, job: jobs.JobView, error: str) -> None:
        failed.append(error)

    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="broken", payload={})
    await _drain(
        rt, [Worker(ctx=rt.core, handlers={"broken": Handler(run=broken, failed=on_failed)})], expected=1
    )
    assert failed == ["spec.replicas: invalid"]
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and row.state == jobs.FAILED and row.attempts == 1


async def test_retries_are_bounded(rt: Runtime) -> None:
    async def always(*, ctx: object, job: jobs.JobView) -> None:
        raise TransientError("still down", retry_after=0.01)

    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind="always", payload={}, max_attempts=3)
    await _drain(rt, [Worker(ctx=rt.core, handlers={"always": Handler(run=always)})], expected=1)
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and row.state == jobs.FAILED and row.attempts == 3
        assert "gave up after 3 attempts" in (row.last_error or "")


async def test_competing_workers_never_overlap_a_key_and_run_each_job_once(rt: Runtime) -> None:
    running: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    runs: dict[int, int] = defaultdict(int)

    async def work(*, ctx: object, job: jobs.JobView) -> None:
        key = str(job.payload["key"])
        running[key] += 1
        if running[key] > 1:
            overlaps.append(key)
        runs[job.id] += 1
        await asyncio.sleep(0.01)
        running[key] -= 1

    async with rt.sessionmaker.begin() as session:
        for i in range(40):
            await jobs.enqueue(
                session, kind="work", payload={"key": f"app-{i % 5}"}, concurrency_key=f"app-{i % 5}"
            )
    workers = [Worker(ctx=rt.core, handlers={"work": Handler(run=work)}, concurrency=4) for _ in range(3)]
    await _drain(rt, workers, expected=40)
    assert overlaps == []
    assert len(runs) == 40 and set(runs.values()) == {1}


def test_backoff_grows_and_is_capped() -> None:
    assert 0.5 <= jobs.backoff_seconds(attempts=1) <= 1.5
    assert 4 <= jobs.backoff_seconds(attempts=4) <= 12
    assert jobs.backoff_seconds(attempts=50, cap=300) <= 450
