"""Migration 0012 on a database written by 0011: app names become unique per environment, and
rebuilding the apps table (SQLite) keeps every row that hangs off an app."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shipit.settings import Settings
from storage import db, migrate
from tests.storage.old_rows import in_env, project_and_cluster
from tests.storage.test_migrate_tenancy import _app

pytestmark = pytest.mark.both_databases

_COUNTS = ("secrets", "secret_versions", "revisions", "deployments")


async def _counts(conn: object) -> dict[str, int]:
    out = {}
    for table in _COUNTS:
        out[table] = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()  # type: ignore[attr-defined]
    return out


async def test_upgrade_keeps_children_and_lets_two_environments_hold_one_name(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0011")
        async with engine.begin() as conn:
            await project_and_cluster(conn, settings=settings)
            await conn.execute(
                text(
                    "INSERT INTO environments (id, project_id, name, position, windows, freezes, created_at) "
                    "VALUES (1, 1, 'production', 0, '[]', '[]', CURRENT_TIMESTAMP), "
                    "(2, 1, 'staging', 1, '[]', '[]', CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(text(_app("web", 1, "acme-web")))
            # A row written with no environment (old code between 0011 and 0012) joins the first one.
            await conn.execute(text(_app("worker", 1, "acme-jobs")))
            await conn.execute(text("UPDATE apps SET environment_id = 1 WHERE name = 'web'"))
            web = (await conn.execute(text("SELECT id FROM apps WHERE name = 'web'"))).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO secrets (app_id, key, value_enc, digest, updated_at) "
                    "VALUES (:a, 'DATABASE_URL', :v, 'd', CURRENT_TIMESTAMP)"
                ),
                {"a": web, "v": b"x"},
            )
            await conn.execute(
                text(
                    "INSERT INTO secret_versions (app_id, version, data_enc, checksum, keys, created_by, created_at) "
                    "VALUES (:a, 1, :v, 'c', '[]', 'test', CURRENT_TIMESTAMP)"
                ),
                {"a": web, "v": b"x"},
            )
            await conn.execute(
                text(
                    "INSERT INTO revisions (app_id, number, image, snapshot, secret_checksum, source, created_by, "
                    "created_at) VALUES (:a, 1, 'img', '{}', 'c', 'deploy', 'test', CURRENT_TIMESTAMP)"
                ),
                {"a": web},
            )
            await conn.execute(
                text(
                    "INSERT INTO deployments (app_id, revision_number, image, namespace, trigger, actor, status, "
                    "logs, ready, desired, notify_refs, created_at) VALUES (:a, 1, 'img', 'acme-web', 'api', "
                    "'test', 'succeeded', '[]', 0, 0, '{}', CURRENT_TIMESTAMP)"
                ),
                {"a": web},
            )
            before = await _counts(conn)
        await migrate.upgrade(engine, revision="0012")
        async with engine.connect() as conn:
            after = await _counts(conn)
            homes = (await conn.execute(text("SELECT name, environment_id FROM apps ORDER BY name"))).all()
        # The same name in another environment of the project is now a row of its own...
        async with engine.begin() as conn:
            await conn.execute(text(in_env(_app("web", 1, "acme-staging"), 2)))
        # ...but never twice in one environment.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text(in_env(_app("web", 1, "acme-again"), 2)))
        async with engine.connect() as conn:
            webs = (
                await conn.execute(text("SELECT environment_id FROM apps WHERE name = 'web' ORDER BY 1"))
            ).all()
    finally:
        await engine.dispose()
    assert before == {"secrets": 1, "secret_versions": 1, "revisions": 1, "deployments": 1}
    assert after == before, "rebuilding apps must not cascade-delete its children"
    assert [tuple(h) for h in homes] == [("web", 1), ("worker", 1)]
    assert [w[0] for w in webs] == [1, 2]
