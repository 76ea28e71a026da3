"""Every real Slack request body we hold (tests/fixtures/real-payloads/slack: the bodies bolt-python's
own scenario tests send, and Slack's ssl_check; see SOURCES.md) into the real app over HTTP, signed
with Slack's v0 signature, to /slack/events the way Slack sends each kind: slash commands and
ssl_check as a form, interactivity as a `payload=` form field, events as JSON.

What the README documents: url_verification echoes the challenge, ssl_check is answered 200 and empty,
a slash command from someone shipit does not know gets an ephemeral answer (never an error), what
shipit has no listener for is acknowledged (bolt alone would answer 404), and tokens_revoked /
app_uninstalled stop shipit posting with that token.  One app per mode serves the module.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import SecretStr
from slack_sdk.oauth.installation_store.models.installation import Installation
from sqlalchemy import func, select

from bot import channel as slack_channel
from bot import notifier
from core import clusters, projects
from shipit import runtime
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from tests.bot.conftest import ALICE, SIGNING_SECRET, SlackSender, add_app, grant_roles
from tests.conftest import ADMIN, serving
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.webhooks.conftest import OFFLINE_KUBECONFIG, deliver_notifications

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "real-payloads" / "slack"
FILES = sorted(p.name for p in ROOT.iterdir() if p.suffix in (".json", ".form"))
assert len(FILES) == 16, "tests/fixtures/real-payloads/SOURCES.md lists 16 Slack bodies"
FORM = "application/x-www-form-urlencoded"
# Interactivity shipit has no listener for: acknowledged with an empty 200, as bolt's own tests expect.
ACKNOWLEDGED = {
    "block_actions.json",
    "dialog_submission.json",
    "interactive_message.json",
    "message_action.json",
    "shortcut.json",
    "view_closed.json",
    "view_submission.json",
}
EVENTS = {"event_app_mention.json", "event_message.json", "event_reaction_added.json"}
REVOKING = {"event_tokens_revoked.json", "event_app_uninstalled.json"}


def request_of(name: str) -> tuple[bytes, str]:
    """The body as Slack sends it, and its content type."""
    raw = (ROOT / name).read_bytes()
    if name.endswith(".form"):
        return raw, FORM
    if json.loads(raw)["type"] in ("event_callback", "url_verification"):
        return raw, "application/json"
    return urllib.parse.urlencode({"payload": raw.decode()}).encode(), FORM


@dataclass
class Sweep:
    sender: SlackSender
    rt: Runtime
    app: FastAPI
    fake: FakeSlack

    @property
    def channel(self) -> slack_channel.SlackChannel:
        found = self.app.state.slack
        assert isinstance(found, slack_channel.SlackChannel)
        return found

    @property
    def notifier(self) -> notifier.SlackNotifier:
        assert self.channel.notifier is not None
        return self.channel.notifier


@pytest_asyncio.fixture(scope="module")
async def sweep(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sweep]:
    """The app with one bot token (SHIPIT_SLACK_BOT_TOKEN); project acme with app web, whose cluster
    is never contacted (nothing here gets as far as a rollout)."""
    async for s in _sweep(tmp_path_factory, oauth=False):
        async with s.rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=s.rt.core, actor=ADMIN, name="acme", slack_channel="C0DEPLOYS")
            await clusters.add(
                session, ctx=s.rt.core, actor=ADMIN, name="test", kubeconfig_text=OFFLINE_KUBECONFIG,
                default_namespace="default", version="v1.36.3",
            )  # fmt: skip
            await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace="default")
        await add_app(s.rt, name="web", cluster="test", image="ghcr.io/acme/web:1.0")
        yield s


@pytest_asyncio.fixture(scope="module")
async def oauth_sweep(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sweep]:
    """The app with OAuth installs (SHIPIT_SLACK_CLIENT_ID/SECRET)."""
    async for s in _sweep(tmp_path_factory, oauth=True):
        yield s


async def _sweep(tmp_path_factory: pytest.TempPathFactory, *, oauth: bool) -> AsyncIterator[Sweep]:
    tmp = tmp_path_factory.mktemp("real-slack")
    async with FakeSlack() as fake:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=f"sqlite+aiosqlite:///{tmp / 'shipit.db'}",
            data_dir=tmp / "var",
            master_key=SecretStr(generate_key()),
            slack_signing_secret=SecretStr(SIGNING_SECRET),
            slack_bot_token=None if oauth else SecretStr(fake.bot_token),
            slack_client_id=fake.client_id if oauth else None,
            slack_client_secret=SecretStr(fake.client_secret) if oauth else None,
            slack_api_url=fake.url,
        )
        rt = await runtime.build(settings)
        try:
            app = create_app(rt=rt)
            async with serving(app) as url:
                sender = SlackSender(url=url, fake=fake)
                try:
                    yield Sweep(sender=sender, rt=rt, app=app, fake=fake)
                finally:
                    await sender.close()
        finally:
            await runtime.stop(rt)
        assert not fake.errors, fake.errors


async def _deployment_count(rt: Runtime) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(models.Deployment)) or 0)


@pytest.mark.parametrize("name", FILES)
async def test_every_real_body_is_answered_as_documented(
    sweep: Sweep, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body, content_type = request_of(name)
    before = await _deployment_count(sweep.rt)
    response = await sweep.sender.post(body, content_type=content_type)
    assert response.status_code == 200, response.text
    if name == "url_verification.json":
        assert response.json() == {"challenge": json.loads(body)["challenge"]}
    elif name == "ssl_check.form":
        assert response.content == b""
    elif name == "slash_command.form":
        # `/hello-world Hi` from W111, whom shipit does not know: an ephemeral answer, nothing run.
        answer = response.json()
        assert answer["response_type"] == "ephemeral"
        assert "Unknown command `hi`" in answer["text"] and "/shipit help" in answer["text"]
    elif name == "block_suggestion.json":
        assert response.json() == {"options": []}
    else:
        assert name in ACKNOWLEDGED | EVENTS | REVOKING, f"{name}: no expectation written for it"
        assert response.content == b""
    assert await _deployment_count(sweep.rt) == before
    if name == "event_app_mention.json":
        # `<@W111> Hi there!`: answered in the mention's thread (after the ack) with what shipit understood.
        event = json.loads(body)["event"]

        async def replied() -> bool:
            return bool(sweep.fake.thread(event["channel"], event["ts"]))

        await eventually(replied, what="the reply to the mention")
        [reply] = sweep.fake.thread(event["channel"], event["ts"])
        assert "Unknown command `hi`" in reply["text"]
    if name in ACKNOWLEDGED | {"block_suggestion.json"}:
        [line] = [r.getMessage() for r in caplog.records if "is not shipit's; acknowledged" in r.getMessage()]
        assert json.loads((ROOT / name).read_text())["type"] in line
    if name in REVOKING:
        # One bot token (no OAuth): Slack took it back, so cards stop; the log says where and why.
        assert (
            sweep.notifier.revoked is not None
            and "set a new SHIPIT_SLACK_BOT_TOKEN" in sweep.notifier.revoked
        )
        sweep.notifier.revoked = None  # the next cases post with the token again
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "workspace E111" in line and "event Ev111" in line and "revoked" in line
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert sweep.fake.bot_token not in text and SIGNING_SECRET not in text
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_real_slash_command_asking_to_deploy_from_an_unknown_user_is_refused(sweep: Sweep) -> None:
    """The real body with a real command: W111 holds no role in acme, so app web does not exist for them."""
    form = urllib.parse.parse_qs((ROOT / "slash_command.form").read_text())
    form["text"] = ["deploy web ghcr.io/acme/web:1.1"]
    form["trigger_id"] = ["111.111.deploy"]
    before = await _deployment_count(sweep.rt)
    response = await sweep.sender.post(urllib.parse.urlencode(form, doseq=True).encode(), content_type=FORM)
    assert response.status_code == 200
    answer = response.json()
    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == ":warning: no app named 'web'; you can see no apps yet", answer
    assert await _deployment_count(sweep.rt) == before


async def test_a_revoked_bot_token_stops_the_cards(sweep: Sweep, caplog: pytest.LogCaptureFixture) -> None:
    body, content_type = request_of("event_app_uninstalled.json")
    assert (await sweep.sender.post(body, content_type=content_type)).status_code == 200
    try:
        assert sweep.notifier.revoked is not None
        # A deploy's notice after that posts nothing to Slack (and fails nothing).
        posts = len(sweep.fake.calls("chat.postMessage"))
        await grant_roles(sweep.rt, project="acme")
        before = await _deployment_count(sweep.rt)
        await sweep.sender.command("deploy web ghcr.io/acme/web:1.2", user=ALICE)
        assert await _deployment_count(sweep.rt) == before + 1
        caplog.set_level(logging.INFO)
        assert await deliver_notifications(sweep.rt) >= 1
        assert len(sweep.fake.calls("chat.postMessage")) == posts
        assert any("card not posted: the bot token was revoked" in r.getMessage() for r in caplog.records)
    finally:
        sweep.notifier.revoked = None


@pytest.mark.parametrize("name", sorted(REVOKING))
async def test_revocations_delete_the_oauth_installation(oauth_sweep: Sweep, name: str) -> None:
    store = oauth_sweep.channel.bolt.installation_store if oauth_sweep.channel.bolt else None
    assert store is not None
    await store.async_save(
        Installation(
            app_id="A111", enterprise_id="E111", team_id=None, is_enterprise_install=True,
            user_id="W111", user_token="xoxp-user-111",
            bot_token="xoxb-bot-111", bot_id="B111", bot_user_id="W222", bot_scopes=["chat:write"],
        )
    )  # fmt: skip
    assert await store.async_find_bot(enterprise_id="E111", team_id=None, is_enterprise_install=True)
    body, content_type = request_of(name)
    response = await oauth_sweep.sender.post(body, content_type=content_type)
    assert (response.status_code, response.content) == (200, b"")
    assert await store.async_find_bot(enterprise_id="E111", team_id=None, is_enterprise_install=True) is None
    left = await store.async_find_installation(enterprise_id="E111", team_id=None, is_enterprise_install=True)
    if name == "event_app_uninstalled.json":
        assert left is None


async def test_revoked_user_tokens_leave_the_bot_token_alone(sweep: Sweep) -> None:
    """The real tokens_revoked body naming only user (oauth) tokens: shipit posts with its bot token,
    which Slack did not take back, so the cards go on."""
    event = json.loads((ROOT / "event_tokens_revoked.json").read_bytes())
    del event["event"]["tokens"]["bot"]
    response = await sweep.sender.post(json.dumps(event).encode(), content_type="application/json")
    assert (response.status_code, response.content) == (200, b"")
    assert sweep.notifier.revoked is None
