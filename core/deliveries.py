"""Duplicate deliveries (GitHub redeliveries, Slack retries, double clicks) never act twice.

The delivery id is recorded in the same transaction as the work it causes, so
a delivery that committed is answered and dropped when it comes again, while
one that never finished (its transaction rolled back) runs when redelivered.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models


async def first_time(
    session: AsyncSession, *, source: str, delivery_id: str, kind: str = "", prefix: str | None = None
) -> bool:
    """Record the delivery; False if it was recorded before (the caller answers and does nothing).

    Its id is `<prefix>:<delivery_id>`, the prefix being the source unless given.
    """
    key = _key(prefix or source, delivery_id)
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # One statement (issue 13) instead of a look-up, a savepoint, the insert and the release.
        now = models.utcnow()
        upsert: Any = sqlite_insert if dialect == "sqlite" else postgresql_insert
        stmt = upsert(models.WebhookDelivery).values(
            id=key, source=source, kind=kind[:64], received_at=now, finished_at=now
        )
        inserted = await session.scalar(stmt.on_conflict_do_nothing().returning(models.WebhookDelivery.id))
        return inserted is not None
    if await session.scalar(select(models.WebhookDelivery.id).where(models.WebhookDelivery.id == key)):
        return False
    try:
        async with session.begin_nested():
            session.add(
                models.WebhookDelivery(id=key, source=source, kind=kind[:64], finished_at=models.utcnow())
            )
            await session.flush()
    except IntegrityError:
        return False
    return True


def _key(source: str, delivery_id: str) -> str:
    return f"{source}:{delivery_id}"[:200]


async def seen(session: AsyncSession, *, source: str, delivery_ids: list[str]) -> set[str]:
    """Which of these deliveries were recorded before: one query for a whole batch (group commit)."""
    keys = {_key(source, d): d for d in delivery_ids}
    found = await session.scalars(
        select(models.WebhookDelivery.id).where(models.WebhookDelivery.id.in_(list(keys)))
    )
    return {keys[k] for k in found}


async def record(session: AsyncSession, *, source: str, kinds: dict[str, str]) -> None:
    """Record deliveries that `seen` reported new in this same transaction (delivery id -> kind).

    A concurrent transaction recording one of them first makes this flush fail with
    IntegrityError; the caller then falls back to `first_time` one delivery at a time.
    """
    now = models.utcnow()
    # A Core bulk INSERT: one statement for the batch, without the unit-of-work bookkeeping.
    await session.execute(
        insert(models.WebhookDelivery),
        [
            {
                "id": _key(source, d),
                "source": source,
                "kind": kind[:64],
                "received_at": now,
                "finished_at": now,
            }
            for d, kind in kinds.items()
        ],
    )


async def claim(session: AsyncSession, *, source: str, kinds: dict[str, str]) -> set[str]:
    """Record these deliveries (delivery id -> kind) in one statement; returns the ids that are new.

    INSERT ... ON CONFLICT DO NOTHING RETURNING: the ids already recorded are left alone and not
    returned, so one round trip both deduplicates and records a whole batch (group commit).
    """
    if not kinds:
        return set()
    now = models.utcnow()
    keys = {_key(source, d): d for d in kinds}
    rows = [
        {"id": k, "source": source, "kind": kinds[d][:64], "received_at": now, "finished_at": now}
        for k, d in keys.items()
    ]
    dialect = session.get_bind().dialect.name
    # The table, not the mapped class: a Core INSERT skips the ORM's per-row bulk bookkeeping
    # (issue 13: the ingest batch's cost grew with its size); `insertmanyvalues` still sends it as
    # one multi-row INSERT .. RETURNING.
    table = cast(Table, models.WebhookDelivery.__table__)
    if dialect == "sqlite":
        stmt: Any = sqlite_insert(table).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql_insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        new = await seen(session, source=source, delivery_ids=list(kinds))
        fresh = {d: k for d, k in kinds.items() if d not in new}
        await record(session, source=source, kinds=fresh)
        return set(fresh)
    # Parameters as a list (not .values(rows)): one cached statement, sent as a multi-row INSERT.
    inserted = await session.scalars(stmt.returning(table.c.id), rows)
    return {keys[k] for k in inserted}


async def forget_older(session: AsyncSession, *, prefix: str, seconds: float) -> int:
    """Drop records under `prefix` older than `seconds`: for ids that cannot come back after a window
    (a slash command's trigger_id outlives Slack's 5-minute signature window by nothing)."""
    cutoff = models.utcnow() - dt.timedelta(seconds=seconds)
    result = await session.execute(
        delete(models.WebhookDelivery)
        .where(models.WebhookDelivery.id.startswith(f"{prefix}:", autoescape=True))
        .where(models.WebhookDelivery.received_at < cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)
