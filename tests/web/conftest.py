"""Fixtures for the dashboard: the real app over uvicorn with sign-in against the fake OIDC provider.

The app's public URL must be known before it starts (the OIDC redirect URI is built from it), so the
port is chosen first and the settings name it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr

from core import apps, projects
from core.apps import AppChanges
from shipit import runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from tests.conftest import ADMIN, free_port, serving
from tests.fakes.oidc import FakeOidc
from tests.shipit.conftest import offline_kubeconfig
from tests.web.browser import browser  # noqa: F401 (a fixture for the browser tests)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Dashboard:
    url: str
    rt: Runtime
    oidc: FakeOidc

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, follow_redirects=True, timeout=30)

    async def sign_in(self, client: httpx.AsyncClient, email: str, *, next: str = "/") -> httpx.Response:
        """The whole code flow, as a browser follows it: start, the provider, the callback."""
        self.oidc.sign_in_as(email)
        return await client.get("/auth/oidc/start", params={"next": next})


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, fake_oidc: FakeOidc, web_port: int) -> Settings:
    return settings.model_copy(
        update={
            "url": f"http://127.0.0.1:{web_port}",
            "oidc_issuer": fake_oidc.issuer,
            "oidc_client_id": fake_oidc.client_id,
            "oidc_client_secret": SecretStr(fake_oidc.client_secret),
            "github_oauth_client_id": fake_oidc.client_id,
            "github_oauth_client_secret": SecretStr(fake_oidc.client_secret),
            "github_oauth_url": fake_oidc.origin,
            "github_api_url": fake_oidc.origin,
            "web_cookie_secure": False,  # plain http on loopback
        }
    )


@pytest.fixture
async def dashboard(rt: Runtime, fake_oidc: FakeOidc, web_port: int) -> AsyncIterator[Dashboard]:
    from shipit.main import create_app

    app = create_app(rt=rt)
    await runtime.start(rt)
    async with serving(app, port=web_port) as url:
        yield Dashboard(url=url, rt=rt, oidc=fake_oidc)


async def offline_app(rt: Runtime, *, name: str = "web", members: dict[str, str]) -> None:
    """Project acme, an app on a cluster row that needs no cluster, and the given members."""
    from core import clusters

    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name="offline", kubeconfig_text=offline_kubeconfig(),
            default_namespace="apps", version="v0.0.0-offline",
        )  # fmt: skip
        await clusters.grant(session, actor=ADMIN, cluster="offline", project="acme", namespace="apps")
        for subject, role in members.items():
            await projects.set_access(session, actor=ADMIN, project_name="acme", subject=subject, role=role)
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="offline", name=name, namespace="apps",
            changes=AppChanges(image="ghcr.io/acme/web:1.0"),
        )  # fmt: skip
