"""A Slack message is posted once, even when the process dies between Slack accepting it and the
database recording it.  chat.postMessage has no idempotency key: every card (a deploy's, a build's)
carries message metadata, and a retried job looks for it in the channel's history before posting.

Real parts: the notify jobs are queued by core's outbox and run by the real job queue and notifier
against the real database; Slack is the fake over HTTP.  The crash is the process's task ending
while it awaits Slack's answer (Slack has done the post), so nothing after it is committed and its
job keeps its lease; the restart is that lease running out and a fresh process taking the job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select, update

from bot import notifier as notifier_mod
from core import environments, events, jobs, notices, shared, worker
from shipit.runtime import Runtime
from storage import models
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.both_databases

CHANNEL = "C0ONCE001"


async def _seed(rt: Runtime) -> int:
    """A project whose Slack channel is a notification target, an app, and one queued deploy."""
    async with rt.sessionmaker.begin() as session:
        session.add_all(
            [
                models.Project(id=1, name="acme", slack_channel=CHANNEL),
                models.Cluster(id=1, name="c", kubeconfig_enc=b"x"),
            ]
        )
        await session.flush()
        env = await environments.add(session, project_id=1, name=environments.DEFAULT)
        session.add(
            models.App(id=1, name="web", project_id=1, environment_id=env.id, cluster_id=1, namespace="n")
        )
        session.add(models.NotificationTarget(project_id=1, kind="slack", address=CHANNEL, created_by="test"))
        d = models.Deployment(app_id=1, revision_number=1, image="ghcr.io/acme/web:1", namespace="n",
                              trigger="api", actor="user:a", status="queued")  # fmt: skip
        session.add(d)
        await session.flush()
        return d.id


def _start_process(rt: Runtime, fake: FakeSlack) -> None:
    """A process's Slack notifier: its own client and memory (nothing of another process's posts)."""
    rt.core.notifiers["slack"] = notifier_mod.SlackNotifier(
        client=AsyncWebClient(base_url=fake.url, token=fake.bot_token),
        sessionmaker=rt.sessionmaker,
        pacer=notifier_mod.Pacer(rate=1000.0, burst=100),
    )


async def _deploy_event(rt: Runtime, deployment_id: int, *, kind: str, step: str, status: str) -> None:
    async with rt.sessionmaker.begin() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        d.status = status
        await events.emit_for_deployment(
            session, ctx=rt.core, kind=kind, deployment=d, project_id=1, step=step
        )


async def _crash_after_slack_accepts(rt: Runtime, fake: FakeSlack, method: str) -> jobs.JobView:
    """Claim the next job and run it as a worker does, until Slack has done `method`: then the
    process dies before it reads the answer."""
    async with rt.sessionmaker.begin() as session:
        job = await jobs.claim(
            session,
            owner="dead-process",
            lease_seconds=30,
            skip_locked=rt.engine.dialect.name == "postgresql",
        )
    assert job is not None and job.attempts == 1
    loop = asyncio.get_running_loop()
    running: list[asyncio.Task[None]] = []
    fake.when_accepted(method, lambda _answer: loop.call_soon_threadsafe(running[0].cancel))
    running.append(asyncio.create_task(events.run_notify_job(ctx=rt.core, job=job)))
    with pytest.raises(asyncio.CancelledError):
        await running[0]
    return job


async def _restart(rt: Runtime, fake: FakeSlack, job: jobs.JobView) -> None:
    """The dead process's lease runs out; a new process (nothing in memory) drains the queue."""
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Job)
            .where(models.Job.id == job.id)
            .values(lease_until=models.utcnow() - dt.timedelta(seconds=1))
        )
    _start_process(rt, fake)
    await _drain(rt)


async def _queued(rt: Runtime, fake: FakeSlack) -> int:
    """The seeded deploy, its queued event in the outbox of a process started with its own notifier."""
    deployment_id = await _seed(rt)
    _start_process(rt, fake)
    await _deploy_event(rt, deployment_id, kind=events.DEPLOY_QUEUED, step="requested", status="queued")
    return deployment_id


async def _drain(rt: Runtime) -> None:
    await worker.run_until_idle(rt.core, handlers=rt.handlers(), within=30)


