"""Migration 0019 on a database written by 0018: the usage_samples table, one row per app and slot,
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

SLOT = dt.datetime(2026, 12, 5, 3, 0, tzinfo=dt.UTC)


async def test_upgrade_adds_usage_samples_unique_per_app_and_slot(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0018")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
        await migrate.upgrade(engine, revision="0019")
        assert await migrate.current(engine) == "0019"
        async with AsyncSession(engine) as session:
            app_id = await session.scalar(select(models.App.id).where(models.App.name == "web"))
            assert app_id is not None

            def sample(cpu: float) -> models.UsageSample:
                return models.UsageSample(
                    app_id=app_id, sampled_at=SLOT, pods=2, cpu_millicores=cpu, memory_bytes=2**36
                )

            session.add(sample(40.5))
            await session.commit()
            got = await session.scalar(select(models.UsageSample))
            assert got is not None
            assert (got.sampled_at, got.pods, got.cpu_millicores, got.memory_bytes) == (SLOT, 2, 40.5, 2**36)
            session.add(sample(41.0))  # the same app and slot: another replica's pass
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
            # Deleted with its app.
            await session.execute(text("DELETE FROM apps WHERE id = :i"), {"i": app_id})
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(models.UsageSample)) == 0
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("usage_samples"))
        assert {"ix_usage_samples_sampled_at"} <= {i["name"] for i in indexes}
    finally:
        await engine.dispose()
