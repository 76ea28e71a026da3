"""Engines and sessions.  SQLite (WAL) by default; PostgreSQL through asyncpg.

On SQLite every transaction starts with BEGIN IMMEDIATE: two transactions that
both read and then write would otherwise deadlock on the lock upgrade and one
would fail with "database is locked".  Transactions are short by rule (nothing
slow runs inside one), so serialising them costs little.

On PostgreSQL every round trip is CPU on both ends (issue 13: replicas that share
one database), so the pool spends none it need not:
- a pooled connection is checked for life without a statement: asyncpg knows when
  the server closed it (a restart, pg_terminate_backend), and such a connection is
  replaced at checkout; only one that sat idle a while (a firewall may have dropped
  it silently) is pinged first.  SQLAlchemy's `pool_pre_ping` would ping every
  checkout, three round trips each (BEGIN, a ping, ROLLBACK) and a rollback in
  pg_stat_database;
- the pool keeps every connection it opens (no overflow connections closed on
  return and opened again: each is a new backend, its set-up and its prepared
  statements lost);
- a read that asks for no transaction (the execution option `shipit_no_begin`, the
  read cache's stamp) runs in autocommit: no BEGIN and no ROLLBACK around it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage import sqlite_cursor

log = logging.getLogger(__name__)

# Execution option: this read needs no transaction around it (core.readcache's stamp).
NO_BEGIN = "shipit_no_begin"
# The most connections one process holds to PostgreSQL, all kept once opened.
POSTGRES_POOL_SIZE = 20
# A pooled connection idle longer than this is pinged before use; a fresher one is trusted unless
# the driver saw it close.
IDLE_PING_SECONDS = 30.0
_CHECKED_IN = "shipit.checked_in"


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
    engine = create_async_engine(url, echo=echo, pool_size=POSTGRES_POOL_SIZE, max_overflow=0)
    _configure_postgres(engine)
    return engine


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
        if conn.get_execution_options().get(NO_BEGIN):
            return  # one read in SQLite's autocommit (core.readcache: the version stamp)
        if not sqlite_cursor.defer_begin(conn.connection.dbapi_connection):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_postgres(engine: AsyncEngine) -> None:
    sync = engine.sync_engine

    @event.listens_for(sync.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(sync.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # DisconnectionError makes the pool drop this connection and check out another (a new one).
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise exc.DisconnectionError("the server closed this pooled connection")
        checked_in = record.info.get(_CHECKED_IN)
        if checked_in is not None and time.monotonic() - checked_in > IDLE_PING_SECONDS:
            try:
                sync.dialect.do_ping(dbapi_connection)
            except Exception as e:
                raise exc.DisconnectionError("a pooled connection idle for a while did not answer") from e

    @event.listens_for(sync, "set_connection_execution_options")
    def _no_begin(_conn: Any, opts: dict[str, Any]) -> None:
        # PostgreSQL's own way to run a statement outside a transaction: the driver's autocommit
        # (the connection's isolation level is set back when it returns to the pool).
        if opts.get(NO_BEGIN):
            opts["isolation_level"] = "AUTOCOMMIT"


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)
