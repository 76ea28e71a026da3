"""A burst of deploys: their cards drain at the channel's pace with one slot per Slack write.

Several notices of one deploy (queued, started, then more) are queued while the channel is paced.
The first to run holds a slot for the card; the others of the same card do not reserve slots of their
own, which they would find wasted when they came back (the card already drawn, nothing to send),
delaying every other card behind them.  Real parts: the notify jobs come from core's outbox and run in
the real job queue against the real database (the shared pacer on PostgreSQL); Slack is the fake over
HTTP.  The pacer is the notifier's own, with what it reserves and uses written down.

With replicas (PostgreSQL), a notice's retry or the next notice of a card may be taken by another
replica: it writes in the slot reserved for it, and knows what the card shows already.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select

from bot import notifier as notifier_mod
from core import environments, events, jobs, shared, worker
from shipit.runtime import Runtime
from storage import db, models
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.both_databases

CHANNEL = "C0BURST01"
DEPLOYS = 6
# 20 writes a second, one at a time; no write waits in a worker slot for more than 50 ms.
PACE: dict[str, Any] = {"rate": 20.0, "burst": 1, "max_wait": 0.05}


def _recording(base: type[notifier_mod.Pacer]) -> type[notifier_mod.Pacer]:
    class Recording(base):  # type: ignore[valid-type,misc]
        """The pacer, writing down the keys it reserved a slot for and the keys it let write."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.reserved: set[Hashable] = set()
            self.used: list[Hashable] = []

        def _hold(self, channel: str, key: Hashable, slot: float, now: float) -> None:
            self.reserved.add(key)
            super()._hold(channel, key, slot, now)

        async def wait(self, channel: str, *, key: Hashable | None = None) -> None:
            await super().wait(channel, key=key)
            self.used.append(key)

    return Recording


def _notifier(rt: Runtime, fake: FakeSlack) -> notifier_mod.SlackNotifier:
    """The notifier as `shipit serve` makes it (the shared pacer on PostgreSQL), paced at 20 writes a
    second, one at a time, and no write waits in a worker slot for more than 50 ms."""
    if rt.engine.dialect.name == "postgresql":
        pacer = _recording(notifier_mod.SharedPacer)(sessionmaker=rt.sessionmaker, **PACE)
    else:
        pacer = _recording(notifier_mod.Pacer)(**PACE)
    slack = notifier_mod.SlackNotifier(
        client=AsyncWebClient(base_url=fake.url, token=fake.bot_token),
        sessionmaker=rt.sessionmaker,
        pacer=pacer,
    )
    rt.core.notifiers["slack"] = slack
    return slack


def _replica(
    rt: Runtime, fake: FakeSlack, pacer: Callable[[Any], notifier_mod.Pacer]
) -> notifier_mod.SlackNotifier:
    """One replica's notifier: its own sessions (with the pacer made on them) and nothing in memory
    about another replica's work."""
    sessions = db.create_sessionmaker(rt.engine)
    return notifier_mod.SlackNotifier(
        client=AsyncWebClient(base_url=fake.url, token=fake.bot_token),
        sessionmaker=sessions,
        pacer=pacer(sessions),
    )


def _paced_replica(rt: Runtime, fake: FakeSlack) -> notifier_mod.SlackNotifier:
    """A replica paced as `_notifier` paces, with the shared pacer's reservations written down."""
    return _replica(rt, fake, lambda s: _recording(notifier_mod.SharedPacer)(sessionmaker=s, **PACE))


async def _seed(rt: Runtime, *, deploys: int) -> list[int]:
    async with rt.sessionmaker.begin() as session:
        session.add_all(
            [
                models.Project(id=1, name="acme", slack_channel=CHANNEL),
                models.Cluster(id=1, name="c", kubeconfig_enc=b"x"),
            ]
        )
        await session.flush()
        env = await environments.add(session, project_id=1, name=environments.DEFAULT)
        session.add(models.NotificationTarget(project_id=1, kind="slack", address=CHANNEL, created_by="test"))
        rows = []
        for i in range(deploys):
            session.add(
                models.App(
                    id=i + 1, name=f"web{i}", project_id=1, environment_id=env.id, cluster_id=1, namespace="n"
                )
            )
            d = models.Deployment(app_id=i + 1, revision_number=1, image=f"ghcr.io/acme/web{i}:1", namespace="n",
                                  trigger="api", actor="user:a", status="queued")  # fmt: skip
            session.add(d)
            rows.append(d)
        await session.flush()
        return [d.id for d in rows]


