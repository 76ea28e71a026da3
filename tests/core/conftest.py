"""Fixtures shared by the core tests that need no cluster."""

from __future__ import annotations

import pytest

from core import apps, projects
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN


@pytest.fixture
async def paper(rt: Runtime) -> Runtime:
    """Project `acme` with app `web` (namespace `web`) on cluster `paper`, a row never contacted."""
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        session.add(
            models.Cluster(name="paper", kubeconfig_enc=rt.core.cipher.encrypt(b"{}", purpose="kubeconfig"))
        )
        await session.flush()
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="paper",
            name="web",
            namespace="web",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
        )
    return rt
