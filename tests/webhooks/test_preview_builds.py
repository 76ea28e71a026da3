"""Previews of apps that build from source: signed pull_request deliveries (octokit's real payloads)
over HTTP to the real app -> a build of the head commit -> a real `shipit builder` worker and real
buildah -> a real registry -> the preview deployed with the pushed digest on the real Kubernetes API
server.  Also: the branch's build reused, one build per commit and pull request head, a failed build
failing the preview (red commit status, the comment naming the log command), forks only once
approved, and a pull request closed before its build ends staying closed."""

from __future__ import annotations

import contextlib
import random

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from sqlalchemy import select

from core import builds, events, projects, tokens
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN, World
from tests.fakes.github_api import FakeGitHub
from tests.webhooks import build_setup
from tests.webhooks.build_setup import offline_previews, pushing, settings, store
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    SHA_C,
    Hook,
    deliver_notifications,
    deployments,
    fork_pr_payload,
    job_rows,
    make_app,
    offline_cluster,
    pr_payload,
    push_payload,
)
from tests.webhooks.test_e2e import wait_finished

__all__ = ["offline_previews", "pushing", "settings", "store"]  # the fixtures, used by name

pytestmark = pytest.mark.both_databases

SHA_D = "d00dfeedd00dfeedd00dfeedd00dfeedd00dfeed"


async def _preview(rt: Runtime, number: int) -> models.Preview:
    async with rt.sessionmaker() as session:
        row = await session.scalar(select(models.Preview).where(models.Preview.pr_number == number))
    assert row is not None
    return row


async def test_a_pull_request_is_built_and_its_preview_deployed_the_branchs_build_reused(
    world: World,
    live_hook: Hook,
    fake_github: FakeGitHub,
    pushing: build_setup.Pushing,
    kube_api: k8s.ApiClient,
) -> None:
    rt = live_hook.rt
    repo, config = pushing.repo, pushing.config
    await build_setup.build_app(world, **build_setup.preview_changes(repo))
    fake_github.add_source("acme/web", SHA_A, build_setup.SITE)
    fake_github.add_source(
        "acme/web", SHA_B, {**build_setup.SITE, "index.html": "<h1>the pull request's</h1>\n"}
    )
    number = random.randint(100, 99999)  # preview namespaces outlive a failed test: never reuse one
    namespace = f"web-pr-{number}"
    try:
        async with build_setup.builder_worker(rt, fake_github, config):
            # The branch's push builds SHA_A and deploys the app.
            pushed = await live_hook.post("push", push_payload(sha=SHA_A))
            branch_build = await build_setup.wait_build(rt, pushed.json()["decisions"][0]["build"])
            assert branch_build.status == builds.SUCCEEDED, (branch_build.error, branch_build.log)
            assert branch_build.pr_number is None
            branch_image = f"{repo}@{branch_build.digest}"

            # A pull request at the same commit: its digest is reused, the preview deployed at once.
            opened = pr_payload("opened", number=number, sha=SHA_A)
            fake_github.add_pull_from_event(opened)
            r = await live_hook.post("pull_request", opened)
            assert r.status_code == 202, r.text
            [decision] = r.json()["decisions"]
            assert (decision["action"], decision["image"], decision["preview"]) == (
                "deploy", branch_image, namespace,
            )  # fmt: skip
            assert len(await build_setup.all_builds(rt)) == 1
            first = await wait_finished(live_hook, decision["deployment"])
            assert first.status == "succeeded", first.error

            # A push to the pull request: its head is built, then deployed to the preview.
            r = await live_hook.post("pull_request", pr_payload("synchronize", number=number, sha=SHA_B))
            [decision] = r.json()["decisions"]
            assert decision["action"] == "build", decision
            assert f"http://{namespace}.preview.acme.dev" in decision["reason"]
            assert (await _preview(rt, number)).status == "building"
            pr_build = await build_setup.wait_build(rt, decision["build"])
            assert pr_build.status == builds.SUCCEEDED, (pr_build.error, pr_build.log)
            assert (pr_build.pr_number, pr_build.sha, pr_build.ref) == (
                number, SHA_B, "refs/heads/feature/checkout",
            )  # fmt: skip
            assert pr_build.deployment_id is not None
            second = await wait_finished(live_hook, pr_build.deployment_id)
        assert second.status == "succeeded", second.error
        image = f"{repo}@{pr_build.digest}"
        assert (second.image, second.trigger, second.namespace, second.git_sha) == (
            image, "pr", namespace, SHA_B,
        )  # fmt: skip
        # The preview runs the pull request's digest; the app still runs the branch's.
        preview_workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
        assert preview_workload.spec.template.spec.containers[0].image == image
        app_workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
        assert app_workload.spec.template.spec.containers[0].image == branch_image
        assert [d.image for d in await deployments(rt) if d.preview_id is None] == [branch_image]
        # The registry holds the pull request's commit under its own tag.
        assert await build_setup.tagged_digest(pushing.registry, tag=SHA_B) == pr_build.digest

        # The pull request hears of it as previews tell it: the URL in its comment, a green build.
        async def comment_says_ready() -> bool:
            bodies = [c["body"] for c in fake_github.comments("acme/web", number)]
            return any("ready at" in b and image in b for b in bodies)

        await build_setup.eventually(comment_says_ready, what="the preview comment with its URL")
        assert any(
            s["context"] == "shipit/build (web)" and s["state"] == "success"
            for s in fake_github.commit_statuses("acme/web", SHA_B)
        )
        # The builds listing names the pull request of a preview's build.
        async with rt.sessionmaker.begin() as session:
            _, token = await tokens.create(session, actor=ADMIN, name="a", subject="user:ada", is_admin=True)
        async with httpx.AsyncClient(base_url=f"{live_hook.url}/api/v1") as http:
            listed = (await http.get("/apps/web/builds", headers={"Authorization": f"Bearer {token}"})).json()
        assert [(b["sha"], b["pr"]) for b in listed] == [(SHA_B, number), (SHA_A, None)]
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(namespace)


