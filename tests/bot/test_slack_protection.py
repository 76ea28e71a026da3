"""Protected environments from Slack and the API together, on the real control plane.

A 2-approval environment waits for two different persons: one approves with the card's button
(the real bolt request path against the fake Slack Web API), the other through the REST API; the
requester's own second identity is refused and a repeat approval does not count twice.  Locks of
an environment and a project from Slack commands.
"""

from __future__ import annotations

from typing import Any

import httpx
from kubernetes_asyncio import client as k8s
from sqlalchemy import select

from bot import views
from core import projects
from storage import models
from tests.bot.conftest import (
    ALICE,
    BOB,
    DAVE,
    SlackSender,
    add_app,
    card_of,
    card_text,
    deployments,
    eventually,
)
from tests.conftest import ADMIN, LiveServer, World, linked_person
from tests.fakes.slack_api import FakeSlack
from tests.shipit.conftest import make_token

ROLLOUT = 120.0


async def _found(value: Any) -> Any:
    return value


async def _card_says(fake: FakeSlack, channel: str, ts: str, *fragments: str) -> bool:
    text = card_text(fake.message(channel, ts))
    return all(f in text for f in fragments)


async def _grant(rt: Any, subject: str, role: str) -> None:
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=subject, role=role)


def _http(live_server: LiveServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


async def test_two_approvals_from_two_persons_one_from_slack_one_from_the_api(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any, live_server: LiveServer
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0")
    # Alice is slack:U0ALICE01 and github:alice; Erin approves through the API.
    await linked_person(rt, "alice", ALICE.subject, "github:alice")
    await linked_person(rt, "bob", BOB.subject, "github:bob")
    await _grant(rt, "github:alice", "developer")
    await _grant(rt, "github:bob", "developer")
    await _grant(rt, "user:erin", "developer")
    admin = _http(live_server, await make_token(rt))
    alice_api = _http(live_server, await make_token(rt, subject="github:alice", admin=False))
    bob_api = _http(live_server, await make_token(rt, subject="github:bob", admin=False))
    erin = _http(live_server, await make_token(rt, subject="user:erin", admin=False))
    try:
        r = await admin.put("/api/v1/projects/acme/environments/production/protection", json={"approvals": 2})
        assert r.status_code == 200, r.text
        assert r.json()["protected"] and r.json()["required_approvals"] == 2

        await slack.command("deploy web 2.0", user=ALICE)
        d = (await deployments(rt))[-1]
        channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card", timeout=ROLLOUT)
        await eventually(
            lambda: _card_says(fake_slack, channel, ts, "waiting for approval", "0 of 2 approvals"),
            what="card waits",
        )

        # Alice's GitHub identity is still Alice.
        r = await alice_api.post(f"/api/v1/deploys/{d.id}/approve")
        assert r.status_code == 403 and "nobody approves their own deploy" in r.json()["error"]["message"]

        await slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts)
        answered = await eventually(lambda: _found(fake_slack.ephemerals(user=BOB.id)), what="bob's answer")
        assert "1 of 2 approvals" in answered[-1]["text"]
        # The card names who approved so far, next to its Approve button.
        await eventually(
            lambda: _card_says(fake_slack, channel, ts, f"1 of 2 approvals: <@{BOB.id}>."), what="card counts"
        )
        await slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts)
        again = await eventually(
            lambda: _found(
                len(fake_slack.ephemerals(user=BOB.id)) >= 2 and fake_slack.ephemerals(user=BOB.id)
            ),
            what="bob's second answer",
        )
        assert "already done" in again[-1]["text"]  # a double click is answered, not run
        # Bob again from his GitHub identity: one person, one approval.
        r = await bob_api.post(f"/api/v1/deploys/{d.id}/approve")
        assert r.status_code == 409 and "already approved" in r.json()["error"]["message"]
        r = await erin.get(f"/api/v1/deploys/{d.id}")
        body = r.json()
        assert body["status"] == "awaiting_approval" and (body["approvals"], body["approvals_needed"]) == (
            1,
            2,
        )

        r = await erin.post(f"/api/v1/deploys/{d.id}/approve")
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("queued", "running", "succeeded") and r.json()["approvals"] == 2
        await eventually(
            lambda: _card_says(fake_slack, channel, ts, "is live on"), what="live", timeout=ROLLOUT
        )
    finally:
        for c in (admin, alice_api, bob_api, erin):
            await c.aclose()
    deployment = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", kube_world.namespace)
    assert deployment.spec.template.spec.containers[0].image == "ghcr.io/acme/web:2.0"
    async with rt.sessionmaker() as session:
        rows = list(await session.scalars(select(models.DeployApproval).order_by(models.DeployApproval.id)))
        bob = await session.scalar(
            select(models.Identity.person_id).where(models.Identity.subject == BOB.subject)
        )
    assert [(a.person_key, a.subject, a.channel) for a in rows] == [
        (f"person:{bob}", BOB.subject, "slack"),
        ("user:erin", "user:erin", "api"),
    ]


