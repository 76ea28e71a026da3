"""Migration 0003 on a database written by 0002: each app points at the revision that runs, and that
revision's old-format snapshot still loads and deploys (secrets as they are until versions exist)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text

from core import deploys, revisions
from shipit import runtime
from shipit.settings import Settings
from storage import db, migrate, models
from tests.conftest import ADMIN
from tests.storage.old_rows import project_and_cluster
from tests.storage.test_migrate_tenancy import _app

pytestmark = pytest.mark.both_databases

OLD_SNAPSHOT = {
    "image": "ghcr.io/acme/web:1.0",
    "replicas": 2,
    "port": 8080,
    "env": {"MODE": "one"},
    "resources": {
        "cpu_request": "100m",
        "cpu_limit": "500m",
        "memory_request": "128Mi",
        "memory_limit": "256Mi",
    },
    "health": None,
    "autoscaling": None,
    "domain": None,
    "ingress_class": None,
    "tls_issuer": None,
    "progress_deadline_seconds": 600,
}


async def test_upgrade_points_each_app_at_the_revision_that_runs(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0002")
        async with engine.begin() as conn:
            await project_and_cluster(conn, settings=settings)
            await conn.execute(
                text(
                    "INSERT INTO cluster_grants (cluster_id, project_id, created_by, created_at) "
                    "VALUES (1, 1, 'test', CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO namespace_claims (cluster_id, namespace, project_id, origin, created_by, created_at) "
                    "VALUES (1, 'web', 1, 'granted', 'test', CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(text(_app("web", 1, "web")))
            # Before 0003 a failed deploy wrote its image into the app.
            await conn.execute(text("UPDATE apps SET image = 'ghcr.io/acme/web:fail-2' WHERE name = 'web'"))
            await conn.execute(text(_app("idle", 1, "web")))
            for number, image in ((1, "ghcr.io/acme/web:1.0"), (2, "ghcr.io/acme/web:fail-2")):
                await conn.execute(
                    text(
                        "INSERT INTO revisions (app_id, number, image, snapshot, secret_checksum, source, "
                        "created_by, created_at) VALUES (1, :n, :image, :snap, 'x', 'deploy', 'test', "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {
                        "id": number,
                        "n": number,
                        "image": image,
                        "snap": json.dumps({**OLD_SNAPSHOT, "image": image}),
                    },
                )
            # Revision 1 succeeded, revision 2 (newer) failed: revision 1 is what runs.
            for number, state in ((1, "succeeded"), (2, "failed")):
                await conn.execute(
                    text(
                        "INSERT INTO deployments (app_id, revision_id, revision_number, image, namespace, "
                        "trigger, actor, status, logs, ready, desired, notify_refs, created_at, finished_at) "
                        "VALUES (1, (SELECT id FROM revisions WHERE number = :n), :n, 'img', 'web', 'api', 'test', :s, '[]', 0, 0, '{}', "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"n": number, "s": state},
                )
        await migrate.upgrade(engine, revision="0003")
        assert await migrate.current(engine) == "0003"
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT name, current_revision_id, auto_rollback, secrets_version, image FROM apps ORDER BY name"
                    )
                )
            ).all()
            kept = (await conn.execute(text("SELECT count(*) FROM deployments"))).scalar_one()
            first = (await conn.execute(text("SELECT id FROM revisions WHERE number = 1"))).scalar_one()
    finally:
        await engine.dispose()
    assert kept == 2, "adding columns to apps must not cascade-delete its deploys (SQLite table recreate)"
    assert [(n, c, bool(a), v, i) for n, c, a, v, i in rows] == [
        ("idle", None, True, 0, None),
        ("web", first, True, 0, "ghcr.io/acme/web:1.0"),
    ]

    rt = await runtime.build(settings)
    try:
        async with rt.sessionmaker() as session:
            rev = await session.get(models.Revision, first)
            assert rev is not None and rev.secrets_version is None
            snap = revisions.of_revision(rev)
            assert snap.replicas == 2 and snap.env == {"MODE": "one"} and snap.secrets_version is None
        # A config change builds on the current revision and gets a snapshot of today's format.
        async with rt.sessionmaker.begin() as session:
            result = await deploys.request(
                session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="config"
            )
        async with rt.sessionmaker() as session:
            new = await session.get(models.Revision, result.deployment.revision_id)
            assert new is not None and new.number == 3 and new.secrets_version == 0
            assert new.image == "ghcr.io/acme/web:1.0", "built on the current revision, not the failed one"
            assert new.snapshot["schema_version"] == revisions.SCHEMA_VERSION
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None and app.current_revision_id == first
    finally:
        await runtime.stop(rt)
