"""Retention: finished jobs, delivered events, recorded webhook deliveries, finished builds (with
their Slack card marks), one-off runs' history, usage samples and their hourly rollups are pruned
after an age; so are reservations a replica left for a retry that never came (core.shared.keep_held).

The audit log is not pruned here: it is kept, and exported with `shipit audit --format jsonl`.
Deletes go in batches, each in its own short transaction, so a first prune of a large backlog
never holds a long lock (SQLite: the one writer; PostgreSQL: the rows and the WAL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, Text, and_, cast, delete, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import builds, jobs, runs, shared
from storage import models

FINISHED = (jobs.DONE, jobs.FAILED, jobs.CANCELLED)
BUILDS_FINISHED = (builds.SUCCEEDED, builds.FAILED, builds.SUPERSEDED)
RUNS_FINISHED = (runs.SUCCEEDED, runs.FAILED, runs.CANCELLED)  # a "not created" run is failed


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Ages in seconds; None keeps those rows for ever."""

    jobs_seconds: float | None = 14 * 86400
    events_seconds: float | None = 30 * 86400
    deliveries_seconds: float | None = 30 * 86400
    builds_seconds: float | None = 90 * 86400
    builds_keep: int = 20  # per app, the newest finished builds are kept whatever their age
    runs_seconds: float | None = 90 * 86400
    runs_keep: int = 50  # per app, the newest runs are kept whatever their age or status
    usage_seconds: float | None = 14 * 86400
    usage_hourly_seconds: float | None = 90 * 86400
    batch: int = 500


@dataclass(frozen=True, kw_only=True)
class Pruned:
    jobs: int = 0
    events: int = 0
    deliveries: int = 0
    marks: int = 0  # `meta` rows of one-off deliveries (core.shared.event_mark) whose event is gone
    builds: int = 0
    build_marks: int = 0  # `meta` rows of the pruned builds' Slack cards (core.shared.build_card_mark)
    held: int = 0  # `meta` rows of reservations nobody came back for (core.shared.keep_held)
    runs: int = 0
    usage_samples: int = 0
    usage_hourly: int = 0


def _jobs_batch(cutoff: dt.datetime, batch: int) -> Any:
    return (
        select(models.Job.id)
        .where(models.Job.state.in_(FINISHED), models.Job.finished_at < cutoff)
        .order_by(models.Job.id)
        .limit(batch)
        # PostgreSQL: locked in id order, as every statement that locks several job rows takes them
        # (core.jobs._in_id_order), before the DELETE (a cancellation's ON CONFLICT locks finished rows).
        .with_for_update()
    )


def _events_batch(cutoff: dt.datetime, batch: int) -> Any:
    # Delivered: no notify job for the event is still queued or running (their dedupe key is
    # "notify:<notifier>:<event id>", see core.events.emit).
    pending = exists().where(
        models.Job.state.in_([jobs.QUEUED, jobs.RUNNING]),
        models.Job.kind == jobs.NOTIFY_KIND,
        models.Job.dedupe_key.like(literal("notify:%:") + cast(models.Event.id, String)),
    )
    return (
        select(models.Event.id)
        .where(models.Event.created_at < cutoff, ~pending)
        .order_by(models.Event.id)
        .limit(batch)
    )


def _deliveries_batch(cutoff: dt.datetime, batch: int) -> Any:
    return (
        select(models.WebhookDelivery.id)
        .where(models.WebhookDelivery.received_at < cutoff)
        .order_by(models.WebhookDelivery.id)
        .limit(batch)
    )


def _usage_batch(cutoff: dt.datetime, batch: int) -> Any:
    s = models.UsageSample
    return select(s.id).where(s.sampled_at < cutoff).order_by(s.id).limit(batch)


def _usage_hourly_batch(cutoff: dt.datetime, batch: int) -> Any:
    h = models.UsageHourly
    return select(h.id).where(h.hour < cutoff).order_by(h.id).limit(batch)


