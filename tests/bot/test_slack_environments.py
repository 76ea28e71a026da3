"""Environments from Slack on the real control plane: `deploy ... to staging`, the staging card's
"Promote to production" button moving the exact digest, and `/shipit envs`."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client as k8s

from bot import views
from core import apps, clusters, environment_admin
from tests.bot.conftest import (
    ALICE,
    SlackSender,
    add_app,
    button_ids,
    card_of,
    card_text,
    deployments,
    eventually,
)
from tests.bot.test_slack_rollouts import ROLLOUT, _card_says, _image_in_cluster
from tests.conftest import ADMIN, World
from tests.fakes.slack_api import FakeSlack
from tests.testenv.plugin import _wait_for_default_serviceaccount

DIGEST = "sha256:" + "0f" * 32


async def test_deploy_to_staging_then_promote_from_the_card(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    stg = f"{kube_world.namespace}-stg"
    core = k8s.CoreV1Api(kube_api)
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=stg)))
    await _wait_for_default_serviceaccount(core, stg)
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", replicas=2)
    async with rt.sessionmaker.begin() as session:
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace=stg, before="production"
        )
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="", name="web", env="staging",
            changes=apps.AppChanges(replicas=1),
        )  # fmt: skip

    reply = await slack.command("envs", user=ALICE)
    assert "staging" in reply["text"] and "production" in reply["text"]
    assert reply["text"].index("staging") < reply["text"].index("production")
    reply = await slack.command("deploy web 2.0", user=ALICE)
    assert "several environments" in reply["text"]
    # Worded for the slash command: the flag it parses (`--env staging`), not the API's parameter.
    assert "say which, with `--env NAME` after the command, e.g. `--env staging`" in reply["text"], reply

    await slack.command(f"deploy web ghcr.io/acme/web@{DIGEST} to staging", user=ALICE)
    [staged] = await deployments(rt)
    assert staged.namespace == stg
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, staged.id), what="card", timeout=ROLLOUT)
    await eventually(lambda: _card_says(fake_slack, channel, ts, "is live on"), what="live", timeout=ROLLOUT)
    card = fake_slack.message(channel, ts)
    assert button_ids(card) == {views.ACTION_ROLLBACK, views.ACTION_PROMOTE}
    assert "Promote to production" in card_text(card)

    r = await slack.click(views.ACTION_PROMOTE, user=ALICE, channel=channel, message_ts=ts)
    assert r.status_code == 200
    promoted = await eventually(lambda: _promoted(rt), what="promote requested", timeout=ROLLOUT)
    assert promoted.namespace == kube_world.namespace and promoted.actor == ALICE.subject
    p_channel, p_ts = await eventually(
        lambda: card_of(rt, fake_slack, promoted.id), what="card", timeout=ROLLOUT
    )
    await eventually(
        lambda: _card_says(fake_slack, p_channel, p_ts, "is live on"), what="live", timeout=ROLLOUT
    )
    # Production is the last environment: nothing further to promote to.
    assert views.ACTION_PROMOTE not in button_ids(fake_slack.message(p_channel, p_ts))
    moved = f"ghcr.io/acme/web@{DIGEST}"
    assert await _image_in_cluster(kube_api, kube_world.namespace, "web") == moved
    assert await _image_in_cluster(kube_api, stg, "web") == moved
    prod = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", kube_world.namespace)
    assert prod.spec.replicas == 2


async def _promoted(rt: Any) -> Any:
    found = [d for d in await deployments(rt) if d.trigger == "promote"]
    return found[0] if found else None


async def _web_in_staging(world: World) -> None:
    """A staging environment (namespace apps-stg, before production) and web's row in it."""
    async with world.rt.sessionmaker.begin() as session:
        await clusters.grant(
            session, actor=ADMIN, cluster=world.cluster, project="acme", namespace="apps-stg"
        )
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace="apps-stg", before="production"
        )
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="", name="web", env="staging",
            changes=apps.AppChanges(replicas=1),
        )  # fmt: skip


async def test_apps_list_and_card_name_the_environment(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    """Offline cluster (no control plane needed): `apps` shows each row's environment, and a deploy card
    in a project with two environments says which one under "Where"."""
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    reply = await slack.command("apps", user=ALICE)
    assert "• *web* · production `ghcr.io/acme/web:1.0` in `apps`" in reply["text"]

    await _web_in_staging(offline)
    reply = await slack.command("apps", user=ALICE)
    assert "• *web* · staging `ghcr.io/acme/web:1.0` in `apps-stg`" in reply["text"]
    assert "• *web* · production `ghcr.io/acme/web:1.0` in `apps`" in reply["text"]

    await slack.command("deploy web 2.0 to staging", user=ALICE)
    [staged] = await deployments(rt)
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, staged.id), what="card")
    fields = [
        f["text"]
        for b in fake_slack.message(channel, ts)["blocks"]
        if b["type"] == "section" and "fields" in b
        for f in b["fields"]
    ]
    assert "*Where*\n*staging* · hanging / `apps-stg`" in fields


def _suggested(text: str, *, before: str) -> str:
    """The `/shipit ...` command an answer suggests, just before `before`, as one would type it."""
    command = text.split(before)[0].rsplit("`/shipit ", 1)[1].rstrip("` ")
    return command.replace("&lt;", "<").replace("&gt;", ">")


async def test_what_an_answer_suggests_next_names_the_environment(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    """Once web runs in two environments, a command without the environment is refused: so the lock,
    pause and revisions answers, and a paused app's card, suggest theirs with `--env` (as `/shipit diff` does)."""
    rt = offline.rt
    await add_app(rt, name="web", cluster=offline.cluster, image="ghcr.io/acme/web:1.0")
    await _web_in_staging(offline)

    reply = await slack.command("pause web --env staging", user=ALICE)
    resume = _suggested(reply["text"], before="to deploy on push again")
    assert resume == "resume web --env staging", reply

    await slack.command("deploy web 2.0 to staging", user=ALICE)
    [staged] = await deployments(rt)
    channel, ts = await eventually(lambda: card_of(rt, fake_slack, staged.id), what="card")
    assert "`/shipit resume web --env staging` deploys on push again" in card_text(
        fake_slack.message(channel, ts)
    )

    reply = await slack.command("revisions web in staging", user=ALICE)
    assert (
        _suggested(reply["text"], before="deploys one of these again")
        == "rollback web <revision> --env staging"
    )

    reply = await slack.command(resume, user=ALICE)  # the suggestion, typed as shown, is accepted
    assert "*web* deploys on push again" in reply["text"], reply

    reply = await slack.command("lock web --env staging db migration", user=ALICE)
    unlock = _suggested(reply["text"], before="to undo")
    assert unlock == "unlock web --env staging", reply
    reply = await slack.command(unlock, user=ALICE)
    assert "unlocked" in reply["text"].lower() and "several environments" not in reply["text"], reply
