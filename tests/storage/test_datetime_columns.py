"""Datetime columns (storage.models.UTCDateTime): on SQLite a value is bound by one function of the type
(issue 13), which must write the text SQLAlchemy's generic path wrote (the UTC conversion, then the
dialect's DATETIME format): compared, ordered and read back as before."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError

from shipit.settings import Settings
from storage import db, migrate, models

_ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]


def _generic(value: dt.datetime) -> str:
    """What the TypeDecorator's own bind processing gives on SQLite: `process_bind_param`, then the
    dialect's DATETIME processor."""
    dialect = sqlite.dialect()
    column = models.UTCDateTime()
    driver = column.impl_instance.dialect_impl(dialect).bind_processor(dialect)
    assert driver is not None
    return driver(column.process_bind_param(value, dialect))


def test_sqlite_binds_the_text_the_generic_path_wrote() -> None:
    bind = models.UTCDateTime()._cached_bind_processor(sqlite.dialect())
    assert bind is not None
    rnd = random.Random(13)
    values = [
        dt.datetime(1, 1, 2, tzinfo=dt.UTC),
        dt.datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 4, 20, 0, 0, 0, tzinfo=_ZONES[1]),  # microseconds 0: still written
        models.utcnow(),
    ]
    for _ in range(2000):
        day = (rnd.randint(2, 9998), rnd.randint(1, 12), rnd.randint(1, 28))
        time = (rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999999))
        values.append(dt.datetime(*day, *time, tzinfo=rnd.choice(_ZONES)))
    for value in values:
        assert bind(value) == _generic(value), value
    assert bind(None) is None
    with pytest.raises(ValueError, match="naive"):
        bind(dt.datetime(2026, 1, 1))


@pytest.mark.both_databases
async def test_datetimes_read_back_as_written_and_compare_in_sql(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    at = [
        dt.datetime(2026, 12, 4, 20, 0, 0, tzinfo=_ZONES[1]),  # 14:30 UTC
        dt.datetime(2026, 12, 4, 15, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 4, 8, 0, 0, 2, tzinfo=_ZONES[2]),  # 16:00:00.000002 UTC
    ]
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(models.AuditEvent),
                [
                    {"actor": "user:a", "channel": "api", "action": "test", "target": f"t/{i}", "at": a}
                    for i, a in enumerate(at)
                ],
            )
            with pytest.raises(StatementError, match="naive"):
                await conn.execute(
                    insert(models.AuditEvent),
                    {
                        "actor": "user:a",
                        "channel": "api",
                        "action": "t",
                        "target": "n",
                        "at": dt.datetime(2026, 1, 1),
                    },
                )
        async with engine.connect() as conn:
            read = dict((await conn.execute(select(models.AuditEvent.target, models.AuditEvent.at))).all())
            later = (
                (
                    await conn.execute(
                        select(models.AuditEvent.target)
                        .where(models.AuditEvent.at > dt.datetime(2026, 12, 4, 15, 0, 0, tzinfo=dt.UTC))
                        .order_by(models.AuditEvent.at)
                    )
                )
                .scalars()
                .all()
            )
            if engine.dialect.name == "sqlite":
                stored = (
                    await conn.execute(text("SELECT at FROM audit_events WHERE target = 't/0'"))
                ).scalar_one()
                assert stored == "2026-12-04 14:30:00.000000"
    finally:
        await engine.dispose()
    assert [read[f"t/{i}"] for i in range(len(at))] == at  # equal instants, handed back in UTC
    assert all(v.tzinfo == dt.UTC for v in read.values())
    assert later == ["t/1", "t/2"]
