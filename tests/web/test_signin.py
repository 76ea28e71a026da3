"""Dashboard sign-in and refusals over HTTP: the real app on uvicorn, the fake OIDC provider on loopback.

Every request goes over TCP with httpx following redirects like a browser: /auth/oidc/start → the
provider's /authorize → our callback → the page asked for.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import httpx
import pytest
from sqlalchemy import select, update

from core import apps
from core.apps import AppChanges
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, serving
from tests.web.conftest import Dashboard, csrf_of, offline_app


async def _sessions(d: Dashboard) -> list[models.WebSession]:
    async with d.rt.sessionmaker() as session:
        return list(await session.scalars(select(models.WebSession)))


async def test_sign_in_end_to_end(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "developer"})
    async with dashboard.client() as client:
        first = await client.get("/apps/web")
        assert first.url.path == "/signin"  # not signed in: sent to sign in, remembering where to
        assert "Sign in with Single sign-on" in first.text

        page = await dashboard.sign_in(client, "Alice@Example.com", next="/apps/web")
        assert page.status_code == 200
        assert page.url.path == "/apps/web"  # back where they were going
        assert "user:alice@example.com" in page.text
        assert "Deploy" in page.text and "ghcr.io/acme/web:1.0" in page.text

        cookie = client.cookies.get("shipit_session")
        assert cookie
        assert client.cookies.get("shipit_signin") is None  # the pending sign-in is forgotten

        home = await client.get("/")
        assert "acme" in home.text and "developer" in home.text

    # The flow the provider saw: PKCE S256, a state and a nonce.
    authorize = dashboard.oidc.last_call("authorize")
    assert authorize.query["code_challenge_method"] == "S256"
    assert authorize.query["state"] and authorize.query["nonce"]
    token_call = dashboard.oidc.last_call("token")
    assert token_call.status == 200 and token_call.body["code_verifier"]

    (row,) = await _sessions(dashboard)
    token = cookie.rsplit(".", 1)[0]
    assert row.subject == "user:alice@example.com" and row.provider == "oidc"
    assert row.id == hashlib.sha256(token.encode()).hexdigest()  # the token itself is not stored
    assert row.expires_at > models.utcnow() + dt.timedelta(hours=11)
    async with dashboard.rt.sessionmaker() as session:
        signin = await session.scalar(
            select(models.AuditEvent).where(models.AuditEvent.action == "web.signin")
        )
    assert signin is not None and signin.channel == "web" and signin.actor == "user:alice@example.com"


async def test_cookie_is_http_only_lax_and_signed(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com")
        set_cookie = [
            h for r in page.history for h in r.headers.get_list("set-cookie") if "shipit_session=" in h
        ]
        assert set_cookie, "no session cookie was set"
        assert "HttpOnly" in set_cookie[0] and "SameSite=lax" in set_cookie[0]
        # A forged signature on a real token is no session.
        token = client.cookies["shipit_session"].rsplit(".", 1)[0]
        client.cookies.set("shipit_session", token + ".forged", domain="127.0.0.1")
        assert (await client.get("/")).url.path == "/signin"


async def test_secure_cookie_by_default(dashboard: Dashboard) -> None:
    assert dashboard.rt.settings.web_cookie_secure is False  # this test server runs on http
    from shipit.settings import Settings

    assert Settings(_env_file=None).web_cookie_secure is True  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("switch", "message"),
    [
        ("wrong_audience", "aud claim is not for this service"),
        ("wrong_signature", "signature does not match the provider"),
        ("expired", "ID token has expired"),
        ("wrong_nonce", "nonce claim is not for this service"),
    ],
)
async def test_bad_id_token_is_refused(dashboard: Dashboard, switch: str, message: str) -> None:
    setattr(dashboard.oidc, switch, True)
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com")
        assert page.status_code == 400
        assert "Sign-in refused" in page.text and message in page.text
        assert client.cookies.get("shipit_session") is None
        assert (await client.get("/")).url.path == "/signin"
    assert await _sessions(dashboard) == []


async def test_unverified_email_is_refused(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        dashboard.oidc.sign_in_as("mallory@example.com", verified=False)
        page = await client.get("/auth/oidc/start")
        assert page.status_code == 400 and "email_verified" in page.text
    assert await _sessions(dashboard) == []


async def test_callback_with_another_state_is_refused(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        client.follow_redirects = False
        start = await client.get("/auth/oidc/start")
        to_provider = await client.get(start.headers["location"])
        callback = httpx.URL(to_provider.headers["location"])
        forged = callback.copy_set_param("state", "someone-elses-state")
        page = await client.get(str(forged))
        assert page.status_code == 400 and "(state)" in page.text
        # And a callback nobody started here (no pending sign-in cookie) is refused too.
        client.cookies.clear()
        page = await client.get(str(callback))
        assert page.status_code == 400 and "not started here" in page.text
    assert await _sessions(dashboard) == []


async def test_github_sign_in(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"github:octocat": "viewer"})
    async with dashboard.client() as client:
        page = await client.get("/auth/github/start")
        assert page.status_code == 200 and "github:octocat" in page.text and "acme" in page.text
    assert dashboard.oidc.last_call("github_authorize").query["code_challenge_method"] == "S256"
    (row,) = await _sessions(dashboard)
    assert row.subject == "github:octocat" and row.provider == "github"


async def test_post_without_csrf_is_refused(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "developer"})
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        refused = await client.post("/apps/web/lock", data={"reason": "no token"})
        assert refused.status_code == 403 and "security token" in refused.text
        wrong = await client.post("/apps/web/lock", data={"reason": "bad", "csrf": "x" * 43})
        assert wrong.status_code == 403
        async with dashboard.rt.sessionmaker() as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None and app.locked_reason is None

        locked = await client.post("/apps/web/lock", data={"reason": "incident", "csrf": csrf_of(page.text)})
        assert locked.status_code == 200 and locked.url.path == "/apps/web" and "incident" in locked.text
        # Locked: core refuses deploys until someone unlocks.
        refused = await client.post("/apps/web/deploy", data={"image": "1.1", "csrf": csrf_of(page.text)})
        assert refused.status_code == 409 and "is locked by" in refused.text
        unlocked = await client.post("/apps/web/unlock", data={"csrf": csrf_of(page.text)})
        assert unlocked.url.path == "/apps/web" and 'action="/apps/web/lock"' in unlocked.text
        paused = await client.post("/apps/web/pause", data={"reason": "hold on", "csrf": csrf_of(page.text)})
        assert "auto-deploy paused" in paused.text and 'action="/apps/web/resume"' in paused.text
        resumed = await client.post("/apps/web/resume", data={"csrf": csrf_of(page.text)})
        assert "auto-deploy paused" not in resumed.text
    async with dashboard.rt.sessionmaker() as session:
        event = await session.scalar(
            select(models.AuditEvent).where(models.AuditEvent.action.like("app.lock%"))
        )
    assert event is not None and event.channel == "web" and event.actor == "user:alice@example.com"


async def test_signed_out_expired_or_revoked_session_goes_to_sign_in(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com")
        cookie = client.cookies["shipit_session"]
        out = await client.post("/signout", data={"csrf": csrf_of(page.text)})
        assert out.url.path == "/signin"
        # The old cookie, replayed after sign-out, is no session: the row is revoked.
        client.cookies.set("shipit_session", cookie, domain="127.0.0.1")
        assert (await client.get("/tokens")).url.path == "/signin"
        (row,) = await _sessions(dashboard)
        assert row.revoked_at is not None

        await dashboard.sign_in(client, "alice@example.com")
        assert (await client.get("/tokens")).url.path == "/tokens"
        async with dashboard.rt.sessionmaker.begin() as session:
            await session.execute(
                update(models.WebSession)
                .where(models.WebSession.revoked_at.is_(None))
                .values(expires_at=models.utcnow() - dt.timedelta(seconds=1))
            )
        expired = await client.get("/tokens")
        assert expired.url.path == "/signin" and expired.url.params["next"] == "/tokens"
        # A form posted with an ended session is not carried out either.
        posted = await client.post("/tokens", data={"name": "late", "csrf": csrf_of(page.text)})
        assert posted.status_code == 401
    async with dashboard.rt.sessionmaker() as session:
        assert await session.scalar(select(models.ApiToken).where(models.ApiToken.name == "late")) is None


async def test_viewer_deploy_is_refused_by_core(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:vera@example.com": "viewer"})
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "vera@example.com", next="/apps/web")
        assert page.url.path == "/apps/web"
        assert 'action="/apps/web/deploy"' not in page.text  # no form for a viewer...
        refused = await client.post("/apps/web/deploy", data={"image": "1.1", "csrf": csrf_of(page.text)})
        # ...and a hand-made post is refused by core's role check, as on every channel.
        assert refused.status_code == 403
        assert "deploying in project acme needs the developer role; you have viewer" in refused.text
        other = await client.get("/apps/nope")
        assert other.status_code == 404
    async with dashboard.rt.sessionmaker() as session:
        assert await session.scalar(select(models.Deployment.id)) is None
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None and app.image == "ghcr.io/acme/web:1.0"


async def test_user_text_is_escaped(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "admin"})
    evil = "<script>alert(1)</script>"
    async with dashboard.rt.sessionmaker.begin() as session:
        await apps.update(session, ctx=dashboard.rt.core, actor=ADMIN, name="web",
                          changes=AppChanges(env={"GREETING": evil}))  # fmt: skip
        await apps.set_flag(session, actor=ADMIN, name="web", flag="lock", on=True, reason=evil)
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        project = await client.get("/projects/acme")
        assert "<script>alert" not in project.text and "&lt;script&gt;" in project.text
        audit = await client.get("/audit", params={"action": "app.lock"})
        assert "<script>alert" not in audit.text
        assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_api_tokens_shown_once_and_revoked(dashboard: Dashboard) -> None:
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/tokens")
        created = await client.post("/tokens", data={"name": "laptop", "csrf": csrf_of(page.text)})
        assert created.status_code == 201 and "shown only this once" in created.text
        plaintext = created.text.split('class="token" readonly value="', 1)[1].split('"', 1)[0]
        assert plaintext.startswith("shp_")
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
        assert me.json()["subject"] == "user:alice@example.com" and me.json()["admin"] is False

        listing = await client.get("/tokens")
        assert plaintext not in listing.text and "laptop" in listing.text
        async with dashboard.rt.sessionmaker() as session:
            row = await session.scalar(select(models.ApiToken).where(models.ApiToken.name == "laptop"))
        assert row is not None
        revoked = await client.post(f"/tokens/{row.id}/revoke", data={"csrf": csrf_of(listing.text)})
        assert revoked.url.path == "/tokens" and "revoked" in revoked.text
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
        assert me.status_code == 401


async def test_dashboard_off_without_a_provider(rt: Runtime) -> None:
    from shipit.main import create_app

    off = rt.settings.model_copy(
        update={"oidc_issuer": None, "oidc_client_id": None, "github_oauth_client_id": None}
    )
    async with serving(create_app(off, rt=rt)) as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/", "/signin"):
            page = await client.get(path)
            assert page.status_code == 503 and "no sign-in provider is configured" in page.text
        assert (await client.get("/auth/oidc/start")).status_code == 404


async def test_ended_sessions_are_forgotten(rt: Runtime) -> None:
    from core import web_sessions

    async with rt.sessionmaker.begin() as session:
        for who in ("old", "out", "live"):
            await web_sessions.create(session, subject=f"user:{who}@example.com", display=who, provider="oidc",
                                      lifetime=dt.timedelta(hours=1))  # fmt: skip
    long_ago = models.utcnow() - dt.timedelta(days=2)
    async with rt.sessionmaker.begin() as session:
        await session.execute(update(models.WebSession).where(models.WebSession.subject == "user:old@example.com")
                              .values(expires_at=long_ago))  # fmt: skip
        await session.execute(update(models.WebSession).where(models.WebSession.subject == "user:out@example.com")
                              .values(revoked_at=long_ago))  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        assert await web_sessions.forget_ended(session) == 2
    async with rt.sessionmaker() as session:
        left = list(await session.scalars(select(models.WebSession.subject)))
    assert left == ["user:live@example.com"]


def test_github_sign_in_url_follows_the_api_url() -> None:
    from web.auth import github_oauth_url

    assert github_oauth_url("https://api.github.com") == "https://github.com"
    assert github_oauth_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com"
