"""Migration 0011 on a database written by 0010: every project gets one environment holding its apps,
its Slack channel, webhook and GitHub become notification targets, and nothing else changes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shipit.runtime import resolve_master_key
from shipit.settings import Settings
from storage import db, migrate
from storage.crypto import Cipher
from tests.storage.test_migrate_tenancy import _app

pytestmark = pytest.mark.both_databases


async def test_upgrade_moves_apps_into_a_default_environment_and_notices_into_targets(
    settings: Settings,
) -> None:
    engine = db.create_engine(settings.database_url)
    cipher = Cipher(key=resolve_master_key(settings))
    secret = cipher.encrypt_text("s3cret", purpose="project-webhook-secret")
    try:
        await migrate.upgrade(engine, revision="0010")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO projects (id, name, slack_channel, webhook_url, webhook_secret_enc, created_at) "
                    "VALUES (1, 'acme', 'C123', 'https://hooks.acme.io/x', :s, CURRENT_TIMESTAMP), "
                    "(2, 'quiet', NULL, NULL, NULL, CURRENT_TIMESTAMP)"
                ),
                {"s": secret},
            )
            await conn.execute(
                text(
                    "INSERT INTO clusters (id, name, kubeconfig_enc, default_namespace, server, server_version, "
                    "created_at) VALUES (1, 'prod', :k, 'default', 'https://k8s', 'v1', CURRENT_TIMESTAMP)"
                ),
                {"k": cipher.encrypt(b"{}", purpose="kubeconfig")},
            )
            await conn.execute(text(_app("web", 1, "acme-web")))
            await conn.execute(text(_app("worker", 1, "acme-jobs")))
            await conn.execute(text("UPDATE apps SET git_repo = 'acme/web' WHERE name = 'web'"))
            await conn.execute(
                text(
                    "INSERT INTO deployments (app_id, revision_number, image, namespace, trigger, actor, status, "
                    "logs, ready, desired, notify_refs, created_at) VALUES ((SELECT id FROM apps WHERE name = "
                    "'web'), 1, 'img', 'acme-web', 'api', 'test', 'succeeded', '[]', 0, 0, '{}', CURRENT_TIMESTAMP)"
                )
            )
        await migrate.upgrade(engine, revision="0011")
        async with engine.connect() as conn:
            envs = (
                await conn.execute(
                    text(
                        "SELECT project_id, name, position, cluster_id, namespace, protected, required_approvals "
                        "FROM environments ORDER BY project_id"
                    )
                )
            ).all()
            apps = (
                await conn.execute(
                    text(
                        "SELECT a.name, e.name, e.project_id FROM apps a JOIN environments e "
                        "ON e.id = a.environment_id ORDER BY a.name"
                    )
                )
            ).all()
            targets = (
                await conn.execute(
                    text(
                        "SELECT project_id, kind, address, secret_enc, events, environment "
                        "FROM notification_targets ORDER BY kind"
                    )
                )
            ).all()
            kept = (await conn.execute(text("SELECT count(*) FROM deployments"))).scalar_one()
    finally:
        await engine.dispose()
    assert [(*tuple(e[:5]), bool(e[5]), e[6]) for e in envs] == [
        (1, "production", 0, 1, "acme-web", False, 1),
        (2, "production", 0, None, None, False, 1),
    ]
    assert [tuple(a) for a in apps] == [("web", "production", 1), ("worker", "production", 1)]
    assert [(t[0], t[1], t[2], t[4], t[5]) for t in targets] == [
        (1, "github", "", "*", None),
        (1, "slack", "C123", "*", None),
        (1, "webhook", "https://hooks.acme.io/x", "*", None),
    ]
    webhook = targets[2]
    assert cipher.decrypt_text(webhook[3], purpose="project-webhook-secret") == "s3cret"
    assert kept == 1, "adding apps.environment_id must not cascade-delete deploys"