async def _job(rt: Runtime, job_id: int) -> models.Job:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job_id)
    assert row is not None
    return row


async def _card_refs(rt: Runtime, deployment_id: int) -> dict[str, object]:
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
    assert d is not None
    return dict((d.notify_refs or {}).get("slack") or {})


async def test_a_card_posted_just_before_a_crash_is_adopted_not_posted_again(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    deployment_id = await _queued(rt, fake_slack)
    job = await _crash_after_slack_accepts(rt, fake_slack, "chat.postMessage")

    # Slack has the card; the database knows nothing of it and the job is still the dead process's.
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    assert card["metadata"] == {
        "event_type": notifier_mod.CARD_EVENT,
        "event_payload": {"deployment_id": deployment_id, "ref": "slack"},
    }
    assert "ts" not in await _card_refs(rt, deployment_id)
    assert (await _job(rt, job.id)).state == jobs.RUNNING

    await _restart(rt, fake_slack, job)
    # Still one card: the retry found it in the channel's history, recorded it and redrew it.
    [again] = fake_slack.messages(CHANNEL, include_replies=False)
    assert again["ts"] == card["ts"]
    assert (await _card_refs(rt, deployment_id))["ts"] == card["ts"]
    assert len(fake_slack.message_versions(CHANNEL, card["ts"])) == 2
    [look] = fake_slack.calls("conversations.history")
    assert look.ok and look.arg("channel") == CHANNEL and look.arg("include_all_metadata") in ("1", "true")
    assert int(look.arg("limit")) == notifier_mod.HISTORY_LIMIT and float(look.arg("oldest")) > 0
    assert len(fake_slack.calls("chat.postMessage")) == 1
    done = await _job(rt, job.id)
    assert (done.state, done.attempts) == (jobs.DONE, 2)

    # The deploy's next event updates that same card in place, without looking again.
    await _deploy_event(rt, deployment_id, kind="deploy.started", step="started", status="running")
    await _drain(rt)
    [card_now] = fake_slack.messages(CHANNEL, include_replies=False)
    assert card_now["ts"] == card["ts"] and "is rolling out" in str(card_now["blocks"])
    assert len(fake_slack.message_versions(CHANNEL, card["ts"])) == 3
    assert len(fake_slack.calls("conversations.history")) == 1


async def test_failure_details_threaded_just_before_a_crash_are_not_threaded_again(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    deployment_id = await _queued(rt, fake_slack)
    await _drain(rt)
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    async with rt.sessionmaker.begin() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        d.error, d.logs = "CrashLoopBackOff: boom", ["panic: boom"]
    await _deploy_event(rt, deployment_id, kind="deploy.failed", step="final", status="failed")
    # The card is redrawn, the logs are threaded under it, and the process dies before recording that.
    job = await _crash_after_slack_accepts(rt, fake_slack, "chat.postMessage")
    [reply] = fake_slack.thread(CHANNEL, card["ts"])
    assert "failure_posted" not in await _card_refs(rt, deployment_id)

    await _restart(rt, fake_slack, job)
    assert [m["ts"] for m in fake_slack.thread(CHANNEL, card["ts"])] == [reply["ts"]]
    [look] = fake_slack.calls("conversations.replies")
    assert look.ok and look.arg("ts") == card["ts"]
    assert (await _card_refs(rt, deployment_id))["failure_posted"] is True
    assert len(fake_slack.messages(CHANNEL, include_replies=False)) == 1
    assert "CrashLoopBackOff: boom" in str(fake_slack.message(CHANNEL, card["ts"])["blocks"])


async def test_a_first_attempt_posts_with_metadata_and_makes_no_other_call(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    deployment_id = await _queued(rt, fake_slack)
    await _drain(rt)
    await _deploy_event(rt, deployment_id, kind="deploy.started", step="started", status="running")
    await _drain(rt)
    assert [c.api for c in fake_slack.calls()] == ["chat.postMessage", "chat.update"]
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    assert card["metadata"]["event_payload"] == {"deployment_id": deployment_id, "ref": "slack"}


async def test_a_build_card_posted_just_before_a_crash_is_not_posted_again(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    await _seed(rt)
    _start_process(rt, fake_slack)
    async with rt.sessionmaker.begin() as session:
        event_id = await events.emit(
            session, ctx=rt.core, kind=notices.BUILD_FAILED, dedupe_key="build:1:failed", project_id=1,
            app_id=1, payload={"build": 1, "app": "web", "sha": "a" * 40, "ref": "refs/heads/main",
                               "actor": "github:alice", "error": "buildah bud failed", "status": "failed"},
        )  # fmt: skip
    assert event_id is not None
    job = await _crash_after_slack_accepts(rt, fake_slack, "chat.postMessage")
    [message] = fake_slack.messages(CHANNEL)
    assert message["metadata"]["event_type"] == notifier_mod.BUILD_CARD_EVENT
    assert message["metadata"]["event_payload"] == {"build_id": 1, "run": 0, "ref": "slack"}
    mark = "slack-build:1:0:slack"  # where the card is, for the build's later events
    assert await shared.read_mark(rt.sessionmaker, key=mark) is None

    await _restart(rt, fake_slack, job)
    [again] = fake_slack.messages(CHANNEL)
    assert again["ts"] == message["ts"]
    assert (
        len(fake_slack.calls("chat.postMessage")) == 1 and len(fake_slack.calls("conversations.history")) == 1
    )
    # Recorded now: a later event of the build (or retry) updates it without even looking.
    assert await shared.read_mark(rt.sessionmaker, key=mark) is not None
    assert (await _job(rt, job.id)).state == jobs.DONE


async def test_without_the_history_scope_a_retry_posts_as_before_and_says_so_once(
    rt: Runtime, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """An app installed before the manifest asked for channels:history: the retry cannot look, so it
    posts (the one double this cannot prevent), and the log says what to add, once."""
    fake_slack.set_scopes(fake_slack.bot_token, "commands,chat:write,chat:write.public,users:read")
    await _queued(rt, fake_slack)
    job = await _crash_after_slack_accepts(rt, fake_slack, "chat.postMessage")
    with caplog.at_level(logging.WARNING, logger="bot.notifier"):
        await _restart(rt, fake_slack, job)
    [refused] = fake_slack.calls("conversations.history")
    assert refused.response["error"] == "missing_scope" and refused.response["needed"] == "channels:history"
    assert len(fake_slack.messages(CHANNEL, include_replies=False)) == 2
    said = [r.getMessage() for r in caplog.records if "cannot read the history" in r.getMessage()]
    assert len(said) == 1 and "channels:history" in said[0], said
    assert (await _job(rt, job.id)).state == jobs.DONE


async def test_paced_notify_jobs_are_not_counted_as_attempts(rt: Runtime, fake_slack: FakeSlack) -> None:
    """Our own pacing stops a job before it sends anything: its attempt is given back, so a burst of
    cards never looks in the history (only a job that may have posted does)."""
    deployment_id = await _seed(rt)
    rt.core.notifiers["slack"] = notifier_mod.SlackNotifier(
        client=AsyncWebClient(base_url=fake_slack.url, token=fake_slack.bot_token),
        sessionmaker=rt.sessionmaker,
        pacer=notifier_mod.Pacer(rate=1000.0, burst=100),
    )
    slack = rt.core.notifiers["slack"]
    assert isinstance(slack, notifier_mod.SlackNotifier)
    # The channel's bucket is taken for the next 10 s: the card's first run is paced.
    slack.pacer.backoff(CHANNEL, 10.0)
    await _deploy_event(rt, deployment_id, kind=events.DEPLOY_QUEUED, step="requested", status="queued")
    await _drain(rt)  # runs it once: its retry waits for the channel
    async with rt.sessionmaker() as session:
        job = await session.scalar(select(models.Job).where(models.Job.kind == events.NOTIFY_JOB))
    assert job is not None
    assert (job.state, job.attempts) == (jobs.QUEUED, 0), (job.state, job.attempts, job.last_error)
    assert "pacing" in (job.last_error or "")
    slack.pacer = notifier_mod.Pacer(rate=1000.0, burst=100)
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Job).where(models.Job.id == job.id).values(run_at=models.utcnow())
        )
    await _drain(rt)
    assert (await _job(rt, job.id)).attempts == 1
    assert [c.api for c in fake_slack.calls()] == ["chat.postMessage"]


async def _claimed_by_a_process_that_dies(rt: Runtime) -> jobs.JobView:
    """The card's notify job claimed by a process that dies before it sends anything."""
    async with rt.sessionmaker.begin() as session:
        job = await jobs.claim(
            session,
            owner="dead-process",
            lease_seconds=30,
            skip_locked=rt.engine.dialect.name == "postgresql",
        )
    assert job is not None and job.kind == events.NOTIFY_JOB
    return job


async def _post_as(fake: FakeSlack, token: str, *, metadata: dict[str, object]) -> str:
    """A message posted in the channel with another token, carrying `metadata`."""
    answer = await AsyncWebClient(base_url=fake.url, token=token).chat_postMessage(
        channel=CHANNEL, text="a deploy card", metadata=metadata
    )
    return str(answer["ts"])


async def test_a_card_with_our_metadata_posted_by_another_bot_is_not_adopted(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    """A second shipit installed in the same workspace (its own bot) posts a card whose metadata is
    ours (its deploy #1 is ours too): our retry must not adopt and edit it, but post its own."""
    other = fake_slack.add_bot(user_id="U0OTHERSHIPIT")
    deployment_id = await _queued(rt, fake_slack)
    job = await _claimed_by_a_process_that_dies(rt)
    metadata = notifier_mod.SlackNotifier._card_metadata(deployment_id, "slack")
    theirs = await _post_as(fake_slack, other, metadata=metadata)

    await _restart(rt, fake_slack, job)
    # Looked, found theirs, asked who we are, and posted our own card: theirs is untouched.
    assert [c.api for c in fake_slack.calls()] == [
        "chat.postMessage",
        "conversations.history",
        "auth.test",
        "chat.postMessage",
    ]
    [me] = fake_slack.calls("auth.test")
    assert me.response["bot_id"] == fake_slack.bot_id != fake_slack.bot_id_of(other)
    ours, foreign = _by_bot(fake_slack)
    assert foreign["ts"] == theirs and len(fake_slack.message_versions(CHANNEL, theirs)) == 1
    assert ours["bot_id"] == fake_slack.bot_id and ours["ts"] != theirs
    assert (await _card_refs(rt, deployment_id))["ts"] == ours["ts"]
    assert (await _job(rt, job.id)).state == jobs.DONE


def _by_bot(fake: FakeSlack) -> tuple[dict[str, object], dict[str, object]]:
    """The channel's two cards: ours (the default bot's), then the other bot's."""
    cards = fake.messages(CHANNEL, include_replies=False)
    ours = [m for m in cards if m["bot_id"] == fake.bot_id]
    others = [m for m in cards if m["bot_id"] != fake.bot_id]
    assert len(ours) == 1 and len(others) == 1, cards
    return ours[0], others[0]


async def test_our_card_is_adopted_behind_a_newer_lookalike_from_another_bot(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    """Our card was posted just before the crash; another bot's card with the same metadata came
    after it (so it is the first the history shows): the retry passes it by and adopts ours."""
    other = fake_slack.add_bot(user_id="U0OTHERSHIPIT")
    deployment_id = await _queued(rt, fake_slack)
    job = await _crash_after_slack_accepts(rt, fake_slack, "chat.postMessage")
    [card] = fake_slack.messages(CHANNEL, include_replies=False)
    theirs = await _post_as(fake_slack, other, metadata=card["metadata"])

    await _restart(rt, fake_slack, job)
    ours, foreign = _by_bot(fake_slack)
    assert ours["ts"] == card["ts"] and foreign["ts"] == theirs
    assert len(fake_slack.calls("chat.postMessage")) == 2  # ours before the crash, and theirs
    assert len(fake_slack.message_versions(CHANNEL, card["ts"])) == 2  # redrawn by the retry
    assert len(fake_slack.message_versions(CHANNEL, theirs)) == 1
    assert (await _card_refs(rt, deployment_id))["ts"] == card["ts"]
    assert len(fake_slack.calls("auth.test")) == 1
    assert (await _job(rt, job.id)).state == jobs.DONE
