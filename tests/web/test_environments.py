"""The app page of an app that runs in several environments: one row per page, tabs between them.

Over HTTP against the real app (sign-in through the fake OIDC provider); the forms on the page act on
the row shown, and an app in one environment keeps its plain links.
"""

from __future__ import annotations

from sqlalchemy import select

from core import apps, clusters, environment_admin
from storage import models
from tests.conftest import ADMIN
from tests.web.conftest import Dashboard, csrf_of, offline_app


async def _staging(dashboard: Dashboard) -> None:
    async with dashboard.rt.sessionmaker.begin() as session:
        await clusters.grant(session, actor=ADMIN, cluster="offline", project="acme", namespace="apps-stg")
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace="apps-stg"
        )
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="offline", name="web", namespace="apps-stg",
            env="staging", changes=apps.AppChanges(),
        )  # fmt: skip


async def test_an_app_in_two_environments_gets_a_page_per_environment(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "developer"})
    async with dashboard.client() as client:
        # One environment: the links and the page are as they were.
        page = await dashboard.sign_in(client, "alice@example.com", next="/projects/acme")
        assert 'href="/apps/web"' in page.text and "?env=" not in page.text
        page = await client.get("/apps/web")
        assert page.status_code == 200 and 'class="tabs"' not in page.text
        assert 'action="/apps/web/deploy"' in page.text

        await _staging(dashboard)
        page = await client.get("/projects/acme")
        assert 'href="/apps/web?env=production"' in page.text and 'href="/apps/web?env=staging"' in page.text

        # No ?env=: the first environment, with a tab to each (it used to be core's ambiguity error).
        page = await client.get("/apps/web")
        assert page.status_code == 200, page.text
        assert "runs in several environments" not in page.text
        assert '<a href="/apps/web?env=production" aria-current="page">production</a>' in page.text
        assert '<a href="/apps/web?env=staging">staging</a>' in page.text
        assert "namespace <code>apps</code>" in page.text

        page = await client.get("/apps/web", params={"env": "staging"})
        assert page.status_code == 200, page.text
        assert '<a href="/apps/web?env=staging" aria-current="page">staging</a>' in page.text
        assert "namespace <code>apps-stg</code>" in page.text
        assert 'action="/apps/web/deploy?env=staging"' in page.text
        assert 'data-events="/apps/web/events?env=staging"' in page.text

        # The page's form deploys the row it shows, and comes back to it.
        asked = await client.post(
            "/apps/web/deploy?env=staging", data={"image": "1.1", "csrf": csrf_of(page.text)}
        )
        assert asked.status_code == 200, asked.text
        assert (asked.url.path, asked.url.params.get("env")) == ("/apps/web", "staging")
        assert "ghcr.io/acme/web:1.1" in asked.text
        production = await client.get("/apps/web?env=production")
        assert "ghcr.io/acme/web:1.1" not in production.text

        missing = await client.get("/apps/web", params={"env": "qa"})
        assert missing.status_code == 404 and "does not run in an environment named" in missing.text

    async with dashboard.rt.sessionmaker() as session:
        [d] = list(await session.scalars(select(models.Deployment)))
        row = await session.get(models.App, d.app_id)
    assert row is not None and row.namespace == "apps-stg" and d.image == "ghcr.io/acme/web:1.1"
