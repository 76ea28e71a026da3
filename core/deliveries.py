"""Duplicate deliveries (GitHub redeliveries, Slack retries, double clicks) never act twice.

The delivery id is recorded in the same transaction as the work it causes, so
a delivery that committed is answered and dropped when it comes again, while
one that never finished (its transaction rolled back) runs when redelivered.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import readcache
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
    now: Any = models.utcnow()
    keys = {_key(source, d): d for d in kinds}
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        return await _claim_sqlite(session, dialect=dialect, source=source, kinds=kinds, keys=keys, now=now)
    if dialect.name != "postgresql":  # pragma: no cover - only SQLite and PostgreSQL are supported
        new = await seen(session, source=source, delivery_ids=list(kinds))
        fresh = {d: k for d, k in kinds.items() if d not in new}
        await record(session, source=source, kinds=fresh)
        return set(fresh)
    rows = [
        {"id": k, "source": source, "kind": kinds[d][:64], "received_at": now, "finished_at": now}
        for k, d in keys.items()
    ]
    # The table, not the mapped class: a Core INSERT skips the ORM's per-row bulk bookkeeping
    # (issue 13: the ingest batch's cost grew with its size); parameters as a list (not
    # .values(rows)): one cached statement, sent by `insertmanyvalues` as one multi-row INSERT.
    table = cast(Table, models.WebhookDelivery.__table__)
    stmt = postgresql_insert(table).on_conflict_do_nothing().returning(table.c.id)
    inserted = await session.scalars(stmt, rows)
    return {keys[k] for k in inserted}


async def _claim_sqlite(
    session: AsyncSession, *, dialect: Any, source: str, kinds: dict[str, str], keys: dict[str, str], now: Any
) -> set[str]:
    """SQLite: the multi-row INSERT .. ON CONFLICT DO NOTHING RETURNING written out with positional
    parameters, which is what SQLAlchemy sends too, without its per-row parameter processing (issue 13:
    ~10 us a row, most of a delivery's share of the batch).  The timestamp is rendered once, by the
    column's own type, so the stored text is the same.

    Each returned row also carries the read cache's stamp (core.readcache), read by the same
    statement inside the transaction: the handlers' cached look-ups then need no statement of their
    own to read it (a whole statement per batch, issue 13).  No new delivery, no row, no stamp: then
    no handler runs either."""
    stamp = _sqlite_timestamp(dialect)(now)
    conn = await session.connection()
    rows = list(keys.items())
    new: set[str] = set()
    version: Any = None
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
        chunk = rows[start : start + _SQLITE_ROWS_PER_INSERT]
        params: list[Any] = []
        for k, d in chunk:
            params += (k, source, kinds[d][:64], stamp, stamp)
        params.append(readcache.KEY)
        result: Any = await conn.exec_driver_sql(_sqlite_claim_sql(len(chunk)), tuple(params))
        for k, value in result.all():  # all rows in one call, not a fetch per row
            new.add(keys[k])
            version = value
    if new:
        readcache.stamp_read(session, version)
    return new


# 5 parameters a row (and the stamp's key), under the 999 an older SQLite allows in one statement.
_SQLITE_ROWS_PER_INSERT = 199


@functools.lru_cache(maxsize=_SQLITE_ROWS_PER_INSERT)
def _sqlite_claim_sql(rows: int) -> str:
    # Only placeholders are joined in: the values travel as parameters.
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO webhook_deliveries (id, source, kind, received_at, finished_at) VALUES "  # noqa: S608
        + values
        + " ON CONFLICT DO NOTHING RETURNING id, (SELECT value FROM meta WHERE key = ?)"
    )


@functools.cache
def _sqlite_timestamp(dialect: Any) -> Any:
    process = cast(Table, models.WebhookDelivery.__table__).c.received_at.type.bind_processor(dialect)
    return process or (lambda value: value)


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
