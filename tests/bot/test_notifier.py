"""The deploy-card notifier against the fake Slack Web API: post once, update in place, thread once,
Slack's rate limits turned into retries, and pacing per channel."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot import notifier as notifier_mod
from bot import views
from core import events
from core.errors import PermanentError, TransientError
from tests.fakes.slack_api import FakeSlack

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
CHANNEL = "C0CARDS01"


def notice(*, status: str = "queued", refs: dict[str, Any] | None = None, **kw: Any) -> events.Notice:
    deployment_id = kw.pop("deployment_id", 7)
    d = events.DeploymentView(
        id=deployment_id,
        status=status,
        trigger="slack",
        actor="slack:U0ALICE01",
        image="ghcr.io/acme/web:1.4",
        revision=3,
        namespace="apps",
        error=kw.pop("error", None),
        logs=kw.pop("logs", []),
        ready=kw.pop("ready", 0),
        desired=kw.pop("desired", 0),
        queue_position=1 if status == "queued" else None,
        approved_by=None,
        git_sha=None,
        git_ref=None,
        created_at=T0,
        started_at=T0 if status != "queued" else None,
        finished_at=T0 + dt.timedelta(seconds=30) if status in ("succeeded", "failed") else None,
        refs={"slack": refs} if refs else {},
    )
    return events.Notice(
        event_id=kw.pop("event_id", deployment_id * 100 + len(status)),
        kind=f"deploy.{status}",
        created_at=T0,
        payload={},
        project=events.ProjectView(
            id=1, name="acme", slack_channel=kw.pop("channel", CHANNEL), webhook_url=None
        ),
        app=events.AppView(
            id=1,
            name="web",
            namespace="apps",
            cluster="prod",
            image="ghcr.io/acme/web:1.4",
            protected=False,
            auto_deploy_paused=False,
            paused_reason=None,
            git_repo=None,
            github_environment=None,
        ),
        deployment=d,
        preview=kw.pop("preview", None),
    )


def with_refs(n: events.Notice, refs: dict[str, Any]) -> events.Notice:
    assert n.deployment is not None
    return dataclasses.replace(n, deployment=dataclasses.replace(n.deployment, refs={"slack": refs}))


@pytest.fixture
async def client(fake_slack: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    yield AsyncWebClient(base_url=fake_slack.url, token=fake_slack.bot_token)


def make(client: AsyncWebClient, **pacer: Any) -> notifier_mod.SlackNotifier:
    return notifier_mod.SlackNotifier(
        client=client, pacer=notifier_mod.Pacer(**({"rate": 1000.0, "burst": 100} | pacer))
    )


async def test_posts_once_then_updates_in_place_and_threads_the_failure_once(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    n = make(client)
    assert n.wants("deploy.progress") and not n.wants("preview.ready")
    delivered = await n.deliver(notice(status="queued"))
    assert delivered is not None and delivered.deployment_refs is not None
    refs = delivered.deployment_refs
    assert refs["channel"] == CHANNEL and refs["ts"]
    ts = refs["ts"]
    assert "is queued" in str(fake_slack.message(CHANNEL, ts)["blocks"])

    assert await n.deliver(notice(status="running", ready=1, desired=2, refs=refs)) is None
    # The same state again (a retried or late event) makes no API call at all.
    calls = len(fake_slack.calls())
    assert await n.deliver(notice(status="running", ready=1, desired=2, refs=refs)) is None
    assert len(fake_slack.calls()) == calls

    failed = notice(status="failed", error="CrashLoopBackOff: boom", logs=["a", "panic: boom"], refs=refs)
    delivered = await n.deliver(failed)
    assert delivered is not None and delivered.deployment_refs == {"failure_posted": True}
    card = fake_slack.message(CHANNEL, ts)
    assert "CrashLoopBackOff: boom" in str(card["blocks"])
    [reply] = fake_slack.thread(CHANNEL, ts)
    assert "panic: boom" in str(reply["blocks"])
    # Once: with failure_posted remembered, a redelivery does not post the logs again.
    await n.deliver(with_refs(failed, {**refs, "failure_posted": True}))
    assert len(fake_slack.thread(CHANNEL, ts)) == 1
    assert len(fake_slack.messages(CHANNEL, include_replies=False)) == 1
    versions = fake_slack.message_versions(CHANNEL, ts)
    assert [("is queued" in str(v["blocks"]), "rolling out" in str(v["blocks"])) for v in versions] == [
        (True, False),
        (False, True),
        (False, False),
    ]


async def test_rate_limit_becomes_a_retry_after_and_no_second_card(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    n = make(client)
    fake_slack.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(TransientError) as info:
        await n.deliver(notice(status="queued"))
    limited_at = time.monotonic()
    assert info.value.retry_after == 7
    assert fake_slack.messages(CHANNEL) == []
    calls = len(fake_slack.calls("chat.postMessage"))
    # The pacer keeps the channel quiet until Retry-After has passed: it answers with what is left of
    # it (measured, not assumed: a loaded machine may take seconds between the two calls) and sends nothing.
    with pytest.raises(TransientError) as paced:
        await n.deliver(notice(status="queued"))
    left = 7 - (time.monotonic() - limited_at)
    assert paced.value.retry_after is not None and left - 0.5 <= paced.value.retry_after <= 7
    assert len(fake_slack.calls("chat.postMessage")) == calls


async def test_a_failure_after_posting_does_not_post_the_card_twice(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    class LimitTheSecondWrite(notifier_mod.Pacer):
        """Slack answers 429 to the second write: after the card was posted, before the thread reply."""

        writes = 0

        async def wait(self, channel: str, *, key: Hashable | None = None) -> None:
            self.writes += 1
            if self.writes == 2:
                fake_slack.rate_limit("chat.postMessage", retry_after=1)
            await super().wait(channel, key=key)

    n = notifier_mod.SlackNotifier(client=client, pacer=LimitTheSecondWrite(rate=1000.0, burst=100))
    failed = notice(status="failed", error="ImagePullBackOff: nope", logs=["x"])
    calls_before = len(fake_slack.calls("chat.postMessage"))
    with pytest.raises(TransientError):
        await n.deliver(failed)
    n.pacer._next.clear()  # the queue would retry after Retry-After; do not wait for it here
    assert len(fake_slack.messages(CHANNEL, include_replies=False)) == 1
    # The retry (refs not saved, since deliver raised) updates that card and posts the thread reply.
    delivered = await n.deliver(failed)
    assert delivered is not None and delivered.deployment_refs is not None
    assert delivered.deployment_refs["failure_posted"] is True
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    assert delivered.deployment_refs["ts"] == card["ts"]
    assert len(fake_slack.thread(CHANNEL, card["ts"])) == 1
    assert len(fake_slack.calls("chat.postMessage")) > calls_before


async def test_a_deleted_card_is_posted_again(fake_slack: FakeSlack, client: AsyncWebClient) -> None:
    n = make(client)
    delivered = await n.deliver(notice(status="queued"))
    assert delivered is not None and delivered.deployment_refs is not None
    refs = delivered.deployment_refs
    await client.chat_delete(channel=CHANNEL, ts=refs["ts"])
    again = await n.deliver(notice(status="running", refs=refs))
    assert again is not None and again.deployment_refs is not None
    assert again.deployment_refs["ts"] != refs["ts"]
    assert len(fake_slack.messages(CHANNEL)) == 1


async def test_permanent_slack_errors_are_not_retried(fake_slack: FakeSlack, client: AsyncWebClient) -> None:
    n = make(client)
    fake_slack.api_error("chat.postMessage", "channel_not_found")
    with pytest.raises(PermanentError, match="channel_not_found"):
        await n.deliver(notice(status="queued"))
    fake_slack.server_error("chat.postMessage")
    with pytest.raises(TransientError):
        await n.deliver(notice(status="queued"))


@pytest.mark.parametrize("error", ["token_revoked", "invalid_auth", "account_inactive"])
async def test_a_dead_bot_token_fails_one_card_then_stops_the_cards(
    fake_slack: FakeSlack, client: AsyncWebClient, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.notifier")
    n = make(client)
    fake_slack.api_error("chat.postMessage", error)
    with pytest.raises(PermanentError, match=error):
        await n.deliver(notice(status="queued"))
    assert n.revoked is not None and error in n.revoked and fake_slack.bot_token not in n.revoked
    calls = len(fake_slack.calls())
    assert await n.deliver(notice(status="queued", deployment_id=8)) is None
    assert len(fake_slack.calls()) == calls  # not even tried
    assert any("card not posted" in r.getMessage() and error in r.getMessage() for r in caplog.records)


async def test_a_dead_token_of_one_oauth_workspace_does_not_stop_the_others(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    async def token_for(team: str | None) -> str | None:
        return fake_slack.bot_token

    n = notifier_mod.SlackNotifier(
        client=client, pacer=notifier_mod.Pacer(rate=1000.0, burst=100), token_for=token_for
    )
    fake_slack.api_error("chat.postMessage", "token_revoked")
    with pytest.raises(PermanentError, match="token_revoked"):
        await n.deliver(notice(status="queued"))
    assert n.revoked is None
    delivered = await n.deliver(notice(status="queued", deployment_id=8))
    assert delivered is not None and delivered.deployment_refs is not None


async def test_previews_and_channelless_projects_are_skipped(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    n = make(client)
    preview = events.PreviewView(
        id=1, pr_number=4, repo="acme/web", head_sha="a" * 40, namespace="web-pr-4", url=None, status="ready",
        comment_id=None,
    )  # fmt: skip
    assert await n.deliver(notice(status="queued", preview=preview)) is None
    assert await n.deliver(notice(status="queued", channel=None)) is None
    assert fake_slack.calls() == []
    # ...unless the command was typed somewhere: then the card goes there.
    delivered = await n.deliver(notice(status="queued", channel=None, refs={"origin": "C0TYPED01"}))
    assert delivered is not None and delivered.deployment_refs is not None
    assert delivered.deployment_refs["channel"] == "C0TYPED01"


async def test_a_card_goes_out_and_is_updated_with_its_workspaces_token(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    """Typed in workspace T0SECOND1 (OAuth: one bot token per workspace), the card is posted there with
    that workspace's token, and updated with it later, although the channel ref on the card is bare."""
    second = fake_slack.add_workspace(team_id="T0SECOND1", name="Second")
    asked: list[str | None] = []

    async def token_for(team: str | None) -> str | None:
        asked.append(team)
        return second.bot_token if team == "T0SECOND1" else fake_slack.bot_token

    n = notifier_mod.SlackNotifier(client=client, token_for=token_for)
    typed = {"origin": "T0SECOND1/C0TYPED01"}
    delivered = await n.deliver(notice(status="queued", channel=None, refs=typed))
    assert delivered is not None and delivered.deployment_refs is not None
    refs = delivered.deployment_refs
    assert (refs["channel"], refs["team"]) == ("C0TYPED01", "T0SECOND1")
    await n.deliver(notice(status="running", channel=None, refs={**typed, **refs}))
    calls = fake_slack.calls()
    assert [c.api for c in calls] == ["chat.postMessage", "chat.update"]
    assert {c.header("authorization") for c in calls} == {f"Bearer {second.bot_token}"}
    assert asked == ["T0SECOND1", "T0SECOND1"]


