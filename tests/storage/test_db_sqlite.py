"""storage.db's SQLite engine: a connection given back to the pool never carries a transaction on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from storage.db import create_engine


async def test_a_connection_given_back_mid_transaction_is_rolled_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn = await engine.connect()
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        # The Connection loses track of its transaction (as one dropped without closing it would):
        # only the pool's reset stands between the open transaction and the next user.
        conn.sync_connection._transaction = None  # type: ignore[union-attr]
        await conn.close()
        async with engine.begin() as again:  # BEGIN IMMEDIATE would fail inside an open transaction
            assert await again.scalar(text("SELECT count(*) FROM t")) == 0
            await again.execute(text("INSERT INTO t VALUES (2)"))
        async with engine.connect() as reader:
            assert list(await reader.scalars(text("SELECT x FROM t"))) == [2]
    finally:
        await engine.dispose()


async def test_committed_and_rolled_back_transactions_leave_clean_connections(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        for i in range(3):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
            conn = await engine.connect()
            await conn.execute(text("INSERT INTO t VALUES (99)"))
            await conn.rollback()
            await conn.close()
        async with engine.connect() as reader:
            assert list(await reader.scalars(text("SELECT x FROM t ORDER BY x"))) == [0, 1, 2]
    finally:
        await engine.dispose()
