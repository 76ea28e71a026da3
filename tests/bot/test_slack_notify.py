"""`/shipit notify …` over Slack's real request signing: targets added, listed and removed per role."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from storage import models
from tests.bot.conftest import ALICE, CAROL, CHANNEL, DAVE, SlackSender, add_app
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually


async def test_notify_from_slack(slack: SlackSender, offline: World) -> None:
    reply = await slack.command(
        "notify add acme email <mailto:ops@acme.io|ops@acme.io> events=failed,rolled_back env=production",
        user=DAVE,
    )
    assert "*email* ops@acme.io, events `failed,rolled_back`, env `production`" in reply["text"], reply
    listed = await slack.command("notify list acme", user=CAROL)  # viewers may look
    assert f"*slack* {CHANNEL}" in listed["text"] and "*email* ops@acme.io" in listed["text"]
    target_id = listed["text"].split("*email*")[0].rsplit("#", 1)[1].strip()

    refused = await slack.command("notify remove acme " + target_id, user=ALICE)  # developers may not
    assert "needs the admin role" in refused["text"], refused
    reply = await slack.command("notify remove acme " + target_id, user=DAVE)
    assert f"Removed target #{target_id}" in reply["text"]
    assert "ops@acme.io" not in (await slack.command("notify list acme", user=DAVE))["text"]
    bad = await slack.command("notify add acme pager https://x.example", user=DAVE)
    assert "kind must be one of slack, github, email, teams, discord, webhook" in bad["text"], bad


@pytest.mark.both_databases
async def test_a_burst_of_cards_is_paced_without_counting_against_the_channel(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    """Our own pacing (about a message a second per channel) hands writes back to the queue: not a
    failure of the target, which would otherwise be shown failing and retried only minutes later."""
    rt = offline.rt
    for i in range(12):
        # Protected: each deploy waits for an approval, so the worker runs only the cards.
        await add_app(
            rt, name=f"app{i}", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True
        )
    # 12 cards at once where 3 go at once and then one a second, none waiting over 3 s in a worker slot.
    replies = await asyncio.gather(*(slack.command(f"deploy app{i} 1.1", user=ALICE) for i in range(12)))
    assert all("approval" in r["text"].lower() for r in replies), replies
    await eventually(
        lambda: asyncio.sleep(0, fake_slack.messages(CHANNEL, include_replies=False)),
        lambda cards: len(cards) == 12,
        what="a card per deploy",
        timeout=60,
    )
    async with rt.sessionmaker() as session:
        paced = list(
            await session.scalars(select(models.Job.id).where(models.Job.last_error.like("pacing messages%")))
        )
        target = await session.scalar(
            select(models.NotificationTarget).where(models.NotificationTarget.address == CHANNEL)
        )
    assert paced, "the burst should have been paced"
    assert target is not None
    assert (target.failures, target.last_failure_at, target.last_error) == (0, None, None)


async def test_cards_go_over_one_kept_alive_connection(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    """The notifier's Web API calls share the channel's connection pool instead of opening a session
    and a connection per card."""
    rt = offline.rt
    for i in range(3):
        await add_app(
            rt, name=f"pool{i}", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True
        )
    for i in range(3):
        reply = await slack.command(f"deploy pool{i} 1.1", user=ALICE)
        assert "approval" in reply["text"].lower(), reply
        await eventually(
            lambda: asyncio.sleep(0, fake_slack.messages(CHANNEL, include_replies=False)),
            lambda cards, n=i + 1: len(cards) == n,  # type: ignore[misc]
            what=f"card {i + 1} posted",
        )
    posts = [c for c in fake_slack.calls("chat.postMessage") if c.ok]
    assert len(posts) == 3
    assert all(c.peer for c in posts)
    assert len({c.peer for c in posts}) == 1, [c.peer for c in posts]
