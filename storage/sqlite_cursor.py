"""A cursor for SQLAlchemy's aiosqlite adapter that costs one trip to the driver's thread per statement.

aiosqlite runs SQLite in a thread of its own and every call is a hand-over to it and back (a queue put,
a thread wake-up, a future set from the other thread: ~80 µs of CPU each on the bench machine).
SQLAlchemy's adapter makes four per SELECT (create the cursor, execute, fetch all, close) and three
per write; this one runs the statement, takes the rows and closes the cursor in one call (issue 13: a
webhook ingest batch went from twelve hand-overs to four).  What SQLAlchemy sees is the same: the
adapter always fetched every row at execute time; `description`, `rowcount` and `lastrowid` are those
sqlite3 reported for the statement.  Server-side cursors (stream_results) keep SQLAlchemy's own.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection, AsyncAdapt_aiosqlite_cursor
from sqlalchemy.util.concurrency import await_


def _run(
    conn: sqlite3.Connection, operation: Any, parameters: Any, many: bool, begin: bool
) -> tuple[Any, ...]:
    """In aiosqlite's thread: the transaction's deferred BEGIN IMMEDIATE if due, then the whole
    statement, rows and all."""
    if begin:
        conn.execute("BEGIN IMMEDIATE")
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no driver cursor: each execute makes its own
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: Any = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1  # sqlite3's default

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return  # nothing is open: the statement's driver cursor closed in the same call

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._trip(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._trip(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            driver = self._connection
            begin = driver.__dict__.pop(_BEGIN, False)
            description, rows, rowcount, lastrowid = await driver._execute(
                _run, driver._conn, operation, parameters, many, begin
            )
        self._description, self._rowcount, self._lastrowid = description, rowcount, lastrowid
        self._rows = collections.deque(rows)

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor

    def commit(self) -> None:
        if self._connection.__dict__.pop(_BEGIN, False):
            return  # the transaction never ran a statement: there is nothing to commit
        super().commit()

    def rollback(self) -> None:
        if self._connection.__dict__.pop(_BEGIN, False):
            return
        super().rollback()


# On aiosqlite's Connection: BEGIN IMMEDIATE is due before the next statement (`defer_begin`).
_BEGIN = "_shipit_begin_due"


def defer_begin(dbapi_connection: Any) -> bool:
    """Send the transaction's BEGIN IMMEDIATE with its first statement, in the same trip (issue 13:
    one trip fewer per transaction).  False when the connection has no one-trip cursor: the caller
    sends it now.  The lock is taken when the first statement runs, as before, since nothing ran
    in between; a transaction that runs no statement never begins in SQLite at all."""
    if type(dbapi_connection) is not OneTripConnection:
        return False
    dbapi_connection._connection.__dict__[_BEGIN] = True
    return True


def forget_begin(dbapi_connection: Any) -> None:
    """The connection goes back to the pool: a BEGIN still due is dropped with its transaction."""
    driver = getattr(dbapi_connection, "_connection", None)
    if driver is not None:
        driver.__dict__.pop(_BEGIN, None)


def install(dbapi_connection: Any) -> None:
    """Give a freshly connected aiosqlite adapter connection the one-trip cursor."""
    if type(dbapi_connection) is AsyncAdapt_aiosqlite_connection:
        dbapi_connection.__class__ = OneTripConnection