async def test_a_failed_build_deploys_no_preview_and_says_so_on_the_pull_request(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    # Nothing to build in the tree: the real builder fails it without needing buildah.
    rt = hook.rt
    await build_setup.offline_build_app(rt, **build_setup.preview_changes("registry.invalid/acme/web"))
    fake_github.add_source("acme/web", SHA_B, {"README.md": "nothing to build\n"})
    opened = pr_payload("opened", number=7, sha=SHA_B)
    fake_github.add_pull_from_event(opened)
    decision = (await hook.post("pull_request", opened)).json()["decisions"][0]
    assert decision["action"] == "build"
    # While it builds, the preview's comment says so.
    await deliver_notifications(rt)
    [building] = fake_github.comments("acme/web", 7)
    assert f"building `{SHA_B[:7]}` (build #{decision['build']})" in building["body"]
    build = await build_setup.run_build(rt, decision["build"], fake=fake_github, settings=settings)
    assert build.status == builds.FAILED and (build.error or "").startswith("cannot tell how to build")
    assert build.deployment_id is None and await deployments(rt) == []
    assert (await _preview(rt, 7)).status == "failed"
    await deliver_notifications(rt)
    # The commit is red as a push's build is, and the preview's comment says why and where to look.
    [status] = fake_github.commit_statuses("acme/web", SHA_B)
    assert (status["state"], status["context"]) == ("failure", "shipit/build (web)")
    [comment] = fake_github.comments("acme/web", 7)
    assert comment["id"] == building["id"]  # the same comment, edited in place
    assert f"build #{build.id} of `{SHA_B[:7]}` failed, nothing deployed" in comment["body"]
    assert f"`shipit builds logs web {build.id}`" in comment["body"]
    assert "cannot tell how to build" in comment["body"]
    # Reopened at the same failed commit: no second build, the preview says failed again.
    await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_B))
    again = (await hook.post("pull_request", pr_payload("reopened", number=7, sha=SHA_B))).json()
    assert (
        again["decisions"][0]["action"] == "skip"
        and "shipit builds logs web" in again["decisions"][0]["reason"]
    )
    assert len(await build_setup.all_builds(rt)) == 1


