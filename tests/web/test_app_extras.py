"""The app page's add-ons and builds, and a build's own page, over HTTP: seeded through core, read as
the signed-in person, escaped, and never the add-on's password."""

from __future__ import annotations

import re

import pytest
from markupsafe import escape

from core import addons, apps, builds, clusters, gitops, projects
from core.apps import AppChanges
from shipit.runtime import Runtime
from tests.bot.conftest import black_hole, hanging_kubeconfig
from tests.conftest import ADMIN
from tests.web.conftest import Dashboard, offline_app

SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
DIGEST = "sha256:" + "ab" * 32
EVIL = "<script>alert('x')</script>"


async def _seed(rt: Runtime) -> tuple[int, str]:
    """Builds on, a postgres add-on and one failed build with a hostile log; the add-on's password."""
    async with rt.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=rt.core, actor=ADMIN, name="web",
            changes=AppChanges(git_repo="acme/web", build_enabled=True, build_image="registry.acme.dev/acme/web"),
        )  # fmt: skip
        addon = await addons.create(session, ctx=rt.core, actor=ADMIN, app_name="web", kind="postgres")
        password = rt.core.cipher.decrypt_text(addon.password_enc, purpose=addons.PASSWORD_PURPOSE)
        app = await apps.get(session, actor=ADMIN, name="web")
        queued = await builds.queue(
            session,
            ctx=rt.core,
            app=app,
            actor=gitops.github_actor("octocat"),
            sha=SHA,
            ref="refs/heads/main",
        )
        # What the builder records at the end (its finishing needs buildah): the outcome, as CLI tests do.
        b = queued.build
        b.status, b.pack, b.digest = builds.FAILED, "dockerfile", DIGEST
        b.error, b.log = f"buildah bud failed {EVIL}", f"--> pack dockerfile\n{EVIL}\nCOPY failed\n"
        return b.id, password


def _cells(page: str, attr: str) -> str:
    found = re.search(rf"<tr {attr}.*?</tr>", page, re.S)
    assert found, f"no row {attr}"
    return found.group(0)


async def test_app_page_shows_addons_and_builds_and_a_build_page_its_escaped_log(
    dashboard: Dashboard,
) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    build_id, password = await _seed(dashboard.rt)
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        assert page.status_code == 200 and page.url.path == "/apps/web"
        addon = _cells(page.text, 'data-addon="postgres"')
        assert "small" in addon and "<code>DATABASE_URL</code>" in addon
        # The offline cluster cannot say how it is: the recorded state, and why there is no more.
        assert "provisioning" in addon and "cluster not reached" in addon
        build = _cells(page.text, f'data-build="{build_id}"')
        assert f'href="/apps/web/builds/{build_id}"' in build
        assert "failed" in build and "dockerfile" in build
        assert f">{SHA[:7]}</code>" in build and f">{'ab' * 6}</code>" in build
        assert EVIL not in page.text and escape(EVIL) in build  # the error, escaped

        shown = await client.get(f"/apps/web/builds/{build_id}")
        assert shown.status_code == 200
        assert EVIL not in shown.text
        log = f"{escape('--> pack dockerfile')}\n{escape(EVIL)}\nCOPY failed\n"
        assert f'aria-label="Build log">{log}</pre>' in shown.text
        assert SHA in shown.text and DIGEST in shown.text

        missing = await client.get("/apps/web/builds/999")
        assert missing.status_code == 404 and "web has no build #999" in missing.text
        for text in (page.text, shown.text, missing.text):
            assert password not in text


async def test_a_viewer_of_another_project_gets_what_a_missing_app_gets(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    build_id, password = await _seed(dashboard.rt)
    async with dashboard.rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=dashboard.rt.core, actor=ADMIN, name="beta")
        await projects.set_access(
            session, actor=ADMIN, project_name="beta", subject="user:eve@example.com", role="viewer"
        )
    async with dashboard.client() as client:
        await dashboard.sign_in(client, "eve@example.com")
        for path in ("/apps/{}", f"/apps/{{}}/builds/{build_id}"):
            hidden = await client.get(path.format("web"))
            absent = await client.get(path.format("nosuch"))
            assert hidden.status_code == absent.status_code == 404
            assert _message(hidden.text).replace("web", "APP") == _message(absent.text).replace(
                "nosuch", "APP"
            )
            assert SHA[:7] not in hidden.text and "DATABASE_URL" not in hidden.text
            assert password not in hidden.text


def _message(page: str) -> str:
    found = re.search(r"<main.*?</main>", page, re.S)
    assert found
    return found.group(0)


async def test_a_cluster_that_does_not_answer_costs_only_the_addons_detail(
    dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addons, "READ_SECONDS", 0.5)
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with black_hole() as port:
        async with dashboard.rt.sessionmaker.begin() as session:
            await clusters.update(
                session, ctx=dashboard.rt.core, actor=ADMIN, name="offline",
                kubeconfig_text=hanging_kubeconfig(port), version="v0.0.0-hanging",
            )  # fmt: skip
        _, password = await _seed(dashboard.rt)
        async with dashboard.client() as client:
            page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
            assert page.status_code == 200
            addon = _cells(page.text, 'data-addon="postgres"')
            assert "provisioning" in addon and "the cluster did not answer in time" in addon
            assert password not in page.text
