"""A failed build is announced once where the project hears of failures: its webhook targets that take
them (signed JSON) and its Slack channel (the build's card, showing it failed), through the outbox's
notify jobs.  The build fails for real through core: GitHub (the fake) answers 404 for the commit's
tarball.  A channel that takes every event sees the build's card go queued -> building -> built (real
buildah, a real registry) or failed, edited in place, beside the deploy's own card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from bot import notifier as slack_notifier
from bot import views
from core import apps, builds, environment_admin, events, jobs, notices, registries
from core.apps import AppChanges
from core.errors import PermanentError
from core.notices import discord, render, teams, webhook
from core.notices import targets as notice_targets
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import FakeSlack
from tests.notices_helpers import Receiver, receiver
from tests.testenv import buildah
from tests.testenv.registry import Registry
from tests.webhooks.build_setup import SITE, build_row, builder_worker, store, wait_build
from tests.webhooks.conftest import (
    SHA_A,
    SHA_C,
    Hook,
    deliver_notifications,
    make_app,
    offline_cluster,
    push_payload,
)

pytestmark = pytest.mark.both_databases
__all__ = ["store"]  # the buildah store fixture of test_builds, for the build that succeeds

CHANNEL = "C0BUILDS1"
SECRET = "wh-build-s3cret"


def slack(rt: Runtime, fake_slack: FakeSlack) -> slack_notifier.SlackNotifier:
    """A Slack notifier as a replica has it: its own memory, the shared database."""
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.url)
    return slack_notifier.SlackNotifier(
        client=client, sessionmaker=rt.sessionmaker, pacer=slack_notifier.Pacer(rate=1000.0, burst=100)
    )


async def setup(rt: Runtime, fake_slack: FakeSlack, hooks: Receiver) -> None:
    rt.core.notifiers["slack"] = slack(rt, fake_slack)
    await offline_cluster(rt)
    await make_app(rt, image_template=None, build_enabled=True, build_image="registry.invalid/acme/web")
    async with rt.sessionmaker.begin() as session:
        for kind, address, filter_, secret in [
            ("webhook", f"{hooks.url}/all", "*", SECRET),
            ("webhook", f"{hooks.url}/failures", "failed,rolled_back", None),
            ("webhook", f"{hooks.url}/wins", "succeeded", None),
            ("slack", CHANNEL, "failed", None),
        ]:
            await notice_targets.add(
                session, ctx=rt.core, actor=ADMIN, project="acme", kind=kind, address=address,
                events=filter_, secret=secret,
            )  # fmt: skip


def shown(message: dict[str, Any]) -> str:
    """What a Slack message shows: its text and its blocks' texts."""
    texts: list[str] = [message["text"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                texts.append(v) if k == "text" and isinstance(v, str) else walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(message.get("blocks") or [])
    return "\n".join(texts)


def build_failures(hooks: Receiver, name: str) -> list[dict[str, object]]:
    bodies = [json.loads(h.body) for h in hooks.accepted(name)]
    return [b for b in bodies if b["event"] == builds.BUILD_FAILED]


async def test_a_failed_build_is_announced_once_on_webhooks_and_in_slack(
    hook: Hook, fake_github: FakeGitHub, fake_slack: FakeSlack, settings: Settings
) -> None:
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        build_id = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
        async with builder_worker(rt, fake_github, settings):
            build = await wait_build(rt, build_id)
        assert build.status == builds.FAILED and build.error
        await deliver_notifications(rt)

        # The webhook taking everything and the one taking failures each get it once; "succeeded" not.
        [notice] = build_failures(hooks, "all")
        assert notice["app"] == "web" and notice["project"] == "acme" and notice["deployment"] is None
        details = notice["details"]
        assert isinstance(details, dict)
        assert (details["build"], details["sha"], details["ref"]) == (build_id, SHA_C, "refs/heads/main")
        assert details["error"] == build.error and details["actor"] == build.actor
        [hit] = [h for h in hooks.accepted("all") if json.loads(h.body)["event"] == builds.BUILD_FAILED]
        assert hit.headers["X-Shipit-Signature-256"] == webhook.signature(secret=SECRET, body=hit.body)
        assert len(build_failures(hooks, "failures")) == 1
        assert hooks.accepted("wins") == []

        # Slack: the build's card, failed, naming the app, commit, branch, pusher, error and the log
        # command; no plain message beside it.
        [message] = fake_slack.messages(CHANNEL)
        text = shown(message)
        login = build.actor.removeprefix("github:")
        for part in (
            "acme/web",
            f"#{build_id}",
            SHA_C[:7],
            "main",
            login,
            "failed, nothing deployed",
            f"shipit builds logs web {build_id}`",
        ):
            assert part in text, (part, text)
        assert (build.error or "").splitlines()[0] in text
        assert message["metadata"]["event_type"] == slack_notifier.BUILD_CARD_EVENT

        # The Slack job delivered again, in this process and on another replica: nothing more is posted.
        async with rt.sessionmaker() as session:
            job = await session.scalar(
                select(models.Job).where(
                    models.Job.kind == events.NOTIFY_JOB,
                    models.Job.payload["notifier"].as_string() == "slack",
                )
            )
        assert job is not None
        view = jobs.JobView(
            id=job.id, kind=job.kind, payload=dict(job.payload), attempts=2, max_attempts=job.max_attempts,
            lease_owner="test",
        )  # fmt: skip
        await events.run_notify_job(ctx=rt.core, job=view)
        rt.core.notifiers["slack"] = slack(rt, fake_slack)
        await events.run_notify_job(ctx=rt.core, job=view)
        assert len(fake_slack.messages(CHANNEL)) == 1


async def test_the_log_command_names_the_environment_among_several(
    hook: Hook, fake_github: FakeGitHub, fake_slack: FakeSlack, settings: Settings
) -> None:
    # web runs in production and staging: `shipit builds logs web ID` alone is refused ("say which"),
    # so each environment's message names its own, the first environment's too.
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        async with rt.sessionmaker.begin() as session:
            await environment_admin.create(session, actor=ADMIN, project="acme", name="staging")
            await apps.create(
                session, actor=ADMIN, project="acme", cluster="test", name="web", namespace="web-staging",
                changes=AppChanges(), env="staging",
            )  # fmt: skip
        decisions = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"]
        assert [d["action"] for d in decisions] == ["build", "build"], decisions
        async with builder_worker(rt, fake_github, settings):
            failed = [await wait_build(rt, d["build"]) for d in decisions]
        assert {b.status for b in failed} == {builds.FAILED}
        await deliver_notifications(rt)
        async with rt.sessionmaker() as session:
            env_of = {
                b.id: await apps.env_name(session, app=await session.get_one(models.App, b.app_id))
                for b in failed
            }
        assert sorted(env_of.values()) == ["production", "staging"]
        texts = [shown(m) for m in fake_slack.messages(CHANNEL)]
        assert len(texts) == 2
        for build_id, env in env_of.items():
            command = f"shipit builds logs web {build_id} --env {env}"
            assert sum(command in t for t in texts) == 1, (command, texts)
        # What a pull request's preview or `.deploy` comment names for a failed build says it alike.
        async with rt.sessionmaker() as session:
            for b in failed:
                app = await session.get_one(models.App, b.app_id)
                said = await builds.logs_command(session, app=app, build=b)
                assert said == f"shipit builds logs web {b.id} --env {env_of[b.id]}"


async def test_a_succeeded_build_posts_nothing_of_its_own(hook: Hook, fake_slack: FakeSlack) -> None:
    # Its deploy's card says it (the deploy events), so the build itself is not announced.
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        build_id = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
        assert await builds._start(rt.core, build_id) is not None
        await builds._finish_succeeded(
            rt.core, build_id=build_id, pack="static", digest="sha256:" + "a" * 64, log_tail="built\n"
        )
        assert (await wait_build(rt, build_id)).status == builds.SUCCEEDED
        await deliver_notifications(rt)
        assert fake_slack.messages(CHANNEL) == []
        assert build_failures(hooks, "all") == [] and hooks.accepted("failures") == []
        assert hooks.accepted("wins") == []


def test_email_teams_and_discord_share_the_build_failure_summary() -> None:
    notice = events.Notice(
        event_id=9,
        kind=builds.BUILD_FAILED,
        created_at=models.utcnow(),
        payload={
            "build": 12, "app": "web", "sha": SHA_C, "ref": "refs/heads/main", "actor": "github:alice",
            "error": "buildah bud failed (exit status 1); see the build's log\nsecond line", "status": "failed",
        },
        project=events.ProjectView(id=1, name="acme"),
        app=None,
        deployment=None,
        preview=None,
        environment="production",
    )  # fmt: skip
    s = render.summary(notice)
    assert s.title == f"acme (production): build #12 of {SHA_C[:7]} (main) failed, nothing deployed"
    assert (s.status, s.color, s.logs) == ("failed", render.RED, [])
    assert s.error == "buildah bud failed (exit status 1); see the build's log"  # the first line only
    assert ("Pushed by", "alice") in s.facts and ("Log", "shipit builds logs web 12") in s.facts
    # Among several environments, the command names this one (as the Slack message does).
    app = events.AppView(
        id=3, name="web", namespace="web", cluster="test", image=None, protected=False,
        auto_deploy_paused=False, paused_reason=None, git_repo="acme/web", github_environment=None,
        environment="production", environments=2,
    )  # fmt: skip
    among = dataclasses.replace(notice, app=app)
    assert ("Log", "shipit builds logs web 12 --env production") in render.summary(among).facts
    assert (
        teams.card(notice, link="https://shipit.example")["attachments"][0]["content"]["body"][0]["text"]
        == s.title
    )
    assert discord.embed_body(notice, link="https://shipit.example")["embeds"][0]["title"] == s.title
    # A target's filter decides as for deploys: "failed" takes it, so does the full name.
    assert notices.matches("failed", notice.kind) and notices.matches("build.failed", notice.kind)
    assert not notices.matches("succeeded,rolled_back", notice.kind)


# ---------------------------------------------------------------------------- the build's card

EVERYTHING = "C0EVERY01"


async def take_everything(rt: Runtime) -> None:
    """A second Slack channel taking every event: it sees the build's card from the start."""
    async with rt.sessionmaker.begin() as session:
        await notice_targets.add(
            session, ctx=rt.core, actor=ADMIN, project="acme", kind="slack", address=EVERYTHING, events="*"
        )


def build_card_of(fake_slack: FakeSlack, build_id: int) -> dict[str, Any]:
    [card] = [
        m
        for m in fake_slack.messages(EVERYTHING)
        if m.get("metadata", {}).get("event_type") == slack_notifier.BUILD_CARD_EVENT
        and m["metadata"]["event_payload"]["build_id"] == build_id
    ]
    return card


async def test_a_push_of_a_building_app_gets_one_card_edited_from_queued_to_built(
    hook: Hook,
    fake_github: FakeGitHub,
    fake_slack: FakeSlack,
    private_registry: Registry,
    store: buildah.Store,
    settings: Settings,
    tmp_path: Path,
) -> None:
    buildah.require_buildah()
    rt = hook.rt
    host = private_registry.host
    user, password = next(iter(private_registry.users.items()))
    base = f"{host}/base/busybox:1"
    buildah.push_busybox_base(store, image=base, creds=f"{user}:{password}")
    rt.core.config.registry_insecure_hosts = (host,)
    config = settings.model_copy(
        update={
            "build_root": str(store.root), "build_runroot": str(store.runroot),
            "build_dir": str(tmp_path / "builds"), "build_timeout_seconds": 120.0, "build_static_image": base,
        }
    )  # fmt: skip
    async with receiver() as hooks:
        rt.core.notifiers["slack"] = slack(rt, fake_slack)
        await offline_cluster(rt)
        await make_app(rt, image_template=None, build_enabled=True, build_image=f"{host}/acme/web")
        async with rt.sessionmaker.begin() as session:
            await registries.add(
                session, ctx=rt.core, actor=ADMIN, host=host, username=user, password=password, project="acme"
            )
            await notice_targets.add(
                session, ctx=rt.core, actor=ADMIN, project="acme", kind="webhook", address=f"{hooks.url}/all",
                events="*",
            )  # fmt: skip
        await take_everything(rt)
        fake_github.add_source("acme/web", SHA_A, SITE)
        build_id = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]

        await deliver_notifications(rt)
        card = build_card_of(fake_slack, build_id)
        text = shown(card)
        for part in (
            f"Build #{build_id} of *acme/web (production)* is queued",
            f"<https://github.com/acme/web/commit/{SHA_A}|`{SHA_A[:7]}`>",
            "*Branch*\nmain",
            "*State*\nqueued",
        ):
            assert part in text, (part, text)
        assert "github" in text.lower() and card["metadata"]["event_payload"]["run"] == 0

        # The builder takes the job (its transaction records build.started), then builds for real.
        assert await builds._start(rt.core, build_id) is not None
        await deliver_notifications(rt)
        assert "*State*\nbuilding" in shown(fake_slack.message(EVERYTHING, card["ts"]))
        async with builder_worker(rt, fake_github, config):
            build = await wait_build(rt, build_id)
        assert build.status == builds.SUCCEEDED, (build.error, build.log)
        await deliver_notifications(rt)

    now = shown(fake_slack.message(EVERYTHING, card["ts"]))
    for part in (
        f"Build #{build_id} of *acme/web (production)* is built",
        "*State*\nbuilt",
        f"`{build.digest}`",
        f"Deploying — see the deploy card (deploy #{build.deployment_id}).",
    ):
        assert part in now, (part, now)
    # One card, edited in place: queued, building, built; the deploy has its own card.
    versions = [shown(v) for v in fake_slack.message_versions(EVERYTHING, card["ts"])]
    states = [next(s for s in ("queued", "building", "built") if f"*State*\n{s}" in v) for v in versions]
    assert states == ["queued", "building", "built"], states
    posted = [c for c in fake_slack.calls("chat.postMessage") if c.arg("channel") == EVERYTHING]
    kinds = sorted(
        m["metadata"]["event_type"] for m in fake_slack.messages(EVERYTHING, include_replies=False)
    )
    assert kinds == [slack_notifier.BUILD_CARD_EVENT, slack_notifier.CARD_EVENT], kinds
    assert len(posted) == 2
    # Nothing of the registry's credentials in any card.
    assert all(password not in shown(m) for m in fake_slack.messages())
    # The "failed" channel heard nothing: the build did not fail.
    assert fake_slack.messages(CHANNEL) == []


async def test_a_failing_build_turns_its_card_failed_with_no_message_beside_it(
    hook: Hook, fake_github: FakeGitHub, fake_slack: FakeSlack, settings: Settings
) -> None:
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        await take_everything(rt)
        build_id = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
        await deliver_notifications(rt)
        card = build_card_of(fake_slack, build_id)
        assert "*State*\nqueued" in shown(card)
        async with builder_worker(rt, fake_github, settings):
            build = await wait_build(rt, build_id)
        assert build.status == builds.FAILED and build.error
        await deliver_notifications(rt)

    [only] = fake_slack.messages(EVERYTHING)
    assert only["ts"] == card["ts"]
    now = shown(only)
    for part in (
        "failed, nothing deployed",
        "*State*\nfailed",
        f"*Error:* {build.error.splitlines()[0]}",
        f"Log: `shipit builds logs web {build_id}`",
    ):
        assert part in now, (part, now)
    assert "--env" not in now  # one environment: the app's name says which
    # The channel taking failures got the card too (posted failed), and nothing else.
    [failed] = fake_slack.messages(CHANNEL)
    assert failed["metadata"]["event_type"] == slack_notifier.BUILD_CARD_EVENT
    assert "*State*\nfailed" in shown(failed)


async def test_a_newer_push_turns_the_queued_builds_card_superseded(
    hook: Hook, fake_github: FakeGitHub, fake_slack: FakeSlack
) -> None:
    # The superseded build never runs: its card says why instead of waiting, queued, for ever.
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        await take_everything(rt)
        first = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
        await deliver_notifications(rt)
        old = build_card_of(fake_slack, first)
        second = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
        assert (await build_row(rt, first)).status == builds.SUPERSEDED
        await deliver_notifications(rt)
    now = shown(fake_slack.message(EVERYTHING, old["ts"]))
    assert f"Build #{first} of *acme/web (production)* was superseded" in now, now
    assert f"superseded by the push of {SHA_C[:7]}" in now
    assert "*State*\nqueued" in shown(build_card_of(fake_slack, second))
    assert len(fake_slack.messages(EVERYTHING)) == 2
    assert fake_slack.messages(CHANNEL) == []  # "failed" only: nothing failed


async def test_a_dead_bot_token_stops_build_cards_as_it_stops_deploy_cards(
    hook: Hook, fake_github: FakeGitHub, fake_slack: FakeSlack
) -> None:
    rt = hook.rt
    async with receiver() as hooks:
        await setup(rt, fake_slack, hooks)
        await take_everything(rt)
        fake_slack.revoke_token(fake_slack.bot_token)
        await hook.post("push", push_payload(sha=SHA_A))
        with pytest.raises(PermanentError, match="token_revoked"):
            await deliver_notifications(rt)  # the job fails for good, as a deploy card's does
        await deliver_notifications(rt)  # the helper leaves a failed job queued: run again, it posts nothing
        n = rt.core.notifiers["slack"]
        assert isinstance(n, slack_notifier.SlackNotifier)
        # The first refusal says the token is dead (and never shows it); later builds post nothing.
        assert n.revoked is not None and "token_revoked" in n.revoked
        assert fake_slack.bot_token not in n.revoked
        refused = len(fake_slack.calls("chat.postMessage"))
        await hook.post("push", push_payload(sha=SHA_C))
        await deliver_notifications(rt)
    assert len(fake_slack.calls("chat.postMessage")) == refused
    assert fake_slack.messages() == []


def test_a_pull_requests_build_card_names_it_and_escapes_what_a_person_wrote() -> None:
    build = events.BuildView(
        id=5, runs=1, sha=SHA_C, ref="refs/heads/feature", actor="github:alice", status="succeeded",
        image="registry.invalid/acme/web", digest="sha256:" + "b" * 64, error=None, deployment_id=9,
        pr_number=7,
    )  # fmt: skip
    card = views.build_card(
        build=build, app=None, project=None, where="acme/web", logs="shipit builds logs web 5"
    )
    text = shown({"text": card.text, "blocks": card.blocks})
    assert "*Pull request*\nPR #7" in text and "Deploying the previews of pull request #7." in text
    assert "see the deploy card" not in text  # the previews' deploys have no Slack card
    assert f"`{SHA_C[:7]}`" in text and "github.com" not in text  # no repository known: not linked
    failed = dataclasses.replace(build, status="failed", pr_number=None, error="<!channel> broke\nline two")
    text = shown({"text": "", "blocks": views.build_card(
        build=failed, app=None, project=None, where="acme/web", logs="shipit builds logs web 5"
    ).blocks})  # fmt: skip
    assert "*Error:* &lt;!channel&gt; broke" in text and "line two" not in text and "<!channel>" not in text
    assert "*Branch*\nfeature" in text
