"""State that several replicas must agree on, kept in the database instead of in one process.

- `advance`: a small number per key (a pacing slot), read and written under a row lock
  (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises transactions with BEGIN IMMEDIATE).
- `hold`: a mutual exclusion across replicas for slow work outside any transaction (a PR comment
  written to GitHub): a session-level advisory lock on PostgreSQL, an asyncio lock on SQLite,
  where one process owns the database.
- `save_refs`: what a notifier has already done for a deploy (the Slack card's ts), written as
  soon as it is done, so a retry on another replica updates the card instead of posting another.
- `event_mark`: the key under which the previous release marked a one-off delivery (a failed build's
  plain Slack message) as made; core.retention still drops such rows with their event.
- `save_mark` / `read_mark`: a value kept under a key, replaced when written again (a build's Slack
  card: where it is, so every event of the build updates it, on any replica).
- `keep_held` / `read_held` / `take_held`: a reservation (a paced Slack write's slot, a card's turn to
  be written) left by one replica for another to read or take once; core.retention forgets it after
  `HELD_FOR`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import models

R = TypeVar("R")

_local_locks: dict[str, asyncio.Lock] = {}


def _is_postgres(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    return bool(sessionmaker.kw["bind"].dialect.name == "postgresql")


async def advance(
    sessionmaker: async_sessionmaker[AsyncSession], *, key: str, fn: Callable[[float], tuple[float | None, R]]
) -> R:
    """Call fn(stored value, 0.0 if none) under the row's lock; store its new value (None: unchanged)."""
    key = key[:64]
    async with sessionmaker.begin() as session:
        row = await session.get(models.Meta, key, with_for_update=True)
        if row is None:
            try:
                async with session.begin_nested():
                    session.add(models.Meta(key=key, value=b"0"))
                    await session.flush()
            except IntegrityError:
                pass  # another replica made it first: lock theirs
            row = await session.get(models.Meta, key, with_for_update=True, populate_existing=True)
            assert row is not None
        new, result = fn(float(row.value.decode() or 0))
        if new is not None:
            row.value = repr(new).encode()
    return result


async def read(sessionmaker: async_sessionmaker[AsyncSession], *, key: str) -> float | None:
    async with sessionmaker() as session:
        value = await session.scalar(select(models.Meta.value).where(models.Meta.key == key[:64]))
    return float(value.decode()) if value is not None else None


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def hold(sessionmaker: async_sessionmaker[AsyncSession], *, name: str) -> AsyncIterator[None]:
    """Only one holder of `name` at a time, across every replica sharing the database."""
    if not _is_postgres(sessionmaker):
        lock = _local_locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield
        return
    engine = sessionmaker.kw["bind"]
    k = lock_key(name)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": k})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
            await conn.commit()


async def save_refs(
    sessionmaker: async_sessionmaker[AsyncSession], *, deployment_id: int, notifier: str, refs: dict[str, Any]
) -> None:
    """Merge `refs` into the deploy's notify_refs[notifier] now, in a transaction of its own."""
    async with sessionmaker.begin() as session:
        deployment = await session.get(models.Deployment, deployment_id, with_for_update=True)
        if deployment is None:
            return
        all_refs = dict(deployment.notify_refs or {})
        all_refs[notifier] = {**all_refs.get(notifier, {}), **refs}
        deployment.notify_refs = all_refs


BUILD_CARD_PREFIX = "slack-build:"  # build_card_mark's keys: "slack-build:<build id>:<run>:<target>"


def build_card_mark(*, build_id: int, runs: int, target: str) -> str:
    """The `meta` key of where a build run's Slack card is (bot.notifier); core.retention drops it
    with its build."""
    return f"{BUILD_CARD_PREFIX}{build_id}:{runs}:{target}"


MARK_PREFIX = "done:e"  # event_mark's keys: "done:e<event id>:<what>"


def event_mark(*, event_id: int, what: str) -> str:
    """The `meta` key recording that `what` was done for the event (at most 64 characters)."""
    return f"{MARK_PREFIX}{event_id}:{what}"[:64]


def event_of_mark(key: str) -> int | None:
    """The event id in an `event_mark` key; None for any other key."""
    head, _, _ = key.removeprefix(MARK_PREFIX).partition(":")
    return int(head) if key.startswith(MARK_PREFIX) and head.isdigit() else None


async def save_mark(sessionmaker: async_sessionmaker[AsyncSession], *, key: str, value: str) -> None:
    """Keep `value` under `key` (at most 64 characters), replacing what was there."""
    async with sessionmaker.begin() as session:
        row = await session.get(models.Meta, key[:64], with_for_update=True)
        if row is not None:
            row.value = value.encode()
            return
        try:
            async with session.begin_nested():
                session.add(models.Meta(key=key[:64], value=value.encode()))
                await session.flush()
        except IntegrityError:
            # Another replica wrote it first: this one is the newer fact.
            row = await session.get_one(models.Meta, key[:64], with_for_update=True)
            row.value = value.encode()


async def read_mark(sessionmaker: async_sessionmaker[AsyncSession], *, key: str) -> str | None:
    async with sessionmaker() as session:
        value = await session.scalar(select(models.Meta.value).where(models.Meta.key == key[:64]))
    return value.decode() if value is not None else None


HELD_PREFIX = "held:"  # held_key's keys: "held:<digest of what is held>"
HELD_FOR = 120.0  # seconds past its time after which a reservation nobody took is forgotten


def held_key(what: str) -> str:
    """The `meta` key of a reservation for `what`: a digest, so that any name fits in 64 characters."""
    return HELD_PREFIX + hashlib.sha256(what.encode()).hexdigest()[:48]


async def keep_held(
    sessionmaker: async_sessionmaker[AsyncSession], *, key: str, at: float, holder: str = ""
) -> None:
    """Leave a reservation (a wall-clock time, and who holds it) under `key` for whichever replica
    comes to read or take it."""
    await save_mark(sessionmaker, key=key, value=f"{at!r} {holder}".strip())


async def read_held(sessionmaker: async_sessionmaker[AsyncSession], *, key: str) -> tuple[float, str] | None:
    """The reservation under `key` as (time, holder), left in place; None when there is none."""
    value = await read_mark(sessionmaker, key=key)
    return _held(value) if value is not None else None


async def take_held(sessionmaker: async_sessionmaker[AsyncSession], *, key: str) -> float | None:
    """The reservation under `key`, deleted by the same statement, so that only one taker gets it;
    None when there is none."""
    async with sessionmaker.begin() as session:
        value = await session.scalar(
            delete(models.Meta).where(models.Meta.key == key).returning(models.Meta.value)
        )
    return _held(value.decode(errors="replace"))[0] if value is not None else None


def held_at(value: bytes) -> float:
    """The time of a kept reservation's stored value (0.0, long past, for anything unreadable)."""
    return _held(value.decode(errors="replace"))[0]


def _held(value: str) -> tuple[float, str]:
    at, _, holder = value.partition(" ")
    try:
        return float(at), holder
    except ValueError:
        return 0.0, holder
