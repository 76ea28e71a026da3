"""Fixtures for the REST API and CLI tests: tokens, an HTTP client, and a cluster row that needs no cluster.

The `offline` cluster is a real row written by core.clusters.add with a kubeconfig pointing at a closed
port: enough to create apps, set secrets and check permissions when no Kubernetes control plane is
running.  Nothing is deployed to it (apps are created with deploy off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core import clusters, projects, tokens
from core.identity import SYSTEM
from shipit.runtime import Runtime
from tests import helpers
from tests.conftest import ADMIN, LiveServer


async def make_token(rt: Runtime, *, subject: str = "user:admin", admin: bool = True) -> str:
    async with rt.sessionmaker.begin() as session:
        _, plaintext = await tokens.create(
            session, actor=SYSTEM, name=subject.split(":")[-1], subject=subject, is_admin=admin
        )
    return plaintext


def closed_port() -> int:
    return helpers.refused_port()


def offline_kubeconfig() -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster:
    server: https://127.0.0.1:{closed_port()}
    insecure-skip-tls-verify: true
contexts:
- name: offline
  context: {{cluster: offline, user: nobody, namespace: apps}}
current-context: offline
users:
- name: nobody
  user: {{token: not-a-real-token}}
"""


@pytest.fixture
async def admin_token(live_server: LiveServer) -> str:
    return await make_token(live_server.rt)


@pytest.fixture
async def api(live_server: LiveServer, admin_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the live server, authenticated as a global admin."""
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    ) as client:
        yield client


async def seed_offline(session: Any, *, rt: Runtime, slack_channel: str | None = None) -> None:
    """Project `acme`, cluster `offline` (a row only: its API server does not exist), `apps` granted."""
    await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=slack_channel)
    await clusters.add(
        session,
        ctx=rt.core,
        actor=ADMIN,
        name="offline",
        kubeconfig_text=offline_kubeconfig(),
        default_namespace="apps",
        version="v0.0.0-offline",
    )
    await clusters.grant(session, actor=ADMIN, cluster="offline", project="acme", namespace="apps")


@pytest.fixture
async def offline(live_server: LiveServer) -> str:
    """Project `acme` and cluster `offline` (a row only: its API server does not exist)."""
    rt = live_server.rt
    async with rt.sessionmaker.begin() as session:
        await seed_offline(session, rt=rt)
    return "offline"


async def table_rows(rt: Runtime, table: str) -> list[dict[str, Any]]:
    async with rt.sessionmaker() as session:
        result = await session.execute(text(f"SELECT * FROM {table}"))
        return [dict(row._mapping) for row in result]
