"""Alembic, driven from code: applied at start and by `shipit db upgrade`.

On PostgreSQL several replicas may start at once on an empty database: the upgrade runs under a
session-level advisory lock on a fixed key, so one migrates and the others wait, then find the
schema at head and do nothing.  SQLite needs no lock: one process owns the file, and its
transactions are serialised anyway (BEGIN IMMEDIATE, see storage.db).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

_HERE = Path(__file__).resolve().parent
_LOCK_KEY = 0x5A1B17  # any fixed bigint: the advisory lock that serialises migrations

# pg_advisory_lock key: "shipit" + "migr" as a 64-bit number; fixed, so every replica agrees on it.
MIGRATION_LOCK_KEY = 0x7368697069746D67


def alembic_config(*, url: str = "") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine, *, revision: str = "head") -> None:
    def _run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Replicas (and their `shipit db upgrade` init containers) start together: one migrates,
            # the others wait here and then find the schema at head.  Released at commit.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    if engine.dialect.name != "postgresql":
        await _upgrade_sqlite(engine, _run)
        return
    # The lock lives on its own connection, outside the migration's transaction, so it is held
    # until the migration has committed and released only after (also if it fails).
    async with engine.connect() as locker:
        await locker.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        await locker.commit()
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_run)
        finally:
            await locker.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            await locker.commit()


def _pragma(connection: Connection, statement: str) -> list[Any]:
    """A PRAGMA on the driver's connection, outside any transaction (foreign_keys is a no-op inside one)."""
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(statement)
        return list(cursor.fetchall())
    finally:
        cursor.close()


async def _upgrade_sqlite(engine: AsyncEngine, run: Callable[[Connection], None]) -> None:
    # Changing a constraint on SQLite rebuilds the table; with foreign keys on, dropping the old
    # table would cascade-delete its children (apps -> secrets, revisions, deployments).  So the
    # migration runs with them off, and is checked afterwards as SQLite would have checked it.
    async with engine.connect() as conn:
        await conn.run_sync(_pragma, "PRAGMA foreign_keys=OFF")
        try:
            async with conn.begin():
                await conn.run_sync(run)
            broken = await conn.run_sync(_pragma, "PRAGMA foreign_key_check")
            if broken:
                raise RuntimeError(
                    f"migration left {len(broken)} rows with dangling foreign keys: {broken[:5]}"
                )
        finally:
            await conn.run_sync(_pragma, "PRAGMA foreign_keys=ON")


@functools.cache
def head() -> str | None:
    """The newest revision this code ships (read from the scripts once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _get(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_get)