def _builds_batch(cutoff: dt.datetime, *, keep: int, batch: int) -> Any:
    b = models.Build
    newest_first = (
        select(b.id, func.row_number().over(partition_by=b.app_id, order_by=b.id.desc()).label("n"))
        .where(b.status.in_(BUILDS_FINISHED))
        .subquery()
    )
    # What the app runs now (a branch build deploys `image@digest`) and what an open preview waits
    # for or runs (its head's build) stay; older builds a preview ran are covered by `keep`.
    running = exists().where(models.App.id == b.app_id, models.App.image == b.image + "@" + b.digest)
    previewed = exists().where(
        models.Preview.app_id == b.app_id,
        models.Preview.closed_at.is_(None),
        models.Preview.head_sha == b.sha,
    )
    return (
        select(b.id)
        .join(newest_first, newest_first.c.id == b.id)
        .where(newest_first.c.n > keep, b.finished_at < cutoff, _no_waits(), ~running, ~previewed)
        .order_by(b.id)
        .limit(batch)
    )


def _runs_prunable(cutoff: dt.datetime, *, now: dt.datetime) -> Any:
    r = models.Run
    # A Job's activeDeadlineSeconds (the run's timeout, at most MAX_TIMEOUT_SECONDS) caps its life: a
    # row still `running` past that can no longer be running (it reads `unknown`), and may go too.
    ended = now - dt.timedelta(seconds=runs.MAX_TIMEOUT_SECONDS)
    return or_(
        and_(r.status.in_(RUNS_FINISHED), func.coalesce(r.finished_at, r.created_at) < cutoff),
        and_(r.status == runs.RUNNING, r.created_at < min(cutoff, ended)),
    )


def _runs_batch(cutoff: dt.datetime, *, now: dt.datetime, keep: int, batch: int) -> Any:
    r = models.Run
    # Unlike builds, running rows count towards `keep`: an app's newest `keep` rows are never touched.
    newest_first = select(
        r.id, func.row_number().over(partition_by=r.app_id, order_by=r.id.desc()).label("n")
    ).subquery()
    return (
        select(r.id)
        .join(newest_first, newest_first.c.id == r.id)
        .where(newest_first.c.n > keep, _runs_prunable(cutoff, now=now))
        .order_by(r.id)
        .limit(batch)
    )


async def _delete_runs(
    session: AsyncSession, ids: list[int], *, cutoff: dt.datetime, now: dt.datetime
) -> int:
    """The DELETE checks again what the SELECT saw: a run settled meanwhile (finished now) stays."""
    if not ids:
        return 0
    r = models.Run
    gone = await session.scalars(
        delete(r).where(r.id.in_(ids), _runs_prunable(cutoff, now=now)).returning(r.id)
    )
    return len(list(gone))


def _no_waits() -> Any:
    # No `.deploy to ENV` comment waits for it: JSON's null (models.Json) or an old row's SQL NULL.
    return func.coalesce(cast(models.Build.waiting, Text), "null") == "null"


async def _delete_builds(session: AsyncSession, ids: list[int]) -> tuple[int, int]:
    """Delete the builds and their Slack card marks; (builds, marks).  The DELETE checks again what
    the SELECT saw (PostgreSQL: under the row's lock), so a build retried meanwhile stays."""
    if not ids:
        return 0, 0
    b = models.Build
    gone = list(
        await session.scalars(
            delete(b).where(b.id.in_(ids), b.status.in_(BUILDS_FINISHED), _no_waits()).returning(b.id)
        )
    )
    if not gone:
        return 0, 0
    # A key range per build ("slack-build:<id>:" up to ";", the character after ":"): the primary key
    # index answers each, where a LIKE would not on SQLite.
    prefixes = [f"{shared.BUILD_CARD_PREFIX}{i}:" for i in gone]
    marks = await session.scalars(
        delete(models.Meta)
        .where(or_(*(and_(models.Meta.key >= p, models.Meta.key < p[:-1] + ";") for p in prefixes)))
        .returning(models.Meta.key)
    )
    return len(gone), len(list(marks))


async def _delete_batch(session: AsyncSession, table: Any, ids: list[Any]) -> int:
    if not ids:
        return 0
    await session.execute(delete(table).where(table.id.in_(ids)))
    return len(ids)


