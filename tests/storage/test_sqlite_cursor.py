"""storage.sqlite_cursor: one trip per statement, and SQLAlchemy sees what the driver reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from storage.db import create_engine
from storage.sqlite_cursor import OneTripConnection

meta = MetaData()
items = Table("items", meta, Column("id", Integer, primary_key=True), Column("name", String, unique=True))


async def test_rows_counts_ids_and_errors_come_through(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    try:
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.dbapi_connection, OneTripConnection)
            await conn.run_sync(meta.create_all)
            # lastrowid: an INSERT without RETURNING gets its primary key from it.
            result = await conn.execute(insert(items).values(name="a"))
            assert result.inserted_primary_key == (1,)
            # executemany, then RETURNING rows.
            await conn.execute(insert(items), [{"name": "b"}, {"name": "c"}])
            returned = await conn.execute(insert(items).returning(items.c.id, items.c.name), [{"name": "d"}])
            assert [tuple(r) for r in returned] == [(4, "d")]
            # rowcount of an UPDATE.
            changed = await conn.execute(update(items).where(items.c.id > 2).values(name=items.c.name + "!"))
            assert changed.rowcount == 2
            rows = await conn.execute(select(items.c.id, items.c.name).order_by(items.c.id))
            assert list(rows.keys()) == ["id", "name"]
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c!"), (4, "d!")]
            # An empty result still has its columns; one row at a time and partial fetches work.
            empty = await conn.execute(select(items.c.id).where(items.c.id > 99))
            assert list(empty.keys()) == ["id"] and empty.all() == []
            partial = await conn.execute(select(items.c.id).order_by(items.c.id))
            assert partial.fetchone() == (1,)
            assert partial.fetchmany(2) == [(2,), (3,)]
            assert partial.fetchall() == [(4,)]
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(items).values(name="a"))
        async with engine.connect() as conn:  # the failed transaction rolled back; the connection is usable
            assert await conn.scalar(text("SELECT count(*) FROM items")) == 4
    finally:
        await engine.dispose()


async def test_begin_immediate_goes_with_the_first_statement(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
        async with engine.begin() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            assert not driver.in_transaction  # nothing ran yet: nothing is locked
            assert await conn.scalar(text("SELECT count(*) FROM items")) == 0
            assert driver.in_transaction  # a read, yet the write lock is held (BEGIN IMMEDIATE)
            probe = sqlite3.connect(tmp_path / "db.sqlite", timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    probe.execute("BEGIN IMMEDIATE")
            finally:
                probe.close()
            await conn.execute(insert(items).values(name="a"))
        # A transaction that ran nothing leaves nothing behind: the next one begins afresh.
        async with engine.begin() as conn:
            pass
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                raise RuntimeError
        async with engine.begin() as conn:
            await conn.execute(insert(items).values(name="b"))
        async with engine.connect() as conn:
            assert list(await conn.scalars(select(items.c.name).order_by(items.c.name))) == ["a", "b"]
    finally:
        await engine.dispose()
