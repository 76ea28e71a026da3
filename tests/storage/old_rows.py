"""Rows written as raw SQL into a database an old migration left (its schema has no ORM models)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shipit.runtime import resolve_master_key
from shipit.settings import Settings
from storage.crypto import Cipher
from tests.storage.test_migrate_tenancy import _app


async def project_and_cluster(conn: AsyncConnection, *, settings: Settings) -> None:
    """Project 1 "acme" and cluster 1 "prod" (its kubeconfig encrypted with the settings' key)."""
    kubeconfig = Cipher(key=resolve_master_key(settings)).encrypt(b"{}", purpose="kubeconfig")
    await conn.execute(
        text("INSERT INTO projects (id, name, created_at) VALUES (1, 'acme', CURRENT_TIMESTAMP)")
    )
    await conn.execute(
        text(
            "INSERT INTO clusters (id, name, kubeconfig_enc, default_namespace, server, server_version, "
            "created_at) VALUES (1, 'prod', :k, 'default', 'https://k8s', 'v1', CURRENT_TIMESTAMP)"
        ),
        {"k": kubeconfig},
    )


def in_env(insert: str, environment_id: int) -> str:
    """An `INSERT INTO apps` (test_migrate_tenancy._app) for a schema whose apps have an environment."""
    return insert.replace("INSERT INTO apps (", "INSERT INTO apps (environment_id, ", 1).replace(
        "VALUES (", f"VALUES ({environment_id}, ", 1
    )


async def web_in_production(conn: AsyncConnection, *, settings: Settings) -> None:
    """project_and_cluster, acme's environment 1 "production", and app `web` (namespace acme-web) in it:
    for a schema from 0011 on."""
    await project_and_cluster(conn, settings=settings)
    await conn.execute(
        text(
            "INSERT INTO environments (id, project_id, name, position, windows, freezes, created_at) "
            "VALUES (1, 1, 'production', 0, '[]', '[]', CURRENT_TIMESTAMP)"
        )
    )
    await conn.execute(text(in_env(_app("web", 1, "acme-web"), 1)))
