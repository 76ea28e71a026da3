"""Commands in pull request comments, end to end: signed issue_comment deliveries (octokit's example
shape) to the real app with its worker, the real control plane, and the fake GitHub API at the wire
(the PR's head, the commenter's permission, reactions and the status comment)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from sqlalchemy import select

from core import apps, clusters, jobs, pr_commands, projects, protection
from core.apps import AppChanges
from core.pr_commands import Command
from storage import models
from tests.conftest import ADMIN, World
from tests.core.test_promotion import _staging
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import SHA_A, SHA_B, Hook, deployments, job_rows, load, make_app, offline_cluster
from tests.webhooks.test_e2e import eventually, wait_finished
from webhooks import comments

REPO = "acme/web"


def comment_payload(
    comment: dict[str, Any], *, number: int, repo: str = REPO, pull: bool = True
) -> dict[str, Any]:
    """octokit's issue_comment.created example, moved onto `repo`'s pull request `number` and `comment`."""
    payload = load("issue_comment__created")
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = repo.split("/")[1]
    issue = payload["issue"]
    issue["number"] = number
    if pull:
        issue["pull_request"] = {
            "url": f"https://api.github.com/repos/{repo}/pulls/{number}",
            "html_url": f"https://github.com/{repo}/pull/{number}",
            "diff_url": f"https://github.com/{repo}/pull/{number}.diff",
            "patch_url": f"https://github.com/{repo}/pull/{number}.patch",
            "merged_at": None,
        }
    payload["comment"].update(id=comment["id"], body=comment["body"], user=comment["user"])
    payload["sender"] = dict(comment["user"])
    return payload


async def say(
    hook: Hook, fake: FakeGitHub, body: str, *, number: int, user: str = "alice", user_type: str = "User"
) -> tuple[int, dict[str, Any]]:
    comment = fake.add_comment(REPO, number, body, user=user, user_type=user_type)
    payload = comment_payload(comment, number=number)
    r = await hook.post("issue_comment", payload)
    assert r.status_code == 202, r.text
    return int(comment["id"]), payload


def status_comments(fake: FakeGitHub, number: int, comment_id: int) -> list[dict[str, Any]]:
    return [c for c in fake.comments(REPO, number) if comments.marker(comment_id) in c["body"]]


async def reacted(fake: FakeGitHub, comment_id: int, last: str) -> None:
    async def check() -> bool:
        return fake.reactions(REPO, comment_id)[-1:] == [last]

    await eventually(check, what=f"a {last} reaction on comment {comment_id}")


async def github_deployment_reaches(fake: FakeGitHub, *, environment: str, last: str) -> dict[str, Any]:
    """The GitHub Deployment of `environment`, once its last status is `last`: statuses are posted by the
    notifier from the outbox, after the deploy row is final, so they trail the command's reaction."""

    async def check() -> bool:
        found = fake.deployments(REPO, environment=environment)
        return len(found) == 1 and fake.deployment_states(REPO, found[0]["id"])[-1:] == [last]

    await eventually(check, what=f"GitHub Deployment {environment} to reach {last}")
    [gh] = fake.deployments(REPO, environment=environment)
    return gh


async def grant(rt: Any, subject: str, role: str) -> None:
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=subject, role=role)


async def link(world: World, *, name: str = "web", **changes: Any) -> models.App:
    values: dict[str, Any] = {
        "image": "ghcr.io/acme/web:0.1",
        "git_repo": REPO,
        "git_branch": "main",
        "image_template": "ghcr.io/acme/web:{sha}",
        "health_path": None,
        **changes,
    }
    async with world.rt.sessionmaker.begin() as session:
        return await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name=name,
            namespace=world.namespace,
            changes=AppChanges(**values),
        )


async def command_deploys(rt: Any, comment_id: int) -> list[models.Deployment]:
    return [d for d in await deployments(rt) if (d.dedupe_key or "").startswith(f"pr-comment:{comment_id}:")]


