"""Migration 0021 on a database written by 0020: the runs table (one-off runs' history), one row per
app and Job name, deleted with its app, and indexed by age."""

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

AT = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


async def test_upgrade_adds_runs_unique_per_app_and_name_and_deleted_with_the_app(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0020")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
        await migrate.upgrade(engine, revision="0021")
        assert await migrate.current(engine) == "0021"
        async with AsyncSession(engine) as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None
            app_id, environment_id = app.id, app.environment_id

            def run(name: str) -> models.Run:
                return models.Run(
                    app_id=app_id,
                    environment_id=environment_id,
                    name=name,
                    actor="user:ann",
                    program="rake",
                    arg_count=2,
                    revision=3,
                    image="ghcr.io/acme/web:1.0",
                    timeout_seconds=1800,
                    status="running",
                    created_at=AT,
                )

            session.add(run("web-run-a"))
            await session.commit()
            got = await session.scalar(select(models.Run))
            assert got is not None
            assert (got.status, got.exit_code, got.reason, got.created_at, got.finished_at) == (
                "running", None, None, AT, None,
            )  # fmt: skip
            session.add(run("web-run-a"))  # the same Job name in the same app
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
            # Deleted with its app.
            await session.execute(text("DELETE FROM apps WHERE id = :i"), {"i": app_id})
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(models.Run)) == 0
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("runs"))
        assert {"ix_runs_created_at"} <= {i["name"] for i in indexes}
    finally:
        await engine.dispose()