async def test_one_build_per_head_a_newer_head_supersedes_and_branch_builds_stay(hook: Hook) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, **build_setup.preview_changes("registry.acme.dev/acme/web"))
    first = await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_A))
    build_a = first.json()["decisions"][0]["build"]
    # A redelivery never builds twice; nor does another delivery of the same head.
    redelivered = await hook.post(
        "pull_request", pr_payload("opened", number=7, sha=SHA_A), delivery=hook.sent[0]
    )
    assert redelivered.status_code == 200 and redelivered.json()["result"] == "duplicate"
    same = (await hook.post("pull_request", pr_payload("synchronize", number=7, sha=SHA_A))).json()
    assert same["decisions"][0]["build"] == build_a and "queued" in same["decisions"][0]["reason"]
    assert len(await build_setup.all_builds(rt)) == 1
    # The branch's own build of another commit leaves the pull request's alone, and the other way round.
    branch_c = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
    build_b = (await hook.post("pull_request", pr_payload("synchronize", number=7, sha=SHA_B))).json()[
        "decisions"
    ][0]["build"]
    statuses = {b.id: (b.status, b.pr_number) for b in await build_setup.all_builds(rt)}
    assert statuses == {
        build_a: (builds.SUPERSEDED, 7),
        branch_c: (builds.QUEUED, None),
        build_b: (builds.QUEUED, 7),
    }
    # A second pull request at the branch's commit waits for the branch's build, which a newer push
    # then leaves queued: that preview needs it.
    waits = (await hook.post("pull_request", pr_payload("opened", number=8, sha=SHA_C))).json()
    assert (waits["decisions"][0]["action"], waits["decisions"][0]["build"]) == ("build", branch_c)
    branch_d = (await hook.post("push", push_payload(sha=SHA_D))).json()["decisions"][0]["build"]
    statuses = {b.id: b.status for b in await build_setup.all_builds(rt)}
    assert (statuses[branch_c], statuses[branch_d], statuses[build_b]) == (builds.QUEUED,) * 3
    jobs_by_build = {j.payload["build_id"]: j.state for j in await job_rows(rt, kind=builds.BUILD_JOB)}
    assert jobs_by_build == {build_a: "cancelled", branch_c: "queued", build_b: "queued", branch_d: "queued"}
    assert await deployments(rt) == []
    # The branch reaching a commit a pull request's build has queued takes that build for itself.
    adopted = (await hook.post("push", push_payload(sha=SHA_B))).json()["decisions"][0]
    assert (adopted["action"], adopted["build"]) == ("skip", build_b)
    assert (await build_setup.build_row(rt, build_b)).pr_number is None
    assert len(await build_setup.all_builds(rt)) == 4
    async with rt.sessionmaker() as session:
        kinds = [e.kind for e in await session.scalars(select(models.Event).order_by(models.Event.id))]
    assert kinds.count(events.PREVIEW_BUILDING) == 3  # 7 at A, 7 at B, 8 at C


async def test_a_fork_pull_request_is_built_only_once_approved(hook: Hook, fake_github: FakeGitHub) -> None:
    rt = hook.rt
    await offline_cluster(rt)
    await make_app(
        rt, **build_setup.preview_changes("registry.acme.dev/acme/web", previews_from_forks="approved")
    )
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="github:maint", role="developer"
        )
    opened = fork_pr_payload("opened", number=9, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    r = await hook.post("pull_request", opened)
    assert r.json()["decisions"][0]["action"] == "wait"
    # Unapproved, a fork's code is never built: no row, no job.
    assert await build_setup.all_builds(rt) == [] and await job_rows(rt, kind=builds.BUILD_JOB) == []
    assert (await _preview(rt, 9)).status == "pending_approval"
    # A label by someone without a role approves nothing, so builds nothing.
    stranger = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=9, sha=SHA_A, label="shipit:preview", sender="mallory"),
    )
    assert stranger.json()["decisions"][0]["action"] == "skip"
    assert await build_setup.all_builds(rt) == []
    # A project developer's label approves the commit: now it is built, for this pull request.
    approved = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=9, sha=SHA_A, label="shipit:preview", sender="maint"),
    )
    [decision] = approved.json()["decisions"]
    assert decision["action"] == "build", decision
    [build] = await build_setup.all_builds(rt)
    assert (build.id, build.sha, build.pr_number, build.actor) == (
        decision["build"],
        SHA_A,
        9,
        "github:maint",
    )
    assert (await _preview(rt, 9)).status == "building"
    # A new push to the fork needs a new approval before it is built.
    await hook.post("pull_request", fork_pr_payload("synchronize", number=9, sha=SHA_B))
    assert [b.sha for b in await build_setup.all_builds(rt)] == [SHA_A]
    # previews_from_forks=never: no build either.
    await make_app(
        rt, name="api", namespace="api", **build_setup.preview_changes("registry.acme.dev/acme/api")
    )
    await hook.post("pull_request", fork_pr_payload("opened", number=10, sha=SHA_C))
    assert [b.sha for b in await build_setup.all_builds(rt)] == [SHA_A]


