"""`.approve` and `.reject` in pull request comments, with the Slack card's button, on the real control plane.

The issue's scenario end to end: a 2-approval environment waits for two different persons, one
approving from Slack (the real bolt request path against the fake Slack Web API), one from GitHub (a
signed issue_comment delivery, the fake GitHub API answering the commenter's permission); the
requester's own GitHub login is refused, and a repeat `.approve` is answered, not counted.  The
offline tests cover which deploy a bare `.approve` means (this PR's own, refusal on ambiguity),
`.approve N` and `.reject`.
"""

from __future__ import annotations

import random

import pytest
from kubernetes_asyncio import client as k8s
from sqlalchemy import select, update

from bot import views
from core import apps, clusters, deploys, environment_admin, pr_commands, projects, protection
from core.pr_commands import Command
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    SlackSender,
    card_of,
    card_text,
    grant_roles,
    slack_on,
)
from tests.conftest import ADMIN, LiveServer, World, linked_person
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.webhooks.conftest import SHA_A, Hook, make_app, offline_cluster
from tests.webhooks.test_e2e import wait_finished
from tests.webhooks.test_pr_commands import REPO, grant, link, reacted, say, status_comments

ROLLOUT = 120.0


@pytest.fixture
def settings(settings: Settings, fake_slack: FakeSlack) -> Settings:
    """GitHub (tests/webhooks/conftest.py) and Slack both switched on, each against its fake."""
    return slack_on(settings, fake_slack)


async def _protect(rt: Runtime, *, approvals: int) -> None:
    async with rt.sessionmaker.begin() as session:
        await protection.protect(session, actor=ADMIN, project="acme", env="production", approvals=approvals)


async def _deployment(rt: Runtime, deployment_id: int) -> models.Deployment:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, deployment_id)
    assert row is not None
    return row


async def _card_says(fake: FakeSlack, channel: str, ts: str, *fragments: str) -> bool:
    text = card_text(fake.message(channel, ts))
    return all(f in text for f in fragments)


async def _reply(fake: FakeGitHub, number: int, comment_id: int) -> str:
    [reply] = status_comments(fake, number, comment_id)
    return str(reply["body"])


async def test_two_persons_approve_one_from_slack_one_from_a_pull_request_comment(
    world: World,
    live_server: LiveServer,
    live_hook: Hook,
    fake_github: FakeGitHub,
    fake_slack: FakeSlack,
    kube_api: k8s.ApiClient,
) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        await projects.update(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=CHANNEL)
    await grant_roles(rt, project="acme")  # Alice and Bob: developers on Slack
    await link(world)  # `web` deploys acme/web
    await _protect(rt, approvals=2)
    # Alice is slack:U0ALICE01 and github:alice (her role comes with her person); Carol is on GitHub only.
    await linked_person(rt, "alice", ALICE.subject, "github:alice")
    carol = await linked_person(rt, "carol", "github:carol")
    await grant(rt, "github:carol", "developer")
    for login in ("alice", "carol"):
        fake_github.set_role(REPO, login, "write")
    number = random.randint(100, 99999)
    fake_github.add_pull(REPO, number, head_ref="feature/pay", head_sha=SHA_A)
    slack = SlackSender(url=live_server.url, fake=fake_slack)
    try:
        # Alice asks from Slack: the deploy waits for two approvals.
        reply = await slack.command("deploy web ghcr.io/acme/web:2.0", user=ALICE)
        assert "approval" in reply["text"], reply
        [d] = [d for d in await _all(rt) if d.image == "ghcr.io/acme/web:2.0"]
        assert d.status == deploys.AWAITING_APPROVAL
        channel, ts = await eventually(lambda: card_of(rt, fake_slack, d.id), what="card", timeout=ROLLOUT)
        await eventually(
            lambda: _card_says(fake_slack, channel, ts, "0 of 2 approvals"), what="the card waits"
        )

        # Alice's own GitHub login is still Alice: refused, nothing counted.
        own, _ = await say(live_hook, fake_github, ".approve", number=number, user="alice")
        await reacted(fake_github, own, "confused")
        body = await _reply(fake_github, number, own)
        assert "**`.approve`** by @alice was not run" in body and "nobody approves their own deploy" in body

        # Bob with the card's button: 1 of 2.
        await slack.click(views.ACTION_APPROVE, user=BOB, channel=channel, message_ts=ts)
        await eventually(lambda: _card_says(fake_slack, channel, ts, "1 of 2 approvals"), what="1 of 2")
        assert (await _deployment(rt, d.id)).status == deploys.AWAITING_APPROVAL

        # Carol on the pull request: the second person; the deploy runs and succeeds.
        approved, _ = await say(live_hook, fake_github, ".approve", number=number, user="carol")
        finished = await wait_finished(live_hook, d.id)
        assert finished.status == "succeeded", finished.error
        assert finished.approved_by == "github:carol"
        # Her comment's answer followed the deploy it queued to the end: rocket only once it is live.
        await reacted(fake_github, approved, "rocket")
        assert fake_github.reactions(REPO, approved) == ["eyes", "rocket"]
        body = await _reply(fake_github, number, approved)
        assert f"deploy #{d.id} (`web` in production) is approved (2 of 2 approvals)" in body, body
        assert f"✅ deploy #{d.id}:" in body, body
        await eventually(
            lambda: _card_says(fake_slack, channel, ts, "is live on"),
            what="the card says live",
            timeout=ROLLOUT,
        )

        # Carol again: answered, not counted.
        again, _ = await say(live_hook, fake_github, ".approve", number=number, user="carol")
        await reacted(fake_github, again, "confused")
        body = await _reply(fake_github, number, again)
        assert f"deploy #{d.id} (`web` in production) is already approved (succeeded)" in body, body
    finally:
        await slack.close()

    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    assert workload.spec.template.spec.containers[0].image == "ghcr.io/acme/web:2.0"
    async with rt.sessionmaker() as session:
        rows = list(await session.scalars(select(models.DeployApproval).order_by(models.DeployApproval.id)))
        bob = await session.scalar(
            select(models.Identity.person_id).where(models.Identity.subject == BOB.subject)
        )
    assert [(a.person_key, a.subject, a.channel) for a in rows] == [
        (f"person:{bob}" if bob else BOB.subject, BOB.subject, "slack"),
        (f"person:{carol}", "github:carol", "github"),
    ]
    # Every answer went through the comment job (eyes first).
    for comment_id in (own, approved, again):
        assert fake_github.reactions(REPO, comment_id)[0] == "eyes"