async def _events(rt: Runtime, ids: list[int], *steps: tuple[str, str, str]) -> None:
    """For each deploy, its status moved on and the events (kind, step) emitted, one after the other."""
    async with rt.sessionmaker.begin() as session:
        for deployment_id in ids:
            d = await session.get(models.Deployment, deployment_id)
            assert d is not None
            for kind, step, status in steps:
                d.status = status
                await events.emit_for_deployment(
                    session, ctx=rt.core, kind=kind, deployment=d, project_id=1, step=step
                )


async def _drain(rt: Runtime) -> None:
    """Run the queue until no job is left: paced jobs are waited for until they are due."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        await worker.run_until_idle(rt.core, handlers=rt.handlers(), within=60)
        async with rt.sessionmaker() as session:
            due = await session.scalar(
                select(func.min(models.Job.run_at)).where(models.Job.state == jobs.QUEUED)
            )
        if due is None:
            return
        await asyncio.sleep(max(0.0, (due - models.utcnow()).total_seconds()) + 0.01)
    raise TimeoutError("the notify jobs did not drain")


async def _failed_jobs(rt: Runtime) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).where(models.Job.state == jobs.FAILED)) or 0)


def _cards(fake: FakeSlack) -> dict[int, dict[str, Any]]:
    """The channel's cards by deploy (from the metadata each carries)."""
    out: dict[int, dict[str, Any]] = {}
    for m in fake.messages(CHANNEL, include_replies=False):
        deployment_id = int(m["metadata"]["event_payload"]["deployment_id"])
        assert deployment_id not in out, f"two cards for deploy {deployment_id}"
        out[deployment_id] = m
    return out


def _writes(fake: FakeSlack) -> int:
    return len(fake.calls("chat.postMessage")) + len(fake.calls("chat.update"))


async def test_a_burst_of_notices_takes_one_slot_per_slack_write(rt: Runtime, fake_slack: FakeSlack) -> None:
    ids = await _seed(rt, deploys=DEPLOYS)
    slack = _notifier(rt, fake_slack)
    pacer = slack.pacer
    assert isinstance(pacer, notifier_mod.Pacer)

    # The burst: each deploy queued and started at once, while the channel is busy for a second, so
    # every notice's first run is paced.  Each card is posted once, showing the deploy running.
    await pacer.backoff_shared(CHANNEL, 1.0)
    await _events(
        rt, ids, (events.DEPLOY_QUEUED, "requested", "queued"), (events.DEPLOY_STARTED, "started", "running")
    )
    await _drain(rt)
    cards = _cards(fake_slack)
    assert sorted(cards) == sorted(ids)
    assert all("rolling out" in str(m["blocks"]) for m in cards.values())
    assert len(fake_slack.calls("chat.postMessage")) == DEPLOYS and not fake_slack.calls("chat.update")

    # Then each finishes, with a second notice of it queued behind (its progress): one update per card.
    await pacer.backoff_shared(CHANNEL, 1.0)
    await _events(
        rt,
        ids,
        (events.DEPLOY_SUCCEEDED, "succeeded", "succeeded"),
        (events.DEPLOY_PROGRESS, "progress", "succeeded"),
    )
    await _drain(rt)
    assert await _failed_jobs(rt) == 0
    final = _cards(fake_slack)
    assert {d: m["ts"] for d, m in final.items()} == {d: m["ts"] for d, m in cards.items()}
    assert all("rolling out" not in str(m["blocks"]) for m in final.values())
    assert len(fake_slack.calls("chat.update")) == DEPLOYS
    # No slot went to a notice that then sent nothing: every slot reserved was written in, and there
    # were as many writes through the pacer as Slack saw (posts plus real updates).
    used = getattr(pacer, "used")  # noqa: B009 - the recording pacer's own list
    reserved = getattr(pacer, "reserved")  # noqa: B009
    assert reserved, "the burst was not paced: the test would show nothing"
    assert reserved <= set(used), f"{len(reserved - set(used))} slots reserved and left unused"
    assert len(used) == _writes(fake_slack) == 2 * DEPLOYS