# ---------------------------------------------------------------- parsing (no server needed)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (".deploy", Command(verb="deploy")),
        ("  .deploy to staging\nthanks!", Command(verb="deploy", environment="staging")),
        (".noop to Production", Command(verb="noop", environment="production")),
        (".rollback", Command(verb="rollback")),
        (
            ".lock staging release freeze",
            Command(verb="lock", environment="staging", reason="release freeze"),
        ),
        (".unlock staging", Command(verb="unlock", environment="staging")),
        (".help", Command(verb="help")),
        (".approve", Command(verb="approve")),
        (".approve 42", Command(verb="approve", deployment=42)),
        (".reject #7", Command(verb="reject", deployment=7)),
        (".approve to Staging", Command(verb="approve", environment="staging")),
        ("LGTM, ship it", None),
        ("... and another thing", None),
        (".link ABCD-1234", None),  # identity linking, not ours
    ],
)
def test_commands_parse(body: str, expected: Command | None) -> None:
    assert comments.parse_command(body) == expected


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (".frobnicate", "not a shipit command"),
        (".deploy staging", "takes `.deploy` or `.deploy to ENV`"),
        (".deploy to", "takes"),
        (".help me", "takes `.help`"),
        (".unlock a b", "takes"),
        (".deploy to ../../etc", "not an environment name"),
        (".approve 1 2", "takes `.approve`, `.approve N` or `.approve to ENV`"),
        (".reject soon", "takes `.reject`"),
    ],
)
def test_malformed_or_unknown_commands_get_a_reason(body: str, says: str) -> None:
    answer = comments.parse_command(body)
    assert isinstance(answer, str) and says in answer


# ---------------------------------------------------------------- ignored without a job


async def test_bots_edits_issues_and_plain_comments_queue_nothing(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    fake_github.add_pull(REPO, 5, head_ref="feature/x", head_sha=SHA_A)
    bot = fake_github.add_comment(REPO, 5, ".deploy", user="dependabot[bot]", user_type="Bot")
    r = await hook.post("issue_comment", comment_payload(bot, number=5))
    assert (r.status_code, r.json()["message"]) == (202, "comments by bots are ignored")
    plain = fake_github.add_comment(REPO, 5, "LGTM", user="alice")
    r = await hook.post("issue_comment", comment_payload(plain, number=5))
    assert r.json()["message"] == "not a shipit command"
    fake_github.add_issue(REPO, 6)
    on_issue = fake_github.add_comment(REPO, 6, ".deploy", user="alice")
    r = await hook.post("issue_comment", comment_payload(on_issue, number=6, pull=False))
    assert "comments on issues are ignored" in r.json()["message"]
    edited = comment_payload(fake_github.add_comment(REPO, 5, ".deploy", user="alice"), number=5)
    edited["action"] = "edited"
    r = await hook.post("issue_comment", edited)
    assert r.json()["result"] == "ignored"
    # octokit's own examples (a comment on an issue) are accepted and ignored too.
    r = await hook.post("issue_comment", load("issue_comment__created"))
    assert r.status_code == 202 and "ignored" in r.json()["message"]
    assert await job_rows(hook.rt, kind=comments.COMMAND_JOB) == []
    assert await deployments(hook.rt) == []


@pytest.mark.both_databases
async def test_a_redelivered_comment_queues_one_job(hook: Hook, fake_github: FakeGitHub) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    fake_github.add_pull(REPO, 5, head_ref="feature/x", head_sha=SHA_A)
    comment_id, payload = await say(hook, fake_github, ".deploy to production", number=5)
    r = await hook.post("issue_comment", payload, delivery=hook.sent[-1])  # GitHub's "Redeliver"
    assert r.json()["result"] == "duplicate"
    r = await hook.post("issue_comment", payload)  # the same comment under a new delivery id
    assert r.status_code == 202
    [job] = await job_rows(hook.rt, kind=comments.COMMAND_JOB)
    assert job.dedupe_key == f"github-comment:{comment_id}"
    assert job.payload["command"] == {"verb": "deploy", "environment": "production", "reason": None}


# ---------------------------------------------------------------- answered by the worker, no cluster needed


@pytest.mark.both_databases
async def test_help_and_unknown_commands_are_answered_with_help(
    live_hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(live_hook.rt)
    await make_app(live_hook.rt)
    fake_github.add_pull(REPO, 8, head_ref="feature/x", head_sha=SHA_A)
    helped, _ = await say(live_hook, fake_github, ".help", number=8)
    unknown, _ = await say(live_hook, fake_github, ".frobnicate now", number=8)
    await reacted(fake_github, helped, "rocket")
    await reacted(fake_github, unknown, "confused")
    assert fake_github.reactions(REPO, helped) == ["eyes", "rocket"]
    [help_reply] = status_comments(fake_github, 8, helped)
    assert "shipit commands" in help_reply["body"] and "`.deploy to ENV`" in help_reply["body"]
    assert "`.approve [N \\| to ENV]`" in help_reply["body"]
    [unknown_reply] = status_comments(fake_github, 8, unknown)
    assert "`.frobnicate` is not a shipit command" in unknown_reply["body"]
    assert "shipit commands" in unknown_reply["body"]
    assert await deployments(live_hook.rt) == []


@pytest.mark.both_databases
async def test_a_reader_and_a_fork_author_without_write_are_refused(
    live_hook: Hook, fake_github: FakeGitHub
) -> None:
    rt = live_hook.rt
    await offline_cluster(rt)
    await make_app(
        rt, previews_enabled=True, preview_domain="preview.acme.dev", previews_from_forks="approved"
    )
    # Both hold the developer role in shipit: GitHub's answer alone refuses them.
    await grant(rt, "github:rita", "developer")
    await grant(rt, "github:forky", "developer")
    fake_github.set_role(REPO, "rita", "read")
    fake_github.add_repo("forky/web", private=False)
    fake_github.add_pull(REPO, 9, head_ref="patch-1", head_sha=SHA_B, user="forky", head_repo="forky/web")
    fake_github.add_user("forky")  # not a collaborator of the private acme/web: permission none
    fake_github.add_pull(REPO, 10, head_ref="feature/y", head_sha=SHA_A)

    reader, _ = await say(live_hook, fake_github, ".deploy", number=10, user="rita")
    fork, _ = await say(live_hook, fake_github, ".deploy", number=9, user="forky")
    stranger, _ = await say(live_hook, fake_github, ".lock", number=10, user="nobody-here")
    fake_github.set_role(REPO, "walt", "write")  # write on GitHub, but no role in shipit
    outsider, _ = await say(live_hook, fake_github, ".deploy to production", number=10, user="walt")
    for comment_id in (reader, fork, stranger, outsider):
        await reacted(fake_github, comment_id, "confused")
    [reply] = status_comments(fake_github, 10, reader)
    assert (
        "@rita has `read` permission on acme/web" in reply["body"]
        and "needs write permission" in reply["body"]
    )
    [reply] = status_comments(fake_github, 9, fork)
    assert "@forky has `none` permission on acme/web" in reply["body"]
    [reply] = status_comments(fake_github, 10, outsider)
    assert "@walt has no role in shipit" in reply["body"]
    assert "acme" not in reply["body"].replace("acme/web", "")  # no project name for an outsider
    assert fake_github.reactions(REPO, reader) == ["eyes", "confused"]
    assert await deployments(rt) == []
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(models.Preview))) == []
        app = await session.scalar(select(models.App))
    assert app is not None and app.locked_reason is None
    # The permission was read from GitHub for each of them.
    asked = {c.path_params["username"] for c in fake_github.calls("get_collaborator_permission")}
    assert asked == {"rita", "forky", "nobody-here", "walt"}


