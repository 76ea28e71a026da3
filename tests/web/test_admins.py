"""SHIPIT_WEB_ADMINS: the listed people act as global admins on the dashboard; the Clusters page is theirs."""

from __future__ import annotations

import pytest

from shipit.settings import Settings
from tests.web.conftest import Dashboard, offline_app


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"web_admins": " User:Ops@Example.com ,github:OctoCat"})


def test_the_setting_is_a_list_of_subjects(settings: Settings) -> None:
    assert settings.web_admin_subjects == frozenset({"user:ops@example.com", "github:octocat"})
    assert Settings(_env_file=None).web_admin_subjects == frozenset()  # type: ignore[call-arg]


async def test_clusters_page_for_web_admins_only(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "owner"})
    async with dashboard.client() as ops:
        home = await dashboard.sign_in(ops, "ops@example.com")
        # A global admin: every project, without being a member of any.
        assert 'href="/projects/acme"' in home.text
        assert 'href="/clusters"' in home.text
        page = await ops.get("/clusters")
        assert page.status_code == 200
        assert "offline" in page.text and "v0.0.0-offline" in page.text
        assert "<code>https://127.0.0.1:" in page.text  # the server, from the kubeconfig
        assert 'href="/projects/acme"' in page.text and "<code>apps</code>" in page.text
        assert "granted by user:admin" in page.text
        assert "not-a-real-token" not in page.text  # the kubeconfig's credentials never show

    async with dashboard.client() as alice:
        home = await dashboard.sign_in(alice, "alice@example.com")
        assert 'href="/clusters"' not in home.text
        hidden = await alice.get("/clusters")
        assert hidden.status_code == 404
        assert "offline" not in hidden.text and "v0.0.0-offline" not in hidden.text
        # Not an admin anywhere else either: a project she is not in still does not exist for her.
        assert (await alice.get("/projects/other")).status_code == 404