async def test_pacing_is_per_channel_and_a_long_backlog_goes_back_to_the_queue(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    # 10 writes/s, bursts of 2, and no write waits more than 0.35 s in a worker slot.
    n = notifier_mod.SlackNotifier(client=client, pacer=notifier_mod.Pacer(rate=10.0, burst=2, max_wait=0.35))
    busy = [n.deliver(notice(status="queued", deployment_id=100 + i)) for i in range(8)]
    other = n.deliver(notice(status="queued", deployment_id=200, channel="C0OTHER01"))
    results = await asyncio.gather(*busy, other, return_exceptions=True)
    deferred = [r for r in results if isinstance(r, TransientError)]
    # 2 at once, then 3 more within 0.35 s; the other 3 are handed back with a Retry-After.
    assert len(deferred) == 3
    assert all(r.retry_after is not None and r.retry_after > 0.35 for r in deferred)
    assert not isinstance(results[-1], BaseException)  # the other channel was not held up
    assert len(fake_slack.messages(CHANNEL)) == 5
    assert len(fake_slack.messages("C0OTHER01")) == 1


async def test_a_deferred_write_keeps_its_place_in_the_queue() -> None:
    pacer = notifier_mod.Pacer(rate=10.0, burst=1, max_wait=0.05)
    await pacer.wait("C1", key="a")
    with pytest.raises(TransientError) as b:
        await pacer.wait("C1", key="b")
    with pytest.raises(TransientError) as c:
        await pacer.wait("C1", key="c")
    assert b.value.retry_after is not None and c.value.retry_after is not None
    assert c.value.retry_after > b.value.retry_after
    await asyncio.sleep(b.value.retry_after)
    await pacer.wait("C1", key="b")  # back when told: its slot was kept, it goes at once
    # A newcomer queues behind c instead of taking c's slot.
    with pytest.raises(TransientError) as d:
        await pacer.wait("C1", key="d")
    with pytest.raises(TransientError) as c_again:
        await pacer.wait("C1", key="c")  # early: still waiting for its own slot
    assert d.value.retry_after is not None and c_again.value.retry_after is not None
    assert d.value.retry_after > c_again.value.retry_after
    # Another channel is independent.
    await pacer.wait("C2", key="x")


def test_views_fingerprint_changes_with_the_card() -> None:
    a = views.card(deployment=notice(status="queued").deployment, app=None, project=None)  # type: ignore[arg-type]
    b = views.card(deployment=notice(status="running").deployment, app=None, project=None)  # type: ignore[arg-type]
    assert notifier_mod.SlackNotifier._fingerprint(a) != notifier_mod.SlackNotifier._fingerprint(b)


async def test_protection_changes_are_left_to_the_other_notifiers(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    # The card is about deploys; an app event (no deployment) is neither queued for Slack nor breaks it.
    n = make(client)
    assert not n.wants(events.APP_PROTECTION_CHANGED)
    change = dataclasses.replace(
        notice(), kind=events.APP_PROTECTION_CHANGED, deployment=None, payload={"protected": False}
    )
    calls = len(fake_slack.calls())
    assert await n.deliver(change) is None
    assert len(fake_slack.calls()) == calls


async def test_a_retry_finds_its_card_past_the_first_page_of_a_busy_channel(
    fake_slack: FakeSlack, client: AsyncWebClient
) -> None:
    """The card an earlier attempt posted, with a page of chatter after it: found on the next page
    (Slack's cursor), adopted and redrawn, not posted again."""
    delivered = await make(client).deliver(notice(status="queued"))
    assert delivered is not None and delivered.deployment_refs is not None
    ts = delivered.deployment_refs["ts"]  # ... and then its process died before recording it
    for i in range(notifier_mod.HISTORY_LIMIT + 5):
        await client.chat_postMessage(channel=CHANNEL, text=f"chatter {i}")
    # An earlier deploy's card, from the same bot, is not this one.
    await client.chat_postMessage(
        channel=CHANNEL, text="older card",
        metadata={"event_type": notifier_mod.CARD_EVENT, "event_payload": {"deployment_id": 6, "ref": "slack"}},
    )  # fmt: skip
    retry = dataclasses.replace(notice(status="running", ready=0, desired=1), attempt=2)
    again = await make(client).deliver(retry)  # another process: nothing in memory
    assert again is not None and again.deployment_refs == {"channel": CHANNEL, "ts": ts}
    assert len(fake_slack.calls("conversations.history")) == 2
    assert len(fake_slack.calls("chat.postMessage")) == 1 + notifier_mod.HISTORY_LIMIT + 5 + 1
    assert "rolling out" in str(fake_slack.message(CHANNEL, ts)["blocks"])


async def test_a_retry_that_cannot_read_the_channel_posts_and_says_why_once(
    fake_slack: FakeSlack, client: AsyncWebClient, caplog: pytest.LogCaptureFixture
) -> None:
    """not_in_channel (posting needs only chat:write.public, reading needs membership) and
    missing_scope: the retry posts as before there was a look; each reason is logged once, and a
    workspace without the scope is not asked again."""
    fake_slack.add_channel("C0OUTSIDE", name="outside", is_member=False)
    n = make(client)
    with caplog.at_level(logging.WARNING, logger="bot.notifier"):
        for deployment_id in (1, 2):
            retry = dataclasses.replace(notice(channel="C0OUTSIDE", deployment_id=deployment_id), attempt=2)
            assert await n.deliver(retry) is not None
        assert [c.response["error"] for c in fake_slack.calls("conversations.history")] == [
            "not_in_channel"
        ] * 2
        fake_slack.set_scopes(fake_slack.bot_token, "chat:write,chat:write.public")
        for deployment_id in (3, 4):
            assert (
                await n.deliver(dataclasses.replace(notice(deployment_id=deployment_id), attempt=2))
                is not None
            )
    errors = [c.response["error"] for c in fake_slack.calls("conversations.history")]
    assert errors == ["not_in_channel", "not_in_channel", "missing_scope"]
    assert len(fake_slack.calls("chat.postMessage")) == 4
    said = [r.getMessage() for r in caplog.records if "cannot read the history" in r.getMessage()]
    assert len(said) == 2 and "not_in_channel" in said[0] and "needs channels:history" in said[1], said