# ---------------------------------------------------------------- deploys on the real control plane


async def test_deploy_deploys_the_pr_head_to_its_preview_and_edits_one_status_comment(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    number = random.randint(100, 99999)  # preview namespaces outlive a failed test: never reuse one
    namespace = f"web-pr-{number}"
    await link(world, previews_enabled=True, preview_domain="preview.acme.dev")
    await grant(world.rt, "github:alice", "developer")
    fake_github.set_role(REPO, "alice", "write")
    fake_github.add_pull(REPO, number, head_ref="feature/checkout", head_sha=SHA_B)

    comment_id, payload = await say(live_hook, fake_github, ".deploy", number=number)
    await reacted(fake_github, comment_id, "rocket")
    [deploy] = await command_deploys(world.rt, comment_id)
    deploy = await wait_finished(live_hook, deploy.id)
    assert deploy.status == "succeeded", deploy.error
    assert (deploy.namespace, deploy.image, deploy.git_sha) == (namespace, f"ghcr.io/acme/web:{SHA_B}", SHA_B)
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_B}"

    # One status comment, created once and edited as the deploy moved; it ends on the result.
    [status] = status_comments(fake_github, number, comment_id)
    assert "✅ done" in status["body"] and f"preview {namespace}" in status["body"]
    created = [
        c for c in fake_github.calls("create_issue_comment") if comments.marker(comment_id) in c.arg("body")
    ]
    assert len(created) == 1
    edits = [
        c for c in fake_github.calls("edit_issue_comment") if c.path_params["comment_id"] == str(status["id"])
    ]
    assert edits, "the status comment was never updated in place"
    assert fake_github.reactions(REPO, comment_id) == ["eyes", "rocket"]
    # The PR's head came from GitHub (the payload has none), and a GitHub Deployment reports it.
    assert fake_github.calls("get_pull")
    gh = await github_deployment_reaches(fake_github, environment=f"preview/{namespace}", last="success")
    assert gh["sha"] == SHA_B

    # The same comment delivered again (a new delivery id) deploys nothing more.
    r = await live_hook.post("issue_comment", payload)
    assert r.status_code == 202
    async with world.rt.sessionmaker() as session:
        queued = await session.scalars(
            select(models.Job).where(models.Job.kind == comments.COMMAND_JOB, models.Job.state == jobs.QUEUED)
        )
        assert list(queued) == []
    assert len(await command_deploys(world.rt, comment_id)) == 1
    assert len([d for d in await deployments(world.rt) if d.namespace == namespace]) == 1


