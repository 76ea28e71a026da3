"""Retention: old finished jobs, delivered events, webhook delivery records and finished builds go;
the rest stays."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, builds, deliveries, jobs, retention, runs, shared
from core.identity import SYSTEM
from shipit import runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN

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


async def _second_app(session: AsyncSession) -> None:
    """App `api` next to paper's `web`: another app's rows, which web's pruning leaves alone."""
    await apps.create(
        session, actor=ADMIN, project="acme", cluster="paper", name="api", namespace="api",
        changes=apps.AppChanges(image="ghcr.io/acme/api:1.0"),
    )  # fmt: skip


async def test_prune_drops_old_finished_builds_with_their_cards_and_keeps_the_rest(paper: Runtime) -> None:
    rt = paper
    now = models.utcnow()
    old, recent = now - dt.timedelta(days=100), now - dt.timedelta(days=1)
    async with rt.sessionmaker.begin() as session:
        await _second_app(session)
        app_ids = {name: i for name, i in await session.execute(select(models.App.name, models.App.id))}
        web, api = app_ids["web"], app_ids["api"]
        await session.execute(
            update(models.App).where(models.App.id == web).values(image="reg/acme/web@sha256:running")
        )
        session.add(
            models.Preview(
                app_id=web, pr_number=7, repo="acme/web", head_sha="previewed", namespace="web-pr-7"
            )
        )

        def build(
            app_id: int, sha: str, status: str, finished: dt.datetime | None, **kw: Any
        ) -> models.Build:
            # Every build of web pushed to the app's repository: only the running one's digest matches.
            row = models.Build(
                app_id=app_id, sha=sha, ref="refs/heads/main", actor="alice", status=status,
                created_at=old, finished_at=finished, log="x" * 100,
                **{"image": "reg/acme/web", "digest": f"sha256:{sha}", **kw},
            )  # fmt: skip
            session.add(row)
            return row

        statuses = [builds.SUCCEEDED, builds.FAILED, builds.SUPERSEDED] * 2
        doomed = [build(web, f"old{i}", s, old) for i, s in enumerate(statuses)]
        # Another app's: older than web's newest, kept as its own newest three.
        theirs = [build(api, f"api{i}", builds.SUCCEEDED, old) for i in range(3)]
        kept = [
            build(web, "waited", builds.FAILED, old, waiting=[{"comment": 1}]),
            build(web, "running", builds.SUCCEEDED, old),
            build(web, "previewed", builds.SUCCEEDED, old, pr_number=7),
            build(web, "recent", builds.FAILED, recent),
            build(web, "queued", builds.QUEUED, None),
            build(web, "building", builds.BUILDING, None),
            *[build(web, f"newest{i}", builds.SUPERSEDED, old) for i in range(3)],
        ]
        await session.flush()
        # Two runs' cards on two targets per build, and a key that only looks alike.
        for b in [*theirs, *doomed, *kept]:
            for runs, target in ((0, "slack:T1:C1"), (1, "slack:T2:C2")):
                session.add(
                    models.Meta(
                        key=shared.build_card_mark(build_id=b.id, runs=runs, target=target), value=b"{}"
                    )
                )
        session.add(models.Meta(key="slack-build:oops", value=b"{}"))
    doomed_ids = {b.id for b in doomed}
    # Build 1's cards go, build 10's and 11's stay: "slack-build:1:" is no prefix of theirs.
    assert 1 in doomed_ids and {10, 11} <= {b.id for b in kept}

    policy = retention.Policy(
        jobs_seconds=None, events_seconds=None, deliveries_seconds=None,
        builds_seconds=90 * 86400, builds_keep=3, batch=2,
    )  # fmt: skip
    assert await retention.prune(rt.sessionmaker, policy=policy) == retention.Pruned(builds=6, build_marks=12)

    async with rt.sessionmaker() as session:
        left = set(await session.scalars(select(models.Build.id)))
        assert left == {b.id for b in [*theirs, *kept]}
        keys = set(
            await session.scalars(select(models.Meta.key).where(models.Meta.key.like("slack-build:%")))
        )
        assert keys == {
            "slack-build:oops",
            *(
                shared.build_card_mark(build_id=b.id, runs=runs, target=target)
                for b in [*theirs, *kept]
                for runs, target in ((0, "slack:T1:C1"), (1, "slack:T2:C2"))
            ),
        }

    # Nothing more goes on a second pass, nor with builds kept for ever.
    assert await retention.prune(rt.sessionmaker, policy=policy) == retention.Pruned()
    forever = retention.Policy(
        jobs_seconds=None, events_seconds=None, deliveries_seconds=None, builds_seconds=None
    )
    assert await retention.prune(rt.sessionmaker, policy=forever, now=now + OLD * 10) == retention.Pruned()


async def test_build_settings_reach_the_policy(settings: Settings) -> None:
    policy = runtime.retention_policy(settings)
    assert (policy.builds_seconds, policy.builds_keep) == (90 * 86400, 20)
    tuned = settings.model_copy(update={"retention_builds_days": 0, "retention_builds_keep": 5})
    assert (runtime.retention_policy(tuned).builds_seconds, runtime.retention_policy(tuned).builds_keep) == (
        None,
        5,
    )


