"""Migration 0002 on a database written by 0001: existing apps keep their namespaces, by claim and grant."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core import deploys
from core.errors import Conflict
from shipit import runtime
from shipit.runtime import resolve_master_key
from shipit.settings import Settings
from storage import db, migrate
from storage.crypto import Cipher
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases

APP_COLUMNS = (
    "name, project_id, cluster_id, namespace, replicas, port, env, cpu_request, cpu_limit, memory_request, "
    "memory_limit, health_initial_delay, health_period, progress_deadline_seconds, protected, "
    "auto_deploy_paused, git_ref_type, deploy_on, previews_enabled, preview_ttl_hours, preview_max_open, "
    "preview_env, created_at, updated_at"
)


def _app(name: str, project: int, namespace: str) -> str:
    return (
        f"INSERT INTO apps ({APP_COLUMNS}) VALUES ('{name}', {project}, 1, '{namespace}', 1, 8080, '{{}}', "
        "'100m', '500m', '128Mi', '256Mi', 0, 10, 600, false, false, 'branch', 'push', false, 72, 10, '{}', "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )


async def test_upgrade_claims_the_namespaces_apps_already_use(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0001")
        kubeconfig = Cipher(key=resolve_master_key(settings)).encrypt(b"{}", purpose="kubeconfig")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO projects (id, name, created_at) VALUES "
                    "(1, 'acme', CURRENT_TIMESTAMP), (2, 'rival', CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO clusters (id, name, kubeconfig_enc, default_namespace, server, server_version, "
                    "created_at) VALUES (1, 'prod', :k, 'default', 'https://k8s', 'v1', CURRENT_TIMESTAMP)"
                ),
                {"k": kubeconfig},
            )
            # acme: web in `shared` (first), worker in `acme`; rival: api in `shared` too, db in `rival`.
            for name, project, namespace in (
                ("web", 1, "shared"),
                ("worker", 1, "acme"),
                ("api", 2, "shared"),
                ("db", 2, "rival"),
            ):
                await conn.execute(text(_app(name, project, namespace)))
            await conn.execute(
                text(
                    "INSERT INTO previews (app_id, pr_number, repo, head_sha, namespace, status, "
                    "last_activity_at, created_at, closed_at) VALUES "
                    "(1, 7, 'acme/web', 'a', 'web-pr-7', 'ready', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, NULL), "
                    "(1, 3, 'acme/web', 'b', 'web-pr-3', 'closed', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"
                )
            )
        await migrate.upgrade(engine)
        assert await migrate.current(engine) == "0003"  # head: 0003 (releases) follows 0002
        async with engine.connect() as conn:
            claims = (
                await conn.execute(
                    text(
                        "SELECT namespace, project_id, origin, created_by FROM namespace_claims ORDER BY namespace"
                    )
                )
            ).all()
            grants = (
                await conn.execute(
                    text("SELECT cluster_id, project_id FROM cluster_grants ORDER BY project_id")
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(c) for c in claims] == [
        ("acme", 1, "granted", "migration"),
        ("rival", 2, "granted", "migration"),
        ("shared", 1, "granted", "migration"),  # the first app's project keeps a shared namespace
        ("web-pr-7", 1, "created", "migration"),  # open previews only
    ]
    assert [tuple(g) for g in grants] == [(1, 1), (1, 2)]

    # From now on rival's app in acme's namespace cannot be deployed; acme's can.
    rt = await runtime.build(settings)
    try:
        async with rt.sessionmaker.begin() as session:
            ok = await deploys.request(
                session, ctx=rt.core, actor=ADMIN, app_name="web", image="ghcr.io/acme/web:1", trigger="api"
            )
            assert ok.created
        with pytest.raises(
            Conflict, match="namespace shared on cluster prod is not available to project rival"
        ):
            async with rt.sessionmaker.begin() as session:
                await deploys.request(
                    session, ctx=rt.core, actor=ADMIN, app_name="api", image="ghcr.io/r/api:1", trigger="api"
                )
    finally:
        await runtime.stop(rt)
