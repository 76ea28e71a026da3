"""Cards go out with the token of the workspace their channel is in, and never another's.

With OAuth installs every workspace has its own bot token.  A project's channel that names a workspace
shipit is not installed in (never installed, or uninstalled since) must not be posted to with some other
workspace's token: that would send one tenant's deploys to Slack under another tenant's credentials.
Only an org-wide (Enterprise Grid) install serves workspaces it has no row for, and only while it is the
one organisation installed.  The real app, its real installation store on SQLite, the fake Slack Web API.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from pydantic import SecretStr
from slack_sdk.oauth.installation_store.models.installation import Installation

from bot import channel as slack_channel
from bot.install_store import EncryptedInstallationStore
from core import clusters, deploys, projects
from shipit import runtime
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from tests.bot.conftest import add_app
from tests.conftest import ADMIN, serving
from tests.fakes.slack_api import FakeSlack
from tests.webhooks.conftest import OFFLINE_KUBECONFIG, deliver_notifications

GONE = "T0GONE001"  # the workspace acme's channel is in: shipit is not installed there at first
# Bot tokens the fake Slack accepts, one per workspace (or org-wide install).
OTHER, ACME, GRID, GRID_2 = "xoxb-other-000001", "xoxb-acme-000002", "xoxb-grid-000003", "xoxb-grid-000004"


@dataclass
class Workspaces:
    rt: Runtime
    store: EncryptedInstallationStore
    fake: FakeSlack


@pytest_asyncio.fixture
async def workspaces(settings: Settings, fake_slack: FakeSlack) -> AsyncIterator[Workspaces]:
    """OAuth installs (no SHIPIT_SLACK_BOT_TOKEN); project acme's channel is in workspace GONE."""
    fake = fake_slack
    for team, token in (("T0OTHER01", OTHER), (GONE, ACME), ("T0GRID001", GRID), ("T0GRID002", GRID_2)):
        fake.add_workspace(team_id=team, name=team, bot_token=token)
    oauth = settings.model_copy(
        update={
            "slack_client_id": fake.client_id,
            "slack_client_secret": SecretStr(fake.client_secret),
            "slack_bot_token": None,
        }
    )
    rt = await runtime.build(oauth)
    try:
        app = create_app(rt=rt)
        channel = app.state.slack
        assert isinstance(channel, slack_channel.SlackChannel) and channel.bolt is not None
        store = channel.bolt.installation_store
        assert isinstance(store, EncryptedInstallationStore)
        async with rt.sessionmaker.begin() as session:
            await projects.create(
                session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=f"{GONE}/C0ACME001"
            )
            await clusters.add(
                session, ctx=rt.core, actor=ADMIN, name="test", kubeconfig_text=OFFLINE_KUBECONFIG,
                default_namespace="default", version="v1.36.3",
            )  # fmt: skip
            await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace="default")
        await add_app(rt, name="web", cluster="test", image="ghcr.io/acme/web:1.0")
        async with serving(app):  # the app's start creates the installation store's tables
            yield Workspaces(rt=rt, store=store, fake=fake)
    finally:
        await runtime.stop(rt)


def _install(*, team: str | None, enterprise: str | None, token: str) -> Installation:
    return Installation(
        app_id="A0SHIPIT1", enterprise_id=enterprise, team_id=team, is_enterprise_install=team is None,
        user_id="U0INSTALL", bot_token=token, bot_id=f"B{token[-6:]}", bot_user_id="U0BOT0001",
        bot_scopes=["chat:write", "commands"],
    )  # fmt: skip


async def _deploy_and_notify(w: Workspaces, image: str) -> list[str]:
    """Queue a deploy of web (superseding the one before), run the notices; each Slack call made, as
    "method token"."""
    before = len(w.fake.calls())
    async with w.rt.sessionmaker.begin() as session:
        await deploys.request(session, ctx=w.rt.core, actor=ADMIN, app_name="web", image=image, trigger="api")
    assert await deliver_notifications(w.rt) >= 1
    return [
        f"{c.api} {(c.header('authorization') or '').removeprefix('Bearer ')}"
        for c in w.fake.calls()[before:]
    ]


async def test_another_workspaces_token_is_never_used(
    workspaces: Workspaces, caplog: pytest.LogCaptureFixture
) -> None:
    w = workspaces
    await w.store.async_save(_install(team="T0OTHER01", enterprise=None, token=OTHER))
    caplog.set_level(logging.INFO)
    assert await _deploy_and_notify(w, "ghcr.io/acme/web:1.1") == []
    assert any(
        "card not posted: no installation of shipit serves workspace T0GONE001" in r.getMessage()
        and r.levelno == logging.WARNING
        for r in caplog.records
    )
    assert OTHER not in caplog.text

    # Installed in acme's workspace: its own token.
    await w.store.async_save(_install(team=GONE, enterprise=None, token=ACME))
    assert await _deploy_and_notify(w, "ghcr.io/acme/web:1.2") == [f"chat.postMessage {ACME}"]
    # Another workspace installed since (now the latest install): the card of 1.2, superseded, is
    # still updated with acme's token, and so is 1.3's posted.
    await w.store.async_save(_install(team="T0GRID001", enterprise=None, token=GRID))
    assert await _deploy_and_notify(w, "ghcr.io/acme/web:1.3") == [
        f"chat.update {ACME}",
        f"chat.postMessage {ACME}",
    ]


async def test_an_org_wide_install_serves_its_workspaces_unless_several_organisations_are_installed(
    workspaces: Workspaces,
) -> None:
    w = workspaces
    await w.store.async_save(_install(team="T0OTHER01", enterprise=None, token=OTHER))
    await w.store.async_save(_install(team=None, enterprise="E0GRID001", token=GRID))
    assert await _deploy_and_notify(w, "ghcr.io/acme/web:1.3") == [f"chat.postMessage {GRID}"]

    # A second organisation: a team id alone cannot say which holds acme's workspace, so neither,
    # not even to update the card already posted.
    await w.store.async_save(_install(team=None, enterprise="E0GRID002", token=GRID_2))
    assert await _deploy_and_notify(w, "ghcr.io/acme/web:1.4") == []
