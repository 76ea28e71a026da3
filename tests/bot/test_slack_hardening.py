"""The Slack route under attack: refused requests leave nothing of their body in the log, malformed
headers are a 401 (not a crash), a replayed slash command acts once, and API throttling never touches
signed Slack traffic.  Real app over HTTP, real signatures, the fake Slack Web API."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse

import httpx
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from sqlalchemy import select

from core import deliveries
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import ALICE, DAVE, SlackSender, add_app, deployments, sign
from tests.conftest import LiveServer, World, serving
from tests.fakes.slack_api import FakeSlack

MARKER = "hunter2-do-not-log-me"


def secret_values(rt_records: list[logging.LogRecord]) -> list[str]:
    """Every trace of these records: message, arguments, exception text."""
    found = []
    for r in rt_records:
        found.append(r.getMessage())
        found.append(repr(r.args))
        if r.exc_info:
            found.append(logging.Formatter().formatException(r.exc_info))
    return found


async def secret_rows(live_server: LiveServer) -> list[models.Secret]:
    async with live_server.rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Secret)))


async def test_a_refused_request_leaves_nothing_of_its_body_in_the_log(
    slack: SlackSender, offline: World, live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    caplog.set_level(logging.DEBUG)
    body = slack.command_body(f"secrets set web DATABASE_PASSWORD={MARKER}", user=DAVE)
    now = int(time.time())
    form = "application/x-www-form-urlencoded"
    refused = [
        # Clock skew: correctly signed, ten minutes off.
        await slack.post(body, content_type=form, timestamp=now - 600),
        await slack.post(body, content_type=form, timestamp=now + 600),
        # Wrong signing secret.
        await slack.post(body, content_type=form, signature=sign(body, timestamp=now, secret="wrong")),
        # No signature at all.
        await slack.post(body, content_type=form, signature="v0="),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401, 401]
    assert await secret_rows(live_server) == []
    traces = secret_values(caplog.records)
    assert not [t for t in traces if MARKER in t or urllib.parse.quote(MARKER) in t]
    assert any("slack: refused a request" in t for t in traces)  # a line says what happened


@pytest.mark.parametrize(
    "timestamp",
    ["abc", "", "-5", "1e9", "1700000000.5", "99999999999999999999999999", "1" * 5000, "0x10"],
)
async def test_a_malformed_timestamp_is_401_without_a_traceback(
    slack: SlackSender, offline: World, caplog: pytest.LogCaptureFixture, timestamp: str
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    caplog.set_level(logging.DEBUG)
    body = slack.command_body(f"secrets set web K={MARKER}", user=DAVE)
    response = await slack.http.post(
        "/slack/events",
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": sign(body, timestamp=int(time.time())),
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "bad_signature"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert not [t for t in secret_values(caplog.records) if MARKER in t]


async def test_bolts_own_signature_check_logs_no_body_either(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Behind our check bolt verifies again; if that ever refuses, its "Invalid request signature
    # detected (… body: …)" line must not reach the log.  Driven through the real bolt app.
    bolt = create_app(rt=live_server.rt).state.slack.bolt
    caplog.set_level(logging.DEBUG)
    body = f"command=%2Fshipit&text=secrets+set+web+K%3D{MARKER}&trigger_id=1.2.3"
    response = await bolt.async_dispatch(
        AsyncBoltRequest(
            body=body,
            headers={
                "x-slack-request-timestamp": [str(int(time.time()))],
                "x-slack-signature": ["v0=0000"],
                "content-type": ["application/x-www-form-urlencoded"],
            },
        )
    )
    assert response.status == 401
    traces = secret_values(caplog.records)
    assert not [t for t in traces if MARKER in t or urllib.parse.quote(MARKER) in t]


@pytest.mark.both_databases
async def test_a_replayed_slash_command_acts_once(
    slack: SlackSender, offline: World, caplog: pytest.LogCaptureFixture
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    body = slack.command_body("deploy web 1.1", user=ALICE)
    trigger = urllib.parse.parse_qs(body.decode())["trigger_id"][0]
    ts = int(time.time())
    signature = sign(body, timestamp=ts)
    form = "application/x-www-form-urlencoded"
    first = await slack.post(body, content_type=form, timestamp=ts, signature=signature)
    # The same signed bytes again, inside the 5-minute window: an attacker who saw them on the wire.
    again = await slack.post(body, content_type=form, timestamp=ts, signature=signature)
    assert first.status_code == 200 and again.status_code == 200
    assert "Already handled" not in first.json()["text"]
    assert again.json()["text"] == "Already handled."
    rows = await deployments(rt)
    assert len(rows) == 1
    # The trigger id is the deployment's dedupe key (issue 13): no delivery record of its own, and
    # the replay's revision went with its transaction.
    assert rows[0].dedupe_key == f"slack-trigger:{trigger}"
    async with rt.sessionmaker() as session:
        audit = list(
            await session.scalars(
                select(models.AuditEvent.action).where(models.AuditEvent.action == "deploy.request")
            )
        )
        delivery = await session.get(models.WebhookDelivery, f"slack-trigger:{trigger}")
        revisions = list(await session.scalars(select(models.Revision.number)))
    assert audit == ["deploy.request"]
    assert delivery is None
    assert revisions == [1]

    # The same command typed again is a new invocation (a new trigger_id) and runs.
    await slack.command("deploy web 1.2", user=ALICE)
    assert [d.image for d in await deployments(rt)] == ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2"]


@pytest.mark.both_databases
async def test_replays_sent_at_the_same_time_deploy_once(slack: SlackSender, offline: World) -> None:
    """Copies racing each other: on PostgreSQL the later INSERT waits on the first's unique key."""
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    body = slack.command_body("deploy web 1.1", user=ALICE)
    ts = int(time.time())
    signature = sign(body, timestamp=ts)
    form = "application/x-www-form-urlencoded"
    answers = await asyncio.gather(
        *(slack.post(body, content_type=form, timestamp=ts, signature=signature) for _ in range(4))
    )
    texts = [a.json()["text"] for a in answers]
    assert all(a.status_code == 200 for a in answers), texts
    assert texts.count("Already handled.") == 3, texts
    assert [d.image for d in await deployments(offline.rt)] == ["ghcr.io/acme/web:1.1"]