async def _all(rt: Runtime) -> list[models.Deployment]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))


async def _request(rt: Runtime, *, app: str, image: str) -> int:
    async with rt.sessionmaker.begin() as session:
        requested = await deploys.request(
            session, ctx=rt.core, actor=ADMIN, app_name=app, image=image, env="production", trigger="api"
        )
        return int(requested.deployment.id)


@pytest.mark.both_databases
async def test_which_deploy_a_bare_approve_means_and_reject(live_hook: Hook, fake_github: FakeGitHub) -> None:
    rt = live_hook.rt
    await offline_cluster(rt)
    await make_app(rt, name="web")
    await make_app(rt, name="api")  # both deploy acme/web
    await make_app(rt, name="other", git_repo="acme/other")
    async with rt.sessionmaker.begin() as session:
        await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace="stg")
        await environment_admin.create(session, actor=ADMIN, project="acme", name="staging", namespace="stg")
        await protection.protect(session, actor=ADMIN, project="acme", env="staging", approvals=2)
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="test", name="web", namespace="stg", env="staging",
            changes=apps.AppChanges(),
        )  # fmt: skip
    await _protect(rt, approvals=2)  # nothing reaches the (offline) cluster: approvals stop at 1 of 2
    await grant(rt, "github:carol", "developer")
    fake_github.set_role(REPO, "carol", "write")
    fake_github.set_role(REPO, "rita", "read")
    number = 41
    fake_github.add_pull(REPO, number, head_ref="feature/x", head_sha=SHA_A)
    web = await _request(rt, app="web", image="ghcr.io/acme/web:2.0")
    api = await _request(rt, app="api", image="ghcr.io/acme/api:2.0")
    other = await _request(rt, app="other", image="ghcr.io/acme/other:2.0")

    # Two of this repository's deploys wait: a bare `.approve` is refused with their numbers.
    ambiguous, _ = await say(live_hook, fake_github, ".approve", number=number, user="carol")
    await reacted(fake_github, ambiguous, "confused")
    body = await _reply(fake_github, number, ambiguous)
    assert "2 deploys wait for approval" in body and f"#{web} (`web` in production)" in body, body
    assert f"#{api} (`api` in production)" in body and f"#{other}" not in body
    # Another repository's deploy is not this pull request's to approve.
    foreign, _ = await say(live_hook, fake_github, f".approve {other}", number=number, user="carol")
    await reacted(fake_github, foreign, "confused")
    assert f"deploy #{other} is not a deploy of the apps of {REPO}" in await _reply(
        fake_github, number, foreign
    )

    # `.reject N` cancels that one; `.approve` then means the one left.
    rejected, _ = await say(live_hook, fake_github, f".reject #{api}", number=number, user="carol")
    await reacted(fake_github, rejected, "rocket")
    assert f"deploy #{api} (`api` in production) is rejected" in await _reply(fake_github, number, rejected)
    assert (await _deployment(rt, api)).status == "cancelled"
    approved, _ = await say(live_hook, fake_github, ".approve to production", number=number, user="carol")
    await reacted(fake_github, approved, "rocket")
    body = await _reply(fake_github, number, approved)
    assert f"deploy #{web} (`web` in production) is approved (1 of 2 approvals)" in body, body
    assert "waits for another person" in body
    assert (await _deployment(rt, web)).status == deploys.AWAITING_APPROVAL

    # A deploy this pull request asked for comes before the repository's others (web still waits in production).
    asked, _ = await say(live_hook, fake_github, ".deploy to staging", number=number, user="carol")
    await reacted(fake_github, asked, "eyes")
    mine = await eventually(lambda: _pr_deploy(rt, asked), what="the PR's deploy waits for approval")
    reader, _ = await say(live_hook, fake_github, ".approve", number=number, user="rita")
    await reacted(fake_github, reader, "confused")  # read permission on GitHub: refused before shipit asks
    assert "`read` permission" in await _reply(fake_github, number, reader)
    await grant(rt, "github:erin", "developer")
    fake_github.set_role(REPO, "erin", "maintain")
    erin, _ = await say(live_hook, fake_github, ".approve", number=number, user="erin")
    await reacted(fake_github, erin, "rocket")
    body = await _reply(fake_github, number, erin)
    assert f"deploy #{mine} (`web` in staging) is approved (1 of 2 approvals)" in body, body
    # The comment's job run again (GitHub failed after the approval committed): the same answer, not a refusal.
    pr = pr_commands.PullRequest(
        repo=REPO, number=number, comment_id=erin, login="erin", permission="maintain", head_sha=SHA_A,
        head_ref="feature/x", head_repo=REPO, is_fork=False,
    )  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        again = await pr_commands.run(session, ctx=rt.core, command=Command(verb="approve"), pr=pr)
    assert again.repeated and again.lines == [
        f"deploy #{mine} (`web` in staging) is approved (1 of 2 approvals): it waits for another person's approval."
    ]
    async with rt.sessionmaker() as session:
        counted = list(await session.scalars(select(models.DeployApproval.deployment_id)))
    assert sorted(counted) == sorted([web, mine])
    assert (await _deployment(rt, web)).status == deploys.AWAITING_APPROVAL


