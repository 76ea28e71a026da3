"""One job registry: every replica registers every kind, claims only what it can run, and wakes only itself."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from core import deploys, events, jobs, previews
from core.worker import Handler, Worker
from shipit import runtime
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import db, models

pytestmark = pytest.mark.both_databases


def test_every_kind_is_registered_without_any_channel(settings: Settings) -> None:
    # A replica with neither Slack nor GitHub settings still runs preview teardowns.
    assert settings.github_webhook_secret is None
    kinds = set(runtime.job_handlers())
    assert {deploys.DEPLOY_JOB, events.NOTIFY_JOB, previews.TEARDOWN_JOB} <= kinds


async def test_runtime_without_github_has_the_teardown_handler(rt: Runtime) -> None:
    create_app(rt=rt)  # the channels wire themselves into the runtime; GitHub stays off
    assert previews.TEARDOWN_JOB in rt.handlers()


async def _claim(rt: Runtime, **filters: object) -> jobs.JobView | None:
    async with rt.sessionmaker.begin() as session:
        return await jobs.claim(
            session,
            owner="w",
            lease_seconds=30,
            skip_locked=db.is_postgres(str(rt.engine.url)),
            **filters,  # type: ignore[arg-type]
        )


async def test_claim_leaves_kinds_it_cannot_run(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        other = await jobs.enqueue(session, kind="elsewhere", payload={})
        mine = await jobs.enqueue(session, kind="here", payload={})
    got = await _claim(rt, kinds={"here"})
    assert got is not None and got.id == mine.id
    assert await _claim(rt, kinds={"here"}) is None
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, other.id)
        assert row is not None and row.state == jobs.QUEUED  # left for a replica that can run it


async def test_notify_jobs_are_claimed_only_by_a_replica_with_that_notifier(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        slack = await jobs.enqueue(
            session, kind=jobs.NOTIFY_KIND, payload={"notifier": "slack"}, concurrency_key="notify:slack:d1"
        )
        hook = await jobs.enqueue(
            session,
            kind=jobs.NOTIFY_KIND,
            payload={"notifier": "webhook"},
            concurrency_key="notify:webhook:d1",
        )
    got = await _claim(rt, kinds={jobs.NOTIFY_KIND}, notifiers={"webhook"})
    assert got is not None and got.id == hook.id
    assert await _claim(rt, kinds={jobs.NOTIFY_KIND}, notifiers={"webhook"}) is None
    # No replica has Slack: after a while the job is taken anyway (and dropped by its handler).
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Job)
            .where(models.Job.id == slack.id)
            .values(run_at=models.utcnow() - dt.timedelta(hours=1))
        )
    got = await _claim(rt, kinds={jobs.NOTIFY_KIND}, notifiers={"webhook"})
    assert got is not None and got.id == slack.id


async def test_a_worker_never_fails_a_job_for_an_unknown_kind(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        job = await jobs.enqueue(session, kind=previews.TEARDOWN_JOB, payload={"preview_id": 0})
    ran = asyncio.Event()

    async def run(**_: object) -> None:
        ran.set()

    # A worker built with only deploy handlers (as a GitHub-less replica used to be) leaves it alone...
    narrow = Worker(ctx=rt.core, handlers={deploys.DEPLOY_JOB: Handler(run=run)})
    assert await narrow._claim() is None
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and row.state == jobs.QUEUED and row.last_error is None


async def test_wakeup_hook_is_per_runtime_and_removed_on_stop(settings: Settings) -> None:
    rt = await runtime.build(settings)
    own = rt.sessionmaker.kw["sync_session_class"]
    assert own is not Session and issubclass(own, Session)
    rt.core.jobs_ready.clear()
    async with rt.sessionmaker.begin() as session:
        await jobs.enqueue(session, kind="k", payload={})
    assert rt.core.jobs_ready.is_set()
    # A plain session on the same engine (another runtime's) does not wake this one.
    rt.core.jobs_ready.clear()
    other = db.create_sessionmaker(rt.engine)
    async with other.begin() as session:
        await jobs.enqueue(session, kind="k", payload={})
    assert not rt.core.jobs_ready.is_set()
    await runtime.stop(rt)
    assert rt.remove_wakeup is None
    # The hook is gone: a commit through this runtime's session class wakes nobody any more.
    engine = db.create_engine(settings.database_url)
    try:
        again = async_sessionmaker(engine, sync_session_class=own)
        rt.core.jobs_ready.clear()
        async with again.begin() as session:
            await jobs.enqueue(session, kind="k", payload={})
        assert not rt.core.jobs_ready.is_set()
    finally:
        await engine.dispose()
