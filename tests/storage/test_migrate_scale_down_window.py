"""Migration 0020 on a database written by 0019: apps.scale_down_window, NULL for every existing app
(Kubernetes' default window, no `behavior` on its HPA), and settable afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shipit.settings import Settings
from storage import db, migrate, models
from tests.storage.old_rows import web_in_production

pytestmark = pytest.mark.both_databases


async def test_upgrade_adds_a_null_scale_down_window_to_existing_apps(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0019")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
        await migrate.upgrade(engine, revision="0020")
        assert await migrate.current(engine) == "0020"
        async with AsyncSession(engine) as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None and app.scale_down_window is None
            app.scale_down_window = 3600
            await session.commit()
            assert await session.scalar(select(models.App.scale_down_window)) == 3600
    finally:
        await engine.dispose()
