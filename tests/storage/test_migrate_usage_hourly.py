"""Migration 0022 on a database written by 0021: the usage_hourly table, one row per app and hour,
deleted with its app, and indexed by age for retention."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shipit.settings import Settings
from storage import db, migrate, models
from tests.storage.old_rows import web_in_production

pytestmark = pytest.mark.both_databases

HOUR = dt.datetime(2026, 12, 5, 3, 0, tzinfo=dt.UTC)


async def test_upgrade_adds_usage_hourly_unique_per_app_and_hour(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0021")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
        await migrate.upgrade(engine, revision="0022")
        assert await migrate.current(engine) == "0022"
        async with AsyncSession(engine) as session:
            app_id = await session.scalar(select(models.App.id).where(models.App.name == "web"))
            assert app_id is not None

            def hour(samples: int) -> models.UsageHourly:
                return models.UsageHourly(
                    app_id=app_id, hour=HOUR, samples=samples, cpu_sum_millicores=2400.5,
                    cpu_peak_millicores=80.0, memory_sum_bytes=60.0 * 2**36, memory_peak_bytes=2**36,
                    max_pods=2, cpu_peak_per_pod=40.0, memory_peak_per_pod=2.0**35,
                )  # fmt: skip

            session.add(hour(60))
            await session.commit()
            got = await session.scalar(select(models.UsageHourly))
            assert got is not None
            assert (got.hour, got.samples, got.cpu_sum_millicores, got.memory_sum_bytes, got.memory_peak_bytes) == (
                HOUR, 60, 2400.5, 60.0 * 2**36, 2**36,
            )  # fmt: skip
            session.add(hour(59))  # the same app and hour: another replica's rollup
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
            # Deleted with its app.
            await session.execute(text("DELETE FROM apps WHERE id = :i"), {"i": app_id})
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(models.UsageHourly)) == 0
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("usage_hourly"))
        assert {"ix_usage_hourly_hour"} <= {i["name"] for i in indexes}
    finally:
        await engine.dispose()
