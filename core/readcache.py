"""Read-mostly look-ups served from memory, kept honest by one version stamp in the database (issue 13).

What a deploy request reads before it writes (the token, the app's rows, its project and environments,
the caller's roles, the namespace claim, whether the app has secrets, the notification targets) changes
rarely.  Each process keeps copies of those rows here, labelled with the version stamp they were read
under; the stamp lives in the `meta` table (key `readcache.version`) and is read once per request.  While
it stays the same, nothing here was written, by this process or any other (a second replica, the CLI on
the same database): the copies are answered with no statement.

Soundness rests on one rule: EVERY write to a cached table changes the stamp in the same transaction.  It
is not left to the write sites: an engine-level `before_execute` listener (installed by `install`, on the
engine a Core is built on) sees every INSERT, UPDATE and DELETE that goes through that engine, ORM
unit-of-work flushes, ORM bulk `update()`/`delete()` and plain Core statements alike, and writes a fresh
random stamp (an upsert of the `meta` row, so no migration: an absent row is the empty stamp) just before
the transaction commits.  Random stamps never repeat, so a stamp seen again means nothing changed in between.
Statements may opt out with the execution option `readcache_bump=False` only when they write a column no
cached copy answers with (an API token's `last_used_at`).

Copies are immutable (column values, JSON values deep-copied on the way in and out); a session gets its
own fresh ORM instances, attached as clean persistent rows (`_attach`), never an instance another session
holds.  A transaction that wrote a cached table reads the rows themselves from then on (its own writes
are not in the copies); one that did not may use the copies for the rest of its life.

Not seen: writes that do not go through an engine a Core was built on (a psql shell, migrations, which
run before the Core exists).  After such a write, stamp by hand (`bump_now`) or restart the replicas.
On PostgreSQL the stamp's row is locked only while a transaction that wrote a cached table commits, so
such writes (rare: settings, access, tokens, a deploy's success) are serialised there and nowhere else.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import Select, event, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_dict, instance_state

from storage import models

KEY = "readcache.version"
# Every table a copy is taken from, and those whose deletes cascade into one in the database itself
# (clusters -> namespace_claims, persons -> identities): a write to any of them changes the stamp.
CACHED_TABLES = frozenset(
    {
        "api_tokens",
        "projects",
        "environments",
        "apps",
        "members",
        "persons",
        "identities",
        "clusters",
        "namespace_claims",
        "secrets",
        "notification_targets",
    }
)
# More entries than this and the copies start afresh: a bound on memory, not a tuning knob.
MAX_ENTRIES = 20_000
# session.info keys: the process's cache (set on the Core's sessionmaker) and the stamp this
# transaction reads at.
_CACHE = "shipit.readcache"
_VERSION = "shipit.readcache.version"
_HELD = "shipit.held"  # strong references for the session's weak identity map (also core.environments)
# Connection.info: the root transaction that wrote a cached table (its reads must see its own writes).
_WROTE = "shipit.readcache.wrote"
_DIRTY = "shipit.readcache.dirty"
# session.info: `_writes_seen` when its transaction began.
_WRITES_AT_BEGIN = "shipit.readcache.writes_at_begin"
# Connection execution option: read the stamp without BEGIN IMMEDIATE (storage.db honours it).
NO_BEGIN = "shipit_no_begin"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Row:
    """An immutable copy of one ORM row: its class and column values."""

    model: type[Any]
    values: MappingProxyType[str, Any]
    # The columns holding a dict or list (JSON): copied again for each session that gets the row.
    mutable: tuple[str, ...] = ()


class Pin:
    """A stamp read before the request's transaction (with the token check), for that transaction.

    Claimed once: a later transaction of the same caller (an SSE stream holds its Actor for minutes)
    reads the stamp again.
    """

    __slots__ = ("_claimed", "version")

    def __init__(self, version: bytes) -> None:
        self.version = version
        self._claimed = False

    def claim(self) -> bytes | None:
        if self._claimed:
            return None
        self._claimed = True
        return self.version


@dataclass
class ReadCache:
    """One process's (one Core's) copies, for one stamp at a time."""

    version: bytes | None = None
    entries: dict[Hashable, Any] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def at(self, version: bytes) -> dict[Hashable, Any]:
        """The copies taken under `version`; another stamp starts afresh.

        An entry under stamp V was read after a read of the stamp returned V, so it is at least as
        new as V's state (newer is harmless: it was committed); it is only answered to requests that
        read V too.
        """
        if version != self.version or len(self.entries) >= MAX_ENTRIES:
            # (The cap: names that match nothing are remembered too, and anyone can ask for those.)
            self.version, self.entries = version, {}
        return self.entries

    def clear(self) -> None:
        self.version, self.entries = None, {}


# ------------------------------------------------------------------ the stamp


# Read at every request: built once (issue 13).
_STAMP_QUERY = select(models.Meta.value).where(models.Meta.key == KEY)


async def read_version_outside(engine: AsyncEngine) -> bytes:
    """The stamp, read on its own: one SELECT, no transaction around it (SQLite's autocommit)."""
    async with engine.connect() as conn:
        await conn.execution_options(**{NO_BEGIN: True})
        value = await conn.scalar(_STAMP_QUERY)
    return bytes(value) if value is not None else b""


async def _read_version(session: AsyncSession) -> bytes:
    # On the transaction's connection, not through the ORM: a Core SELECT of one column needs none
    # of the ORM's statement and result handling (issue 13: a quarter of a webhook batch's CPU).
    value = await (await session.connection()).scalar(_STAMP_QUERY)
    return bytes(value) if value is not None else b""


def stamp_read(session: AsyncSession, value: bytes | None) -> None:
    """The stamp as a statement of this transaction read it along with its own work (deliveries.claim
    on SQLite): the copies are then looked up under it without a statement of their own.  The caller
    must have read it inside the transaction (after its BEGIN), as `_entries` would."""
    if _VERSION not in session.info and session.info.get(_CACHE) is not None:
        session.info[_VERSION] = bytes(value) if value is not None else b""


def _bump_statement(dialect: str) -> Any:
    stamp = os.urandom(16)
    if dialect == "postgresql":
        pg = postgresql.insert(models.Meta).values(key=KEY, value=stamp)
        return pg.on_conflict_do_update(index_elements=["key"], set_={"value": stamp})
    lite = sqlite.insert(models.Meta).values(key=KEY, value=stamp)
    return lite.on_conflict_do_update(index_elements=["key"], set_={"value": stamp})


def _table_name(statement: Any) -> str | None:
    if not getattr(statement, "is_dml", False):
        return None
    # select(Entity).from_statement(insert(...)) is DML too: its INSERT, UPDATE or DELETE is its element.
    statement = getattr(statement, "element", statement)
    table = getattr(statement, "table", None)
    return getattr(table, "name", None)


# How many writes to a cached table this process has seen (through any engine); a transaction that
# began after the last of them wrote none, which `_wrote` can tell without asking for its connection.
_writes_seen = 0


def _before_execute(
    conn: Connection, statement: Any, multiparams: Any, params: Any, execution_options: Any
) -> None:
    name = _table_name(statement)
    if name is None or name not in CACHED_TABLES:
        return
    if execution_options.get("readcache_bump", True) is False:
        return
    # The write marks the transaction; the stamp itself is written just before it commits
    # (`_stamp_at_commit`).  Taking the stamp row's lock last means a transaction never waits for a row
    # lock while holding it, so two writers cannot deadlock on PostgreSQL (one that locked an app row and
    # then wrote a secret, against a worker that stamped first and then updated that app row).
    conn.info[_WROTE] = conn.get_transaction()
    conn.info[_DIRTY] = True
    global _writes_seen
    _writes_seen += 1


def _stamp_at_commit(conn: Connection) -> None:
    # A write inside a savepoint that was rolled back still stamps: one needless refill, never a stale copy.
    if conn.info.pop(_DIRTY, False):
        conn.execute(_bump_statement(conn.dialect.name))


def _forget(conn: Connection) -> None:
    # An invalidated connection (a statement interrupted by a task's cancellation) must not be asked
    # for its info: that raises PendingRollbackError inside the rollback, which then replaces the
    # CancelledError (a stopping runtime's maintenance loop took it for a failed pass and went on).
    # Its record's info is cleared when it reconnects, so there is nothing to forget.
    if conn.invalidated:
        return
    conn.info.pop(_DIRTY, None)


def install(engine: AsyncEngine) -> None:
    """Stamp every write to a cached table made through `engine` (idempotent)."""
    sync = engine.sync_engine
    if not event.contains(sync, "before_execute", _before_execute):
        event.listen(sync, "before_execute", _before_execute)
        event.listen(sync, "commit", _stamp_at_commit)
        event.listen(sync, "rollback", _forget)


def bump_now(conn: Connection) -> None:
    """Change the stamp in `conn`'s transaction (for writes the listener cannot see, e.g. raw SQL)."""
    conn.execute(_bump_statement(conn.dialect.name))


async def bump(engine: AsyncEngine) -> None:
    """Change the stamp in a transaction of its own: after writes no listener saw (a migration)."""
    async with engine.begin() as conn:
        await conn.run_sync(bump_now)


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    # The stamp is read again by the next transaction: other replicas write in between.
    if transaction.parent is None:
        session.info.pop(_VERSION, None)
        session.info.pop(_WRITES_AT_BEGIN, None)


@event.listens_for(Session, "after_begin")
def _transaction_began(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    # Before the transaction's first statement (a savepoint keeps its root's figure).
    session.info.setdefault(_WRITES_AT_BEGIN, _writes_seen)


# ------------------------------------------------------------------ a session's view


async def _wrote(session: AsyncSession) -> bool:
    if not session.in_transaction():
        return False
    if session.info.get(_WRITES_AT_BEGIN) == _writes_seen:
        # No write to a cached table anywhere in this process since this transaction began (issue 13:
        # the connection look-up below is a greenlet switch, at every cached read of a request).  Sound
        # for sessions bound to an engine (all of shipit's), whose connection starts with the transaction.
        return False
    conn = (await session.connection()).sync_connection
    if conn is None:
        return False
    root = conn.get_transaction()
    return root is not None and conn.info.get(_WROTE) is root


def write_mark(session: AsyncSession) -> int | None:
    """A number that changes whenever this process writes a table the copies hold, or None while
    the session has unflushed changes to one: what was read from those tables under one mark holds
    until the mark changes (within a transaction, which reads at one stamp)."""
    return None if _pending(session.sync_session) else _writes_seen


def _pending(sync: Session) -> bool:
    # The states behind `sync.new`, `sync.deleted` and `sync.dirty`, read without building those
    # three sets of objects (issue 13: this runs at every cached read and every push of a batch,
    # whose session holds a few dozen rows).
    for states in (sync._new, sync._deleted, sync.identity_map._modified):
        for state in states:
            if getattr(state.class_, "__tablename__", None) in CACHED_TABLES:
                return True
    return False


async def _entries(session: AsyncSession, pin: Pin | None) -> dict[Hashable, Any] | None:
    cache: ReadCache | None = session.info.get(_CACHE)
    if cache is None:
        return None
    # Pending changes to a cached table (not flushed yet) or flushed writes of this transaction: the
    # copies would not show them, and a read now would show uncommitted rows that must not be copied.
    if _pending(session.sync_session) or await _wrote(session):
        return None
    version: bytes | None = session.info.get(_VERSION)
    if version is None:
        # A stamp read with the token check, just before this transaction began, stands for it.  Sound
        # because every copy under that stamp is at least as new as the state the stamp names (it was
        # read after it), and the request's reads then happen as of that moment: a write committed in
        # the gap is ordered after them, as a token revoked just after its check always was (the token
        # had its own transaction before the request's).  The gap is the one PostgreSQL's READ
        # COMMITTED already has (the app row is read before `_lock_app`); the request's writes still
        # commit in its own transaction.  Otherwise the stamp is read here, inside the transaction.
        version = pin.claim() if pin is not None else None
        if version is None:
            version = await _read_version(session)
        session.info[_VERSION] = version
    return cache.at(version)


def _freeze(obj: Any) -> Row:
    mapper = inspect(obj).mapper
    values = {a.key: copy.deepcopy(getattr(obj, a.key)) for a in mapper.column_attrs}
    mutable = tuple(k for k, v in values.items() if isinstance(v, (dict, list)))
    return Row(model=type(obj), values=MappingProxyType(values), mutable=mutable)


def _attach(session: AsyncSession, row: Row) -> Any:
    """This session's own instance of `row`: the one it holds already, or a fresh clean one."""
    sync = session.sync_session
    mapper = mapper_of(row.model)
    key = mapper.identity_key_from_primary_key([row.values[c.key] for c in mapper.primary_key])
    held = sync.identity_map.get(key)
    if held is not None:
        return held
    obj = mapper.class_manager.new_instance()
    # The loaded values of a new instance with no history: what `set_committed_value` would set one
    # column at a time (issue 13: that was a fifth of a cached look-up's CPU), in one update.
    values = dict(row.values)
    for k in row.mutable:
        values[k] = copy.deepcopy(values[k])
    instance_dict(obj).update(values)
    # What `make_transient_to_detached` and `Session.add` do for a new instance whose every column
    # is loaded and no relationship is (nothing to commit, expire or cascade), without their generic
    # steps, as `core.deploys.request._persistent_of` does: its identity key, then into the identity
    # map as a detached row added back (issue 13: a monorepo push attaches its twenty apps, and the
    # cascade walk and the state bookkeeping were two thirds of each attach).
    state = instance_state(obj)
    state.key = key
    sync._update_impl(state)
    session.info.setdefault(_HELD, []).append(obj)
    return obj


async def rows(
    session: AsyncSession,
    key: Hashable,
    query: Select[R] | Callable[[], Select[R]],
    *,
    pin: Pin | None = None,
) -> list[R]:
    """The ORM rows `query` selects, named `key`: the copies when the stamp is unchanged, else read
    (then copied).  `query` may be a function that builds it: then it is built only when it is run
    (issue 13: a statement built for a look-up the copies answer is CPU spent for nothing)."""
    entries = await _entries(session, pin)
    cache: ReadCache | None = session.info.get(_CACHE)
    if entries is not None and key in entries:
        if cache is not None:
            cache.hits += 1
        return [_attach(session, r) for r in entries[key]]
    if callable(query):
        query = query()
    if entries is None:
        return list(await session.scalars(query))
    # populate_existing: a row this session still holds from an earlier transaction (sessions keep
    # their rows past commit) is read afresh, so no stale copy is taken under the current stamp.  Safe
    # here: the session has no pending changes (`_entries`).
    loaded = list(await session.scalars(query, execution_options={"populate_existing": True}))
    entries[key] = tuple(_freeze(o) for o in loaded)
    if cache is not None:
        cache.misses += 1
    return loaded


_MAPPERS: dict[type[Any], Any] = {}


def mapper_of(model: type[Any]) -> Any:
    """`inspect(model)`, looked up once per model (issue 13: at every `get`, a few times a push)."""
    mapper = _MAPPERS.get(model)
    if mapper is None:
        mapper = _MAPPERS[model] = inspect(model)
    return mapper


async def get(session: AsyncSession, model: type[R], ident: int, *, pin: Pin | None = None) -> R | None:
    """`session.get`, answered from the copies when the session does not hold the row yet."""
    held = session.sync_session.identity_map.get(mapper_of(model).identity_key_from_primary_key((ident,)))
    if held is not None:
        return held  # type: ignore[no-any-return]

    def query() -> Any:
        return select(model).where(inspect(model).primary_key[0] == ident)

    found = await rows(session, ("get", model.__tablename__, ident), query, pin=pin)  # type: ignore[attr-defined]
    return found[0] if found else None


async def value(
    session: AsyncSession, key: Hashable, load: Callable[[], Awaitable[T]], *, pin: Pin | None = None
) -> T:
    """A plain immutable value (a tuple, a bool, a frozen dataclass) for `key`, like `rows`."""
    entries = await _entries(session, pin)
    if entries is not None and key in entries:
        cached: T = entries[key]
        return cached
    loaded = await load()
    if entries is not None:
        entries[key] = loaded
    return loaded


def of(session_info: dict[str, Any]) -> ReadCache | None:
    cache: ReadCache | None = session_info.get(_CACHE)
    return cache


def configure(sessionmaker: Any, engine: AsyncEngine, cache: ReadCache) -> None:
    """Give every session of `sessionmaker` this cache, and stamp every write through `engine`."""
    info = dict(sessionmaker.kw.get("info") or {})
    info[_CACHE] = cache
    sessionmaker.configure(info=info)
    install(engine)