async def test_a_build_ending_after_the_pull_request_closed_deploys_nothing(
    hook: Hook, fake_github: FakeGitHub, offline_previews: build_setup.Pushing
) -> None:
    rt = hook.rt
    host, config = offline_previews.host, offline_previews.config
    fake_github.add_source("acme/web", SHA_A, build_setup.SITE)
    # One pull request's build is queued when it closes: it is not run.
    queued = (await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_C))).json()
    await hook.post("pull_request", pr_payload("closed", number=7, sha=SHA_C))
    dropped = await build_setup.build_row(rt, queued["decisions"][0]["build"])
    assert (dropped.status, dropped.error) == (builds.SUPERSEDED, "pull request #7 was closed")
    [job] = [j for j in await job_rows(rt, kind=builds.BUILD_JOB) if j.payload["build_id"] == dropped.id]
    assert job.state == "cancelled"
    # Another's build has started (a builder claimed it) when it closes: it finishes, deploys nothing.
    opened = (await hook.post("pull_request", pr_payload("opened", number=8, sha=SHA_A))).json()
    build_id = opened["decisions"][0]["build"]
    assert await builds._start(rt.core, build_id) is not None  # what a builder does as it claims the job
    closed = await hook.post("pull_request", pr_payload("closed", number=8, sha=SHA_A))
    assert "being deleted" in closed.json()["decisions"][0]["reason"]
    assert (await build_setup.build_row(rt, build_id)).status == builds.BUILDING
    build = await build_setup.run_build(rt, build_id, fake=fake_github, settings=config)
    assert build.status == builds.SUCCEEDED, (build.error, build.log)
    assert build.deployment_id is None and await deployments(rt) == []
    assert (await _preview(rt, 8)).status == "closing"
    assert await build_setup.count(rt, models.Event, models.Event.kind == events.PREVIEW_BUILD_FAILED) == 0
    # Reopened: the commit is built already, its digest deployed at once (no second build).
    reopened = (await hook.post("pull_request", pr_payload("reopened", number=8, sha=SHA_A))).json()
    [decision] = reopened["decisions"]
    assert (decision["action"], decision["image"]) == ("deploy", f"{host}/acme/web@{build.digest}")
    assert [d.image for d in await deployments(rt)] == [f"{host}/acme/web@{build.digest}"]
    # The branch reaching that commit deploys the same digest to the app: no second build.
    pushed = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]
    assert (pushed["action"], pushed["build"], pushed["image"]) == ("deploy", build_id, decision["image"])
    app_deploy = [d for d in await deployments(rt) if d.preview_id is None]
    assert [(d.id, d.trigger, d.git_ref) for d in app_deploy] == [
        (pushed["deployment"], "push", "refs/heads/main")
    ]
    assert len(await build_setup.all_builds(rt)) == 2
    # The first pull request reopened: its dropped build is queued again (the same row, a new run).
    again = (await hook.post("pull_request", pr_payload("reopened", number=7, sha=SHA_C))).json()
    assert (again["decisions"][0]["action"], again["decisions"][0]["build"]) == ("build", dropped.id)
    row = await build_setup.build_row(rt, dropped.id)
    assert (row.status, row.runs, row.error, row.pr_number) == (builds.QUEUED, 1, None, 7)
    assert [
        j.state for j in await job_rows(rt, kind=builds.BUILD_JOB) if j.payload["build_id"] == dropped.id
    ] == [
        "cancelled",
        "queued",
    ]


async def test_a_failed_preview_build_run_again_deploys_the_preview(
    hook: Hook, fake_github: FakeGitHub, offline_previews: build_setup.Pushing
) -> None:
    rt = hook.rt
    host, config = offline_previews.host, offline_previews.config
    async with rt.sessionmaker.begin() as session:
        _, token = await tokens.create(session, actor=ADMIN, name="d", subject="user:dev")
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="user:dev", role="developer"
        )
    fake_github.add_source("acme/web", SHA_B, {"README.md": "nothing to build yet\n"})
    build_id = (await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA_B))).json()[
        "decisions"
    ][0]["build"]
    async with build_setup.builder_worker(rt, fake_github, config):
        assert (await build_setup.wait_build(rt, build_id)).status == builds.FAILED
        assert (await _preview(rt, 7)).status == "failed"
        # The commit is fixed upstream (a passing reason), and a developer runs the build again.
        fake_github.add_source("acme/web", SHA_B, build_setup.SITE)
        async with httpx.AsyncClient(base_url=f"{hook.url}/api/v1") as http:
            again = await http.post(
                f"/apps/web/builds/{build_id}/retry", headers={"Authorization": f"Bearer {token}"}
            )
        assert again.status_code == 202, again.text
        assert again.json()["pr"] == 7
        build = await build_setup.wait_build(rt, build_id)
    assert build.status == builds.SUCCEEDED, (build.error, build.log)
    [deployment] = await deployments(rt)
    assert (deployment.image, deployment.namespace, deployment.trigger) == (
        f"{host}/acme/web@{build.digest}",
        "web-pr-7",
        "pr",
    )
    assert build.deployment_id == deployment.id
    assert (await _preview(rt, 7)).status == "deploying"
