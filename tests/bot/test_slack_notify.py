"""`/shipit notify …` over Slack's real request signing: targets added, listed and removed per role."""

from __future__ import annotations

from tests.bot.conftest import ALICE, CAROL, CHANNEL, DAVE, SlackSender
from tests.conftest import World


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
