"""Notices routed per project, environment and event to real receivers: an SMTP server (aiosmtpd),
Teams, Discord and webhook endpoints on loopback ports; retries, failing targets, a dead target."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from core import apps, deploys, environments, events, projects
from core.notices import mail, render
from core.notices import targets as notice_targets
from core.worker import Worker, run_until_idle
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World
from tests.notices_helpers import Receiver, readme_verify, receiver, smtp_server

SECRET = "wh-s3cret-value"


async def _project_with_app(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        session.add(
            models.Cluster(
                name="c", kubeconfig_enc=rt.core.cipher.encrypt(b"kubeconfig", purpose="kubeconfig")
            )
        )
        await session.flush()
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="c", name="web", namespace="web",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
        )  # fmt: skip


async def _add(rt: Runtime, **kw: Any) -> int:
    async with rt.sessionmaker.begin() as session:
        row = await notice_targets.add(session, ctx=rt.core, actor=ADMIN, project="acme", **kw)
        return row.id


async def _failed_deploy(rt: Runtime) -> tuple[int, int]:
    """A deploy of web that failed, and its deploy.failed event (emitted like core.deploys does)."""
    async with rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        d = models.Deployment(
            app_id=app.id, revision_number=1, image="ghcr.io/acme/web:2.0", namespace="web", trigger="api",
            actor="user:alice", status="failed", error="CrashLoopBackOff: boom", logs=["panic: boom"],
        )  # fmt: skip
        session.add(d)
        await session.flush()
        event_id = await events.emit_for_deployment(
            session,
            ctx=rt.core,
            kind=events.DEPLOY_FAILED,
            deployment=d,
            project_id=app.project_id,
            step="final",
        )
        assert event_id is not None
        return d.id, event_id


async def _drain(rt: Runtime) -> None:
    await run_until_idle(rt.core, handlers=rt.handlers(), within=60)


async def _row(rt: Runtime, target_id: int) -> models.NotificationTarget:
    async with rt.sessionmaker() as session:
        row = await session.get(models.NotificationTarget, target_id)
        assert row is not None
        return row


@pytest.fixture
async def hooks(rt: Runtime) -> AsyncIterator[Receiver]:
    await _project_with_app(rt)
    async with receiver() as r:
        yield r


async def test_teams_discord_and_cloudevents_get_their_documented_shapes(
    rt: Runtime, hooks: Receiver
) -> None:
    teams = await _add(rt, kind="teams", address=f"{hooks.url}/teams")
    discord = await _add(rt, kind="discord", address=f"{hooks.url}/discord", events="failed")
    ce = await _add(rt, kind="webhook", address=f"{hooks.url}/ce", format="cloudevents", secret=SECRET)
    await _add(rt, kind="discord", address=f"{hooks.url}/only-successes", events="succeeded")
    deployment_id, event_id = await _failed_deploy(rt)
    await _drain(rt)

    [t] = hooks.accepted("teams")
    card = json.loads(t.body)
    assert card["type"] == "message"
    [attachment] = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    assert f"acme/web (production): deploy #{deployment_id} failed" in content["body"][0]["text"]
    facts = {f["title"]: f["value"] for f in content["body"][1]["facts"]}
    assert (
        facts["App"] == "web"
        and facts["Image"] == "ghcr.io/acme/web:2.0"
        and facts["Environment"] == "production"
    )
    assert any("CrashLoopBackOff: boom" in b.get("text", "") for b in content["body"])
    assert content["actions"][0]["type"] == "Action.OpenUrl"

    [d] = hooks.accepted("discord")
    [embed] = json.loads(d.body)["embeds"]
    assert embed["title"].endswith(f"deploy #{deployment_id} failed") and embed["color"] == render.RED
    assert {f["name"]: f["value"] for f in embed["fields"]}["App"] == "web"
    assert "CrashLoopBackOff: boom" in embed["description"] and "panic: boom" in embed["description"]
    assert "only-successes" not in hooks.hits  # its filter said succeeded only

    [c] = hooks.accepted("ce")
    assert c.headers["Content-Type"].startswith("application/cloudevents+json")
    event = json.loads(c.body)
    assert event["specversion"] == "1.0" and event["id"] == str(event_id)
    assert event["source"].endswith("/projects/acme") and event["type"] == "dev.shipit.deploy.failed"
    assert dt.datetime.fromisoformat(event["time"]) and event["datacontenttype"] == "application/json"
    assert event["subject"] == "web" and event["data"]["deployment"]["status"] == "failed"
    assert event["data"]["environment"] == "production"
    # The receiver verifies the signature with the README's own snippet; a changed body fails it.
    verify = readme_verify()
    assert verify(SECRET, c.body, c.headers["X-Shipit-Signature-256"])
    assert not verify(SECRET, c.body + b" ", c.headers["X-Shipit-Signature-256"])
    assert not verify("another-secret", c.body, c.headers["X-Shipit-Signature-256"])
    for hits in hooks.hits.values():
        assert all(SECRET.encode() not in h.body for h in hits)

    for target_id in (teams, discord, ce):
        row = await _row(rt, target_id)
        assert row.last_success_at is not None and row.failures == 0 and row.last_error is None


async def test_a_target_answering_500_then_200_gets_the_notice_once(rt: Runtime, hooks: Receiver) -> None:
    flaky = await _add(rt, kind="webhook", address=f"{hooks.url}/flaky")
    hooks.plan["flaky"] = [500]
    await _failed_deploy(rt)
    await _drain(rt)
    assert [h.status for h in hooks.hits["flaky"]] == [500, 204]
    assert len(hooks.accepted("flaky")) == 1
    row = await _row(rt, flaky)
    assert row.failures == 0 and row.last_success_at is not None and row.last_failure_at is not None
    assert row.last_error == f"webhook target #{flaky} answered 500"  # named by id, never by URL


async def test_a_target_that_keeps_failing_is_marked_and_backs_off_without_blocking_others(
    rt: Runtime, hooks: Receiver
) -> None:
    broken = await _add(rt, kind="teams", address=f"{hooks.url}/broken/secret-token-in-path")
    good = await _add(rt, kind="webhook", address=f"{hooks.url}/good")
    hooks.plan["broken"] = [500] * 50
    await _failed_deploy(rt)
    await _drain(rt)  # returns once only the failing target's long retry is left
    assert len(hooks.accepted("good")) == 1
    assert len(hooks.hits["broken"]) == notice_targets.FAILING_AFTER
    row = await _row(rt, broken)
    assert row.failures == notice_targets.FAILING_AFTER and row.last_success_at is None
    async with rt.sessionmaker() as session:
        [listed] = [
            t for t in await notice_targets.list_for(session, actor=ADMIN, project="acme") if t.id == broken
        ]
        job = await session.scalar(
            select(models.Job).where(models.Job.kind == "notify", models.Job.state == "queued")
        )
    assert listed.failing and listed.last_error == f"teams target #{broken} answered 500"
    assert "secret-token-in-path" not in listed.address  # a Teams URL is shown up to its host only
    assert job is not None and job.payload["target"] == broken
    # Still tried, but not before the failing back-off.
    assert job.run_at > models.utcnow() + dt.timedelta(seconds=notice_targets.FAILING_RETRY_SECONDS / 2)
    assert (await _row(rt, good)).failures == 0


async def test_a_dead_target_does_not_delay_the_others(rt: Runtime, hooks: Receiver) -> None:
    await _add(rt, kind="webhook", address=f"{hooks.url}/dead")
    await _add(rt, kind="discord", address=f"{hooks.url}/alive")
    hooks.hang.add("dead")
    await _failed_deploy(rt)
    worker = Worker(ctx=rt.core, handlers=rt.handlers())
    worker.start()
    try:
        for _ in range(600):
            if hooks.accepted("alive") and hooks.hits.get("dead"):
                break
            await asyncio.sleep(0.05)
        # The other target got its notice while the dead one's request is still unanswered.
        assert len(hooks.accepted("alive")) == 1
        assert [h.status for h in hooks.hits["dead"]] == [204]  # what it would answer: it never did
        # The alive target's job ends a moment after its answer arrives (the worker then marks it done):
        # wait for that; the dead target's job is still running all the while.
        for _ in range(200):
            async with rt.sessionmaker() as session:
                running = list(await session.scalars(select(models.Job).where(models.Job.state == "running")))
            if [j.payload["notifier"] for j in running] == ["webhook"]:
                break
            await asyncio.sleep(0.05)
        assert [j.payload["notifier"] for j in running] == ["webhook"]
    finally:
        with contextlib.suppress(Exception):
            await worker.stop(grace=0.1)


async def test_email_threads_each_deploy_and_never_shows_the_password(rt: Runtime) -> None:
    await _project_with_app(rt)
    with smtp_server(login=("bot", "p@ss-w0rd")) as (sink, port):
        notifier = mail.EmailNotifier(
            ctx=rt.core,
            smtp=mail.Smtp.parse(f"smtp://bot:p%40ss-w0rd@127.0.0.1:{port}", sender="shipit@acme.io"),
        )
        target_id = await _add(rt, kind="email", address="ops@acme.io")
        async with rt.sessionmaker.begin() as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
            assert app is not None
            d = models.Deployment(
                app_id=app.id, revision_number=1, image="ghcr.io/acme/web:3.0", namespace="web",
                trigger="api", actor="user:alice", status="awaiting_approval",
            )  # fmt: skip
            session.add(d)
            await session.flush()
            waiting = models.Event(kind=events.DEPLOY_AWAITING_APPROVAL, dedupe_key="a", deployment_id=d.id,
                                   app_id=app.id, project_id=app.project_id)  # fmt: skip
            session.add(waiting)
            await session.flush()
            target = await notice_targets.view(session, target_id=target_id)
            first = await events.build_notice(session, event=waiting, target=target)
        delivered = await notifier.deliver(first)
        assert delivered is not None and delivered.deployment_refs is not None
        async with rt.sessionmaker.begin() as session:
            row = await session.get(models.Deployment, d.id)
            assert row is not None
            row.status, row.notify_refs = "succeeded", {"email": delivered.deployment_refs}
            done = models.Event(kind=events.DEPLOY_SUCCEEDED, dedupe_key="s", deployment_id=d.id,
                                app_id=app.id, project_id=app.project_id)  # fmt: skip
            session.add(done)
            await session.flush()
            second = await events.build_notice(session, event=done, target=target)
        await notifier.deliver(second)

    one, two = sink.to("ops@acme.io")
    assert one.message["Message-ID"] == f"<shipit.d{d.id}.awaiting_approval.t{target_id}@acme.io>"
    assert one.message["In-Reply-To"] is None
    assert two.message["Message-ID"] == f"<shipit.d{d.id}.succeeded.t{target_id}@acme.io>"
    assert two.message["In-Reply-To"] == one.message["Message-ID"] == two.message["References"]
    for m in (one, two):
        assert "p@ss-w0rd" not in m.message.as_string()


# ---------------------------------------------------------------- a real failed production deploy


async def test_a_failed_production_deploy_emails_the_routed_address_only(
    world: World, simulated_failures: None
) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        project = await projects.get(session, name=world.project)
        await environments.add(session, project_id=project.id, name="staging")
    with smtp_server() as (sink, port):
        rt.core.notifiers["email"] = mail.EmailNotifier(
            ctx=rt.core, smtp=mail.Smtp.parse(f"smtp://127.0.0.1:{port}", sender="shipit@acme.io")
        )
        await _add(
            rt, kind="email", address="oncall@acme.io", environment="production", events="failed,rolled_back"
        )
        await _add(rt, kind="email", address="staging@acme.io", environment="staging", events="*")
        await _add(rt, kind="email", address="wins@acme.io", events="succeeded")
        async with rt.sessionmaker.begin() as session:
            await apps.create(
                session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
                changes=apps.AppChanges(image="ghcr.io/acme/web:fail-boom", progress_deadline_seconds=20),
            )  # fmt: skip
            d = (
                await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
            ).deployment
        await run_until_idle(rt.core, handlers=rt.handlers(), within=120)
        async with rt.sessionmaker() as session:
            row = await session.get(models.Deployment, d.id)
            assert row is not None and row.status == deploys.FAILED

    assert [m.recipients for m in sink.got] == [["oncall@acme.io"]]  # not staging's, not wins'
    [mail_] = sink.got
    m = mail_.message
    assert mail_.sender == "shipit@acme.io" and m["From"] == "shipit@acme.io" and m["To"] == "oncall@acme.io"
    assert m["Subject"] == f"[shipit] acme/web (production): deploy #{d.id} failed"
    assert m["Message-ID"].startswith(f"<shipit.d{d.id}.failed.t") and m["In-Reply-To"] is None
    assert m["X-Shipit-Event"] == "deploy.failed"
    assert m.get_content_type() == "multipart/alternative"
    plain = m.get_body(preferencelist=("plain",))
    html = m.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert row.error is not None
    assert row.error.split(":")[0] in plain.get_content() and "Environment: production" in plain.get_content()
    assert "<table>" in html.get_content() and "ghcr.io/acme/web:fail-boom" in html.get_content()


@pytest.mark.both_databases
async def test_successes_in_a_row_write_the_target_once_on_sqlite(rt: Runtime, hooks: Receiver) -> None:
    """A burst of deliveries does not rewrite a target that already says "fine" (SQLite, one process);
    a failure is always written, and the success after it too.  PostgreSQL replicas always write."""
    target_id = await _add(rt, kind="webhook", address=f"{hooks.url}/ok")
    async with rt.sessionmaker() as session:
        view = await notice_targets.view(session, target_id=target_id)
    assert view is not None
    assert await notice_targets.record(rt.sessionmaker, target=view, error=None) == 0
    first = (await _row(rt, target_id)).last_success_at
    await asyncio.sleep(0.01)
    assert await notice_targets.record(rt.sessionmaker, target=view, error=None) == 0
    again = (await _row(rt, target_id)).last_success_at
    assert first is not None and again is not None
    assert (again == first) == (rt.engine.dialect.name == "sqlite")
    assert await notice_targets.record(rt.sessionmaker, target=view, error="answered 500") == 1
    assert await notice_targets.record(rt.sessionmaker, target=view, error=None) == 0
    row = await _row(rt, target_id)
    assert row.failures == 0 and row.last_success_at is not None and row.last_success_at > again
