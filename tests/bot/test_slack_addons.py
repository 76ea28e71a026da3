"""`/shipit addons` through the real Slack request path (signed, fake Slack Web API): the same roles
and rules as the API; the list asks the cluster after the ack and says so when it cannot."""

from __future__ import annotations

import pytest

from core import clusters
from tests.bot.conftest import ALICE, CAROL, DAVE, SlackSender, add_app
from tests.conftest import ADMIN, World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.shipit.conftest import offline_kubeconfig


async def _follow_ups(fake: FakeSlack) -> list[str]:
    return [r["text"] for r in fake.responses() if r.get("replace_original")]


async def test_addons_from_slack(slack: SlackSender, offline: World, fake_slack: FakeSlack) -> None:
    rt = offline.rt
    async with rt.sessionmaker.begin() as session:
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name="down", kubeconfig_text=offline_kubeconfig(), version="v0"
        )
    await add_app(rt, name="web", cluster="down", image="ghcr.io/acme/web:1.0")

    reply = await slack.command("addons create web postgres", user=CAROL)  # a viewer
    assert "developer" in reply["text"], reply
    reply = await slack.command("addons create web postgres", user=ALICE)
    assert "Creating a `postgres` (small): *provisioning* add-on for *web*" in reply["text"], reply
    assert "`DATABASE_URL` when the database is ready" in reply["text"]
    reply = await slack.command("addons create web postgres medium", user=ALICE)
    assert "already has a postgres add-on" in reply["text"], reply

    reply = await slack.command("addons list web", user=CAROL)
    assert "Asking the cluster" in reply["text"], reply
    [listed] = await eventually(lambda: _follow_ups(fake_slack), what="the list")
    assert "`postgres` (small): *provisioning* (cluster not reached" in listed, listed

    reply = await slack.command("addons destroy web postgres", user=ALICE)  # a developer
    assert "admin" in reply["text"], reply
    reply = await slack.command("addons destroy web postgres", user=DAVE)
    assert (
        "Destroying the `postgres` (small): *deleting* add-on of *web* (its data volume is kept)"
        in reply["text"]
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("addons", "takes create, list or destroy"),
        ("addons creat web postgres", "Did you mean `addons create`?"),
        ("addons create web", "needs the kind"),
        ("addons create web mysql", "needs the kind"),
        ("addons create web redis huge", "small or medium"),
        ("addons destroy web redis --force", "does not take"),
    ],
)
async def test_addons_usage_errors(slack: SlackSender, offline: World, text: str, says: str) -> None:
    reply = await slack.command(text, user=ALICE)
    assert says in reply["text"], reply
