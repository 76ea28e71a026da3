"""Replicas starting together on an empty PostgreSQL database: one migrates, the others wait and find head."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

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
