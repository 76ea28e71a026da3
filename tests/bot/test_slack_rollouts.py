"""From Slack to a real rollout and back: the card follows a deploy on the local control plane.

`/shipit deploy` -> card posted -> updated in place while rolling out -> succeeded when the Deployment
is Available; a `fail-` image ends failed with the reason in the card and its thread; Roll back on the
card restores the previous revision (once, however often it is clicked); a protected app waits for a
second person.  Waits poll the fake's message store with a deadline; nothing asserts timings.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes_asyncio import client as k8s
from sqlalchemy import select

from bot import views
from storage import models
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    DAVE,
    SlackSender,
    User,
    add_app,
    button_ids,
    card_of,
    card_text,
    deployments,
)
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually

ROLLOUT = 120.0  # generous deadline for a rollout on a shared machine


async def _card_says(fake: FakeSlack, channel: str, ts: str, *fragments: str) -> bool:
    text = card_text(fake.message(channel, ts))
    return all(f in text for f in fragments)


def _state(version: dict[str, Any]) -> str:
    text = json.dumps(version.get("blocks") or [])
    for marker, state in (
        ("waiting for approval", "awaiting"),
        ("is queued", "queued"),
        ("rolling out", "running"),
        ("is live on", "succeeded"),
        ("is rolled back to", "succeeded"),
        ("failed", "failed"),
    ):
        if marker in text:
            return state
    return "?"


async def _image_in_cluster(kube_api: Any, namespace: str, name: str) -> str:
    deployment = await k8s.AppsV1Api(kube_api).read_namespaced_deployment(name, namespace)
    return str(deployment.spec.template.spec.containers[0].image)


async def _deploy_and_wait(
    slack: SlackSender, rt: Any, fake: FakeSlack, text: str, *, until: str, user: User = ALICE
) -> tuple[models.Deployment, str, str]:
    await slack.command(text, user=user)
    d = (await deployments(rt))[-1]
    channel, ts = await eventually(lambda: card_of(rt, fake, d.id), what="card posted", timeout=ROLLOUT)
    await eventually(lambda: _card_says(fake, channel, ts, until), what=f"card says {until}", timeout=ROLLOUT)
    return d, channel, ts


async def test_deploy_card_follows_the_rollout_to_success(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", replicas=3)
    reply = await slack.command("deploy web 1.1", user=ALICE)
    assert "is queued" in reply["text"] and f"<#{CHANNEL}>" in reply["text"]
    [d] = await deployments(rt)
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card posted", timeout=ROLLOUT)
    assert channel == CHANNEL
    await eventually(
        lambda: _card_says(fake_slack, channel, ts, "is live on"), what="succeeded", timeout=ROLLOUT
    )

    card = fake_slack.message(channel, ts)
    text = card_text(card)
    assert "ghcr.io/acme/web:1.1" in text
    assert "Took " in text and "revision 1" in text and f"by <@{ALICE.id}>" in text
    assert "3/3 pods ready" in text
    assert button_ids(card) == {views.ACTION_ROLLBACK}
    # One message, updated in place as the deploy moved on: never backwards, never a second card.
    states = [_state(v) for v in fake_slack.message_versions(channel, ts)]
    assert len(states) >= 2 and states[-1] == "succeeded"
    order = ["queued", "running", "succeeded"]
    assert all(s in order for s in states), states
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states), states
    assert len([m for m in fake_slack.messages(CHANNEL) if m["ts"] != ts]) == 0
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == "ghcr.io/acme/web:1.1"

    # status asks the cluster after the ack and replaces the reply with what it saw.
    reply = await slack.command("status web", user=ALICE)
    assert "Running revision 1 `ghcr.io/acme/web:1.1`" in reply["text"]
    followed = await eventually(
        # Pods are counted per ReplicaSet (new and old apart), never added together.
        lambda: _found([r for r in fake_slack.responses() if "new pods, revision 1" in r.get("text", "")
                        and "3/3 ready" in r.get("text", "")
                        + json.dumps(r.get("blocks"))]),
        what="live status follow-up",
        timeout=ROLLOUT,
    )  # fmt: skip
    assert followed[-1]["replace_original"] is True


async def test_a_crashing_image_ends_failed_with_the_reason_in_the_thread(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack
) -> None:
    rt = kube_world.rt
    await add_app(
        rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", progress_deadline_seconds=10
    )
    d, channel, ts = await _deploy_and_wait(slack, rt, fake_slack, "deploy web fail-1", until="failed")
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None and row.status == "failed" and row.error
        reason = row.error
    card = fake_slack.message(channel, ts)
    assert views.esc(reason) in card_text(card)
    assert "CrashLoopBackOff" in reason or "ProgressDeadlineExceeded" in reason
    assert button_ids(card) == {views.ACTION_ROLLBACK}
    replies = await eventually(lambda: _found(fake_slack.thread(channel, ts)), what="thread reply")
    await asyncio.sleep(0.5)  # a wrong second reply would show up now
    replies = fake_slack.thread(channel, ts)
    assert len(replies) == 1
    assert f"Deploy #{d.id} of *web* failed" in card_text(replies[0])
    assert views.esc(reason) in card_text(replies[0])
    assert len(fake_slack.messages(CHANNEL, include_replies=False)) == 1


async def test_roll_back_from_the_card_restores_the_previous_revision_once(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0")
    await _deploy_and_wait(slack, rt, fake_slack, "deploy web 1.0", until="is live on")
    _, channel, ts = await _deploy_and_wait(slack, rt, fake_slack, "deploy web 1.1", until="is live on")
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == "ghcr.io/acme/web:1.1"

    # Bob double-clicks Roll back on the second deploy's card.
    clicks = await asyncio.gather(
        slack.click(views.ACTION_ROLLBACK, user=BOB, channel=channel, message_ts=ts),
        slack.click(views.ACTION_ROLLBACK, user=BOB, channel=channel, message_ts=ts),
    )
    assert [c.status_code for c in clicks] == [200, 200]
    rollback = await eventually(lambda: _rollbacks(rt), what="rollback requested")
    [rb] = rollback
    assert rb.revision_number == 3 and rb.image == "ghcr.io/acme/web:1.0" and rb.actor == BOB.subject
    rb_channel, rb_ts = await eventually(
        lambda: card_of(rt, fake_slack, rb.id), what="rollback card", timeout=ROLLOUT
    )
    await eventually(
        lambda: _card_says(fake_slack, rb_channel, rb_ts, "is rolled back to"),
        what="rolled back",
        timeout=ROLLOUT,
    )
    text = card_text(fake_slack.message(rb_channel, rb_ts))
    assert "ghcr.io/acme/web:1.0" in text
    assert "Auto-deploy is paused: rolled back to revision 1 by bob" in text
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == "ghcr.io/acme/web:1.0"
    answers = await eventually(
        lambda: _found(len(fake_slack.ephemerals(user=BOB.id)) >= 2 and fake_slack.ephemerals(user=BOB.id)),
        what="both clicks answered",
    )
    assert sum("already done" in a["text"] for a in answers) == 1
    async with rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None and app.auto_deploy_paused and app.image == "ghcr.io/acme/web:1.0"
    assert len(await _rollbacks(rt)) == 1


async def test_a_protected_app_waits_for_a_second_persons_approve(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    _, channel, ts = await _deploy_and_wait(
        slack, rt, fake_slack, "deploy web 2.0", until="waiting for approval"
    )
    assert button_ids(fake_slack.message(channel, ts)) == {views.ACTION_APPROVE, views.ACTION_REJECT}
    await slack.click(views.ACTION_APPROVE, user=ALICE, channel=channel, message_ts=ts)
    refused = await eventually(lambda: _found(fake_slack.ephemerals(user=ALICE.id)), what="refusal")
    assert "nobody approves their own deploy" in refused[-1]["text"]
    await asyncio.sleep(0.5)
    assert _state(fake_slack.message(channel, ts)) == "awaiting"  # still waiting, nothing ran

    await slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts)
    await eventually(
        lambda: _card_says(fake_slack, channel, ts, "is live on"), what="deployed", timeout=ROLLOUT
    )
    text = card_text(fake_slack.message(channel, ts))
    assert f"approved by <@{BOB.id}>" in text and f"by <@{ALICE.id}>" in text
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == "ghcr.io/acme/web:2.0"
    states = [_state(v) for v in fake_slack.message_versions(channel, ts)]
    assert states[0] == "awaiting" and states[-1] == "succeeded"


async def _found(value: Any) -> Any:
    return value


async def _rollbacks(rt: Any) -> list[models.Deployment]:
    return [d for d in await deployments(rt) if d.trigger == "rollback"]


async def test_a_failed_rollout_rolls_back_by_itself_and_its_card_says_so(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    await add_app(
        rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", progress_deadline_seconds=10
    )
    await _deploy_and_wait(slack, rt, fake_slack, "deploy web 1.0", until="is live on")
    failed, channel, ts = await _deploy_and_wait(slack, rt, fake_slack, "deploy web fail-1", until="failed")
    # The failed deploy's own card ends saying where the app went back to, once the rollback is live.
    await eventually(
        lambda: _card_says(fake_slack, channel, ts, "failed, rolled back to revision 1"),
        what="failed card says rolled back",
        timeout=ROLLOUT,
    )
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, failed.id)
        assert row is not None and row.rolled_back_by_id is not None
        rb = await session.get(models.Deployment, row.rolled_back_by_id)
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
    assert rb is not None and rb.trigger == "auto-rollback" and rb.status == "succeeded"
    assert app is not None and app.image == "ghcr.io/acme/web:1.0"
    # The rollback is an ordinary visible deploy with its own card.
    rb_channel, rb_ts = await eventually(lambda: card_of(rt, fake_slack, rb.id), what="rollback card")
    await eventually(
        lambda: _card_says(fake_slack, rb_channel, rb_ts, "is rolled back to `ghcr.io/acme/web:1.0`"),
        what="rollback card final",
        timeout=ROLLOUT,
    )
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == "ghcr.io/acme/web:1.0"
    # `status` keeps what runs and the failed attempt apart.
    reply = await slack.command("status web", user=ALICE)
    assert "Running revision 1 `ghcr.io/acme/web:1.0`" in reply["text"]
    assert f"Last attempt: deploy #{failed.id}" in reply["text"]
    assert "failed, rolled back to revision 1" in reply["text"]


async def test_status_of_an_autoscaled_app_shows_the_hpa_as_its_controller_sees_it(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack
) -> None:
    rt = kube_world.rt
    await add_app(
        rt,
        name="web",
        cluster=kube_world.cluster,
        image="ghcr.io/acme/web:1.0",
        min_replicas=2,
        max_replicas=4,
        cpu_target=80,
    )
    await _deploy_and_wait(slack, rt, fake_slack, "deploy web 1.1", until="is live on")

    # The HPA's status is written by the real controller at its syncs: asked again until the follow-up
    # has the pods' CPU, once metrics-server measured them (20m of the 100m default request: 20 %).
    async def autoscaler_lines() -> list[str]:
        await slack.command("status web", user=ALICE)
        await asyncio.sleep(1)
        texts = [r.get("text", "") for r in fake_slack.responses()]
        return [line for t in texts for line in t.splitlines() if "autoscaler:" in line]

    lines = await eventually(
        autoscaler_lines,
        lambda lines: any("CPU 20%" in x for x in lines),
        what="the HPA's CPU",
        timeout=ROLLOUT,
    )
    assert "• autoscaler: 2 pods, wants 2 (min 2, max 4); CPU 20% of requests (target 80%)" in lines, lines

    # A scale-down window set with `/shipit scale` reaches the HPA's behavior, and the status says it.
    await _deploy_and_wait(slack, rt, fake_slack, "scale web window=45", until="is live on", user=DAVE)
    lines = await eventually(
        autoscaler_lines,
        lambda lines: any("scales down after" in x for x in lines),
        what="the HPA's scale-down window",
        timeout=ROLLOUT,
    )
    windowed = [x for x in lines if "scales down after" in x]
    assert all(x.endswith("(target 80%); scales down after 45s") for x in windowed), windowed
