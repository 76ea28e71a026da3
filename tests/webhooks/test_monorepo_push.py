"""A monorepo push that deploys many apps, over HTTP: its statements do not grow with the apps.

Issue 13's motivating case: "a monorepo push that deploys 20 apps ... stalls every channel".  One
signed push to a repository that N apps follow (same project, each in its own namespace, all
tracking the pushed branch with an image template, deploying on push) queues N deploys in the one
transaction that records the delivery.  A `before_cursor_execute` listener on the real engine of
the real app counts the statements of that delivery (as tests/bot/test_statement_budget.py does):
a regression guard, not a timing.  BEGIN, SAVEPOINT and RELEASE are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select

from core import clusters, secrets
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, POSTGRES_URL
from tests.webhooks.conftest import Hook, make_app, offline_cluster, push_payload, submit_together

SMALL, LARGE = 2, 20


@contextmanager
def _counting(rt: Runtime) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split())
        if not text.startswith(("BEGIN", "SAVEPOINT", "RELEASE")):
            statements.append(text[:120])

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _monorepo(rt: Runtime, *, repo: str, apps: int, with_secrets: bool) -> list[str]:
    """`apps` apps of project acme, each in a namespace of its own, all deploying pushes to main of `repo`."""
    prefix = repo.split("/")[1]
    names = [f"{prefix}-svc{i}" for i in range(apps)]
    async with rt.sessionmaker.begin() as session:
        for name in names:
            await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace=name)
    for name in names:
        await make_app(
            rt,
            name=name,
            namespace=name,
            git_repo=repo,
            image_template=f"ghcr.io/acme/{name}:{{sha}}",
        )
    if with_secrets:
        async with rt.sessionmaker.begin() as session:
            for name in names:
                await secrets.set_values(
                    session, ctx=rt.core, actor=ADMIN, app_name=name, values={"TOKEN": f"t-{name}"}
                )
    return names


async def _push(hook: Hook, *, repo: str, sha: str, delivery: str) -> dict[str, Any]:
    answer = await hook.post("push", push_payload(repo=repo, sha=sha), delivery=delivery)
    assert answer.status_code in (200, 202), answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _written(rt: Runtime, *, sha: str) -> dict[str, Any]:
    """What the push of `sha` left: its deployments, and their events, jobs and audit rows."""
    async with rt.sessionmaker() as session:
        deploys = list(
            await session.scalars(select(models.Deployment).where(models.Deployment.git_sha == sha))
        )
        ids = [d.id for d in deploys]
        events = Counter(
            await session.scalars(select(models.Event.kind).where(models.Event.deployment_id.in_(ids)))
        )
        jobs = [
            j
            for j in await session.scalars(select(models.Job))
            if j.payload.get("deployment_id") in ids or j.payload.get("deployment") in ids
        ]
        audit = list(
            await session.scalars(
                select(models.AuditEvent).where(models.AuditEvent.details["git_sha"].as_string() == sha)
            )
        )
        deliveries = await session.scalar(select(func.count()).select_from(models.WebhookDelivery))
    return {
        "deploys": deploys,
        "events": events,
        "jobs": Counter(j.kind for j in jobs),
        "audit": audit,
        "deliveries": deliveries,
    }


@pytest.mark.both_databases
@pytest.mark.parametrize("past_kept", [False, True], ids=["young", "past-kept"])
async def test_a_monorepo_push_costs_the_same_statements_for_twenty_apps_as_for_two(
    hook: Hook, past_kept: bool
) -> None:
    """`past_kept`: the usual case in production, every app past its kept revisions (so each push
    prunes one of each app's) and holding secrets (so the pruned revisions name a secrets version)."""
    rt = hook.rt
    await offline_cluster(rt)
    kept = rt.core.config.revisions_kept = 2
    counted: dict[int, list[str]] = {}
    for n in (SMALL, LARGE):
        repo = f"acme/mono{n}"
        names = await _monorepo(rt, repo=repo, apps=n, with_secrets=past_kept)
        # A first push warms what is read once (the read cache's copies) and leaves a deploy queued
        # for every app, which the measured push supersedes: the usual case in production.
        for w in range(kept if past_kept else 1):
            warm = await _push(hook, repo=repo, sha=f"{w:08x}{n:032x}", delivery=str(uuid.uuid4()))
            assert len(warm["decisions"]) == n, warm
        sha = f"{n:08x}" + "ab" * 16
        delivery = str(uuid.uuid4())
        with _counting(rt) as statements:
            answer = await _push(hook, repo=repo, sha=sha, delivery=delivery)
        counted[n] = statements
        assert answer["result"] == "accepted", answer
        assert sorted(d["app"] for d in answer["decisions"] if d["action"] == "deploy") == sorted(names)
        # All of it committed before the answer: n deploys, each with its events, job and audit row.
        written = await _written(rt, sha=sha)
        deploys = written["deploys"]
        assert sorted((d.image, d.status) for d in deploys) == sorted(
            (f"ghcr.io/acme/{name}:{sha}", "queued") for name in names
        )
        assert all(count == n for count in written["events"].values()) and written["events"], written
        assert written["jobs"]["deploy"] == n, written["jobs"]
        assert len(written["audit"]) == n, written["audit"]
        # The warm push's deploys were superseded by this one, all in the same transaction.
        earlier = await _written(rt, sha=f"{kept - 1 if past_kept else 0:08x}{n:032x}")
        assert {d.status for d in earlier["deploys"]} == {"superseded"}
        async with rt.sessionmaker() as session:
            numbers = sorted(
                await session.scalars(
                    select(models.Revision.number).where(models.Revision.app_id == deploys[0].app_id)
                )
            )
        # Past its kept revisions every app pruned its oldest (the batch's one DELETE for all).
        assert numbers == ([2, 3] if past_kept else [1, 2]), numbers
        # A redelivery of the same push is answered as a duplicate and writes nothing.
        again = await _push(hook, repo=repo, sha=sha, delivery=delivery)
        assert again["result"] == "duplicate", again
        after = await _written(rt, sha=sha)
        assert len(after["deploys"]) == n and after["jobs"] == written["jobs"]
        assert after["events"] == written["events"] and len(after["audit"]) == n
        assert after["deliveries"] == written["deliveries"]
    listed = "\n".join(f"  N={n}: {len(s)}\n    " + "\n    ".join(s) for n, s in counted.items())
    assert len(counted[LARGE]) == len(counted[SMALL]), listed
    # One statement per table: the writes of twenty deploys are one INSERT each, and past its kept
    # revisions the batch prunes every app's in one DELETE (and looks the apps' secrets versions up
    # in one SELECT more: none of them holds enough to prune).
    writes = [s for s in counted[LARGE] if s.startswith(("INSERT", "DELETE", "UPDATE"))]
    tables = Counter(" ".join(s.split()[:3]) for s in writes)
    assert all(count == 1 for count in tables.values()), listed
    assert ("DELETE FROM revisions" in tables) == past_kept, listed


@pytest.mark.both_databases
async def test_a_monorepo_push_prunes_each_app_as_alone_keeping_what_runs_and_what_is_current(
    hook: Hook,
) -> None:
    """The batch's one DELETE for many apps keeps, app by app, what a prune of each alone would: the
    newest revisions, the one a running deploy uses and the app's current one."""
    rt = hook.rt
    await offline_cluster(rt)
    kept = rt.core.config.revisions_kept = 2
    current, running, plain = await _monorepo(rt, repo="acme/mono", apps=3, with_secrets=False)
    for w in range(kept):
        await _push(hook, repo="acme/mono", sha=f"{w + 1:040x}", delivery=str(uuid.uuid4()))
    async with rt.sessionmaker.begin() as session:
        ids = {a.name: a for a in await session.scalars(select(models.App))}
        first = {
            r.app_id: r.id
            for r in await session.scalars(select(models.Revision).where(models.Revision.number == 1))
        }
        ids[current].current_revision_id = first[ids[current].id]
        ran = await session.scalar(
            select(models.Deployment).where(
                models.Deployment.app_id == ids[running].id, models.Deployment.revision_number == 1
            )
        )
        assert ran is not None
        ran.status = "running"
    answer = await _push(hook, repo="acme/mono", sha="ef" * 20, delivery=str(uuid.uuid4()))
    assert [d["action"] for d in answer["decisions"]] == ["deploy"] * 3, answer
    async with rt.sessionmaker() as session:
        kept_numbers = {
            name: sorted(
                await session.scalars(
                    select(models.Revision.number).where(models.Revision.app_id == ids[name].id)
                )
            )
            for name in (current, running, plain)
        }
    assert kept_numbers == {current: [1, 2, 3], running: [1, 2, 3], plain: [2, 3]}


@pytest.mark.both_databases
async def test_a_monorepo_push_gates_each_app_by_its_own_protection(hook: Hook) -> None:
    """The batch checks its apps' environment once for all of them, but each app's own protection
    still decides whether its deploy waits for an approval."""
    rt = hook.rt
    await offline_cluster(rt)
    names = await _monorepo(rt, repo="acme/gated", apps=3, with_secrets=False)
    async with rt.sessionmaker.begin() as session:
        row = await session.scalar(select(models.App).where(models.App.name == names[1]))
        assert row is not None
        row.protected = True
    answer = await _push(hook, repo="acme/gated", sha="ab" * 20, delivery=str(uuid.uuid4()))
    assert [d["action"] for d in answer["decisions"]] == ["deploy"] * 3, answer
    written = await _written(rt, sha="ab" * 20)
    statuses = {d.image.split(":")[0].rsplit("/", 1)[1]: d.status for d in written["deploys"]}
    assert statuses == {names[0]: "queued", names[1]: "awaiting_approval", names[2]: "queued"}
    assert written["jobs"]["deploy"] == 2


@pytest.mark.skipif(not POSTGRES_URL, reason="needs SHIPIT_TEST_POSTGRES_URL")
@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
async def test_concurrent_batches_of_monorepo_pushes_number_their_rows_apart(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: two batches (two replicas' writers) deploying the same apps at once.  The second
    waits for the first's locks (deploys.reserve) and reads the numbers after it committed: every
    deploy gets its own number, no batch falls back to one delivery at a time, one deploy per app
    is left queued."""
    await offline_cluster(rt)
    names = await _monorepo(rt, repo="acme/race", apps=5, with_secrets=False)
    shas: list[str] = []
    for r in range(4):
        batches = []
        for side in range(2):
            pushes = []
            for k in range(3):
                sha = f"{r:02x}{side:02x}{k:02x}" + "c" * 34
                shas.append(sha)
                pushes.append((f"race-{r}-{side}-{k}", push_payload(repo="acme/race", sha=sha)))
            batches.append(submit_together(rt, pushes))
        with caplog.at_level(logging.INFO, logger="webhooks.ingest"):
            outcomes = [o for batch in await asyncio.gather(*batches) for o in batch]
        assert all([d.action for d in o.decisions] == ["deploy"] * 5 for o in outcomes), outcomes
    assert "running each alone" not in caplog.text, caplog.text
    async with rt.sessionmaker() as session:
        rows = list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))
    assert sorted({d.git_sha for d in rows}) == sorted(shas)
    for app_id in {d.app_id for d in rows}:
        mine = [d for d in rows if d.app_id == app_id]
        assert sorted(d.revision_number for d in mine) == list(range(1, len(shas) + 1))
        assert [d.status for d in mine].count("queued") == 1, [(d.id, d.status) for d in mine]
    assert len(rows) == len(shas) * len(names)
