"""/link/github?code=…: the dashboard proves a GitHub login for `/shipit link` through GitHub OAuth
(the fake provider), and links only when the signed-in person confirms with the form."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from core import identities, identity
from core.identity import Actor, Role
from storage import models
from tests.web.conftest import Dashboard, csrf_of, offline_app

ALICE = Actor(subject="slack:U0ALICE01", channel="slack", display="alice")
OCTO = Actor(subject="github:octocat", channel="web")


async def _code(d: Dashboard, subject: str = "github:octocat") -> str:
    async with d.rt.sessionmaker.begin() as session:
        return await identities.start_link(session, actor=ALICE, subject=subject)


async def _role(d: Dashboard, actor: Actor) -> Role | None:
    async with d.rt.sessionmaker() as session:
        project = await session.scalar(select(models.Project).where(models.Project.name == "acme"))
        assert project is not None
        return await identity.role_of(session, actor=actor, project_id=project.id)


async def test_link_through_github_sign_in(dashboard: Dashboard, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await offline_app(dashboard.rt, members={ALICE.subject: "developer"})
    code = await _code(dashboard)
    path = f"/link/github?code={code}"
    async with dashboard.client() as client:
        page = await client.get(path)
        assert page.url.path == "/signin"  # not signed in: sign in first, and come back
        page = await client.get("/auth/github/start", params={"next": path})
        assert page.status_code == 200, page.text
        assert page.url.path == "/link/github"
        assert "slack:U0ALICE01" in page.text and "github:octocat" in page.text
        assert await _role(dashboard, OCTO) is None  # a visit links nothing by itself

        refused = await client.post("/link/github", data={"code": code})
        assert refused.status_code == 403  # no CSRF token
        done = await client.post("/link/github", data={"code": code, "csrf": csrf_of(page.text)})
        assert done.status_code == 200 and "Linked" in done.text, done.text
        assert await _role(dashboard, OCTO) == Role.DEVELOPER
        home = await client.get("/")
        assert "acme" in home.text

        again = await client.post("/link/github", data={"code": code, "csrf": csrf_of(page.text)})
        assert again.status_code == 422 and identities.BAD_CODE in again.text
    async with dashboard.rt.sessionmaker() as session:
        rows = await identities.list_identities(session, actor=OCTO)
    assert {(r.subject, r.verified_by) for r in rows} == {
        (ALICE.subject, "oauth"),
        ("github:octocat", "oauth"),
    }
    # The server's log lines (its access log included) never hold it; the test's own httpx client
    # (the "browser") logs the URLs it fetches, and is left out.
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(
        r.name == "uvicorn.access" and "/link/github?code=[redacted]" in r.getMessage() for r in server_side
    )
    for record in server_side:
        assert code not in record.getMessage(), record.name


async def test_a_code_for_another_login_or_another_sign_in_links_nothing(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={ALICE.subject: "developer"})
    code = await _code(dashboard, "github:someone-else")
    async with dashboard.client() as client:
        await dashboard.sign_in(client, "alice@example.com")
        page = await client.get(f"/link/github?code={code}")
        assert "Sign in with GitHub" in page.text  # signed in with OIDC: not a GitHub login
        await client.get("/auth/github/start")
        page = await client.get(f"/link/github?code={code}")
        assert page.status_code == 422 and identities.BAD_CODE in page.text
    assert await _role(dashboard, OCTO) is None
