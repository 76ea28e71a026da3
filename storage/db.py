"""Engines and sessions.  SQLite (WAL) by default; PostgreSQL through asyncpg.

On SQLite every transaction starts with BEGIN IMMEDIATE: two transactions that
both read and then write would otherwise deadlock on the lock upgrade and one
would fail with "database is locked".  Transactions are short by rule (nothing
slow runs inside one), so serialising them costs little.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage import sqlite_cursor

log = logging.getLogger(__name__)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            private_file(Path(parsed.database))
        # No ROLLBACK on every return to the pool: `_reset_sqlite` sends one only if a transaction is open.
        engine = create_async_engine(
            url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=60, pool_reset_on_return=None
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


def private_dir(path: Path) -> None:
    """Create `path` and any missing parents 0700 (whatever the umask); existing ones are left alone."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs, not ours to chmod
        os.chmod(directory, 0o700)


def private_file(path: Path) -> None:
    """Create an empty file 0600 (in a 0700 directory) unless it exists, so SQLite never makes it
    world-readable; SQLite gives its -wal and -shm files the mode of the database file."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        loose = stat.S_IMODE(os.stat(path).st_mode) & 0o077
        if loose:
            log.warning(
                "%s is readable by other users (mode %o): chmod 600 it", path, os.stat(path).st_mode & 0o777
            )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        sqlite_cursor.install(dbapi_connection)  # one trip to aiosqlite's thread per statement
        # Take transaction control away from the driver so that we can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "reset")
    def _reset_sqlite(dbapi_connection: Any, _record: Any, state: Any) -> None:
        # After a COMMIT (nearly every return) the pool's own ROLLBACK does nothing in SQLite but
        # still costs a round trip to the driver's thread; SQLite knows whether a transaction is
        # open without one, so roll back only then (a connection given back mid-transaction).
        sqlite_cursor.forget_begin(dbapi_connection)
        if not state.asyncio_safe or state.transaction_was_reset:
            return
        driver = getattr(dbapi_connection, "_connection", None)  # aiosqlite's Connection
        if getattr(driver, "in_transaction", True):
            dbapi_connection.rollback()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("shipit_no_begin"):
            return  # one read in SQLite's autocommit (core.readcache: the version stamp)
        if not sqlite_cursor.defer_begin(conn.connection.dbapi_connection):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)
