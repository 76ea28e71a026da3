"""A card posted by one replica is known to every replica: recorded in the database as soon as it is posted;
and a paced write's reserved slot too, for the retry that may come back on another replica."""

from __future__ import annotations

import asyncio
import time

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from bot import notifier as notifier_mod
from core import environments, errors, events, retention, shared
from core.notices import target_view
from core.notices import targets as notice_targets
from shipit.runtime import Runtime
from storage import db, models
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.both_databases

CHANNEL = "C0CARDS01"


async def _notice(rt: Runtime, deployment_id: int, kind: str) -> events.Notice:
    async with rt.sessionmaker.begin() as session:
        event = models.Event(kind=kind, dedupe_key=f"{kind}:{deployment_id}", deployment_id=deployment_id,
                             project_id=1, app_id=1)  # fmt: skip
        session.add(event)
        await session.flush()
        # The project's channel is a notification target (core/notices), as projects.create makes it.
        [row] = await notice_targets.of_project(session, project_id=1)
        return await events.build_notice(session, event=event, target=target_view(row))


async def test_a_retry_on_another_replica_updates_the_card_instead_of_posting_another(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    async with rt.sessionmaker.begin() as session:
        project = models.Project(id=1, name="acme", slack_channel=CHANNEL)
        cluster = models.Cluster(id=1, name="c", kubeconfig_enc=b"x")
        session.add_all([project, cluster])
        await session.flush()
        env = await environments.add(session, project_id=1, name=environments.DEFAULT)
        session.add(
            models.App(id=1, name="web", project_id=1, environment_id=env.id, cluster_id=1, namespace="n")
        )
        session.add(models.NotificationTarget(project_id=1, kind="slack", address=CHANNEL, created_by="test"))
        await session.flush()
        d = models.Deployment(app_id=1, revision_number=1, image="ghcr.io/acme/web:1", namespace="n",
                              trigger="api", actor="user:a", status="queued")  # fmt: skip
        session.add(d)
    client = AsyncWebClient(base_url=fake_slack.url, token=fake_slack.bot_token)

    def replica() -> notifier_mod.SlackNotifier:
        # Each replica has its own sessionmaker and nothing in memory about the other's posts.
        return notifier_mod.SlackNotifier(
            client=client,
            sessionmaker=db.create_sessionmaker(rt.engine),
            pacer=notifier_mod.Pacer(rate=1000.0, burst=100),
        )

    # Replica A posts the card, then dies before its notify job records what deliver returned.
    delivered = await replica().deliver(await _notice(rt, d.id, "deploy.queued"))
    # The card is on the deploy already, recorded when posted: deliver leaves nothing for the job to write.
    assert delivered is None
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        [refs] = (row.notify_refs or {}).values()
    ts = refs["ts"]
    assert [m["ts"] for m in fake_slack.messages(CHANNEL, include_replies=False)] == [ts]

    # Replica B takes the next event for the deploy: it finds the card and updates it.
    async with rt.sessionmaker.begin() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        row.status = "running"
    await replica().deliver(await _notice(rt, d.id, "deploy.started"))
    cards = [m for m in fake_slack.messages(CHANNEL, include_replies=False)]
    assert len(cards) == 1 and cards[0]["ts"] == ts
    assert len(fake_slack.message_versions(CHANNEL, ts)) >= 2  # updated in place


async def test_a_paced_write_retried_on_another_replica_takes_the_slot_reserved_for_it(rt: Runtime) -> None:
    # The pacer every replica makes on PostgreSQL (its state in the database; on SQLite too, here).
    # Ten writes a second, one at a time; a write more than 50 ms away goes back to the queue.
    def replica() -> notifier_mod.SharedPacer:
        return notifier_mod.SharedPacer(
            sessionmaker=db.create_sessionmaker(rt.engine), rate=10.0, burst=1, max_wait=0.05
        )

    a, b = replica(), replica()
    pace_key = notifier_mod.SharedPacer._key(CHANNEL)
    await a.wait(CHANNEL, key=(1, "card"))  # the channel's first write goes at once
    with pytest.raises(errors.Paced) as paced:
        await a.wait(CHANNEL, key=(2, "card"))  # the next one's slot is 100 ms away: reserved, retried
    assert paced.value.retry_after is not None and paced.value.retry_after > 0.05
    next_free = await shared.read(rt.sessionmaker, key=pace_key)

    # The retry is claimed by replica B when its slot comes: it writes in that slot and takes none.
    await asyncio.sleep(paced.value.retry_after)
    await b.wait(CHANNEL, key=(2, "card"))
    assert await shared.read(rt.sessionmaker, key=pace_key) == next_free
    async with rt.sessionmaker() as session:
        held = await session.scalars(
            select(models.Meta.key).where(models.Meta.key.like(shared.HELD_PREFIX + "%"))
        )
        assert list(held) == []  # taken once: nothing left for a second taker

    # Another card's write on either replica takes the next free slot, after the one just used.
    with pytest.raises(errors.Paced):
        await b.wait(CHANNEL, key=(3, "card"))
    after = await shared.read(rt.sessionmaker, key=pace_key)
    assert next_free is not None and after == pytest.approx(next_free + 0.1)


async def test_a_reservation_nobody_came_back_for_is_pruned(rt: Runtime) -> None:
    now = time.time()
    await shared.keep_held(rt.sessionmaker, key=shared.held_key("gone"), at=now - shared.HELD_FOR - 1)
    await shared.keep_held(rt.sessionmaker, key=shared.held_key("due soon"), at=now + 5)
    pruned = await retention.prune(rt.sessionmaker, policy=retention.Policy())
    assert pruned.held == 1
    assert await shared.take_held(rt.sessionmaker, key=shared.held_key("gone")) is None
    assert await shared.take_held(rt.sessionmaker, key=shared.held_key("due soon")) == pytest.approx(now + 5)