async def test_the_cards_approve_button_refuses_the_requester_from_their_other_identity(
    slack: SlackSender, offline: World, fake_slack: FakeSlack, live_server: LiveServer
) -> None:
    """Asked through the API as github:alice, Alice's Slack click on the card is still Alice's own deploy."""
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    await linked_person(rt, "alice", ALICE.subject, "github:alice")
    await _grant(rt, "github:alice", "developer")
    alice_api = _http(live_server, await make_token(rt, subject="github:alice", admin=False))
    try:
        r = await alice_api.post("/api/v1/apps/web/deploys", json={"image": "ghcr.io/acme/web:2.0"})
        assert r.status_code == 202 and r.json()["status"] == "awaiting_approval", r.text
        deployment_id = r.json()["id"]
    finally:
        await alice_api.aclose()
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, deployment_id), what="card")
    await eventually(lambda: _card_says(fake_slack, channel, ts, "waiting for approval"), what="card waits")

    await slack.click(views.ACTION_APPROVE, user=ALICE, channel=channel, message_ts=ts)
    refused = await eventually(lambda: _found(fake_slack.ephemerals(user=ALICE.id)), what="alice's answer")
    assert "nobody approves their own deploy" in refused[-1]["text"]
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None and d.status == "awaiting_approval" and d.approved_by is None
        assert list(await session.scalars(select(models.DeployApproval))) == []


async def test_lock_and_unlock_an_environment_and_the_project_from_slack(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    reply = await slack.command("lock env production db migration", user=BOB)
    assert "acme/production* is locked: db migration" in reply["text"], reply
    refused = await slack.command("deploy web 2.0", user=ALICE)
    assert f"environment production is locked by {BOB.subject}: db migration" in refused["text"], refused
    # Only the locker or an admin unlocks it.
    refused = await slack.command("unlock env acme/production", user=ALICE)
    assert "only they or a project admin" in refused["text"], refused
    assert "is unlocked" in (await slack.command("unlock env production", user=DAVE))["text"]

    # A developer may not lock the whole project; an admin may.
    refused = await slack.command("lock project acme audit", user=ALICE)
    assert "needs the admin role" in refused["text"], refused
    assert "is locked: audit" in (await slack.command("lock project acme audit", user=DAVE))["text"]
    refused = await slack.command("deploy web 2.0", user=ALICE)
    assert f"project acme is locked by {DAVE.subject}: audit" in refused["text"], refused
    assert "is unlocked" in (await slack.command("unlock project acme", user=DAVE))["text"]
    assert "is queued" in (await slack.command("deploy web 2.0", user=ALICE))["text"]


def test_the_lock_commands_parse_their_scopes() -> None:
    from bot import commands as c

    assert c.parse("lock env staging db migration") == c.LockEnv(where="staging", reason="db migration")
    assert c.parse("lock env acme/staging why") == c.LockEnv(where="acme/staging", reason="why")
    assert c.parse("lock project acme audit") == c.LockProject(project="acme", reason="audit")
    assert c.parse("lock web release") == c.Lock(app="web", reason="release")
    assert c.parse("unlock env staging") == c.UnlockEnv(where="staging")
    assert c.parse("unlock project acme") == c.UnlockProject(project="acme")
    assert c.parse("unlock web") == c.Unlock(app="web")
