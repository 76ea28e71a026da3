"""Migration 0015 on a database written by 0014: apps get their build settings (off for every
existing app), and the builds table holds one build per app and commit.  Migration 0017: a build
may name the pull request it was queued for; the builds already there are the branch's (NULL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shipit.settings import Settings
from storage import db, migrate, models
from tests.storage.old_rows import web_in_production

pytestmark = pytest.mark.both_databases


async def test_upgrade_adds_build_settings_off_and_the_builds_table(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0014")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
        await migrate.upgrade(engine, revision="0015")
        assert await migrate.current(engine) == "0015"
        await migrate.upgrade(engine)  # to head: the ORM below reads and writes every column of today
        async with AsyncSession(engine) as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None
            assert (app.build_enabled, app.build_context, app.build_image) == (False, None, None)
            app_id = app.id
            session.add(models.Build(app_id=app_id, sha="a" * 40, ref="refs/heads/main", actor="github:x",
                                     status="queued", image="r.dev/acme/web"))  # fmt: skip
            await session.commit()
            session.add(models.Build(app_id=app_id, sha="a" * 40, ref="refs/heads/main", actor="github:y",
                                     status="queued", image="r.dev/acme/web"))  # fmt: skip
            with pytest.raises(IntegrityError):
                await session.commit()
    finally:
        await engine.dispose()


async def test_upgrade_0017_keeps_existing_builds_the_branchs(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0016")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
            app_id = (await conn.execute(text("SELECT id FROM apps WHERE name = 'web'"))).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO builds (app_id, sha, ref, actor, status, image, created_at, runs) VALUES "
                    f"({app_id}, '{'b' * 40}', 'refs/heads/main', 'github:x', 'succeeded', 'r.dev/acme/web', "
                    "CURRENT_TIMESTAMP, 0)"
                )
            )
        await migrate.upgrade(engine, revision="0017")
        assert await migrate.current(engine) == "0017"
        # 0018: the `.deploy to ENV` comments waiting for a build, none for the builds already there.
        await migrate.upgrade(engine)  # to head: the ORM below reads and writes every column of today
        async with AsyncSession(engine) as session:
            build = await session.scalar(select(models.Build))
            assert build is not None and (build.sha, build.pr_number, build.waiting) == ("b" * 40, None, None)
            build.pr_number = 7
            build.waiting = [{"command": {"comment_id": 1}, "head_ref": "x"}]
            await session.commit()
    finally:
        await engine.dispose()
