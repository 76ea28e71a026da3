"""core.readcache: copies answered with no statement while the stamp holds; every kind of write to a
cached table changes the stamp (ORM flush, ORM bulk DML, plain Core on a connection, savepoints)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, select, text, update

from core import apps, claims, environments, identity, projects, readcache, secrets, tokens
from core.errors import PermissionDenied
from core.identity import Actor, Role
from core.notices import targets
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN
from tests.shipit.conftest import make_token, seed_offline

pytestmark = pytest.mark.both_databases

DEV = Actor(subject="user:dev", channel="api")


@contextmanager
def counting(rt: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(rt.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", record)


async def _setup(rt: Runtime, db_backend: str) -> None:
    async with rt.sessionmaker.begin() as session:
        await seed_offline(session, rt=rt)
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject=DEV.subject, role="developer"
        )
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="offline",
            name="web",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0", env={"MODE": "prod"}),
        )


async def _lookups(rt: Runtime) -> tuple[models.App, Role | None]:
    """What a deploy request reads before it writes."""
    async with rt.sessionmaker.begin() as session:
        app = await apps.get(session, actor=DEV, name="web")
        await apps.authorize(session, actor=DEV, app=app, role=Role.DEVELOPER, action="deploying")
        await environments.of_app(session, app=app)
        assert await claims.claim_of(session, cluster_id=app.cluster_id, namespace=app.namespace) is not None
        assert await secrets.ensure_version(session, ctx=rt.core, app=app) == 0
        await targets.of_project(session, project_id=app.project_id)
        role = await identity.role_of(session, actor=DEV, project_id=app.project_id)
    return app, role


async def _stamp(rt: Runtime) -> bytes:
    return await readcache.read_version_outside(rt.engine)


async def test_unchanged_lookups_cost_the_stamp_alone_and_copies_are_never_shared(
    rt: Runtime, db_backend: str
) -> None:
    await _setup(rt, db_backend)
    first, _ = await _lookups(rt)
    with counting(rt) as seen:
        second, role = await _lookups(rt)
    assert role == Role.DEVELOPER
    read = [s for s in seen if s != "BEGIN IMMEDIATE"]  # the transaction's own BEGIN on SQLite
    assert len(read) == 1 and "FROM meta" in read[0], seen
    # Each transaction gets its own instances; changing one (in memory) changes no copy.
    assert second is not first and second.env == {"MODE": "prod"}
    second.env["MODE"] = "changed in memory only"
    third, _ = await _lookups(rt)
    assert third.env == {"MODE": "prod"}


async def test_every_kind_of_write_to_a_cached_table_changes_the_stamp(rt: Runtime, db_backend: str) -> None:
    await _setup(rt, db_backend)
    before = await _stamp(rt)
    # ORM bulk UPDATE (no unit of work).
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.App).where(models.App.name == "web").values(replicas=3),
            execution_options={"synchronize_session": False},
        )
    after_bulk = await _stamp(rt)
    assert after_bulk != before
    # Plain Core on a connection of the engine, no session at all: INSERT, then DELETE.
    async with rt.engine.begin() as conn:
        project_id = (await conn.execute(models.Project.__table__.select())).first()
        assert project_id is not None
        await conn.execute(
            insert(models.Member).values(project_id=project_id.id, subject="user:eve", role="viewer")
        )
    after_insert = await _stamp(rt)
    assert after_insert != after_bulk
    async with rt.engine.begin() as conn:
        await conn.execute(delete(models.Member).where(models.Member.subject == "user:eve"))
    after_delete = await _stamp(rt)
    assert after_delete != after_insert
    # A Core UPDATE loaded as ORM rows (select(Entity).from_statement), as core.deploys writes its rows.
    async with rt.sessionmaker.begin() as session:
        apps_table: Any = models.App.__table__
        stmt = (
            update(apps_table).where(apps_table.c.name == "web").values(replicas=4).returning(*apps_table.c)
        )
        [row] = (await session.scalars(select(models.App).from_statement(stmt))).all()
        assert row.replicas == 4
    after_loaded = await _stamp(rt)
    assert after_loaded != after_delete
    # A write to a table nothing is copied from leaves it alone.
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(models.AuditEvent).values(actor="x", channel="api", action="t", target="t", details={})
        )
    assert await _stamp(rt) == after_loaded


async def test_a_savepoint_rolled_back_takes_its_stamp_and_the_next_write_stamps_again(
    rt: Runtime, db_backend: str
) -> None:
    await _setup(rt, db_backend)
    _, role = await _lookups(rt)  # warm
    assert role == Role.DEVELOPER
    before = await _stamp(rt)
    async with rt.sessionmaker.begin() as session:
        nested = await session.begin_nested()
        await session.execute(
            update(models.App).values(replicas=7), execution_options={"synchronize_session": False}
        )
        await nested.rollback()
        # Outside the savepoint: this write must stamp again (the first stamp went with the savepoint).
        await session.execute(
            update(models.Member).where(models.Member.subject == DEV.subject).values(role="viewer"),
            execution_options={"synchronize_session": False},
        )
    assert await _stamp(rt) != before
    with pytest.raises(PermissionDenied):  # a viewer now, seen at once
        await _lookups(rt)
    async with rt.sessionmaker() as session:
        app = await apps.get(session, actor=DEV, name="web")
        assert app.replicas != 7


async def test_a_transaction_that_wrote_reads_its_own_writes(rt: Runtime, db_backend: str) -> None:
    await _setup(rt, db_backend)
    await _lookups(rt)  # warm: the developer role is copied
    async with rt.sessionmaker.begin() as session:
        app = await apps.get(session, actor=DEV, name="web")
        project_id = app.project_id
        assert await identity.role_of(session, actor=DEV, project_id=project_id) == Role.DEVELOPER
        await session.execute(
            update(models.Member).where(models.Member.subject == DEV.subject).values(role="owner"),
            execution_options={"synchronize_session": False},
        )
        # The copy says developer; this transaction wrote, so it asks the database.
        assert await identity.role_of(session, actor=DEV, project_id=project_id) == Role.OWNER
        await session.rollback()
    async with rt.sessionmaker() as session:
        assert await identity.role_of(session, actor=DEV, project_id=project_id) == Role.DEVELOPER


async def test_a_tokens_last_use_does_not_change_the_stamp(rt: Runtime, db_backend: str) -> None:
    token = await make_token(rt)
    before = await _stamp(rt)
    actor = await tokens.authenticate_cached(ctx=rt.core, token=token)  # first use: writes last_used_at
    assert actor.is_admin and actor.pin is not None
    assert await _stamp(rt) == before
    async with rt.sessionmaker() as session:
        row = await session.get(models.ApiToken, 1)
        assert row is not None and row.last_used_at is not None
    # Cached now: the check costs the stamp alone.
    with counting(rt) as seen:
        await tokens.authenticate_cached(ctx=rt.core, token=token)
    assert len(seen) == 1 and "FROM meta" in seen[0], seen


async def test_pending_changes_are_never_copied(rt: Runtime, db_backend: str) -> None:
    await _setup(rt, db_backend)
    await _lookups(rt)  # warm
    async with rt.sessionmaker() as session:
        app = await apps.get(session, actor=DEV, name="web")
        project_id = app.project_id
        members = await projects.members(session, actor=ADMIN, project_name="acme")
        [member] = [m for m in members if m.subject == DEV.subject]
        member.role = "owner"  # pending, not flushed: the next read flushes it inside this transaction
        assert await identity.role_of(session, actor=DEV, project_id=project_id) == Role.OWNER
        await session.rollback()
    async with rt.sessionmaker() as session:
        assert await identity.role_of(session, actor=DEV, project_id=project_id) == Role.DEVELOPER


async def test_a_row_a_session_kept_from_an_earlier_transaction_is_not_copied_stale(
    rt: Runtime, db_backend: str
) -> None:
    await _setup(rt, db_backend)
    async with rt.sessionmaker() as keeper:  # a session that outlives its transactions (a worker's)
        async with keeper.begin():
            project = await projects.get(keeper, name="acme")
            project_id = project.id
        # Renamed elsewhere: the stamp changes, and `keeper` still holds the old row in memory.
        async with rt.sessionmaker.begin() as session:
            fresh = await session.get(models.Project, project_id)
            assert fresh is not None
            fresh.name = "acme2"
        async with keeper.begin():
            assert (await projects.get(keeper, name="acme2")).id == project_id
    async with rt.sessionmaker() as session:
        assert (await projects.get(session, name="acme2")).name == "acme2"
        with pytest.raises(Exception, match="no project named 'acme'"):
            await projects.get(session, name="acme")


async def test_writers_in_opposite_orders_do_not_deadlock_on_the_stamp(rt: Runtime, db_backend: str) -> None:
    """One transaction locks the app row and then writes a member; another updates the project (a cached
    table) and then waits for that app row.  Were the stamp's row locked at the first write, the second
    would hold it while waiting, the first would wait for it, and PostgreSQL would abort one of them."""
    if db_backend != "postgres":
        pytest.skip("SQLite serialises whole write transactions: there are no row locks to order")
    await _setup(rt, db_backend)
    before = await _stamp(rt)
    first_locked = asyncio.Event()
    second_wrote = asyncio.Event()

    async def lock_app_then_write_member() -> None:
        async with rt.sessionmaker.begin() as session:
            await session.execute(select(models.App).where(models.App.name == "web").with_for_update())
            first_locked.set()
            await second_wrote.wait()
            await asyncio.sleep(0.2)  # the other is now waiting for the app row
            await session.execute(
                update(models.Member).where(models.Member.subject == DEV.subject).values(role="viewer"),
                execution_options={"synchronize_session": False},
            )

    async def write_project_then_update_app() -> None:
        await first_locked.wait()
        async with rt.sessionmaker.begin() as session:
            await session.execute(
                update(models.Project).values(slack_channel="#ops"),
                execution_options={"synchronize_session": False},
            )
            second_wrote.set()
            await session.execute(
                update(models.App).where(models.App.name == "web").values(replicas=4),
                execution_options={"synchronize_session": False},
            )

    await asyncio.wait_for(asyncio.gather(lock_app_then_write_member(), write_project_then_update_app()), 30)
    assert await _stamp(rt) != before
    async with rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        member = await session.scalar(select(models.Member).where(models.Member.subject == DEV.subject))
    assert app is not None and app.replicas == 4
    assert member is not None and member.role == "viewer"


@asynccontextmanager
async def _holding_the_write_lock(rt: Runtime, db_backend: str) -> AsyncIterator[None]:
    """Another connection holds what a write to `meta` needs until the block ends."""
    if db_backend == "postgres":
        async with rt.engine.connect() as conn, conn.begin():
            await conn.execute(text("LOCK TABLE meta IN EXCLUSIVE MODE"))
            yield
    else:
        other = sqlite3.connect(rt.engine.url.database or "", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()


async def test_a_transaction_cancelled_mid_statement_ends_cancelled(rt: Runtime, db_backend: str) -> None:
    """Cancelled while its statement waits (a stopping runtime, a lost lease): the task ends with
    CancelledError, nothing it wrote stays, and the engine serves the next transaction.  The rollback
    listener used to ask the invalidated connection for its info and raise PendingRollbackError
    instead, which the maintenance loop caught as a failed pass and kept running: stop() never ended."""
    waiting = asyncio.Event()

    def started(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO meta"):
            waiting.set()

    async def write() -> None:
        async with rt.sessionmaker.begin() as session:
            await session.execute(insert(models.Meta).values(key="cancelled-write", value=b"x"))

    event.listen(rt.engine.sync_engine, "before_cursor_execute", started)
    try:
        async with _holding_the_write_lock(rt, db_backend):
            task = asyncio.create_task(write())
            await asyncio.wait_for(waiting.wait(), 10)
            await asyncio.sleep(0.1)  # the statement is now blocked on the lock
            task.cancel()
        # Only now: on SQLite, closing the interrupted connection waits for the driver's thread.
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", started)
    async with rt.sessionmaker.begin() as session:
        session.add(models.Meta(key="next-write", value=b"y"))
    async with rt.sessionmaker() as session:
        keys = set(await session.scalars(select(models.Meta.key).where(models.Meta.key.like("%-write"))))
    assert keys == {"next-write"}