async def test_a_replayed_command_that_deploys_nothing_acts_once(slack: SlackSender, offline: World) -> None:
    """Commands other than deploy still record their trigger id as a delivery."""
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    body = slack.command_body("lock web a migration is running", user=ALICE)
    trigger = urllib.parse.parse_qs(body.decode())["trigger_id"][0]
    ts = int(time.time())
    signature = sign(body, timestamp=ts)
    form = "application/x-www-form-urlencoded"
    first = await slack.post(body, content_type=form, timestamp=ts, signature=signature)
    assert "Already handled" not in first.json()["text"], first.json()
    await slack.command("unlock web", user=ALICE)
    again = await slack.post(body, content_type=form, timestamp=ts, signature=signature)
    assert again.json()["text"] == "Already handled."
    async with offline.rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        delivery = await session.get(models.WebhookDelivery, f"slack-trigger:{trigger}")
    assert app is not None and app.locked_reason is None  # the replay did not lock it again
    assert delivery is not None and delivery.source == "slack"


async def test_a_command_that_failed_runs_again_when_sent_again(slack: SlackSender, offline: World) -> None:
    # The trigger is recorded in the command's own transaction: a failure records nothing.
    body = slack.command_body("deploy web 1.1", user=ALICE)
    form = "application/x-www-form-urlencoded"
    first = await slack.post(body, content_type=form)
    assert "no app named 'web'" in first.json()["text"]
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    second = await slack.post(body, content_type=form)
    assert "Already handled" not in second.json()["text"]
    assert len(await deployments(offline.rt)) == 1


async def test_api_throttling_never_touches_signed_slack_traffic(
    live_server: LiveServer, settings: Settings, offline: World, fake_slack: FakeSlack
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    strict = settings.model_copy(update={"api_auth_failures_per_minute": 1, "api_requests_per_minute": 1})
    async with serving(create_app(strict, rt=live_server.rt)) as url:
        async with httpx.AsyncClient(timeout=30, base_url=url) as http:
            assert (await http.get("/api/v1/me", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await http.get("/api/v1/me")).status_code == 429  # this address is blocked now
        sender = SlackSender(url=url, fake=fake_slack)
        try:
            for version in ("1.1", "1.2", "1.3"):
                reply = await sender.command(f"deploy web {version}", user=ALICE)
                assert "Already handled" not in reply["text"]
        finally:
            await sender.close()
    assert len(await deployments(offline.rt)) == 3


@pytest.mark.both_databases
async def test_old_trigger_records_are_forgotten_and_nothing_else(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        for trigger in ("1.2.a", "1.2.b"):
            assert await deliveries.first_time(
                session, source="slack", prefix="slack-trigger", delivery_id=trigger
            )
        assert await deliveries.first_time(session, source="slack", delivery_id="Ev01")
        assert await deliveries.first_time(session, source="github", delivery_id="slack-trigger:x")
    async with rt.sessionmaker.begin() as session:
        assert await deliveries.forget_older(session, prefix="slack-trigger", seconds=3600) == 0
        # A cutoff in the future: everything recorded so far is "older".
        assert await deliveries.forget_older(session, prefix="slack-trigger", seconds=-60) == 2
    async with rt.sessionmaker() as session:
        left = sorted(await session.scalars(select(models.WebhookDelivery.id)))
    assert left == ["github:slack-trigger:x", "slack:Ev01"]
