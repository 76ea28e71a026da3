"""Group commit of deliveries: bursts share a transaction, answers stay exact, one failure stays alone."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, clusters, deliveries, deploys, gitops, projects, protection
from core import revisions as snapshots
from core.apps import AppChanges
from core.context import Core
from core.gitops import Outcome
from core.identity import SYSTEM
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    SHA_C,
    Hook,
    deployments,
    job_rows,
    make_app,
    offline_cluster,
    push_payload,
    submit_together,
)
from webhooks.ingest import DUPLICATE, Ingest
from webhooks.table import Handler


@pytest.mark.both_databases
async def test_a_burst_of_deliveries_is_answered_one_by_one_and_deduplicated(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    shas = [f"{i:040x}" for i in range(1, 25)]
    ids = [str(uuid.uuid4()) for _ in shas]
    posts = [hook.post("push", push_payload(sha=sha), delivery=d) for sha, d in zip(shas, ids, strict=True)]
    posts += [hook.post("push", push_payload(sha=shas[0]), delivery=ids[0]) for _ in range(3)]
    answers = await asyncio.gather(*posts)
    results = [a.json()["result"] for a in answers]
    assert results.count("accepted") == 24
    assert results.count("duplicate") == 3
    rows = await deployments(hook.rt)
    assert len(rows) == 24
    # However the burst was cut into transactions, exactly one deploy is left queued: the newest.
    assert [d.status for d in rows].count("queued") == 1
    assert rows[-1].status == "queued"
    async with hook.rt.sessionmaker() as session:
        recorded = list(await session.scalars(select(models.WebhookDelivery.id)))
    assert sorted(recorded) == sorted(f"github:{d}" for d in ids)


def _handler(fail_on: str) -> Handler[Mapping[str, Any]]:
    async def run(session: AsyncSession, ctx: Core, parsed: Mapping[str, Any]) -> Outcome:
        await audit.record(session, actor=SYSTEM, action="test.ingest", target=str(parsed["name"]))
        if parsed["name"] == fail_on:
            raise RuntimeError("handler bug")
        return Outcome(summary=f"did {parsed['name']}")

    return Handler(parse=dict, run=run)


@pytest.mark.both_databases
async def test_one_failing_delivery_does_not_take_its_batch_down(rt: Runtime) -> None:
    ingest = Ingest()
    handler = _handler(fail_on="b")
    try:
        outcomes = await asyncio.gather(
            *[
                ingest.submit(
                    ctx=rt.core, delivery=f"d-{n}", kind="test", handler=handler, parsed={"name": n}
                )
                for n in ("a", "b", "c")
            ],
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], Outcome) and outcomes[0].summary == "did a"
        assert isinstance(outcomes[1], RuntimeError)
        assert isinstance(outcomes[2], Outcome) and outcomes[2].summary == "did c"
        async with rt.sessionmaker() as session:
            recorded = set(await session.scalars(select(models.WebhookDelivery.id)))
            targets = sorted(await session.scalars(select(models.AuditEvent.target)))
        assert recorded == {"github:d-a", "github:d-c"}  # d-b never committed: its redelivery will run
        assert targets == ["a", "c"]

        again = await ingest.submit(
            ctx=rt.core, delivery="d-b", kind="test", handler=_handler(fail_on="-"), parsed={"name": "b"}
        )
        assert isinstance(again, Outcome)
        done = await ingest.submit(
            ctx=rt.core, delivery="d-a", kind="test", handler=handler, parsed={"name": "a"}
        )
        assert done is DUPLICATE
    finally:
        await ingest.close()


async def test_a_delivery_whose_client_went_away_is_still_recorded_once(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    ingest = Ingest()
    try:
        from webhooks import table

        handler = table.HANDLERS[("push", None)]
        parsed = handler.parse(push_payload(sha=SHA_A))
        task = asyncio.create_task(
            ingest.submit(ctx=hook.rt.core, delivery="gone", kind="push.", handler=handler, parsed=parsed)
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await ingest.submit(
            ctx=hook.rt.core, delivery="gone", kind="push.", handler=handler, parsed=parsed
        )
        # Either the cancelled submission committed first (then this is a duplicate) or it was dropped
        # before its batch ran (then this one deploys): never both, never neither.
        assert len(await deployments(hook.rt)) == 1
        assert len(await job_rows(hook.rt, kind="deploy")) == 1
        assert result is DUPLICATE or isinstance(result, Outcome)
    finally:
        await ingest.close()


async def test_closing_answers_deliveries_that_were_not_recorded(rt: Runtime) -> None:
    ingest = Ingest()
    waiting = asyncio.create_task(
        ingest.submit(
            ctx=rt.core, delivery="late", kind="test", handler=_handler(fail_on="-"), parsed={"name": "x"}
        )
    )
    await asyncio.sleep(0)  # queued; the writer has not run yet
    await ingest.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        await waiting
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(models.WebhookDelivery.id))) == []
    # The channel comes back on the next delivery.
    again = await ingest.submit(
        ctx=rt.core, delivery="late", kind="test", handler=_handler(fail_on="-"), parsed={"name": "x"}
    )
    assert isinstance(again, Outcome)
    await ingest.close()


async def _mirror_in_locked_project(rt: Runtime) -> None:
    """App `mirror` of project beta also deploys acme/web's main; beta is then locked."""
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="beta")
        await clusters.grant(session, actor=ADMIN, cluster="test", project="beta", namespace="mirror")
        await apps.create(
            session,
            actor=ADMIN,
            project="beta",
            cluster="test",
            name="mirror",
            namespace="mirror",
            changes=AppChanges(
                image="ghcr.io/acme/web:0.1",
                git_repo="acme/web",
                git_branch="main",
                image_template="ghcr.io/acme/web:{sha}",
            ),
        )