async def test_when_the_card_holders_post_fails_the_waiting_notice_posts_it(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    [deployment_id] = await _seed(rt, deploys=1)
    slack = _notifier(rt, fake_slack)
    await slack.pacer.backoff_shared(CHANNEL, 1.0)
    await _events(
        rt,
        [deployment_id],
        (events.DEPLOY_QUEUED, "requested", "queued"),
        (events.DEPLOY_STARTED, "started", "running"),
    )
    # The first notice holds the card's slot; when it comes back, Slack fails its post once.
    fake_slack.server_error("chat.postMessage")
    await _drain(rt)
    assert await _failed_jobs(rt) == 0
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    assert "rolling out" in str(card["blocks"])
    # Both delivered (one card), and the notice that posted after the failed post looked first: Slack
    # may have taken the failed one.
    assert len(fake_slack.calls("chat.postMessage")) == 2  # the failed one, then the card
    assert fake_slack.calls("conversations.history")


async def test_paced_cards_retried_on_another_replica_write_in_the_slots_reserved_for_them(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    ids = await _seed(rt, deploys=DEPLOYS)

    # Replica A runs the burst's first pass: every card's write is paced, its slot reserved.
    a = rt.core.notifiers["slack"] = _paced_replica(rt, fake_slack)
    await a.pacer.backoff_shared(CHANNEL, 1.0)
    await _events(
        rt, ids, (events.DEPLOY_QUEUED, "requested", "queued"), (events.DEPLOY_STARTED, "started", "running")
    )
    await worker.run_until_idle(rt.core, handlers=rt.handlers(), within=60)
    reserved = getattr(a.pacer, "reserved")  # noqa: B009 - the recording pacer's own set
    assert len(reserved) == DEPLOYS and not fake_slack.calls("chat.postMessage")
    pace_key = notifier_mod.SharedPacer._key(CHANNEL)
    after_a = await shared.read(rt.sessionmaker, key=pace_key)

    # A is gone; replica B claims the retries: each writes in the slot A reserved for it, none more.
    b = rt.core.notifiers["slack"] = _paced_replica(rt, fake_slack)
    await _drain(rt)
    assert await _failed_jobs(rt) == 0
    assert sorted(_cards(fake_slack)) == sorted(ids)
    assert _writes(fake_slack) == DEPLOYS
    assert sorted(getattr(b.pacer, "used")) == sorted(reserved)  # noqa: B009 - A's keys, each once
    assert not getattr(b.pacer, "reserved"), "replica B reserved slots of its own"  # noqa: B009
    assert await shared.read(rt.sessionmaker, key=pace_key) == after_a


async def test_a_notice_on_another_replica_leaves_a_card_that_already_shows_the_deploy_alone(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    [deployment_id] = await _seed(rt, deploys=1)

    def replica() -> notifier_mod.SlackNotifier:
        return _replica(rt, fake_slack, lambda s: notifier_mod.Pacer(rate=1000.0, burst=100))

    # Replica A posts the card: the deploy running.
    rt.core.notifiers["slack"] = replica()
    await _events(rt, [deployment_id], (events.DEPLOY_STARTED, "started", "running"))
    await _drain(rt)
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        [refs] = (d.notify_refs or {}).values()
    replicas = rt.engine.dialect.name == "postgresql"
    # Only where replicas share the database is what the card shows recorded with it.
    assert ("shown" in refs) is replicas

    # Replica B takes a notice that changes nothing on the card (the rollout's progress, still
    # running): it knows what A drew, so on PostgreSQL it sends nothing.
    rt.core.notifiers["slack"] = replica()
    await _events(rt, [deployment_id], (events.DEPLOY_PROGRESS, "progress", "running"))
    await _drain(rt)
    if replicas:
        assert not fake_slack.calls("chat.update")

    # A change is drawn, once, wherever it is taken.
    rt.core.notifiers["slack"] = replica()
    updates = len(fake_slack.calls("chat.update"))
    await _events(rt, [deployment_id], (events.DEPLOY_SUCCEEDED, "succeeded", "succeeded"))
    await _drain(rt)
    assert len(fake_slack.calls("chat.update")) == updates + 1
    [final] = fake_slack.messages(CHANNEL, include_replies=False)
    assert final["ts"] == card["ts"] and "rolling out" not in str(final["blocks"])
    assert await _failed_jobs(rt) == 0


async def test_a_notice_on_another_replica_waits_for_the_cards_paced_write_instead_of_reserving(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    ids = await _seed(rt, deploys=DEPLOYS)

    # Replica A takes each deploy's first notice while the channel is busy: each card's post is
    # paced, its slot reserved; the card's turn is A's notice's.
    a = rt.core.notifiers["slack"] = _paced_replica(rt, fake_slack)
    await a.pacer.backoff_shared(CHANNEL, 1.0)
    await _events(rt, ids, (events.DEPLOY_QUEUED, "requested", "queued"))
    await worker.run_until_idle(rt.core, handlers=rt.handlers(), within=60)
    assert len(getattr(a.pacer, "reserved")) == DEPLOYS  # noqa: B009 - the recording pacer's own set

    # Replica B takes the next notice of each card before that post is made.  Where replicas share
    # the database (PostgreSQL) it waits for A's notice's write instead of reserving a slot of its own.
    b = rt.core.notifiers["slack"] = _paced_replica(rt, fake_slack)
    await _events(rt, ids, (events.DEPLOY_STARTED, "started", "running"))
    await _drain(rt)
    assert await _failed_jobs(rt) == 0
    cards = _cards(fake_slack)
    assert sorted(cards) == sorted(ids)
    assert all("rolling out" in str(m["blocks"]) for m in cards.values())
    if rt.engine.dialect.name == "postgresql":
        assert not getattr(b.pacer, "reserved"), "replica B reserved slots of its own"  # noqa: B009
        assert _writes(fake_slack) == DEPLOYS
        async with rt.sessionmaker() as session:
            left = await session.scalars(
                select(models.Meta.key).where(models.Meta.key.like(shared.HELD_PREFIX + "%"))
            )
            assert list(left) == []  # every reservation taken, every turn over


async def test_a_failed_post_on_one_replica_makes_the_next_notice_on_another_look_before_posting(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    [deployment_id] = await _seed(rt, deploys=1)

    def replica() -> notifier_mod.SlackNotifier:
        return _replica(
            rt, fake_slack, lambda s: notifier_mod.SharedPacer(sessionmaker=s, rate=1000.0, burst=100)
        )

    # Replica A's post of the card fails (Slack may have taken it all the same).
    rt.core.notifiers["slack"] = replica()
    fake_slack.server_error("chat.postMessage")
    await _events(rt, [deployment_id], (events.DEPLOY_QUEUED, "requested", "queued"))
    await worker.run_until_idle(rt.core, handlers=rt.handlers(), within=60)
    assert len(fake_slack.calls("chat.postMessage")) == 1 and not fake_slack.messages(CHANNEL)

    # Replica B takes the card's next notice first: on PostgreSQL it knows of A's failed post and
    # looks in the channel before posting, as a retry does.
    rt.core.notifiers["slack"] = replica()
    await _events(rt, [deployment_id], (events.DEPLOY_STARTED, "started", "running"))
    await _drain(rt)
    assert await _failed_jobs(rt) == 0
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    assert "rolling out" in str(card["blocks"])
    if rt.engine.dialect.name == "postgresql":
        looked = fake_slack.calls("conversations.history")
        first_post = fake_slack.calls("chat.postMessage")[1]
        assert looked and looked[0].at < first_post.at, "B posted without looking for A's post"
