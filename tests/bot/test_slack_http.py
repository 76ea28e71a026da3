"""The Slack channel over real HTTP: signed requests into the real app, the fake Slack Web API out.

These tests need no Kubernetes: the cluster `hanging` accepts requests and never answers, so a deploy
that starts stays running and the next one stays queued.  The rollouts themselves are in
test_slack_rollouts.py against the real control plane.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text

from bot import views
from core import deploys, logctx, previews, projects
from shipit import runtime
from shipit.main import create_app
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    MALLORY,
    OWEN,
    TYPED_IN,
    SlackSender,
    add_app,
    button_ids,
    card_of,
    card_text,
    deployments,
    sign,
    web_on_a_closed_port,
)
from tests.conftest import ADMIN, World, database_bytes, serving
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually

# ---------------------------------------------------------------- transport and security


async def test_switched_off_without_signing_secret(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    off = settings.model_copy(update={"slack_signing_secret": None, "slack_bot_token": None})
    caplog.set_level(logging.INFO)
    rt = await runtime.build(off)
    try:
        async with serving(create_app(rt=rt)) as url:
            import httpx

            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.post(
                    "/slack/events", content=b"x", headers={"Content-Type": "text/plain"}
                )
    finally:
        await runtime.stop(rt)
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "type": "unavailable",
            "message": "slack: switched off (SHIPIT_SLACK_SIGNING_SECRET is not set)",
        }
    }
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slack:")]
    assert lines == ["slack: switched off (SHIPIT_SLACK_SIGNING_SECRET is not set)"]
    assert "slack" not in rt.core.notifiers


async def test_bad_signature_and_stale_timestamp_are_refused(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    body = slack.command_body("deploy web 1.1", user=ALICE)
    now = int(time.time())
    forged = await slack.post(
        body,
        content_type="application/x-www-form-urlencoded",
        signature=sign(body, timestamp=now, secret="not-the-secret"),
    )
    assert forged.status_code == 401
    unsigned = await slack.post(body, content_type="application/x-www-form-urlencoded", signature="v0=00")
    assert unsigned.status_code == 401
    # Correctly signed, but six minutes old: a replay.
    stale = now - 6 * 60
    replay = await slack.post(body, content_type="application/x-www-form-urlencoded", timestamp=stale)
    assert replay.status_code == 401
    # Signed over a different body than the one sent.
    tampered = await slack.post(
        body.replace(b"1.1", b"6.6"),
        content_type="application/x-www-form-urlencoded",
        signature=sign(body, timestamp=now),
        timestamp=now,
    )
    assert tampered.status_code == 401
    assert await deployments(offline.rt) == []
    # And the same request, signed properly, is accepted.
    ok = await slack.post(body, content_type="application/x-www-form-urlencoded")
    assert ok.status_code == 200
    assert len(await deployments(offline.rt)) == 1


async def test_url_verification_challenge(slack: SlackSender) -> None:
    body = json.dumps(
        {
            "token": "x",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    ).encode()
    response = await slack.post(body, content_type="application/json")
    assert response.status_code == 200
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


# ---------------------------------------------------------------- replies


async def test_help_typos_and_unknown_apps(slack: SlackSender, offline: World) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    await add_app(offline.rt, name="api", cluster=offline.cluster, image="ghcr.io/acme/api:1.0")
    reply = await slack.command("help", user=ALICE)
    assert reply["response_type"] == "ephemeral"
    assert "/shipit deploy &lt;app&gt; &lt;image|tag&gt;" in reply["text"]
    assert "/shipit scale web replicas=3" in reply["text"]
    reply = await slack.command("help scale", user=ALICE)
    assert "/shipit scale web min=2 max=10 cpu=70" in reply["text"]

    reply = await slack.command("deplyo web 1.4", user=ALICE)
    assert "Did you mean `deploy`?" in reply["text"]
    assert "/shipit deploy &lt;app&gt; &lt;image|tag&gt;" in json.dumps(reply["blocks"])

    reply = await slack.command("deploy nope 1.5", user=ALICE)
    assert "no app named 'nope'; your apps: api, web" in reply["text"]

    reply = await slack.command("apps", user=CAROL)
    assert "*api*" in reply["text"] and "*web*" in reply["text"]

    reply = await slack.command("apps", user=MALLORY)
    assert "You can see no apps yet" in reply["text"]
    reply = await slack.command("status", user=CAROL)
    assert "• *api* (acme): not deployed" in reply["text"] and "• *web* (acme): not deployed" in reply["text"]
    assert await deployments(offline.rt) == []


async def test_deploy_without_an_image_is_a_usage_message_not_a_redeploy(
    slack: SlackSender, offline: World
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    for typed in ("deploy web", "deploy web   ", "deploy web ''", "deploy web \u201c\u201d"):
        reply = await slack.command(typed, user=ALICE)
        assert reply["response_type"] == "ephemeral"
        assert "`deploy` needs an image or a tag" in reply["text"], reply["text"]
        assert "/shipit deploy &lt;app&gt; &lt;image|tag&gt;" in reply["text"], reply["text"]
    assert await deployments(offline.rt) == []


async def test_refusals_name_the_role_needed(slack: SlackSender, offline: World) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    reply = await slack.command("deploy web 1.1", user=CAROL)
    assert "deploying in project acme needs the developer role; you have viewer" in reply["text"]
    reply = await slack.command("scale web replicas=3", user=ALICE)
    assert "scaling in project acme needs the admin role; you have developer" in reply["text"]
    reply = await slack.command(f"access acme <@{CAROL.id}|carol> developer", user=DAVE)
    assert "managing access in project acme needs the owner role; you have admin" in reply["text"]
    reply = await slack.command("deploy web 1.1", user=MALLORY)
    assert "no app named 'web'" in reply["text"]  # people outside the project do not learn it exists
    assert await deployments(offline.rt) == []


async def test_scale_sets_and_resets_the_scale_down_window_and_refuses_it_without_autoscaling(
    slack: SlackSender, offline: World
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")

    async def window() -> int | None:
        async with offline.rt.sessionmaker() as session:
            app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        return app.scale_down_window

    reply = await slack.command("scale web window=30", user=DAVE)
    assert "scale_down_window needs autoscaling" in reply["text"], reply["text"]
    assert await deployments(offline.rt) == []
    await slack.command("scale web min=1 max=4 cpu=50 window=30", user=DAVE)
    assert await window() == 30
    reply = await slack.command("scale web replicas=2 window=30", user=DAVE)
    assert "either replicas=N or min/max/cpu/window" in reply["text"], reply["text"]
    await slack.command("scale web max=5", user=DAVE)
    assert await window() == 30, "a change of max keeps the window"
    await slack.command("scale web window=default", user=DAVE)
    assert await window() is None
    await slack.command("scale web window=0", user=DAVE)
    assert await window() == 0
    await slack.command("scale web auto off", user=DAVE)
    assert await window() is None
    assert len(await deployments(offline.rt)) == 5


async def test_access_lock_pause_and_their_effects(slack: SlackSender, offline: World) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    reply = await slack.command(f"access acme <@{MALLORY.id}|mallory> viewer", user=OWEN)
    assert f"<@{MALLORY.id}> is now *viewer* in project *acme*" in reply["text"]
    assert "*web*" in (await slack.command("apps", user=MALLORY))["text"]

    reply = await slack.command("lock web release freeze", user=ALICE)
    assert "is locked: release freeze" in reply["text"]
    reply = await slack.command("deploy web 1.1", user=BOB)
    assert "web is locked by alice: release freeze. Unlock it first." in reply["text"]
    await slack.command("unlock web", user=ALICE)

    reply = await slack.command("pause web", user=ALICE)
    assert "Auto-deploy of *web* is paused" in reply["text"]
    async with rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None and app.auto_deploy_paused and app.locked_reason is None
    await slack.command("resume web", user=ALICE)

    reply = await slack.command(f"access acme <@{MALLORY.id}> none", user=OWEN)
    assert "no longer has a role" in reply["text"]
    assert "You can see no apps yet" in (await slack.command("apps", user=MALLORY))["text"]
    async with rt.sessionmaker() as session:
        actions = list(
            await session.scalars(
                select(models.AuditEvent.action).where(models.AuditEvent.channel == "slack")
            )
        )
    assert actions == [
        "access.grant", "app.lock", "app.unlock", "app.pause", "app.resume", "access.revoke",
    ]  # fmt: skip


async def test_preview_approve_deploys_a_forks_waiting_preview_for_developers_only(
    slack: SlackSender, offline: World
) -> None:
    rt = offline.rt
    await add_app(
        rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", git_repo="acme/web",
        image_template="ghcr.io/acme/web:{sha}", previews_enabled=True, preview_domain="preview.acme.dev",
        previews_from_forks="approved",
    )  # fmt: skip
    sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    async with rt.sessionmaker.begin() as session:
        opened = await previews.on_pull_request(
            session, ctx=rt.core, repo="acme/web", number=42, action="opened", head_sha=sha,
            head_ref="fix", sender="contributor", head_repo="contributor/web", is_fork=True,
        )  # fmt: skip
    assert [d.action for d in opened.decisions] == ["wait"]
    reply = await slack.command("preview approve web 42", user=CAROL)
    assert (
        "approving a preview from a fork in project acme needs the developer role; you have viewer"
        in (reply["text"])
    )
    assert await deployments(rt) == []
    reply = await slack.command("preview approve web 42", user=ALICE)
    assert "You approved commit `6dcb09b` of pull request #42 (from `contributor/web`)" in reply["text"]
    assert "without the app's secrets" in reply["text"]
    [deployment] = await deployments(rt)
    assert (deployment.actor, deployment.git_sha, deployment.namespace) == (
        f"slack:{ALICE.id}",
        sha,
        "web-pr-42",
    )
    reply = await slack.command("preview approve web 42", user=BOB)
    assert "was already approved by slack:U0ALICE01" in reply["text"]


async def test_unexpected_errors_show_a_reference_and_log_the_traceback(
    slack: SlackSender, offline: World, caplog: pytest.LogCaptureFixture
) -> None:
    await add_app(offline.rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    # A real failure, not a mock: the audit table is gone, so the transaction cannot complete.
    async with offline.rt.engine.begin() as conn:
        await conn.execute(text("DROP TABLE audit_events"))
    caplog.set_level(logging.INFO)
    reply = await slack.command("pause web", user=ALICE)
    assert reply["text"].startswith(":warning: internal error, reference ")
    ref = reply["text"].rsplit(" ", 1)[-1]
    assert len(ref) == 12
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is logged under the reference
    async with offline.rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None and not app.auto_deploy_paused  # rolled back with the failure


# ---------------------------------------------------------------- the card and its buttons


async def test_deploy_posts_one_card_in_the_project_channel(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    reply = await slack.command("deploy web 1.1", user=ALICE)
    assert reply["response_type"] == "ephemeral"
    [first] = await deployments(rt)
    assert f"Deploy #{first.id} of *web* `ghcr.io/acme/web:1.1` (revision 1) is queued" in reply["text"]
    assert f"<#{CHANNEL}>" in reply["text"]
    assert first.actor == ALICE.subject and first.trigger == "slack" and first.image == "ghcr.io/acme/web:1.1"

    channel, ts = await eventually(lambda: card_of(rt, fake_slack, first.id), what="card posted")
    assert channel == CHANNEL
    # A second deploy of the same app queues behind the first (the hanging cluster keeps it running).
    await eventually(lambda: _status_is(rt, first.id, "running"), what="first deploy running")
    await slack.command("deploy web 1.2", user=BOB)
    second = (await deployments(rt))[-1]
    channel2, ts2 = await eventually(lambda: card_of(rt, fake_slack, second.id), what="second card")
    assert ts2 != ts
    card = fake_slack.message(channel2, ts2)
    assert "is queued" in card_text(card) and "Position 2 in the queue" in card_text(card)
    assert button_ids(card) == {views.ACTION_CANCEL}
    assert f"<@{BOB.id}>" in card_text(card)

    # The first card shows the rollout; it was updated in place, never reposted.
    await eventually(
        lambda: _async(
            fake_slack.message(channel, ts)["text"].endswith(f"rolling out (0/0 ready) (deploy #{first.id})")
        ),
        what="first card rolling out",
    )
    posts = [c for c in fake_slack.calls("chat.postMessage") if c.arg("channel") == CHANNEL and c.ok]
    assert len(posts) == 2  # one message per deploy
    assert not fake_slack.calls("chat.postMessage", ok=False)

    # Cancel on the queued card.
    response = await slack.click(views.ACTION_CANCEL, user=ALICE, channel=channel2, message_ts=ts2)
    assert response.status_code == 200
    await eventually(lambda: _status_is(rt, second.id, "cancelled"), what="cancelled")
    await eventually(
        lambda: _async("was cancelled" in card_text(fake_slack.message(channel2, ts2))), what="card cancelled"
    )
    card = fake_slack.message(channel2, ts2)
    assert "cancelled by alice" in card_text(card) and button_ids(card) == set()
    reply = await eventually(lambda: _async(fake_slack.ephemerals(user=ALICE.id)), what="ephemeral")
    assert f"You cancelled deploy #{second.id} of *web*" in reply[-1]["text"]


async def test_protected_app_needs_someone_else_and_a_double_click_acts_once(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    reply = await slack.command("deploy web 1.1", user=ALICE)
    assert "waits for someone else's approval" in reply["text"]
    [d] = await deployments(rt)
    assert d.status == "awaiting_approval"
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card")
    card = fake_slack.message(channel, ts)
    assert button_ids(card) == {views.ACTION_APPROVE, views.ACTION_REJECT}
    assert "waiting for approval" in card_text(card)

    # The requester's own Approve is refused, with the reason, and changes nothing.
    await slack.click(views.ACTION_APPROVE, user=ALICE, channel=channel, message_ts=ts)
    refused = await eventually(lambda: _async(fake_slack.ephemerals(user=ALICE.id)), what="refusal")
    assert "nobody approves their own deploy" in refused[-1]["text"]
    assert (await _status(rt, d.id)) == "awaiting_approval"
    # A viewer cannot approve either.
    await slack.click(views.ACTION_APPROVE, user=CAROL, channel=channel, message_ts=ts)
    refused = await eventually(lambda: _async(fake_slack.ephemerals(user=CAROL.id)), what="viewer refusal")
    assert "needs the developer role; you have viewer" in refused[-1]["text"]

    # Bob double-clicks Approve: two requests at once, one approval.
    first, second = await asyncio.gather(
        slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts),
        slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts),
    )
    assert first.status_code == second.status_code == 200
    answers = await eventually(
        lambda: _async(len(fake_slack.ephemerals(user=BOB.id)) >= 2 and fake_slack.ephemerals(user=BOB.id)),
        what="both answers",
    )
    texts = sorted(a["text"] for a in answers)
    assert any(f"You approved deploy #{d.id}" in t for t in texts)
    assert any(f"That was already done for deploy #{d.id}" in t for t in texts)
    async with rt.sessionmaker() as session:
        approvals = list(
            await session.scalars(
                select(models.AuditEvent).where(models.AuditEvent.action == "deploy.approve")
            )
        )
        jobs = list(await session.scalars(select(models.Job).where(models.Job.kind == deploys.DEPLOY_JOB)))
    assert len(approvals) == 1 and approvals[0].actor == BOB.subject
    assert len(jobs) == 1
    await eventually(
        lambda: _async(
            f"approved by <@{BOB.id}>" in card_text(fake_slack.message(channel, ts))
            or "rolling out" in card_text(fake_slack.message(channel, ts))
        ),
        what="card moved on",
    )
    assert button_ids(fake_slack.message(channel, ts)) <= {views.ACTION_CANCEL}


async def test_reject_button(slack: SlackSender, offline: World, fake_slack: FakeSlack) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    await slack.command("deploy web 1.1", user=ALICE)
    [d] = await deployments(rt)
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card")
    await slack.click(views.ACTION_REJECT, user=BOB, channel=channel, message_ts=ts)
    await eventually(lambda: _status_is(rt, d.id, "cancelled"), what="rejected")
    await eventually(
        lambda: _async("rejected by bob" in card_text(fake_slack.message(channel, ts))), what="card rejected"
    )
    assert button_ids(fake_slack.message(channel, ts)) == set()
    # Who rejected it is the clicker's subject in a column of its own, not only the card's words.
    [rejected] = await deployments(rt)
    assert (rejected.rejected_by, rejected.approved_by) == (BOB.subject, None)
    async with rt.sessionmaker() as session:
        audited = await session.scalar(
            select(models.AuditEvent.actor).where(models.AuditEvent.action == "deploy.reject")
        )
    assert audited == BOB.subject


async def test_a_forged_button_value_is_refused(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    await slack.command("deploy web 1.1", user=ALICE)
    [d] = await deployments(rt)
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card")
    await slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts, value="{not ours")
    answer = await eventually(lambda: _async(fake_slack.ephemerals(user=BOB.id)), what="answer")
    assert "not one of shipit's" in answer[-1]["text"]
    assert await _status(rt, d.id) == "awaiting_approval"


async def test_without_a_project_channel_the_card_goes_where_the_command_was_typed(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    async with rt.sessionmaker.begin() as session:
        # '' clears the project's channel: its Slack notification target goes (core/notices).
        await projects.update(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel="")
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    reply = await slack.command("deploy web 1.1", user=ALICE, channel=TYPED_IN)
    assert f"<#{TYPED_IN}>" in reply["text"]
    [d] = await deployments(rt)
    channel, _ = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card")
    assert channel == TYPED_IN


# ---------------------------------------------------------------- events


async def test_a_retried_event_acts_once(slack: SlackSender, offline: World, fake_slack: FakeSlack) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    event = {
        "type": "app_mention",
        "user": ALICE.id,
        "text": f"<@{fake_slack.bot_user_id}> deploy web 1.7",
        "ts": "1700000001.000100",
        "channel": TYPED_IN,
        "event_ts": "1700000001.000100",
    }
    first = await slack.event(event, event_id="Ev0RETRY01")
    assert first.status_code == 200
    for n in (1, 2):
        again = await slack.event(event, event_id="Ev0RETRY01", retry_num=n)
        assert again.status_code == 200
    await eventually(
        lambda: _async(
            [c for c in fake_slack.calls("chat.postMessage") if c.arg("thread_ts") == "1700000001.000100"]
        ),
        what="reply in the mention's thread",
    )
    [d] = await deployments(rt)
    assert d.image == "ghcr.io/acme/web:1.7" and d.actor == ALICE.subject
    await asyncio.sleep(0.3)  # give a (wrong) second reply the chance to show up before counting
    replies = [c for c in fake_slack.calls("chat.postMessage") if c.arg("thread_ts") == "1700000001.000100"]
    assert len(replies) == 1
    assert "waits for someone else's approval" in replies[0].arg("text")
    # A different event is a different request.
    await slack.event(
        {**event, "text": f"<@{fake_slack.bot_user_id}> status web", "ts": "1700000002.000100"},
        event_id="Ev0OTHER01",
    )
    await eventually(
        lambda: _async(
            [c for c in fake_slack.calls("chat.postMessage") if c.arg("thread_ts") == "1700000002.000100"]
        ),
        what="status reply",
    )


async def test_other_events_are_acknowledged(slack: SlackSender) -> None:
    response = await slack.event(
        {
            "type": "reaction_added",
            "user": ALICE.id,
            "reaction": "tada",
            "item": {"type": "message", "channel": CHANNEL, "ts": "1.2"},
        },
        event_id="Ev0REACT01",
    )
    assert response.status_code == 200


# ---------------------------------------------------------------- secrets


async def test_secret_values_never_come_back(
    slack: SlackSender, offline: World, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    rt = offline.rt
    secret1, secret2 = "pa55-Wd-9c1f3e7a", "tok en with spaces 4b7d"
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    caplog.set_level(logging.DEBUG)
    bodies = []
    reply = await slack.command(f'secrets set web API_KEY={secret1} DB_PASSWORD="{secret2}"', user=DAVE)
    bodies.append(json.dumps(reply))
    assert "Set `API_KEY`, `DB_PASSWORD` on *web*" in reply["text"]
    reply = await slack.command("secrets list web", user=CAROL)
    bodies.append(json.dumps(reply))
    assert "`API_KEY`, `DB_PASSWORD`" in reply["text"]
    # Refused (a developer may not set secrets), mistyped, and malformed: none of them echo the value.
    for text_ in (
        f"secrets set web API_KEY={secret1}",
        f"secrets st web API_KEY={secret1}",
        f"secret set web API_KEY={secret1}",
        f'secrets set web API_KEY="{secret1}',
        f"secrets set web 9BAD={secret1}",
        f"secrets set nope API_KEY={secret1}",
    ):
        bodies.append(json.dumps(await slack.command(text_, user=ALICE if "nope" not in text_ else DAVE)))
    reply = await slack.command(f"secrets set web 9BAD={secret1}", user=DAVE)
    bodies.append(json.dumps(reply))
    assert reply["text"].startswith(":warning:")
    # A deploy afterwards: its card must not carry them either.
    await slack.command("deploy web 1.1", user=ALICE)
    [d] = await deployments(rt)
    await eventually(lambda: card_of(rt, fake_slack, d.id), what="card")
    reply = await slack.command("secrets unset web API_KEY", user=DAVE)
    assert "Removed `API_KEY`" in reply["text"]
    reply = await slack.command("secrets list web", user=DAVE)
    assert "`DB_PASSWORD`" in reply["text"] and "API_KEY" not in reply["text"]

    for value in (secret1, secret2):
        for body in bodies:
            assert value not in body
        for call in fake_slack.calls():
            if call.api in ("chat.postMessage", "chat.update", "chat.postEphemeral", "response_url"):
                assert value.encode() not in call.raw_body, call.api
        for record in caplog.records:
            assert value not in record.getMessage(), record.name
            assert value not in (record.exc_text or "")
        async with rt.sessionmaker() as session:
            for row in await session.scalars(select(models.AuditEvent)):
                assert value not in json.dumps(row.details)
        assert value.encode() not in database_bytes(rt)  # encrypted at rest
    async with rt.sessionmaker() as session:
        audit = await session.scalar(
            select(models.AuditEvent).where(models.AuditEvent.action == "secrets.set")
        )
        assert audit is not None and audit.details["keys"] == ["API_KEY", "DB_PASSWORD"]
        assert audit.actor == DAVE.subject and audit.channel == "slack"


# ---------------------------------------------------------------- helpers


async def _async(value: object) -> object:
    return value


async def _status(rt: runtime.Runtime, deployment_id: int) -> str:
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        return d.status


async def _status_is(rt: runtime.Runtime, deployment_id: int, status: str) -> bool:
    return await _status(rt, deployment_id) == status


# ---------------------------------------------------------------- Slack's rate limit, end to end


async def test_a_rate_limited_card_is_retried_after_retry_after_and_posted_once(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0", protected=True)
    fake_slack.rate_limit("chat.postMessage", times=2, retry_after=1)
    await slack.command("deploy web 1.1", user=ALICE)
    [d] = await deployments(rt)
    await eventually(lambda: card_of(rt, fake_slack, d.id), what="card after 429s")
    limited = [c for c in fake_slack.calls("chat.postMessage") if c.status == 429]
    assert len(limited) == 2

    async def slack_job() -> models.Job | None:
        async with rt.sessionmaker() as session:
            notify = await session.scalars(
                select(models.Job).where(models.Job.kind == "notify").order_by(models.Job.id)
            )
            return next((j for j in notify if j.payload["notifier"] == "slack"), None)

    # The card is recorded as soon as it is posted, before its job is marked done: wait for the job.
    job = await eventually(slack_job, lambda j: j is not None and j.state == "done", what="notify job done")
    assert job.attempts == 3, (job.attempts, job.last_error)
    assert "rate limited" in (job.last_error or "")
    assert len(fake_slack.messages(CHANNEL)) == 1


# ---------------------------------------------------------------- several workspaces (OAuth install)


async def test_oauth_install_then_commands_and_cards_in_the_new_workspace(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    import httpx

    from core import clusters, projects
    from tests.bot.conftest import black_hole, hanging_kubeconfig
    from tests.conftest import ADMIN

    oauth = settings.model_copy(
        update={
            "slack_client_id": fake_slack.client_id,
            "slack_client_secret": SecretStr(fake_slack.client_secret),
        }
    )
    fake_slack.add_oauth_code(
        "code-second", team_id="T0SECOND1", team_name="Second Co", installer_user_id=OWEN.id
    )
    rt = await runtime.build(oauth)
    try:
        async with serving(create_app(rt=rt)) as url, httpx.AsyncClient(base_url=url) as http:
            await runtime.start(rt)
            page = await http.get("/slack/install")
            assert page.status_code == 200
            state = page.cookies.get("slack-app-oauth-state") or _cookie(page, "slack-app-oauth-state")
            assert state and "oauth/v2/authorize" in page.text and fake_slack.client_id in page.text
            # Without the state cookie (a forged redirect), the install is refused.
            forged = await http.get("/slack/oauth_redirect", params={"code": "code-second", "state": state})
            assert forged.status_code >= 400
            done = await http.get(
                "/slack/oauth_redirect",
                params={"code": "code-second", "state": state},
                headers={"Cookie": f"slack-app-oauth-state={state}"},
            )
            assert done.status_code == 200, done.text
            assert fake_slack.last_call("oauth.v2.access").ok
            second = fake_slack.workspace("T0SECOND1")
            assert second.bot_token.encode() not in database_bytes(rt)  # stored encrypted

            async with black_hole() as port:
                async with rt.sessionmaker.begin() as session:
                    await projects.create(
                        session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel="T0SECOND1/C0SECOND1"
                    )
                    await clusters.add(
                        session, ctx=rt.core, actor=ADMIN, name="hanging",
                        kubeconfig_text=hanging_kubeconfig(port), version="v0",
                    )  # fmt: skip
                    await projects.set_access(
                        session, actor=ADMIN, project_name="acme", subject=OWEN.subject, role="owner"
                    )
                await add_app(rt, name="web", cluster="hanging", image="ghcr.io/acme/web:1.0", protected=True)
                sender = SlackSender(url=url, fake=fake_slack)
                body = sender.command_body("deploy web 1.1", user=OWEN).replace(
                    fake_slack.team_id.encode(), b"T0SECOND1"
                )
                response = await sender.post(body, content_type="application/x-www-form-urlencoded")
                await sender.close()
                assert response.status_code == 200
                assert "waits for someone else's approval" in response.json()["text"]
                [d] = await deployments(rt)
                channel, _ = await eventually(
                    lambda: card_of(rt, fake_slack, d.id), what="card in workspace 2"
                )
                assert channel == "C0SECOND1"
                post = fake_slack.last_call("chat.postMessage")
                assert post.header("authorization") == f"Bearer {second.bot_token}"
    finally:
        await runtime.stop(rt)


def _cookie(response: object, name: str) -> str | None:
    for header in response.headers.get_list("set-cookie"):  # type: ignore[attr-defined]
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


# ---------------------------------------------------------------- follow-ups that ask a cluster


async def test_logs_and_live_status_answer_after_the_ack_even_when_the_cluster_is_down(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    await web_on_a_closed_port(offline.rt)
    reply = await slack.command("logs web 20", user=CAROL)
    assert "Fetching the last 20 log lines of *web*" in reply["text"]
    reply = await slack.command("status web", user=CAROL)
    assert "Nothing deployed yet" in reply["text"] and "Asking the cluster" in reply["text"]
    followed = await eventually(
        lambda: _async(
            len([r for r in fake_slack.responses() if r.get("replace_original")]) >= 2
            and [r for r in fake_slack.responses() if r.get("replace_original")]
        ),
        what="both follow-ups",
    )
    texts = " | ".join(r["text"] for r in followed)
    assert "could not read the Deployment" in texts  # status: the rest of the status still shown
    assert any(r["text"].startswith(":warning:") and "reference" in r["text"] for r in followed)  # logs
    assert all(r["response_type"] == "ephemeral" for r in followed)


async def test_log_lines_of_a_command_and_its_card_carry_what_they_are_about(
    slack: SlackSender, offline: World, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    caplog.set_level(logging.INFO)
    await slack.command("deploy web 1.1", user=ALICE)
    [d] = await deployments(rt)
    await eventually(lambda: card_of(rt, fake_slack, d.id), what="card posted")

    async def lines_of(name: str, words: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == name and words in r.getMessage()]

    [posted, *_] = await eventually(lambda: lines_of("bot.notifier", "card posted"), what="card logged")
    fields = logctx.fields_of(posted)
    assert (fields["deploy_id"], fields["project"], fields["app"]) == (d.id, "acme", "web")
    assert isinstance(fields["event"], int)
    assert posted.getMessage().startswith(f"deploy {d.id} project=acme app=web ")
    [handled] = await lines_of("bot.handlers.base", f"by {ALICE.id}")
    fields = logctx.fields_of(handled)
    assert fields["app"] == "web" and fields["delivery"]  # the slash command's trigger id