async def test_deploy_to_staging_then_lock_blocks_the_next_deploy(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    rt = world.rt
    await link(world, name="web")  # production
    stg_ns = await _staging(world, kube_api)
    async with rt.sessionmaker.begin() as session:
        # The app row of `web` in staging: the same app, its own namespace (the definition is copied).
        staging_app = await apps.create(
            session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
            namespace=stg_ns, env="staging", changes=apps.AppChanges(),
        )  # fmt: skip
    await grant(rt, "github:alice", "developer")
    fake_github.set_role(REPO, "alice", "write")
    number = 21
    fake_github.add_pull(REPO, number, head_ref="feature/pay", head_sha=SHA_A)

    deploy_id, _ = await say(live_hook, fake_github, ".deploy to staging", number=number)
    await reacted(fake_github, deploy_id, "rocket")
    [deploy] = await command_deploys(rt, deploy_id)
    assert deploy.status == "succeeded", deploy.error
    assert deploy.app_id == staging_app.id and deploy.image == f"ghcr.io/acme/web:{SHA_A}"
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", stg_ns)
    assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_A}"
    try:
        await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
        raise AssertionError("production's app was deployed too")
    except ApiException as e:
        assert e.status == 404
    await github_deployment_reaches(fake_github, environment="staging", last="success")
    [status] = status_comments(fake_github, number, deploy_id)
    assert "`.deploy to staging`" in status["body"] and "✅ done" in status["body"]

    lock_id, _ = await say(live_hook, fake_github, ".lock staging release freeze", number=number)
    await reacted(fake_github, lock_id, "rocket")
    [reply] = status_comments(fake_github, number, lock_id)
    assert "`staging` is locked: release freeze" in reply["body"]

    again, _ = await say(live_hook, fake_github, ".deploy to staging", number=number)
    await reacted(fake_github, again, "confused")
    [reply] = status_comments(fake_github, number, again)
    assert "environment staging is locked by github:alice" in reply["body"]
    assert "release freeze" in reply["body"]
    assert await command_deploys(rt, again) == []
    async with rt.sessionmaker() as session:
        locked = {e.name: e.locked_reason for e in await session.scalars(select(models.Environment))}
    assert locked == {"production": None, "staging": "release freeze"}  # the environment, not the app

    unlock_id, _ = await say(live_hook, fake_github, ".unlock staging", number=number)
    await reacted(fake_github, unlock_id, "rocket")

    # A new push, deployed; then `.rollback to staging` goes back to the first head's revision.
    fake_github.add_pull(REPO, number, head_ref="feature/pay", head_sha=SHA_B)
    second_id, _ = await say(live_hook, fake_github, ".deploy to staging", number=number)
    await reacted(fake_github, second_id, "rocket")
    rollback_id, _ = await say(live_hook, fake_github, ".rollback to staging", number=number)
    await reacted(fake_github, rollback_id, "rocket")
    [rollback] = await command_deploys(rt, rollback_id)
    assert (rollback.trigger, rollback.status, rollback.image) == (
        "rollback",
        "succeeded",
        f"ghcr.io/acme/web:{SHA_A}",
    )
    [reply] = status_comments(fake_github, number, rollback_id)
    assert "`.rollback to staging`" in reply["body"] and "✅ done" in reply["body"]
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", stg_ns)
    assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_A}"