async def _pr_deploy(rt: Runtime, comment_id: int) -> int | None:
    for d in await _all(rt):
        if (d.dedupe_key or "").startswith(f"pr-comment:{comment_id}:") and d.status == "awaiting_approval":
            return int(d.id)
    return None


async def test_a_second_reject_says_who_rejected_it(live_hook: Hook, fake_github: FakeGitHub) -> None:
    rt = live_hook.rt
    await offline_cluster(rt)
    await make_app(rt, name="web")
    await _protect(rt, approvals=1)
    await grant(rt, "github:carol", "developer")
    await grant(rt, "github:erin", "developer")
    for login in ("carol", "erin"):
        fake_github.set_role(REPO, login, "write")
    number = 43
    fake_github.add_pull(REPO, number, head_ref="feature/y", head_sha=SHA_A)
    web = await _request(rt, app="web", image="ghcr.io/acme/web:3.0")

    first, _ = await say(live_hook, fake_github, ".reject", number=number, user="carol")
    await reacted(fake_github, first, "rocket")
    assert f"deploy #{web} (`web` in production) is rejected" in await _reply(fake_github, number, first)
    # Again, by number and bare: what happened and who did it, not "not awaiting approval".
    again, _ = await say(live_hook, fake_github, f".reject {web}", number=number, user="erin")
    await reacted(fake_github, again, "confused")
    body = await _reply(fake_github, number, again)
    assert f"deploy #{web} was already rejected by github:carol" in body and "not awaiting" not in body, body
    bare, _ = await say(live_hook, fake_github, ".reject", number=number, user="erin")
    await reacted(fake_github, bare, "confused")
    body = await _reply(fake_github, number, bare)
    assert f"deploy #{web} (`web` in production) was already rejected by github:carol" in body, body
    # A late approval of it is told the same.
    late, _ = await say(live_hook, fake_github, f".approve {web}", number=number, user="erin")
    await reacted(fake_github, late, "confused")
    assert "was already rejected by github:carol" in await _reply(fake_github, number, late)
    rejected = await _deployment(rt, web)
    assert (rejected.status, rejected.rejected_by) == (deploys.CANCELLED, "github:carol")
    # A rejection from before migration 0014 (no column, only its error text) is still found.
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Deployment).where(models.Deployment.id == web).values(rejected_by=None)
        )
    older, _ = await say(live_hook, fake_github, ".reject", number=number, user="erin")
    await reacted(fake_github, older, "confused")
    body = await _reply(fake_github, number, older)
    assert f"deploy #{web} (`web` in production) was already rejected by carol" in body, body
