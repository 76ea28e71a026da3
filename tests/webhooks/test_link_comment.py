"""`/shipit link github LOGIN` in Slack, proven by a `.link CODE` PR comment: the real app over HTTP,
bolt with signed Slack requests against the fake Slack API, HMAC-signed issue_comment deliveries in
GitHub's shape, and the answer commented through the fake GitHub API by the worker."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from core import identity, projects
from core.identity import Actor, Role
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import ALICE, MALLORY, SlackSender, eventually, slack_on
from tests.conftest import ADMIN, LiveServer
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import FakeSlack
from tests.webhooks.conftest import Hook, load

pytestmark = pytest.mark.both_databases

CODE = re.compile(r"\.link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")


@pytest.fixture
def settings(settings: Settings, fake_slack: FakeSlack) -> Settings:
    return slack_on(settings, fake_slack)


@pytest.fixture
async def slack(live_server: LiveServer, fake_slack: FakeSlack) -> AsyncIterator[SlackSender]:
    sender = SlackSender(url=live_server.url, fake=fake_slack)
    yield sender
    await sender.close()


def comment(*, login: str, body: str, repo: str = "acme/web", number: int = 7) -> dict[str, Any]:
    payload = load("issue_comment__created")
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = repo.split("/")[1]
    payload["issue"]["number"] = number
    # A comment on a pull request is an issue comment whose issue carries `pull_request`.
    payload["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{repo}/pulls/{number}"}
    payload["comment"]["body"] = body
    payload["comment"]["user"]["login"] = login
    payload["sender"]["login"] = login
    return payload


async def _replies(fake: FakeGitHub, n: int) -> list[str] | None:
    bodies = [c["body"] for c in fake.comments("acme/web", 7)]
    return bodies if len(bodies) >= n else None


async def test_slack_link_proven_by_a_pr_comment(
    live_hook: Hook,
    slack: SlackSender,
    fake_github: FakeGitHub,
    fake_slack: FakeSlack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rt = live_hook.rt
    async with rt.sessionmaker.begin() as session:
        project = await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject=ALICE.subject, role="developer"
        )
    fake_github.add_repo("acme/web")
    fake_github.add_pull("acme/web", 7, head_ref="feature/checkout")
    octo = Actor(subject="github:octo", channel="github")

    reply = await slack.command("link github Octo", user=ALICE)
    assert reply["response_type"] == "ephemeral"
    found = CODE.search(reply["text"])
    assert found, reply["text"]
    code = found.group(1)
    assert f"/link/github?code={code}" in reply["text"] and "*Octo*" not in reply["text"]

    # Someone else commenting the code proves nothing; a comment that is not `.link` is ignored.
    r = await live_hook.post("issue_comment", comment(login="mallory", body=f".link {code}"))
    assert r.status_code == 202 and r.json()["result"] == "accepted", r.text
    r = await live_hook.post("issue_comment", comment(login="octo", body="LGTM, ship it"))
    assert r.status_code == 202 and "not a shipit command" in r.json()["message"], r.text
    first = await eventually(lambda: _replies(fake_github, 1), what="the refusal comment")
    assert first == ["@mallory this link code is not valid: it may be mistyped, used, expired, or meant for "
                     "another account"]  # fmt: skip
    async with rt.sessionmaker() as session:
        assert await identity.role_of(session, actor=octo, project_id=project.id) is None

    r = await live_hook.post("issue_comment", comment(login="Octo", body=f"  .link {code.lower()}\n"))
    assert r.status_code == 202 and r.json()["message"] == "link by Octo: linked", r.text
    bodies = await eventually(lambda: _replies(fake_github, 2), what="the linked comment")
    assert "@Octo is linked" in bodies[1]
    async with rt.sessionmaker() as session:
        assert await identity.role_of(session, actor=octo, project_id=project.id) == Role.DEVELOPER

    # Used once: the same comment again is refused with the same message.
    r = await live_hook.post("issue_comment", comment(login="octo", body=f".link {code}"))
    assert r.status_code == 202 and r.json()["message"] == "link by octo: refused", r.text
    bodies = await eventually(lambda: _replies(fake_github, 3), what="the second refusal")
    assert bodies[2].endswith(first[0].removeprefix("@mallory"))
    # Edited comments are not commands.
    edited = {**comment(login="octo", body=f".link {code}"), "action": "edited"}
    r = await live_hook.post("issue_comment", edited)
    assert r.status_code == 202 and r.json()["result"] == "ignored", r.text

    reply = await slack.command("whoami", user=ALICE)
    assert f"`{ALICE.subject}`" in reply["text"] and "`github:octo`" in reply["text"]
    reply = await slack.command("whoami", user=MALLORY)
    assert "No other identity is linked to you" in reply["text"]
    reply = await slack.command("link gitlab octo", user=ALICE)
    assert "`link` takes github" in reply["text"]

    # The code was in one place only: the ephemeral answer to Alice.
    for shown in (code, code.replace("-", ""), code.lower()):
        for body in bodies:
            assert shown not in body
        for record in caplog.records:
            assert shown not in record.getMessage(), record.name
        async with rt.sessionmaker() as session:
            for row in await session.scalars(select(models.AuditEvent)):
                assert shown not in json.dumps(row.details) and shown not in row.target
            for c in await session.scalars(select(models.IdentityLinkCode)):
                assert shown not in (c.code_hash, c.subject, c.requested_by)
        for call in fake_slack.calls():
            if call.api in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
                assert shown.encode() not in call.raw_body, call.api
