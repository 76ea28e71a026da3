"""Replicas starting together on an empty PostgreSQL database: one migrates, the others wait and find head."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from sqlalchemy import text

from shipit.runtime import upgrade_database
from storage import db, migrate

pytestmark = pytest.mark.both_databases


async def test_two_engines_racing_upgrade_migrate_once(db_url: str, db_backend: str) -> None:
    if db_backend == "sqlite":
        pytest.skip("SQLite needs no lock: one process owns the file (transactions are serialised)")
    engines = [db.create_engine(db_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))
        assert await migrate.current(engines[0]) is not None
        async with engines[0].connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            # The advisory lock is released: a later start takes it at once.
            got = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": migrate.MIGRATION_LOCK_KEY}
            )
            assert got is True
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": migrate.MIGRATION_LOCK_KEY})
        assert len(rows) == 1  # migrated once, to one head
    finally:
        for e in engines:
            await e.dispose()


async def test_a_start_at_head_does_not_wait_for_the_migration_lock(db_url: str, db_backend: str) -> None:
    """A replica restarting while another holds the lock (a long migration of a newer version, say)
    finds its own head already there and starts, without taking the lock or loading the scripts."""
    engine = db.create_engine(db_url)
    holder = db.create_engine(db_url) if db_backend == "postgres" else None
    try:
        assert await upgrade_database(engine) == migrate.head()
        newest = max(
            p.stem.split("_", 1)[0] for p in Path(migrate.__file__).parent.glob("migrations/versions/0*.py")
        )
        assert migrate.head() == newest
        async with contextlib.AsyncExitStack() as stack:
            if holder is not None:
                conn = await stack.enter_async_context(holder.connect())
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": migrate.MIGRATION_LOCK_KEY})
            assert await asyncio.wait_for(upgrade_database(engine), timeout=10) == newest
    finally:
        await engine.dispose()
        if holder is not None:
            await holder.dispose()