def _decisions(outcome: Any) -> dict[str, tuple[str, str]]:
    assert isinstance(outcome, Outcome)
    return {d.app: (d.action, d.reason) for d in outcome.decisions}


@pytest.mark.both_databases
async def test_a_batch_of_a_new_commit_a_repeated_one_and_a_refused_deploy(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    await offline_cluster(rt)
    await make_app(rt)
    await _mirror_in_locked_project(rt)
    first = await submit_together(rt, [("first", push_payload(sha=SHA_A))])
    assert {app: action for app, (action, _) in _decisions(first[0]).items()} == {
        "web": "deploy",
        "mirror": "deploy",
    }
    async with rt.sessionmaker.begin() as session:
        await protection.lock_project(session, actor=ADMIN, project="beta", reason="audit")

    caplog.set_level(logging.INFO, logger="webhooks.ingest")
    new, again, unlinked, twice = await submit_together(
        rt,
        [
            ("new", push_payload(sha=SHA_B)),  # web deploys it; mirror's project is locked
            ("again", push_payload(sha=SHA_A)),  # deployed before, to both
            ("unlinked", push_payload(sha=SHA_C, repo="acme/other")),
            ("twice", push_payload(sha=SHA_B)),  # the same new commit, another delivery: deployed once
        ],
    )
    # The refused deploy failed the batch; each delivery then ran alone, with a savepoint per app.
    assert "was refused" in caplog.text and "running each alone" in caplog.text

    assert _decisions(new)["web"][0] == "deploy"
    assert _decisions(new)["mirror"] == (
        "skip",
        "project beta is locked by user:admin: audit. Unlock it first.",
    )
    assert [a for a, _ in _decisions(again).values()] == ["skip", "skip"]
    assert all("was already deployed" in r for _, r in _decisions(again).values())
    assert isinstance(unlinked, Outcome) and unlinked.summary.startswith("no app is linked to acme/other")
    assert _decisions(twice)["web"][0] == "skip" and "was already deployed" in _decisions(twice)["web"][1]

    rows = await deployments(rt)
    assert [(d.git_sha, d.status) for d in rows] == [
        (SHA_A, "queued"),  # mirror's (apps run in name order)
        (SHA_A, "superseded"),  # web's first, superseded by SHA_B
        (SHA_B, "queued"),  # web's new one
    ]
    deploy_jobs = {j.payload["deployment_id"]: j.state for j in await job_rows(rt, kind="deploy")}
    assert deploy_jobs == {rows[0].id: "queued", rows[1].id: "cancelled", rows[2].id: "queued"}
    async with rt.sessionmaker() as session:
        recorded = set(await session.scalars(select(models.WebhookDelivery.id)))
        requested = list(
            await session.scalars(
                select(models.AuditEvent.target).where(models.AuditEvent.action == "deploy.request")
            )
        )
        mirror_revisions = await session.scalar(
            select(func.count())
            .select_from(models.Revision)
            .join(models.App)
            .where(models.App.name == "mirror")
        )
    assert recorded == {f"github:{d}" for d in ("first", "new", "again", "unlinked", "twice")}
    # Nothing of the refused deploy was kept: no revision, no audit row beyond the first push's.
    assert sorted(requested) == ["app/mirror", "app/web", "app/web"]
    assert mirror_revisions == 1


@pytest.mark.both_databases
async def test_a_batch_of_new_and_repeated_commits_needs_no_fallback(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    await offline_cluster(rt)
    await make_app(rt)
    await submit_together(rt, [("first", push_payload(sha=SHA_A))])
    caplog.set_level(logging.INFO, logger="webhooks.ingest")
    shas = [f"{i:040x}" for i in range(1, 9)]
    outcomes = await submit_together(
        rt,
        [(f"d{i}", push_payload(sha=sha)) for i, sha in enumerate(shas)]
        + [("again", push_payload(sha=SHA_A)), ("again-new", push_payload(sha=shas[3]))],
    )
    assert "running each alone" not in caplog.text
    assert [_decisions(o)["web"][0] for o in outcomes] == ["deploy"] * 8 + ["skip", "skip"]
    rows = await deployments(rt)
    assert [d.git_sha for d in rows] == [SHA_A, *shas]
    # The repeat of a commit deployed in this very batch names its deploy, already superseded.
    assert (
        _decisions(outcomes[-1])["web"][1]
        == f"{shas[3][:7]} was already deployed to web (deploy #{rows[4].id}, superseded)"
    )
    assert [d.status for d in rows] == ["superseded"] * 8 + ["queued"]
    deploy_jobs = [j.state for j in await job_rows(rt, kind="deploy")]
    assert sorted(deploy_jobs) == ["cancelled"] * 8 + ["queued"]


async def _rows_per_app(rt: Runtime, *, names: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What the deploys of apps `names` (app name -> the name to report it as) left in the database,
    deploys named by their place in their app's history (ids differ between two runs)."""
    out: dict[str, dict[str, Any]] = {}
    async with rt.sessionmaker() as session:
        for name, alias in names.items():
            app = await session.scalar(select(models.App).where(models.App.name == name))
            assert app is not None
            rows = list(
                await session.scalars(
                    select(models.Deployment)
                    .where(models.Deployment.app_id == app.id)
                    .order_by(models.Deployment.id)
                )
            )
            place = {d.id: i for i, d in enumerate(rows)}

            def named(text: str, place: dict[int, int] = place) -> str:
                for id_, i in place.items():
                    text = text.replace(f"#{id_}", f"#<{i}>")
                return text

            job_states = {
                j.payload["deployment_id"]: j.state
                for j in await session.scalars(select(models.Job).where(models.Job.kind == "deploy"))
            }
            kinds = list(
                await session.execute(
                    select(models.Event.deployment_id, models.Event.kind, models.Event.payload)
                    .where(models.Event.deployment_id.in_(place))
                    .order_by(models.Event.deployment_id, models.Event.kind)
                )
            )
            audits = list(
                await session.scalars(
                    select(models.AuditEvent.details)
                    .where(
                        models.AuditEvent.target == f"app/{name}",
                        models.AuditEvent.action == "deploy.request",
                    )
                    .order_by(models.AuditEvent.id)
                )
            )
            kept = list(
                await session.scalars(
                    select(models.Revision.number)
                    .where(models.Revision.app_id == app.id)
                    .order_by(models.Revision.number)
                )
            )
            out[alias] = {
                "deployments": [
                    (
                        d.revision_number,
                        d.status,
                        d.git_sha,
                        d.image,
                        named(d.error or ""),
                        d.revision_id is None,
                    )
                    for d in rows
                ],
                "jobs": {place[k]: v for k, v in job_states.items() if k in place},
                "events": [
                    (place[dep], kind, {k: place.get(v, v) if k == "by" else v for k, v in payload.items()})
                    for dep, kind, payload in kinds
                ],
                "audit": [
                    {
                        k: place[v] if k == "deployment" else v
                        for k, v in d.items()
                        if k not in ("image", "namespace")
                    }
                    for d in audits
                ],
                "revisions": kept,
            }
    return out


@pytest.mark.both_databases
async def test_a_batch_of_pushes_to_two_apps_leaves_the_rows_one_at_a_time_would(rt: Runtime) -> None:
    """The batch writes some rows once for all its pushes (deploys.defer): the same rows all the same."""
    await offline_cluster(rt)
    # Two apps per repository (one per namespace); the batch goes to acme/web, one at a time to acme/two.
    await make_app(rt, name="web", namespace="web")
    await make_app(rt, name="api", namespace="api")
    await make_app(rt, name="web2", namespace="web2", git_repo="acme/two")
    await make_app(rt, name="api2", namespace="api2", git_repo="acme/two")
    # More pushes than revisions kept (10): the prune runs, once per app in the batch.
    shas = [f"{i:040x}" for i in range(1, 14)]
    await submit_together(rt, [("w-first", push_payload(sha=SHA_A))])
    for i, sha in enumerate([SHA_A, *shas]):
        async with rt.sessionmaker.begin() as session:
            # As a delivery run alone: its own transaction, a savepoint per app, nothing deferred.
            await deliveries.first_time(session, source="github", delivery_id=f"two-{i}", kind="push")
            await gitops.on_push(
                session, ctx=rt.core, repo="acme/two", ref="refs/heads/main", sha=sha, sender="octocat"
            )
    outcomes = await submit_together(
        rt,
        [(f"w-{i}", push_payload(sha=sha)) for i, sha in enumerate(shas)]
        + [("w-again", push_payload(sha=shas[2])), ("w-0", push_payload(sha=shas[0]))],
    )
    assert [sorted(a for a, _ in _decisions(o).values()) for o in outcomes[:-1]] == [
        ["deploy", "deploy"]
    ] * 13 + [["skip", "skip"]]
    assert outcomes[-1] is DUPLICATE

    batch = await _rows_per_app(rt, names={"web": "web", "api": "api"})
    alone = await _rows_per_app(rt, names={"web2": "web", "api2": "api"})
    for app in ("web", "api"):
        # Not vacuous: 14 deploys, the newest queued, the others superseded each by the next one.
        statuses = [d[1] for d in batch[app]["deployments"]]
        assert statuses == ["superseded"] * 13 + ["queued"]
        assert [d[0] for d in batch[app]["deployments"]] == list(range(1, 15))
        assert batch[app]["deployments"][4][4] == "superseded by deploy #<5>"
        assert batch[app]["revisions"] == list(range(5, 15))  # the newest 10
        assert sorted(batch[app]["jobs"].values()) == ["cancelled"] * 13 + ["queued"]
        assert len(batch[app]["audit"]) == 14
        for part in ("deployments", "jobs", "events", "audit", "revisions"):
            assert batch[app][part] == alone[app][part], (app, part)


@pytest.mark.both_databases
async def test_rows_a_batch_numbers_itself_survive_savepoints_and_other_inserts(rt: Runtime) -> None:
    """On SQLite a batch gives its revisions and deployments their ids and numbers and writes them
    later (deploys.request `_Rows`).  A savepoint, a deploy requested inside one (inserted at once)
    and one rolled back in between must leave what one request at a time would have: the rows
    written before the savepoint stay when it rolls back, and no id or number is given twice."""
    await offline_cluster(rt)
    await make_app(rt, name="web", namespace="web")
    await make_app(rt, name="api", namespace="api", git_repo="acme/api")

    async def push(session: AsyncSession, sha: str) -> None:
        ref = "refs/heads/main"
        await gitops.prefetch_pushes(session, pushes=[gitops.PushRef(repo="acme/web", ref=ref, sha=sha)])
        await gitops.on_push(session, ctx=rt.core, repo="acme/web", ref=ref, sha=sha, sender="octocat")

    async def api_deploy(session: AsyncSession, tag: str) -> int:
        requested = await deploys.request(
            session, ctx=rt.core, actor=ADMIN, app_name="api", image=tag, trigger="api"
        )
        return requested.deployment.id

    async with rt.sessionmaker.begin() as session:
        gitops.all_or_nothing(session)
        await push(session, SHA_A)
        async with session.begin_nested():
            api_id = await api_deploy(session, "1.1")
        with pytest.raises(LookupError):
            async with session.begin_nested():
                await api_deploy(session, "1.2")
                raise LookupError("rolled back")
        await push(session, SHA_B)
        await push(session, SHA_C)
        await gitops.finish(session)

    rows = await deployments(rt)
    assert [(d.image.rsplit(":", 1)[1], d.revision_number, d.status) for d in rows] == [
        (SHA_A, 1, "superseded"),
        ("1.1", 1, "queued"),
        (SHA_B, 2, "superseded"),
        (SHA_C, 3, "queued"),
    ]
    assert rows[1].id == api_id
    assert rows[0].error == f"superseded by deploy #{rows[2].id}"
    assert rows[2].error == f"superseded by deploy #{rows[3].id}"
    async with rt.sessionmaker() as session:
        revisions = {
            r.id: (r.app_id, r.number, r.image) for r in await session.scalars(select(models.Revision))
        }
        queued = set(await session.scalars(select(models.Job.dedupe_key).where(models.Job.state == "queued")))
    assert {d.revision_id: (d.app_id, d.revision_number, d.image) for d in rows} == revisions
    assert queued >= {f"deploy:{rows[1].id}", f"deploy:{rows[3].id}"}
    assert f"deploy:{rows[0].id}" not in queued and f"deploy:{rows[2].id}" not in queued


@pytest.mark.both_databases
@pytest.mark.parametrize("moved_on", [False, True])
async def test_a_batch_supersedes_what_an_earlier_one_left_queued_unless_it_moved_on(
    rt: Runtime, moved_on: bool
) -> None:
    """On SQLite the deploys a batch's first push supersedes are read with the batch's look-ups,
    before any push runs (deploys.seed), and superseded with the batch's own at its end.  One that
    something else in the same transaction moved on in between (a cancel) stays as that left it."""
    await offline_cluster(rt)
    await make_app(rt)
    await submit_together(rt, [("first", push_payload(sha=SHA_A))])
    (first,) = await deployments(rt)
    assert first.status == "queued"
    ref = "refs/heads/main"
    async with rt.sessionmaker.begin() as session:
        gitops.all_or_nothing(session)
        await gitops.prefetch_pushes(session, pushes=[gitops.PushRef(repo="acme/web", ref=ref, sha=SHA_B)])
        if moved_on:
            await deploys.cancel(session, ctx=rt.core, actor=ADMIN, deployment_id=first.id)
        outcome = await gitops.on_push(session, ctx=rt.core, repo="acme/web", ref=ref, sha=SHA_B, sender="o")
        await gitops.finish(session)
    assert _decisions(outcome)["web"][0] == "deploy"
    first, second = await deployments(rt)
    assert second.status == "queued" and second.git_sha == SHA_B
    if moved_on:
        assert (first.status, first.error) == ("cancelled", f"cancelled by {ADMIN.name}")
    else:
        assert (first.status, first.error) == ("superseded", f"superseded by deploy #{second.id}")
    async with rt.sessionmaker() as session:
        kinds = list(
            await session.scalars(
                select(models.Event.kind)
                .where(models.Event.deployment_id == first.id)
                .order_by(models.Event.id)
            )
        )
    assert kinds == ["deploy.queued", "deploy.cancelled" if moved_on else "deploy.superseded"]
    states = {j.dedupe_key: j.state for j in await job_rows(rt, kind="deploy")}
    assert states == {f"deploy:{first.id}": "cancelled", f"deploy:{second.id}": "queued"}


@pytest.mark.both_databases
async def test_a_batch_whose_rows_go_in_before_its_end_still_wakes_the_live_pages(rt: Runtime) -> None:
    """The first deploy of an app (nothing older to supersede) queued in a batch, its rows written on
    the transaction's connection by the next statement (`write_first` on SQLite), not by the
    session: the commit still tells the dashboard's streams that a deployment changed."""
    await offline_cluster(rt)
    await make_app(rt)
    changed = rt.core.deploys_changed.listen()
    ref = "refs/heads/main"
    async with rt.sessionmaker.begin() as session:
        gitops.all_or_nothing(session)
        await gitops.prefetch_pushes(session, pushes=[gitops.PushRef(repo="acme/web", ref=ref, sha=SHA_A)])
        outcome = await gitops.on_push(session, ctx=rt.core, repo="acme/web", ref=ref, sha=SHA_A, sender="o")
        # Another delivery's read in the same batch: the waiting rows go in before it.
        await session.execute(select(func.count()).select_from(models.Project))
        await gitops.finish(session)
    assert _decisions(outcome)["web"][0] == "deploy"
    assert [d.status for d in await deployments(rt)] == ["queued"]
    assert changed.is_set()


@pytest.mark.both_databases
@pytest.mark.parametrize("flushed", [False, True])
async def test_a_batch_checks_its_pushes_again_once_something_they_depend_on_changed(
    rt: Runtime, flushed: bool
) -> None:
    """A batch's pushes to one app share their checks (deploys.request `_Batch.checked`) only while
    nothing the read cache holds changed: a project locked between two pushes of one transaction,
    written or still unflushed, refuses the second (and the all-or-nothing batch with it)."""
    await offline_cluster(rt)
    await make_app(rt)

    async def push(session: AsyncSession, sha: str) -> Outcome:
        ref = "refs/heads/main"
        await gitops.prefetch_pushes(session, pushes=[gitops.PushRef(repo="acme/web", ref=ref, sha=sha)])
        return await gitops.on_push(session, ctx=rt.core, repo="acme/web", ref=ref, sha=sha, sender="octocat")

    with pytest.raises(gitops.RunAlone, match="locked"):
        async with rt.sessionmaker.begin() as session:
            gitops.all_or_nothing(session)
            assert _decisions(await push(session, SHA_A))["web"][0] == "deploy"
            assert _decisions(await push(session, SHA_B))["web"][0] == "deploy"
            await protection.lock_project(session, actor=ADMIN, project="acme", reason="audit")
            if flushed:
                await session.flush()
            await push(session, SHA_C)
    assert await deployments(rt) == []


@pytest.mark.both_databases
@pytest.mark.parametrize("flushed", [False, True])
async def test_a_batch_builds_each_snapshot_from_the_settings_at_its_push(rt: Runtime, flushed: bool) -> None:
    """A batch's pushes to one app share the app's snapshot and its JSON (deploys.request
    `_Batch.checked`): each revision holds what a lone request writes, and settings changed between
    two pushes of one transaction, written or still unflushed, are in the next push's revision."""
    await offline_cluster(rt)
    await make_app(rt)
    sha_d = "d" * 40

    async def push(session: AsyncSession, sha: str) -> None:
        ref = "refs/heads/main"
        await gitops.prefetch_pushes(session, pushes=[gitops.PushRef(repo="acme/web", ref=ref, sha=sha)])
        outcome = await gitops.on_push(
            session, ctx=rt.core, repo="acme/web", ref=ref, sha=sha, sender="octocat"
        )
        assert _decisions(outcome)["web"][0] == "deploy"

    async with rt.sessionmaker.begin() as session:
        gitops.all_or_nothing(session)
        await push(session, SHA_A)
        before = snapshots.from_app(await apps.get(session, actor=ADMIN, name="web"))
        await push(session, SHA_B)
        changes = AppChanges(replicas=3, env={"MODE": "new"}, cpu_limit="750m")
        await apps.update(session, ctx=rt.core, actor=ADMIN, name="web", changes=changes)
        if flushed:
            await session.flush()
        after = snapshots.from_app(await apps.get(session, actor=ADMIN, name="web"))
        await push(session, SHA_C)
        await push(session, sha_d)
        await gitops.finish(session)
    assert after.replicas == 3 and after.env == {"MODE": "new"} and before.replicas != 3
    async with rt.sessionmaker() as session:
        written = [
            (r.image, r.snapshot)
            for r in await session.scalars(select(models.Revision).order_by(models.Revision.number))
        ]
    assert [image.rsplit(":", 1)[1] for image, _ in written] == [SHA_A, SHA_B, SHA_C, sha_d]
    for (image, snapshot), base in zip(written, [before, before, after, after], strict=True):
        assert snapshot == base.replace(image=image).to_json()


@pytest.mark.both_databases
async def test_deferred_writes_are_never_lost_or_wrong(rt: Runtime) -> None:
    """A deferring transaction that commits without `flush` fails whole; one whose deferred
    supersede finds the deploy moved on fails in `flush` (the ingest then runs deliveries alone)."""
    await offline_cluster(rt)
    await make_app(rt)

    async def two_pushes(session: AsyncSession) -> None:
        gitops.all_or_nothing(session)
        for sha in (SHA_A, SHA_B):
            await gitops.on_push(
                session, ctx=rt.core, repo="acme/web", ref="refs/heads/main", sha=sha, sender="octocat"
            )

    with pytest.raises(RuntimeError, match="flush was not awaited"):
        async with rt.sessionmaker.begin() as session:
            await two_pushes(session)
    assert await deployments(rt) == []

    with pytest.raises(RuntimeError, match="changed before it was superseded"):
        async with rt.sessionmaker.begin() as session:
            await two_pushes(session)
            first = min(await session.scalars(select(models.Deployment.id)))
            await session.execute(
                update(models.Deployment).where(models.Deployment.id == first).values(status="cancelled")
            )
            await gitops.finish(session)
    assert await deployments(rt) == []

    async with rt.sessionmaker.begin() as session:
        await two_pushes(session)
        await gitops.finish(session)
    assert [(d.git_sha, d.status) for d in await deployments(rt)] == [
        (SHA_A, "superseded"),
        (SHA_B, "queued"),
    ]


async def test_a_batch_of_pushes_to_one_app_costs_no_statement_a_push(rt: Runtime) -> None:
    """A regression guard, not a timing: on SQLite a batch of pushes of new commits writes its
    revisions, its deployments and everything else (deliveries, dedupe look-up, supersede, events,
    audit, prune, jobs) in a statement or two per table for the whole batch, however many pushes
    it holds."""
    await offline_cluster(rt)
    await make_app(rt)
    await submit_together(rt, [(f"warm-{i}", push_payload(sha=f"{i:040x}")) for i in range(1, 12)])
    counted: dict[int, list[str]] = {}
    for n in (4, 16):
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any, into: list[str] = statements) -> None:
            into.append(" ".join(statement.split())[:100])

        engine = rt.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            outcomes = await submit_together(
                rt, [(f"n{n}-{i}", push_payload(sha=f"{n:08x}{i:032x}")) for i in range(n)]
            )
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert [_decisions(o)["web"][0] for o in outcomes] == ["deploy"] * n
        counted[n] = [s for s in statements if not s.startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]
    assert len(counted[16]) == len(counted[4]), "\n".join(counted[16])
    # The batch numbers all its rows, the first push's too, from one read (deploys.seed) that also
    # looks the dedupe keys up: one INSERT per table, and the supersede of the deploy an earlier batch
    # left queued goes with the batch's own (issue 13: three statements fewer a batch).
    assert sum(s.startswith("INSERT INTO revisions") for s in counted[16]) == 1
    assert sum(s.startswith("INSERT INTO deployments") for s in counted[16]) == 1
    assert sum(s.startswith("UPDATE deployments") for s in counted[16]) == 1
    assert sum(s.startswith("SELECT") for s in counted[16]) == 1
    assert len(counted[16]) == 9, "\n".join(counted[16])
    assert sum(s.startswith("INSERT INTO audit_events") for s in counted[16]) == 1
    assert sum(s.startswith("INSERT INTO events") for s in counted[16]) == 1
    assert sum(s.startswith("DELETE FROM revisions") for s in counted[16]) == 1


@pytest.mark.both_databases
async def test_a_batch_of_untracked_pushes_reads_no_app_row_and_sees_a_relink(rt: Runtime) -> None:
    """Pushes to a branch no app tracks are answered from the apps' tracking copies; on SQLite the
    batch's one statement, its claim, also reads the copies' stamp.  A relink in between is seen."""
    await offline_cluster(rt)
    await make_app(rt)
    await submit_together(rt, [("warm", push_payload(ref="refs/heads/feature/x"))])  # fills the copies
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(rt.engine.sync_engine, "before_cursor_execute", record)
    try:
        outcomes = await submit_together(
            rt, [(f"untracked-{i}", push_payload(ref="refs/heads/feature/x", sha=SHA_B)) for i in range(3)]
        )
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", record)
    assert [o.summary for o in outcomes] == [
        "no app deploys branch feature/x of acme/web (tracked: web: branch main); nothing to deploy"
    ] * 3
    assert not any("FROM apps" in s for s in statements), statements
    assert statements[0].startswith("INSERT INTO webhook_deliveries"), statements
    if rt.engine.dialect.name == "sqlite":
        assert len(statements) == 1, statements  # the stamp came back with the claim
    else:
        assert len(statements) == 2 and "FROM meta" in statements[1], statements
    async with rt.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=rt.core, actor=ADMIN, name="web", changes=AppChanges(git_branch="feature/*")
        )
    outcomes = await submit_together(rt, [("tracked", push_payload(ref="refs/heads/feature/x", sha=SHA_C))])
    assert _decisions(outcomes[0])["web"][0] == "deploy"
    assert [d.git_sha for d in await deployments(rt)] == [SHA_C]