async def prune(
    sessionmaker: async_sessionmaker[AsyncSession], *, policy: Policy, now: dt.datetime | None = None
) -> Pruned:
    """Delete what is older than the policy allows, batch by batch; returns how many rows went."""
    now = now or models.utcnow()
    counts = {"jobs": 0, "events": 0, "deliveries": 0, "usage_samples": 0, "usage_hourly": 0}
    plan = (
        ("jobs", models.Job, policy.jobs_seconds, _jobs_batch),
        ("events", models.Event, policy.events_seconds, _events_batch),
        ("deliveries", models.WebhookDelivery, policy.deliveries_seconds, _deliveries_batch),
        ("usage_samples", models.UsageSample, policy.usage_seconds, _usage_batch),
        ("usage_hourly", models.UsageHourly, policy.usage_hourly_seconds, _usage_hourly_batch),
    )
    for name, table, seconds, batch_of in plan:
        if seconds is None:
            continue
        cutoff = now - dt.timedelta(seconds=seconds)
        while True:
            async with sessionmaker.begin() as session:
                ids = list(await session.scalars(batch_of(cutoff, policy.batch)))
                n = await _delete_batch(session, table, ids)
            counts[name] += n
            if n < policy.batch:
                break
    built = await _prune_builds(sessionmaker, policy=policy, now=now)
    return Pruned(
        **counts,
        marks=await _prune_marks(sessionmaker),
        held=await _prune_held(sessionmaker, now=now),
        builds=built[0],
        build_marks=built[1],
        runs=await _prune_runs(sessionmaker, policy=policy, now=now),
    )


async def _prune_builds(
    sessionmaker: async_sessionmaker[AsyncSession], *, policy: Policy, now: dt.datetime
) -> tuple[int, int]:
    """Finished builds older than the policy's age, beyond each app's newest `builds_keep`: (builds,
    marks) deleted, a batch per transaction (two statements, three with the SELECT)."""
    if policy.builds_seconds is None:
        return 0, 0
    cutoff = now - dt.timedelta(seconds=policy.builds_seconds)
    total = marks = 0
    while True:
        async with sessionmaker.begin() as session:
            batch = _builds_batch(cutoff, keep=policy.builds_keep, batch=policy.batch)
            ids = list(await session.scalars(batch))
            n, m = await _delete_builds(session, ids)
        total, marks = total + n, marks + m
        if len(ids) < policy.batch:
            return total, marks


async def _prune_runs(
    sessionmaker: async_sessionmaker[AsyncSession], *, policy: Policy, now: dt.datetime
) -> int:
    """Runs older than the policy's age, beyond each app's newest `runs_keep`: how many were deleted,
    a batch per transaction (the SELECT and the DELETE)."""
    if policy.runs_seconds is None:
        return 0
    cutoff = now - dt.timedelta(seconds=policy.runs_seconds)
    total = 0
    while True:
        async with sessionmaker.begin() as session:
            batch = _runs_batch(cutoff, now=now, keep=policy.runs_keep, batch=policy.batch)
            ids = list(await session.scalars(batch))
            total += await _delete_runs(session, ids, cutoff=cutoff, now=now)
        if len(ids) < policy.batch:
            return total


async def _prune_marks(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Drop the marks of events no longer kept: no job can deliver those events again (jobs are
    pruned sooner than events).  One row per failed build's Slack message, so one pass reads them all."""
    async with sessionmaker.begin() as session:
        keys = list(
            await session.scalars(
                select(models.Meta.key).where(models.Meta.key.like(shared.MARK_PREFIX + "%"))
            )
        )
        of = {k: shared.event_of_mark(k) for k in keys}
        ids = {i for i in of.values() if i is not None}
        kept = (
            set(await session.scalars(select(models.Event.id).where(models.Event.id.in_(ids))))
            if ids
            else set()
        )
        gone = [k for k, i in of.items() if i is not None and i not in kept]
        if gone:
            await session.execute(delete(models.Meta).where(models.Meta.key.in_(gone)))
    return len(gone)


async def _prune_held(sessionmaker: async_sessionmaker[AsyncSession], *, now: dt.datetime) -> int:
    """Drop reservations more than `shared.HELD_FOR` past their time: the retry they were kept for
    (a paced Slack write) did not come back for them.  A few rows at most, read in one pass."""
    stale = now.timestamp() - shared.HELD_FOR
    async with sessionmaker.begin() as session:
        rows = await session.execute(
            select(models.Meta.key, models.Meta.value).where(models.Meta.key.like(shared.HELD_PREFIX + "%"))
        )
        gone = [key for key, value in rows if shared.held_at(value) < stale]
        if gone:
            await session.execute(delete(models.Meta).where(models.Meta.key.in_(gone)))
    return len(gone)
