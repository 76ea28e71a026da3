"""Dashboard pages over HTTP: what a signed-in person sees and may do, through core, audited as "web"."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from core import deploys, identities
from core.identity import Actor
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, serving
from tests.web.conftest import Dashboard, csrf_of, offline_app


async def test_project_page_lists_apps_members_and_locks(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer", "github:octocat": "owner"})
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/projects/acme")
        assert page.url.path == "/projects/acme"
        assert 'href="/apps/web"' in page.text and "ghcr.io/acme/web:1.0" in page.text
        assert "github:octocat" in page.text and "owner" in page.text
        assert "not deployed" in page.text and "open" in page.text
        # A project she is not in does not exist for her, exactly as core answers every channel.
        missing = await client.get("/projects/beta")
        assert missing.status_code == 404 and "no project named &#39;beta&#39;" in missing.text


async def test_approve_button_only_for_others_and_core_refuses_self_approval(dashboard: Dashboard) -> None:
    await offline_app(
        dashboard.rt, members={"user:alice@example.com": "developer", "user:bob@example.com": "developer"}
    )
    async with dashboard.rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        app.protected = True
    async with dashboard.client() as alice:
        page = await dashboard.sign_in(alice, "alice@example.com", next="/apps/web")
        asked = await alice.post("/apps/web/deploy", data={"image": "1.1", "csrf": csrf_of(page.text)})
        assert asked.url.path == "/apps/web" and "awaiting approval" in asked.text
        assert "waiting for someone else to approve" in asked.text
        assert "/approve" not in asked.text
        async with dashboard.rt.sessionmaker() as session:
            d = await session.scalar(select(models.Deployment))
        assert d is not None and d.status == deploys.AWAITING_APPROVAL and d.trigger == "web"
        # A hand-made approval of her own deploy is refused by core.
        own = await alice.post(f"/deploys/{d.id}/approve", data={"csrf": csrf_of(asked.text)})
        assert own.status_code == 403 and "nobody approves their own deploy" in own.text
    async with dashboard.client() as bob:
        page = await dashboard.sign_in(bob, "bob@example.com", next="/apps/web")
        assert f'action="/deploys/{d.id}/approve"' in page.text
        done = await bob.post(f"/deploys/{d.id}/reject", data={"csrf": csrf_of(page.text)})
        assert done.url.path == "/apps/web" and "rejected by bob" in done.text
        # The history's "By" column names the rejecter's subject, as it names the approver's.
        assert '<div class="muted">rejected by user:bob@example.com</div>' in done.text
    async with dashboard.rt.sessionmaker() as session:
        d = await session.get(models.Deployment, d.id)
        assert d is not None and (d.status, d.rejected_by) == (deploys.CANCELLED, "user:bob@example.com")
        rejected = await session.scalar(
            select(models.AuditEvent).where(models.AuditEvent.action == "deploy.reject")
        )
    assert rejected is not None and (rejected.actor, rejected.channel) == ("user:bob@example.com", "web")


async def test_no_approve_button_on_a_deploy_asked_from_ones_other_identity(dashboard: Dashboard) -> None:
    await offline_app(
        dashboard.rt, members={"user:alice@example.com": "developer", "user:bob@example.com": "developer"}
    )
    async with dashboard.rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        app.protected = True
        await identities.link(session, actor=ADMIN, subjects=["user:alice@example.com", "github:alice"])
        asked = await deploys.request(
            session, ctx=dashboard.rt.core, actor=Actor(subject="github:alice", channel="github"),
            app_name="web", image="ghcr.io/acme/web:1.1", trigger="api",
        )  # fmt: skip
        d = asked.deployment
    assert d.status == deploys.AWAITING_APPROVAL
    async with dashboard.client() as alice:
        page = await dashboard.sign_in(alice, "alice@example.com", next="/apps/web")
        assert "waiting for someone else to approve" in page.text
        assert f'action="/deploys/{d.id}/approve"' not in page.text
    async with dashboard.client() as bob:
        page = await dashboard.sign_in(bob, "bob@example.com", next="/apps/web")
        assert f'action="/deploys/{d.id}/approve"' in page.text


async def test_audit_page_filters_and_shows_only_visible_projects(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "admin"})
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        await client.post("/apps/web/lock", data={"reason": "freeze", "csrf": csrf_of(page.text)})
        everything = await client.get("/audit")
        assert "app.create" in everything.text and "user:admin" in everything.text
        assert "cluster.add" not in everything.text  # no project: not hers to read
        mine = await client.get("/audit", params={"actor_filter": "user:alice@example.com"})
        assert "app.lock" in mine.text and "app.create" not in mine.text
        locks = await client.get("/audit", params={"action": "app.create"})
        assert "app.create" in locks.text and "app.lock" not in locks.text


async def test_next_never_leaves_the_site(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            page = await dashboard.sign_in(client, "alice@example.com", next=bad)
            assert page.url.host == "127.0.0.1" and page.url.path == "/"


async def test_cookies_are_secure_when_configured(rt: Runtime) -> None:
    from shipit.main import create_app

    secure = rt.settings.model_copy(update={"web_cookie_secure": True})
    async with serving(create_app(secure, rt=rt)) as url, httpx.AsyncClient(base_url=url) as client:
        start = await client.get("/auth/oidc/start")
        assert start.status_code == 303
        cookie = start.headers["set-cookie"]
        assert cookie.startswith("shipit_signin=") and "Secure" in cookie and "HttpOnly" in cookie
        # A session cookie would be __Host-shipit: https only, this host only, path /.


async def test_secrets_are_write_only(dashboard: Dashboard) -> None:
    await offline_app(
        dashboard.rt, members={"user:alice@example.com": "admin", "user:vera@example.com": "viewer"}
    )
    value = "postgres://u:hunter2-very-secret@db/app"
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        done = await client.post(
            "/apps/web/secrets", data={"key": "DATABASE_URL", "value": value, "csrf": csrf_of(page.text)}
        )
        assert done.url.path == "/apps/web" and "DATABASE_URL" in done.text
        assert "hunter2" not in done.text
        bad = await client.post(
            "/apps/web/secrets", data={"key": "1-bad", "value": "x", "csrf": csrf_of(page.text)}
        )
        assert bad.status_code == 422 and "key" in bad.text
        audit_page = await client.get("/audit")
        assert "secrets.set" in audit_page.text or "secret" in audit_page.text
        assert "hunter2" not in audit_page.text
        gone = await client.post("/apps/web/secrets/DATABASE_URL/delete", data={"csrf": csrf_of(page.text)})
        assert gone.url.path == "/apps/web" and "No secrets." in gone.text
    async with dashboard.client() as viewer:
        page = await dashboard.sign_in(viewer, "vera@example.com", next="/apps/web")
        assert 'action="/apps/web/secrets"' not in page.text
        refused = await viewer.post(
            "/apps/web/secrets", data={"key": "X", "value": "y", "csrf": csrf_of(page.text)}
        )
        assert refused.status_code == 403 and "needs the admin role" in refused.text
    async with dashboard.rt.sessionmaker() as session:
        assert await session.scalar(select(models.Secret.id)) is None
        rows = list(await session.scalars(select(models.AuditEvent)))
    assert all("hunter2" not in str(r.details) for r in rows)
    assert any(r.channel == "web" and "secret" in r.action for r in rows)


async def test_scale_from_the_app_page(dashboard: Dashboard) -> None:
    await offline_app(
        dashboard.rt, members={"user:alice@example.com": "admin", "user:dev@example.com": "developer"}
    )
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "dev@example.com", next="/apps/web")
        assert 'action="/apps/web/scale"' not in page.text
        refused = await client.post("/apps/web/scale", data={"replicas": "3", "csrf": csrf_of(page.text)})
        assert refused.status_code == 403 and "scaling in project acme needs the admin role" in refused.text
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        nonsense = await client.post("/apps/web/scale", data={"replicas": "lots", "csrf": csrf_of(page.text)})
        assert nonsense.status_code == 422 and "replicas must be a whole number" in nonsense.text
        done = await client.post(
            "/apps/web/scale",
            data={"min_replicas": "2", "max_replicas": "5", "cpu_target": "70", "csrf": csrf_of(page.text)},
        )
        assert done.url.path == "/apps/web" and "2\u20135 at 70% CPU" in done.text
    async with dashboard.rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        d = await session.scalar(select(models.Deployment))
    assert app is not None and (app.min_replicas, app.max_replicas, app.cpu_target) == (2, 5, 70)
    assert d is not None and d.trigger == "scale" and d.actor == "user:alice@example.com"


async def test_the_scale_form_sets_shows_and_clears_the_scale_down_window(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "admin"})

    async def window() -> int | None:
        async with dashboard.rt.sessionmaker() as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        return app.scale_down_window

    auto = {"min_replicas": "1", "max_replicas": "4", "cpu_target": "50"}
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        csrf = csrf_of(page.text)
        bad = await client.post("/apps/web/scale", data={**auto, "scale_down_window": "soon", "csrf": csrf})
        assert bad.status_code == 422 and "scale_down_window must be a whole number" in bad.text
        done = await client.post("/apps/web/scale", data={**auto, "scale_down_window": "45", "csrf": csrf})
        assert "1\u20134 at 50% CPU, scaling down after 45 s" in done.text
        assert (
            'name="scale_down_window" inputmode="numeric" size="4" placeholder="300" value="45"' in done.text
        )
        assert await window() == 45
        # The form as shown, with the window emptied: Kubernetes' default again.
        done = await client.post("/apps/web/scale", data={**auto, "scale_down_window": "", "csrf": csrf})
        assert "1\u20134 at 50% CPU</dd>" in done.text and await window() is None
        # A fixed count typed into the form clears autoscaling and its window, whatever the field says.
        await client.post("/apps/web/scale", data={**auto, "scale_down_window": "45", "csrf": csrf})
        done = await client.post(
            "/apps/web/scale", data={"replicas": "2", "scale_down_window": "45", "csrf": csrf}
        )
        assert done.url.path == "/apps/web" and await window() is None


async def test_revision_diff_shows_what_changed(dashboard: Dashboard) -> None:
    from core import apps
    from core.apps import AppChanges
    from tests.conftest import ADMIN

    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.rt.sessionmaker.begin() as session:
        await deploys.request(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", trigger="api")
        await apps.update(session, ctx=dashboard.rt.core, actor=ADMIN, name="web",
                          changes=AppChanges(env={"MODE": "<b>fast</b>"}))  # fmt: skip
        await deploys.request(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", image="1.1",
                              trigger="api")  # fmt: skip
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
    assert "2 changes from 1" in page.text
    assert (
        "<dt>image</dt><dd><del>ghcr.io/acme/web:1.0</del> → <ins>ghcr.io/acme/web:1.1</ins></dd>"
        in page.text
    )
    assert "&lt;b&gt;fast&lt;/b&gt;" in page.text and "<b>fast" not in page.text


async def test_rollout_stream_sends_deploy_states_and_ends_with_the_session(dashboard: Dashboard) -> None:
    import json

    from sqlalchemy import update

    from tests.conftest import ADMIN

    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.rt.sessionmaker.begin() as session:
        asked = await deploys.request(
            session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", trigger="api"
        )
        deployment_id = asked.deployment.id
    async with dashboard.client() as client:
        await dashboard.sign_in(client, "alice@example.com")
        async with client.stream("GET", "/apps/web/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            event = None
            async for line in lines:
                if line == "event: deploy":
                    event = json.loads((await anext(lines)).removeprefix("data: "))
                    break
            assert event is not None
            assert event["id"] == deployment_id and event["image"] == "ghcr.io/acme/web:1.0"
            assert event["actor"] == "user:admin" and event["status"] in (
                *deploys.PENDING,
                deploys.RUNNING,
                *deploys.TERMINAL,
            )
            # Signing out elsewhere (here: the row revoked) ends the stream.
            async with dashboard.rt.sessionmaker.begin() as session:
                await session.execute(update(models.WebSession).values(revoked_at=models.utcnow()))
            rest = [line async for line in lines]
            assert "event: signedout" in rest
        # Someone with no role in the project gets no stream.
        await dashboard.sign_in(client, "eve@example.com")
        assert (await client.get("/apps/web/events")).status_code == 404


async def test_logs_page_says_why_when_the_cluster_cannot_answer(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.client() as client:
        await dashboard.sign_in(client, "alice@example.com")
        page = await client.get("/apps/web/logs")
        assert page.status_code == 200 and 'role="alert"' in page.text
        assert "data-follow" not in page.text  # nothing to follow
        await dashboard.sign_in(client, "eve@example.com")
        assert (await client.get("/apps/web/logs")).status_code == 404


async def test_rollout_stream_wakes_on_the_commit_not_the_poll(
    dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fallback poll pushed out of reach, only the after-commit broadcast can deliver these."""
    import json

    from tests.conftest import ADMIN
    from web import channel

    monkeypatch.setattr(channel, "SSE_POLL_SECONDS", 3600.0)
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        app.protected = True  # deploys wait for approval: no job runs, so only our commits change them
    async with dashboard.rt.sessionmaker.begin() as session:
        first = await deploys.request(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web",
                                      image="1.1", trigger="api")  # fmt: skip
        first_id = first.deployment.id

    async with dashboard.client() as client:
        await dashboard.sign_in(client, "alice@example.com")
        async with client.stream("GET", "/apps/web/events") as stream:
            lines = stream.aiter_lines()

            async def next_event() -> dict[str, object]:
                async for line in lines:
                    if line == "event: deploy":
                        event: dict[str, object] = json.loads((await anext(lines)).removeprefix("data: "))
                        return event
                raise AssertionError("the stream ended")

            opened = await next_event()
            assert (opened["id"], opened["status"]) == (first_id, deploys.AWAITING_APPROVAL)

            async with dashboard.rt.sessionmaker.begin() as session:
                await deploys.cancel(session, ctx=dashboard.rt.core, actor=ADMIN, deployment_id=first_id)
            cancelled = await next_event()
            assert (cancelled["id"], cancelled["status"]) == (first_id, deploys.CANCELLED)
            assert cancelled["error"] == "cancelled by admin"

            async with dashboard.rt.sessionmaker.begin() as session:
                second = await deploys.request(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web",
                                               image="1.2", trigger="api")  # fmt: skip
                second_id = second.deployment.id
            asked = await next_event()
            assert (asked["id"], asked["status"]) == (second_id, deploys.AWAITING_APPROVAL)
            assert asked["image"] == "ghcr.io/acme/web:1.2" and asked["actor"] == "user:admin"


async def test_projects_page_shows_the_slack_channel_of_the_targets(dashboard: Dashboard) -> None:
    """The column shows where cards go now: the project's first Slack target, gone once it is removed."""
    from core import projects
    from core.notices import targets
    from tests.conftest import ADMIN

    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.rt.sessionmaker.begin() as session:
        await projects.update(
            session, ctx=dashboard.rt.core, actor=ADMIN, name="acme", slack_channel="C0DEPLOYS"
        )
    async with dashboard.client() as client:
        assert "C0DEPLOYS" in (await dashboard.sign_in(client, "alice@example.com")).text
        async with dashboard.rt.sessionmaker.begin() as session:
            [target] = await targets.list_for(session, actor=ADMIN, project="acme")
            await targets.remove(session, actor=ADMIN, project="acme", target_id=target.id)
        page = await client.get("/")
        assert page.status_code == 200 and "acme" in page.text and "C0DEPLOYS" not in page.text
