"""Fixtures for the Slack channel tests: the real app with Slack configured against the fake Web API,
a client that signs requests exactly as Slack does, and projects with Slack users in roles.

`settings` is overridden here so the shared `rt`, `world` and `live_server` fixtures build a runtime
whose Slack channel points at `fake_slack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import apps, clusters, deploys, projects
from core.identity import Actor
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN, LiveServer, World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually as eventually  # re-exported: tests on other branches import it from here

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0DEPLOYS"  # the project's Slack channel
TYPED_IN = "C0GENERAL"  # where people type commands


@dataclass(frozen=True)
class User:
    id: str
    name: str

    @property
    def subject(self) -> str:
        return f"slack:{self.id}"


ALICE = User("U0ALICE01", "alice")  # developer
BOB = User("U0BOB0001", "bob")  # developer
CAROL = User("U0CAROL01", "carol")  # viewer
DAVE = User("U0DAVE001", "dave")  # admin
OWEN = User("U0OWEN001", "owen")  # owner
MALLORY = User("U0MALLORY", "mallory")  # no role anywhere


def slack_on(settings: Settings, fake_slack: FakeSlack) -> Settings:
    """`settings` with the Slack channel on: signed with SIGNING_SECRET, the fake Web API behind it."""
    return settings.model_copy(
        update={
            "slack_signing_secret": SecretStr(SIGNING_SECRET),
            "slack_bot_token": SecretStr(fake_slack.bot_token),
            "slack_api_url": fake_slack.url,
        }
    )


@pytest.fixture
def settings(settings: Settings, fake_slack: FakeSlack) -> Settings:
    return slack_on(settings, fake_slack)


def sign(body: bytes, *, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    """Sends what Slack sends: slash commands (form), interactivity (payload= JSON), events (JSON)."""

    def __init__(self, *, url: str, fake: FakeSlack) -> None:
        self.url = url
        self.fake = fake
        self.http = httpx.AsyncClient(base_url=url, timeout=60)

    async def post(
        self,
        body: bytes,
        *,
        content_type: str,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        ts = int(time.time()) if timestamp is None else timestamp
        return await self.http.post(
            "/slack/events",
            content=body,
            headers={
                "Content-Type": content_type,
                "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": signature or sign(body, timestamp=ts),
                **(headers or {}),
            },
        )

    def command_body(self, text: str, *, user: User, channel: str = TYPED_IN) -> bytes:
        form = {
            "token": "deprecated-verification-token",
            "team_id": self.fake.team_id,
            "team_domain": "shipit-test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user.id,
            "user_name": user.name,
            "command": "/shipit",
            "text": text,
            "api_app_id": self.fake.app_id,
            "is_enterprise_install": "false",
            "response_url": self.fake.response_url(channel=channel, user=user.id),
            "trigger_id": f"{uuid.uuid4().int % 10**10}.{uuid.uuid4().int % 10**10}.{uuid.uuid4().hex}",
        }
        return urllib.parse.urlencode(form).encode()

    async def command(self, text: str, *, user: User, channel: str = TYPED_IN) -> dict[str, Any]:
        """Run `/shipit <text>`; returns the ack body (the ephemeral reply)."""
        response = await self.post(
            self.command_body(text, user=user, channel=channel),
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 200, response.text
        return response.json() if response.content else {}

    async def click(
        self, action_id: str, *, user: User, channel: str, message_ts: str, value: str | None = None
    ) -> httpx.Response:
        """Click a button of a message the bot posted (its value is read from the message)."""
        message = self.fake.message(channel, message_ts)
        element = find_button(message, action_id)
        payload = {
            "type": "block_actions",
            "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": self.fake.team_id},
            "api_app_id": self.fake.app_id,
            "token": "deprecated-verification-token",
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "trigger_id": f"{uuid.uuid4().int % 10**10}.{uuid.uuid4().hex}",
            "team": {"id": self.fake.team_id, "domain": "shipit-test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "deploys"},
            "message": message,
            "state": {"values": {}},
            "response_url": self.fake.response_url(channel=channel, user=user.id, message_ts=message_ts),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": element["_block_id"],
                    "text": element["text"],
                    "value": value if value is not None else element["value"],
                    "style": element.get("style"),
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return await self.post(body, content_type="application/x-www-form-urlencoded")

    async def event(
        self, event: dict[str, Any], *, event_id: str, retry_num: int | None = None
    ) -> httpx.Response:
        body = json.dumps(
            {
                "token": "deprecated-verification-token",
                "team_id": self.fake.team_id,
                "api_app_id": self.fake.app_id,
                "event": event,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(time.time()),
                "authorizations": [
                    {
                        "enterprise_id": None,
                        "team_id": self.fake.team_id,
                        "user_id": self.fake.bot_user_id,
                        "is_bot": True,
                        "is_enterprise_install": False,
                    }
                ],
                "is_ext_shared_channel": False,
                "event_context": f"4-{uuid.uuid4().hex}",
            }
        ).encode()
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.post(body, content_type="application/json", headers=headers)

    async def close(self) -> None:
        await self.http.aclose()


def find_button(message: dict[str, Any], action_id: str) -> dict[str, Any]:
    for block in message.get("blocks") or []:
        if block.get("type") == "actions":
            for element in block["elements"]:
                if element.get("action_id") == action_id:
                    return {**element, "_block_id": block.get("block_id", "")}
    raise AssertionError(f"no {action_id} button on the message: {json.dumps(message.get('blocks'))[:2000]}")


def button_ids(message: dict[str, Any]) -> set[str]:
    return {
        e["action_id"]
        for b in message.get("blocks") or []
        if b.get("type") == "actions"
        for e in b["elements"]
    }


def card_text(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks") or [], ensure_ascii=False) + message.get("text", "")


@pytest.fixture
async def slack(live_server: LiveServer, fake_slack: FakeSlack) -> AsyncIterator[SlackSender]:
    sender = SlackSender(url=live_server.url, fake=fake_slack)
    yield sender
    await sender.close()


async def deployments(rt: Runtime) -> list[models.Deployment]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))


async def card_of(rt: Runtime, fake: FakeSlack, deployment_id: int) -> tuple[str, str] | None:
    """(channel, ts) of a deploy's card once the notifier posted it and its refs were saved."""
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        refs = (d.notify_refs or {}).get("slack", {}) if d else {}
    if refs.get("ts") and fake.find_message(refs["channel"], refs["ts"]) is not None:
        return str(refs["channel"]), str(refs["ts"])
    return None


