"""State replicas must agree on lives in the database: pacing slots, cross-replica locks, posted-card refs."""

from __future__ import annotations

import asyncio

import pytest

from bot import notifier
from core import environments, shared
from core.errors import TransientError
from shipit.runtime import Runtime
from storage import db, models

pytestmark = pytest.mark.both_databases


async def test_two_replicas_share_one_slack_pacing_bucket(rt: Runtime) -> None:
    # Two processes' pacers (each its own sessionmaker) on one database: one slot per 10 s, burst 1.
    other = db.create_sessionmaker(rt.engine)
    a = notifier.SharedPacer(sessionmaker=rt.sessionmaker, rate=0.1, burst=1, max_wait=1.0)
    b = notifier.SharedPacer(sessionmaker=other, rate=0.1, burst=1, max_wait=1.0)
    await a.wait("C1")  # the free slot
    with pytest.raises(TransientError) as e:
        await b.wait("C1")  # the other replica knows the slot is taken
    assert e.value.retry_after is not None and e.value.retry_after > 5
    await b.wait("C2")  # another channel has its own bucket
    # A 429 seen by one replica holds back the other.
    await a.backoff_shared("C2", 60)
    with pytest.raises(TransientError):
        await b.wait("C2")
    # In-process pacers (no database) would not have known.
    await notifier.Pacer(rate=0.1, burst=1).wait("C1")


async def test_advance_is_atomic_across_sessionmakers(rt: Runtime) -> None:
    makers = [rt.sessionmaker, db.create_sessionmaker(rt.engine)]

    async def bump(i: int) -> float:
        return await shared.advance(makers[i % 2], key="counter", fn=lambda n: (n + 1, n))

    seen = await asyncio.gather(*(bump(i) for i in range(20)))
    assert sorted(seen) == [float(i) for i in range(20)]  # no two read the same value
    assert await shared.read(rt.sessionmaker, key="counter") == 20.0


async def test_hold_excludes_across_engines(rt: Runtime) -> None:
    # A second engine on the same database stands for another replica (PostgreSQL: an advisory lock).
    engine = db.create_engine(str(rt.engine.url.render_as_string(hide_password=False)))
    makers = [rt.sessionmaker, db.create_sessionmaker(engine)]
    inside, most = 0, 0

    async def work(i: int) -> None:
        nonlocal inside, most
        async with shared.hold(makers[i % 2], name="github-comment:acme/web#1"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    try:
        await asyncio.gather(*(work(i) for i in range(8)))
    finally:
        await engine.dispose()
    assert most == 1


async def test_save_refs_merges_into_the_deploy_at_once(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        project = models.Project(name="acme")
        cluster = models.Cluster(name="c", kubeconfig_enc=b"x")
        session.add_all([project, cluster])
        await session.flush()
        env = await environments.add(session, project_id=project.id, name=environments.DEFAULT)
        app = models.App(
            name="web", project_id=project.id, environment_id=env.id, cluster_id=cluster.id, namespace="n"
        )
        session.add(app)
        await session.flush()
        d = models.Deployment(
            app_id=app.id, revision_number=1, image="i", namespace="n", trigger="api", actor="a",
            status="running", notify_refs={"webhook": {"x": 1}},
        )  # fmt: skip
        session.add(d)
    await shared.save_refs(
        rt.sessionmaker, deployment_id=d.id, notifier="slack", refs={"channel": "C", "ts": "1.2"}
    )
    await shared.save_refs(
        rt.sessionmaker, deployment_id=d.id, notifier="slack", refs={"failure_posted": True}
    )
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None and row.notify_refs == {
            "webhook": {"x": 1},
            "slack": {"channel": "C", "ts": "1.2", "failure_posted": True},
        }