async def test_noop_posts_the_difference_and_changes_nothing(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    rt = world.rt
    await link(world)
    await grant(rt, "github:alice", "developer")
    fake_github.set_role(REPO, "alice", "admin")
    number = 33
    fake_github.add_pull(REPO, number, head_ref="feature/noop", head_sha=SHA_B)
    before_jobs = len(await job_rows(rt))

    noop_id, _ = await say(live_hook, fake_github, ".noop", number=number)
    await reacted(fake_github, noop_id, "rocket")
    [reply] = status_comments(fake_github, number, noop_id)
    body = reply["body"]
    assert "nothing was changed" in body
    assert f"`ghcr.io/acme/web:0.1` → `ghcr.io/acme/web:{SHA_B}`" in body
    assert "create Deployment/web" in body and "```diff" in body
    # Nothing stored and nothing applied.
    assert await deployments(rt) == []
    assert len(await job_rows(rt)) == before_jobs + 1  # the command's own job only
    try:
        await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
        raise AssertionError("a dry run created the Deployment")
    except ApiException as e:
        assert e.status == 404
    assert fake_github.deployments(REPO) == []


@pytest.mark.both_databases
async def test_deploy_to_two_apps_ends_rocket_only_when_every_app_deployed(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    # The repository deploys `web` (project acme) and `api` (project beta), each in its project's
    # production.  Both deploy and succeed: rocket.  With beta's production locked, `api` is refused
    # when asked while `web` deploys and succeeds: the command did not do what it asked, so confused,
    # and the comment shows web's deploy beside the line saying why api was left out.
    rt = world.rt
    web = await link(world, name="web")
    beta_ns = f"{world.namespace}-beta"
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="beta")
        await clusters.grant(session, actor=ADMIN, cluster=world.cluster, project="beta", namespace=beta_ns)
        api = await apps.create(
            session, actor=ADMIN, project="beta", cluster=world.cluster, name="api", namespace=beta_ns,
            changes=AppChanges(
                image="ghcr.io/acme/api:0.1", git_repo=REPO, git_branch="main",
                image_template="ghcr.io/acme/api:{sha}", health_path=None,
            ),
        )  # fmt: skip
        for project in ("acme", "beta"):
            await projects.set_access(
                session, actor=ADMIN, project_name=project, subject="github:alice", role="developer"
            )
    fake_github.set_role(REPO, "alice", "write")
    number = 61
    try:
        fake_github.add_pull(REPO, number, head_ref="feature/two", head_sha=SHA_A)
        both_id, _ = await say(live_hook, fake_github, ".deploy to production", number=number)
        await reacted(fake_github, both_id, "rocket")
        both = await command_deploys(rt, both_id)
        assert sorted((d.app_id, d.status) for d in both) == sorted(
            [(web.id, "succeeded"), (api.id, "succeeded")]
        )
        [status] = status_comments(fake_github, number, both_id)
        assert "✅ done" in status["body"] and f"ghcr.io/acme/api:{SHA_A}" in status["body"]
        assert fake_github.reactions(REPO, both_id) == ["eyes", "rocket"]

        async with rt.sessionmaker.begin() as session:
            await protection.lock_env(
                session, actor=ADMIN, project="beta", env="production", reason="release freeze"
            )
        fake_github.add_pull(REPO, number, head_ref="feature/two", head_sha=SHA_B)
        half_id, _ = await say(live_hook, fake_github, ".deploy to production", number=number)
        await reacted(fake_github, half_id, "confused")
        [deploy] = await command_deploys(rt, half_id)
        deploy = await wait_finished(live_hook, deploy.id)
        assert (deploy.app_id, deploy.status, deploy.image) == (
            web.id,
            "succeeded",
            f"ghcr.io/acme/web:{SHA_B}",
        )
        assert fake_github.reactions(REPO, half_id) == ["eyes", "confused"]  # never rocket first
        [status] = status_comments(fake_github, number, half_id)
        body = status["body"]
        assert "⚠️ partly done: 1 of 2 apps deployed" in body, body
        assert f"| `web` | production | #{deploy.id} `ghcr.io/acme/web:{SHA_B}` | ✅" in body, body
        assert "- `api`: environment production is locked" in body and "release freeze" in body, body
        assert "✅ done" not in body and "ghcr.io/acme/api" not in body, body
        workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("api", beta_ns)
        assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/api:{SHA_A}"  # untouched

        # Drawn again as another process would, from the database alone: the command as a notice of
        # web's deploy names it (no notes in hand), and the left-out app still counts.
        async with rt.sessionmaker() as session:
            bare = {"repo": REPO, "number": number, "comment_id": half_id, "text": ".deploy to production"}
            again = await pr_commands.report(session, command=bare)
        assert (again.finished, again.failed, again.ok, again.partly) == (True, True, False, True)
        assert len(again.lines) == 1 and again.lines[0].startswith("`api`: environment production is locked")
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(beta_ns)