def _run(
    app: models.App, name: str, status: str, *, created: dt.datetime, finished: dt.datetime | None
) -> models.Run:
    return models.Run(
        app_id=app.id, environment_id=app.environment_id, name=name, actor="user:ann", program="rake",
        arg_count=1, revision=1, image="ghcr.io/acme/web:1.0", timeout_seconds=1800, status=status,
        reason=runs.NOT_CREATED if name.endswith("refused") else None, created_at=created, finished_at=finished,
    )  # fmt: skip


async def _run_names(rt: Runtime) -> set[str]:
    async with rt.sessionmaker() as session:
        return set(await session.scalars(select(models.Run.name)))


async def test_prune_drops_old_runs_beyond_each_apps_newest(paper: Runtime, settings: Settings) -> None:
    rt = paper
    now = models.utcnow()
    old, recent = now - dt.timedelta(days=100), now - dt.timedelta(days=1)
    async with rt.sessionmaker.begin() as session:
        await _second_app(session)
        app = {a.name: a for a in await session.scalars(select(models.App))}
        web, api = app["web"], app["api"]
        rows = [
            # Another app's, older than web's: its own newest three, kept.
            *(_run(api, f"api-{i}", runs.SUCCEEDED, created=old, finished=old) for i in range(3)),
            _run(web, "old-succeeded", runs.SUCCEEDED, created=old, finished=old),
            _run(web, "old-refused", runs.FAILED, created=old, finished=old),
            _run(web, "old-cancelled-no-end", runs.CANCELLED, created=old, finished=None),
            # Started 100 days ago: its Job's deadline ended it long since (it reads `unknown`).
            _run(web, "old-running", runs.RUNNING, created=old, finished=None),
            _run(web, "ended-yesterday", runs.FAILED, created=old, finished=recent),
            *(_run(web, f"newest-{i}", runs.SUCCEEDED, created=old, finished=old) for i in range(3)),
        ]
        session.add_all(rows)

    # Through the settings a deployment sets; the other tables are kept for ever here.
    tuned = settings.model_copy(
        update={
            "retention_jobs_days": 0, "retention_events_days": 0, "retention_deliveries_days": 0,
            "retention_builds_days": 0, "retention_usage_days": 0,
            "retention_runs_days": 30, "retention_runs_keep": 3,
        }
    )  # fmt: skip
    policy = dataclasses.replace(runtime.retention_policy(tuned), batch=2)
    assert (policy.runs_seconds, policy.runs_keep) == (30 * 86400, 3)
    assert await retention.prune(rt.sessionmaker, policy=policy) == retention.Pruned(runs=4)
    assert await _run_names(rt) == {
        "api-0", "api-1", "api-2", "ended-yesterday", "newest-0", "newest-1", "newest-2",
    }  # fmt: skip

    # Nothing more goes on a second pass, nor with `0` days, however old the rest gets.
    assert await retention.prune(rt.sessionmaker, policy=policy) == retention.Pruned()
    forever = runtime.retention_policy(tuned.model_copy(update={"retention_runs_days": 0}))
    assert forever.runs_seconds is None
    assert await retention.prune(rt.sessionmaker, policy=forever, now=now + OLD * 10) == retention.Pruned()
    assert len(await _run_names(rt)) == 7


async def test_a_run_still_running_goes_only_past_the_longest_timeout(paper: Runtime) -> None:
    rt = paper
    now = models.utcnow()
    longest = dt.timedelta(seconds=runs.MAX_TIMEOUT_SECONDS)
    async with rt.sessionmaker.begin() as session:
        web = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert web is not None
        hours_ago = now - dt.timedelta(hours=2)
        session.add_all(
            [
                _run(web, "dead-running", runs.RUNNING, created=now - longest - dt.timedelta(hours=1), finished=None),
                # Older than the (tiny) age, but its Job may still be running.
                _run(web, "live-running", runs.RUNNING, created=hours_ago, finished=None),
                _run(web, "ended-2h-ago", runs.SUCCEEDED, created=hours_ago, finished=hours_ago),
                _run(web, "just-ended", runs.SUCCEEDED, created=hours_ago, finished=now - dt.timedelta(seconds=10)),
            ]
        )  # fmt: skip
    policy = retention.Policy(
        jobs_seconds=None, events_seconds=None, deliveries_seconds=None, builds_seconds=None,
        usage_seconds=None, runs_seconds=3600, runs_keep=0,
    )  # fmt: skip

    # The DELETE checks again what the SELECT saw: a run that ended meanwhile stays.
    async with rt.sessionmaker.begin() as session:
        cutoff = now - dt.timedelta(seconds=3600)
        ids = list(await session.scalars(retention._runs_batch(cutoff, now=now, keep=0, batch=10)))
        assert len(ids) == 2
        await session.execute(
            update(models.Run)
            .where(models.Run.name == "dead-running")
            .values(status=runs.SUCCEEDED, finished_at=now)
        )
        assert await retention._delete_runs(session, ids, cutoff=cutoff, now=now) == 1
        await session.execute(
            update(models.Run).where(models.Run.name == "dead-running").values(status=runs.RUNNING, finished_at=None)
        )  # fmt: skip

    assert await retention.prune(rt.sessionmaker, policy=policy, now=now) == retention.Pruned(runs=1)
    assert await _run_names(rt) == {"live-running", "just-ended"}
