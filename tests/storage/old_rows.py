"""Rows written as raw SQL into a database an old migration left (its schema has no ORM models)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shipit.runtime import resolve_master_key
from shipit.settings import Settings
from storage.crypto import Cipher


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
