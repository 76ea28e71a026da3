"""Retention: old finished jobs, delivered events and webhook delivery records go; the rest stays."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from core import audit, deliveries, jobs, retention, shared
from core.identity import SYSTEM
from shipit.runtime import Runtime
from storage import models

pytestmark = pytest.mark.both_databases

OLD = dt.timedelta(days=40)


async def test_prune_removes_only_old_finished_rows_in_batches(rt: Runtime) -> None:
    now = models.utcnow()
    async with rt.sessionmaker.begin() as session:
        old_done = [await jobs.enqueue(session, kind="k", payload={}) for _ in range(5)]
        old_queued = await jobs.enqueue(session, kind="k", payload={})
        new_done = await jobs.enqueue(session, kind="k", payload={})
        delivered = models.Event(kind="deploy.x", dedupe_key="e1", payload={})
        pending = models.Event(kind="deploy.x", dedupe_key="e2", payload={})
        fresh = models.Event(kind="deploy.x", dedupe_key="e3", payload={})
        session.add_all([delivered, pending, fresh])
        await session.flush()
        notify = await jobs.enqueue(
            session, kind=jobs.NOTIFY_KIND, payload={}, dedupe_key=f"notify:slack:{pending.id}"
        )
        await deliveries.record(session, source="github", kinds={"old-1": "push", "new-1": "push"})
        await audit.record(session, actor=SYSTEM, action="deploy.request", target="app/web")
    # One-off deliveries' marks left by the previous release (a failed build's Slack message): they
    # go with their event.
    async with rt.sessionmaker.begin() as session:
        session.add_all(
            [
                models.Meta(key=shared.event_mark(event_id=event.id, what="slack-build:slack"), value=b"1")
                for event in (delivered, pending)
            ]
        )
        session.add(models.Meta(key="done:elsewhere", value=b"not a mark"))
    async with rt.sessionmaker.begin() as session:
        for j in [*old_done, new_done]:
            await session.execute(
                update(models.Job).where(models.Job.id == j.id).values(state=jobs.DONE, finished_at=now)
            )
        await session.execute(
            update(models.Job)
            .where(models.Job.id.in_([j.id for j in old_done]))
            .values(finished_at=now - OLD)
        )
        await session.execute(
            update(models.Event)
            .where(models.Event.id.in_([delivered.id, pending.id]))
            .values(created_at=now - OLD)
        )
        await session.execute(
            update(models.WebhookDelivery)
            .where(models.WebhookDelivery.id.endswith("old-1"))
            .values(received_at=now - OLD)
        )
        await session.execute(update(models.AuditEvent).values(at=now - OLD * 10))

    policy = retention.Policy(
        jobs_seconds=14 * 86400, events_seconds=30 * 86400, deliveries_seconds=30 * 86400, batch=2
    )
    pruned = await retention.prune(rt.sessionmaker, policy=policy)
    assert (pruned.jobs, pruned.events, pruned.deliveries, pruned.marks) == (5, 1, 1, 1)

    async with rt.sessionmaker() as session:
        job_ids = set(await session.scalars(select(models.Job.id)))
        assert job_ids == {old_queued.id, new_done.id, notify.id}
        event_keys = set(await session.scalars(select(models.Event.dedupe_key)))
        assert event_keys == {"e2", "e3"}  # e2 still has a notify job waiting
        delivery_ids = [d for d in await session.scalars(select(models.WebhookDelivery.id))]
        assert len(delivery_ids) == 1 and delivery_ids[0].endswith("new-1")
        assert len(list(await session.scalars(select(models.AuditEvent)))) == 1  # the audit log is kept
        marks = set(await session.scalars(select(models.Meta.key).where(models.Meta.key.like("done:e%"))))
        assert marks == {f"done:e{pending.id}:slack-build:slack", "done:elsewhere"}

    # Nothing older is left: a second pass deletes nothing; "keep for ever" deletes nothing either.
    assert await retention.prune(rt.sessionmaker, policy=policy) == retention.Pruned()
    keep = retention.Policy(jobs_seconds=None, events_seconds=None, deliveries_seconds=None)
    assert await retention.prune(rt.sessionmaker, policy=keep, now=now + OLD * 10) == retention.Pruned()