async def grant_roles(rt: Runtime, *, project: str) -> None:
    roles = {ALICE: "developer", BOB: "developer", CAROL: "viewer", DAVE: "admin", OWEN: "owner"}
    async with rt.sessionmaker.begin() as session:
        for user, role in roles.items():
            await projects.set_access(
                session, actor=ADMIN, project_name=project, subject=user.subject, role=role
            )


async def add_app(
    rt: Runtime, *, name: str, cluster: str, namespace: str | None = None, **changes: Any
) -> None:
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster=cluster,
            name=name,
            namespace=namespace,
            changes=apps.AppChanges(**changes),
        )


async def web_on_a_closed_port(rt: Runtime) -> None:
    """App `web` on cluster `down`, whose kubeconfig points at a closed port: every call is refused at once."""
    from tests.shipit.conftest import offline_kubeconfig

    async with rt.sessionmaker.begin() as session:
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name="down", kubeconfig_text=offline_kubeconfig(), version="v0"
        )
    await add_app(rt, name="web", cluster="down", image="ghcr.io/acme/web:1.0")


async def deployed_web(world: World, *, timeout: float) -> int:
    """App `web` (ghcr.io/acme/web:1.0) on the world's cluster, deployed: its first deploy, succeeded."""
    rt = world.rt
    await add_app(rt, name="web", cluster=world.cluster, image="ghcr.io/acme/web:1.0")
    async with rt.sessionmaker.begin() as session:
        first = await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")

    async def done() -> bool:
        return any(d.id == first.deployment.id and d.status == "succeeded" for d in await deployments(rt))

    await eventually(done, timeout=timeout, what="web's first deploy")
    return first.deployment.id


def response_with(fake: FakeSlack, needle: str) -> dict[str, Any] | None:
    """The first answer to a response_url whose text or blocks hold `needle`, if there is one yet."""
    for r in fake.responses():
        if needle in r.get("text", "") + json.dumps(r.get("blocks")):
            return r
    return None


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A TCP port that accepts requests and never answers: a Kubernetes API server that hangs."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for w in writers:
            w.close()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def hanging_kubeconfig(port: int) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: hanging
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: hanging
  context: {{cluster: hanging, user: nobody, namespace: apps}}
current-context: hanging
users:
- name: nobody
  user: {{token: not-a-real-token}}
"""


@pytest.fixture
async def offline(live_server: LiveServer) -> AsyncIterator[World]:
    """Project `acme` (Slack channel C0DEPLOYS, our users in roles) on cluster `hanging`, whose API
    server accepts requests and never answers: deploys stay running, so later ones stay queued."""
    rt = live_server.rt
    async with black_hole() as port:
        async with rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=CHANNEL)
            await clusters.add(
                session,
                ctx=rt.core,
                actor=ADMIN,
                name="hanging",
                kubeconfig_text=hanging_kubeconfig(port),
                default_namespace="apps",
                version="v0.0.0-hanging",
            )
            await clusters.grant(session, actor=ADMIN, cluster="hanging", project="acme", namespace="apps")
        await grant_roles(rt, project="acme")
        yield World(rt=rt, project="acme", cluster="hanging", namespace="apps")


@pytest.fixture
async def kube_world(world: World, live_server: LiveServer) -> World:
    """The real control plane: project `acme` with Slack channel C0DEPLOYS and our users in roles."""
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        await projects.update(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=CHANNEL)
    await grant_roles(rt, project="acme")
    return world


def actor(user: User) -> Actor:
    return Actor(subject=user.subject, channel="slack", display=user.name)
