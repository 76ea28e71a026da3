"""storage.db's PostgreSQL pool: no statement spent on a connection's health while it is known to be
alive, yet a connection the server closed is never handed out; reads that ask for no transaction get none.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from storage import db
from tests.conftest import POSTGRES_URL

pytestmark = [
    pytest.mark.skipif(not POSTGRES_URL, reason="needs SHIPIT_TEST_POSTGRES_URL"),
    pytest.mark.parametrize("db_backend", ["postgres"], indirect=True),
]


async def _backend(engine: object) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        pid: int = await conn.scalar(text("SELECT pg_backend_pid()"))
    return pid


async def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout(db_url: str) -> None:
    engine = db.create_engine(db_url)
    admin = db.create_engine(db_url)
    try:
        pooled = await _backend(engine)
        assert await _backend(engine) == pooled  # kept by the pool, not opened again
        async with admin.connect() as conn:  # a restart, an operator's pg_terminate_backend
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pooled})
        for _ in range(200):  # the server's goodbye reaches the client
            async with admin.connect() as conn:
                alive = await conn.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pooled}
                )
            if not alive:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

        # No error: the dead connection is dropped at checkout and a new one serves the transaction.
        async with db.create_sessionmaker(engine).begin() as session:
            fresh = await session.scalar(text("SELECT pg_backend_pid()"))
        assert fresh != pooled
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_read_that_asks_for_no_transaction_runs_outside_one_and_others_still_get_one(
    db_url: str,
) -> None:
    engine = db.create_engine(db_url)
    xid = text("SELECT pg_current_xact_id()::text")  # gives the transaction an id, stable within it
    try:
        async with engine.connect() as conn:
            await conn.execution_options(**{db.NO_BEGIN: True})
            # Each statement its own transaction: no BEGIN before it, no ROLLBACK after.
            assert await conn.scalar(xid) != await conn.scalar(xid)
        # The connection went back to the pool: its next user is in a transaction again.
        async with engine.connect() as conn:
            assert await conn.scalar(xid) == await conn.scalar(xid)
        async with db.create_sessionmaker(engine).begin() as session:
            assert await session.scalar(xid) == await session.scalar(xid)
    finally:
        await engine.dispose()


async def test_a_connection_idle_past_the_threshold_is_pinged_and_kept(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_engine(db_url)
    try:
        pooled = await _backend(engine)
        monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every pooled connection counts as idle
        await asyncio.sleep(0.01)
        # The ping (BEGIN, a ping, ROLLBACK) answered: the same connection serves the next transaction.
        async with db.create_sessionmaker(engine).begin() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) == pooled
    finally:
        await engine.dispose()
