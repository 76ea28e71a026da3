"""`.deploy to ENV` in a pull request comment for an app that builds from source: signed issue_comment
deliveries (octokit's real payload shape) over HTTP to the real app and its worker, a real `shipit
builder` worker with real buildah, a real registry, the deploy rolled out on the real Kubernetes API
server.  A head already built is deployed at once with its digest; a head not built yet is built
(once per commit, however often the comment is delivered) and deployed when the build succeeds; a
failed build deploys nothing and the pull request is told which build failed and how to read its log."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from sqlalchemy import select, update

from core import builds, environment_admin, events, jobs, pr_commands, projects
from shipit import builder as builder_process
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
    job_rows,
    pr_payload,
    push_payload,
)
from tests.webhooks.test_e2e import wait_finished
from tests.webhooks.test_pr_commands import REPO, command_deploys, grant, link, reacted, say, status_comments
from tests.webhooks.test_preview_builds import SHA_D
from webhooks import comments
from webhooks.client import Credentials, GitHubClient

__all__ = ["offline_previews", "pushing", "settings", "store"]  # the fixtures, used by name

pytestmark = pytest.mark.both_databases


async def _app(world: World, *, repo: str) -> models.App:
    return await build_setup.build_app(world, build_image=repo, image_template=None)


async def _alice_may_deploy(rt: Runtime, fake: FakeGitHub) -> None:
    """alice comments as a developer of acme with write access to the repository."""
    await grant(rt, "github:alice", "developer")
    fake.set_role(REPO, "alice", "write")


@dataclass(frozen=True, kw_only=True)
class Web:
    app: models.App
    repo: str  # where its builds are pushed
    config: Settings  # a builder's, building from the registry's base


@pytest.fixture
async def web(world: World, fake_github: FakeGitHub, pushing: build_setup.Pushing) -> Web:
    """App `web` building into the test registry, which alice may deploy from pull request comments."""
    app = await _app(world, repo=pushing.repo)
    await _alice_may_deploy(world.rt, fake_github)
    return Web(app=app, repo=pushing.repo, config=pushing.config)


async def _waiting(
    hook: Hook, fake: FakeGitHub, text: str, *, number: int, head_ref: str
) -> tuple[int, models.Build]:
    """`text` said on pull request `number` at SHA_B, not built yet: the comment, and the build it waits for."""
    fake.add_pull(REPO, number, head_ref=head_ref, head_sha=SHA_B)
    comment_id, _ = await say(hook, fake, text, number=number)
    await _status_says(fake, number, comment_id, "waiting for the build")
    [build] = await build_setup.all_builds(hook.rt)
    return comment_id, build


async def _built_and_deployed(
    hook: Hook, fake: FakeGitHub, config: Settings, *, build: int, comment: int
) -> tuple[models.Build, models.Deployment]:
    """The build a comment waits for, run by a builder, and the comment's one deploy it led to, finished."""
    rt = hook.rt
    async with build_setup.builder_worker(rt, fake, config):
        built = await build_setup.wait_build(rt, build)
        assert built.status == builds.SUCCEEDED, (built.error, built.log)

        async def deployed() -> bool:
            return len(await command_deploys(rt, comment)) == 1

        await build_setup.eventually(deployed, what="the comment's deploy once built")
    [deploy] = await command_deploys(rt, comment)
    return built, await wait_finished(hook, deploy.id)


async def _api_deployed(
    hook: Hook, fake: FakeGitHub, *, number: int, head_ref: str
) -> tuple[int, models.Deployment]:
    """`.deploy to production` on pull request `number` at SHA_B: the comment, and api's deploy, which
    succeeded at once (an image template, nothing to build)."""
    fake.add_pull(REPO, number, head_ref=head_ref, head_sha=SHA_B)
    comment_id, _ = await say(hook, fake, ".deploy to production", number=number)
    await build_setup.eventually(lambda: command_deploys(hook.rt, comment_id), what="api's deploy")
    [api_deploy] = await command_deploys(hook.rt, comment_id)
    assert (await wait_finished(hook, api_deploy.id)).status == "succeeded"
    return comment_id, api_deploy


async def _status_says(fake: FakeGitHub, number: int, comment_id: int, *texts: str) -> dict[str, Any]:
    async def check() -> bool:
        found = status_comments(fake, number, comment_id)
        return len(found) == 1 and all(t in found[0]["body"] for t in texts)

    await build_setup.eventually(check, what=f"the status comment of {comment_id} to say {texts}")
    [status] = status_comments(fake, number, comment_id)
    return status


async def test_a_head_already_built_is_deployed_at_once_with_its_digest(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web, kube_api: k8s.ApiClient
) -> None:
    rt = live_hook.rt
    app, repo, config = web.app, web.repo, web.config
    fake_github.add_source(REPO, SHA_A, build_setup.SITE)
    async with build_setup.builder_worker(rt, fake_github, config):
        pushed = await live_hook.post("push", push_payload(sha=SHA_A))
        built = await build_setup.wait_build(rt, pushed.json()["decisions"][0]["build"])
    assert built.status == builds.SUCCEEDED, (built.error, built.log)
    assert built.deployment_id is not None
    await wait_finished(live_hook, built.deployment_id)
    image = f"{repo}@{built.digest}"

    # The pull request's head is the commit the branch built: no build, its digest deployed now.
    number = 41
    fake_github.add_pull(REPO, number, head_ref="feature/built", head_sha=SHA_A)
    comment_id, payload = await say(live_hook, fake_github, ".deploy to production", number=number)
    await reacted(fake_github, comment_id, "rocket")
    [deploy] = await command_deploys(rt, comment_id)
    assert (deploy.app_id, deploy.image, deploy.trigger, deploy.git_sha, deploy.status) == (
        app.id, image, "pr", SHA_A, "succeeded",
    )  # fmt: skip
    assert deploy.git_ref == "refs/heads/feature/built"
    await _status_says(fake_github, number, comment_id, "`.deploy to production`", "✅ done", image)
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    assert workload.spec.template.spec.containers[0].image == image

    # Redelivered (GitHub's "Redeliver", and under a new delivery id): nothing built or deployed again.
    again = await live_hook.post("issue_comment", payload, delivery=live_hook.sent[-1])
    assert again.json()["result"] == "duplicate"
    assert (await live_hook.post("issue_comment", payload)).status_code == 202
    assert len(await job_rows(rt, kind=comments.COMMAND_JOB)) == 1
    assert len(await build_setup.all_builds(rt)) == 1
    assert [d.id for d in await command_deploys(rt, comment_id)] == [deploy.id]
    # A dry run of the built commit compares with its digest.
    noop, _ = await say(live_hook, fake_github, ".noop to production", number=number)
    await reacted(fake_github, noop, "rocket")
    await _status_says(fake_github, number, noop, "nothing was changed", f"→ `{image}`")


async def test_a_head_not_built_is_built_once_then_deployed(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web, kube_api: k8s.ApiClient
) -> None:
    rt = live_hook.rt
    app, repo, config = web.app, web.repo, web.config
    fake_github.add_source(REPO, SHA_B, {**build_setup.SITE, "index.html": "<h1>the pull request's</h1>\n"})
    number = 42
    fake_github.add_pull(REPO, number, head_ref="feature/new", head_sha=SHA_B)

    # No builder runs yet: the comment queues the head's build and waits for it.
    comment_id, payload = await say(live_hook, fake_github, ".deploy to production", number=number)
    await _status_says(fake_github, number, comment_id, "waiting for the build")
    [build] = await build_setup.all_builds(rt)
    await _status_says(fake_github, number, comment_id, f"build #{build.id} of {SHA_B[:7]} queued")
    assert (build.sha, build.status, build.pr_number) == (SHA_B, builds.QUEUED, number)
    assert [w[pr_commands.REF_KEY]["comment_id"] for w in build.waiting or []] == [comment_id]
    assert await command_deploys(rt, comment_id) == []
    # Redelivered while it waits: one job, one build, one waiting comment.
    again = await live_hook.post("issue_comment", payload, delivery=live_hook.sent[-1])
    assert again.json()["result"] == "duplicate"
    assert (await live_hook.post("issue_comment", payload)).status_code == 202
    assert len(await job_rows(rt, kind=comments.COMMAND_JOB)) == 1
    assert len(await job_rows(rt, kind=builds.BUILD_JOB)) == 1

    built, deploy = await _built_and_deployed(
        live_hook, fake_github, config, build=build.id, comment=comment_id
    )
    image = f"{repo}@{built.digest}"
    assert (deploy.app_id, deploy.image, deploy.trigger, deploy.git_sha, deploy.status) == (
        app.id, image, "pr", SHA_B, "succeeded",
    )  # fmt: skip
    assert deploy.actor == "github:alice" and deploy.git_ref == "refs/heads/feature/new"
    assert built.waiting is None
    await reacted(fake_github, comment_id, "rocket")
    await _status_says(fake_github, number, comment_id, "`.deploy to production`", "✅ done", image)
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    assert workload.spec.template.spec.containers[0].image == image
    # One build and one deploy in all, whatever was delivered.
    assert len(await build_setup.all_builds(rt)) == 1
    assert await build_setup.count(rt, models.Deployment) == 1


async def test_a_failed_build_deploys_nothing_and_the_pull_request_hears_why(
    live_hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    # Nothing to build in the tree: the real builder fails it without needing buildah.
    rt = live_hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    async with rt.sessionmaker.begin() as session:  # a second environment: the log command names its own
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace="acme-stg"
        )
    await _alice_may_deploy(rt, fake_github)
    fake_github.add_source(REPO, SHA_B, {"README.md": "nothing to build\n"})
    number = 43
    comment_id, build = await _waiting(
        live_hook, fake_github, ".deploy to production", number=number, head_ref="feature/broken"
    )
    failed = await build_setup.run_build(rt, build.id, fake=fake_github, settings=settings)
    assert failed.status == builds.FAILED and failed.waiting is None
    status = await _status_says(
        fake_github, number, comment_id, "not deployed", f"build #{build.id} of {SHA_B[:7]} failed",
        f"`shipit builds logs web {build.id} --env production`", "cannot tell how to build",
    )  # fmt: skip
    assert "❌" not in status["body"] and "deploy #" not in status["body"]
    await reacted(fake_github, comment_id, "confused")
    assert await command_deploys(rt, comment_id) == []
    assert await build_setup.count(rt, models.Deployment) == 0
    # Asked again at the same failed commit: not built again, refused with the same pointer.
    again, _ = await say(live_hook, fake_github, ".deploy to production", number=number)
    await reacted(fake_github, again, "confused")
    await _status_says(fake_github, number, again, f"`shipit builds logs web {build.id} --env production`")
    assert len(await build_setup.all_builds(rt)) == 1
    # A dry run compares with the commit's digest: none here, so it says so (nothing built, no crash).
    noop, _ = await say(live_hook, fake_github, ".noop to production", number=number)
    await reacted(fake_github, noop, "confused")
    await _status_says(fake_github, number, noop, f"is not built yet (build #{build.id} is failed)")
    assert len(await build_setup.all_builds(rt)) == 1 and await build_setup.count(rt, models.Deployment) == 0


async def test_a_job_run_twice_waits_once_and_a_fork_is_never_built(rt: Runtime) -> None:
    # The command's job run again (its lease lost after the commit): the core sees the comment waiting.
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="github:alice", role="developer"
        )
    pr = pr_commands.PullRequest(
        repo=REPO, number=44, comment_id=9044, login="alice", permission="write", head_sha=SHA_B,
        head_ref="feature/x", head_repo=REPO, is_fork=False,
    )  # fmt: skip
    command = pr_commands.Command(verb="deploy", environment="production")
    for _ in range(2):
        async with rt.sessionmaker.begin() as session:
            result = await pr_commands.run(session, ctx=rt.core, command=command, pr=pr)
        assert result.deployment_ids == [] and len(result.waiting) == 1
    [build] = await build_setup.all_builds(rt)
    assert len(build.waiting or []) == 1 and len(await job_rows(rt, kind=builds.BUILD_JOB)) == 1
    # A newer head of the pull request supersedes its queued builds, but not one a comment waits for.
    async with rt.sessionmaker.begin() as session:
        app = await session.get(models.App, build.app_id)
        assert app is not None
        newer = await builds.queue(
            session, ctx=rt.core, app=app, actor=ADMIN, sha=SHA_C, ref="refs/heads/feature/x", pr_number=44
        )
        newest = await builds.queue(
            session, ctx=rt.core, app=app, actor=ADMIN, sha=SHA_D, ref="refs/heads/feature/x", pr_number=44
        )
    statuses = {b.sha: b.status for b in await build_setup.all_builds(rt)}
    assert statuses == {SHA_B: builds.QUEUED, SHA_C: builds.SUPERSEDED, SHA_D: builds.QUEUED}
    assert newer.created and newest.created
    # A fork's pull request: refused before anything is built for an environment.
    fork = pr_commands.PullRequest(
        repo=REPO, number=45, comment_id=9045, login="alice", permission="write", head_sha=SHA_A,
        head_ref="patch-1", head_repo="forky/web", is_fork=True,
    )  # fmt: skip
    with pytest.raises(pr_commands.Refused, match="comes from a fork"):
        async with rt.sessionmaker.begin() as session:
            await pr_commands.run(session, ctx=rt.core, command=command, pr=fork)
    assert len(await build_setup.all_builds(rt)) == 3


async def test_deploy_to_the_preview_builds_the_head_and_the_preview_waits(
    live_hook: Hook, fake_github: FakeGitHub
) -> None:
    # `.deploy` without an environment: the preview's own build (core.previews); its success deploys the
    # preview (tests/webhooks/test_preview_builds.py), so no builder is needed here.
    rt = live_hook.rt
    await build_setup.offline_build_app(rt, **build_setup.preview_changes("registry.invalid/acme/web"))
    await _alice_may_deploy(rt, fake_github)
    number = 46
    comment_id, build = await _waiting(live_hook, fake_github, ".deploy", number=number, head_ref="feature/p")
    await _status_says(
        fake_github,
        number,
        comment_id,
        f"`web`: build #{build.id} of {SHA_B[:7]} queued; its preview deploys once built.",
    )
    assert (build.sha, build.pr_number) == (SHA_B, number)
    # The comment waits on the build row too: its end ties the comment to the preview's deploy.
    assert [(w[pr_commands.REF_KEY]["comment_id"], w["preview"]) for w in build.waiting or []] == [
        (comment_id, True)
    ]
    async with rt.sessionmaker() as session:
        preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == number))
    assert preview is not None and preview.status == "building"
    assert await build_setup.count(rt, models.Deployment) == 0


async def test_a_build_that_ends_in_a_locked_environment_deploys_nothing_and_says_so(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web
) -> None:
    # The deploy is asked for when the build ends, through the same checks: a lock taken meanwhile holds.
    rt = live_hook.rt
    config = web.config
    fake_github.add_source(REPO, SHA_B, build_setup.SITE)
    number = 47
    fake_github.add_pull(REPO, number, head_ref="feature/late", head_sha=SHA_B)
    comment_id, _ = await say(live_hook, fake_github, ".deploy to production", number=number)
    await _status_says(fake_github, number, comment_id, "waiting for the build")
    lock_id, _ = await say(live_hook, fake_github, ".lock production release freeze", number=number)
    await reacted(fake_github, lock_id, "rocket")
    [build] = await build_setup.all_builds(rt)
    built = await build_setup.run_build(rt, build.id, fake=fake_github, settings=config)
    assert built.status == builds.SUCCEEDED, (built.error, built.log)
    await _status_says(fake_github, number, comment_id, "not deployed", "built, not deployed", "locked")
    await reacted(fake_github, comment_id, "confused")
    assert await command_deploys(rt, comment_id) == [] and await build_setup.count(rt, models.Deployment) == 0


async def _notified(rt: Runtime) -> None:
    """Every notice queued so far delivered (the status comment drawn from the latest state)."""

    async def done() -> bool:
        return all(j.state == "done" for j in await job_rows(rt, kind="notify"))

    await build_setup.eventually(done, what="the notices delivered")


async def test_several_apps_one_built_later_the_comment_ends_on_both_deploys_with_no_stale_wait(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web
) -> None:
    # The repository deploys two apps: `api` from an image template (deployed at once), `web` from
    # source (its build is waited for).  The comment is not done until both are, then says only that.
    rt = live_hook.rt
    repo, config = web.repo, web.config
    await link(world, name="api")
    fake_github.add_source(REPO, SHA_B, build_setup.SITE)
    number = 48
    comment_id, api_deploy = await _api_deployed(
        live_hook, fake_github, number=number, head_ref="feature/both"
    )
    await _notified(rt)
    [build] = await build_setup.all_builds(rt)
    # api is deployed, web still waits: not done, and no reaction yet beyond "seen".
    status = await _status_says(
        fake_github, number, comment_id, "⏳ working on it", f"ghcr.io/acme/web:{SHA_B}",
        f"`web`: build #{build.id} of {SHA_B[:7]} queued; deployed once built.",
    )  # fmt: skip
    assert "✅ done" not in status["body"]
    assert fake_github.reactions(REPO, comment_id) == ["eyes"]

    async with build_setup.builder_worker(rt, fake_github, config):
        built = await build_setup.wait_build(rt, build.id)
        assert built.status == builds.SUCCEEDED, (built.error, built.log)

        async def both() -> bool:
            return len(await command_deploys(rt, comment_id)) == 2

        await build_setup.eventually(both, what="web's deploy once built")
    web_deploy = (await command_deploys(rt, comment_id))[1]
    assert (await wait_finished(live_hook, web_deploy.id)).status == "succeeded"
    await _notified(rt)
    await reacted(fake_github, comment_id, "rocket")
    image = f"{repo}@{built.digest}"
    status = await _status_says(
        fake_github, number, comment_id, "✅ done", f"ghcr.io/acme/web:{SHA_B}", image
    )
    assert "build #" not in status["body"] and "waiting" not in status["body"], status["body"]
    assert fake_github.reactions(REPO, comment_id) == ["eyes", "rocket"]
    # Drawn again from api's deploy (its refs still carry web's wait): the same, nothing stale.
    async with rt.sessionmaker() as session:
        api_now = await session.get(models.Deployment, api_deploy.id)
        assert api_now is not None
        api_ref = comments.command_of(api_now.notify_refs)
        assert api_ref is not None and [w["app"] for w in api_ref["waits"]] == ["web"]
        again = await pr_commands.report(session, command=api_ref)
    assert (again.lines, again.pending, again.failed, again.ok) == ([], False, False, True)


async def test_several_apps_one_build_failing_the_comment_names_the_deploy_and_the_failure(
    world: World, live_hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    # Nothing to build in web's tree: the real builder fails it; api (an image template) deploys.
    rt = live_hook.rt
    await _app(world, repo="registry.invalid/acme/web")
    await link(world, name="api")
    await _alice_may_deploy(rt, fake_github)
    fake_github.add_source(REPO, SHA_B, {"README.md": "nothing to build\n"})
    number = 49
    comment_id, api_deploy = await _api_deployed(
        live_hook, fake_github, number=number, head_ref="feature/half"
    )
    [build] = await build_setup.all_builds(rt)
    failed = await build_setup.run_build(rt, build.id, fake=fake_github, settings=settings)
    assert failed.status == builds.FAILED
    await _notified(rt)
    await reacted(fake_github, comment_id, "confused")
    status = await _status_says(
        fake_github, number, comment_id, "⚠️ partly done: 1 of 2 apps deployed", f"ghcr.io/acme/web:{SHA_B}",
        f"`web`: not deployed: build #{build.id} of {SHA_B[:7]} failed", "`shipit builds logs web",
    )  # fmt: skip
    assert "deployed once built" not in status["body"] and "queued" not in status["body"], status["body"]
    assert status["body"].count(f"build #{build.id}") == 1
    assert "rocket" not in fake_github.reactions(REPO, comment_id)
    assert [d.id for d in await command_deploys(rt, comment_id)] == [api_deploy.id]


async def test_deploy_to_a_preview_that_waits_for_its_build_ends_with_the_reaction(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web, kube_api: k8s.ApiClient
) -> None:
    # `.deploy` (the preview) of an app that builds: the preview waits for its build and deploys it;
    # the command's comment follows that deploy to the end, as a preview deployed at once does.
    rt = live_hook.rt
    app, repo, config = web.app, web.repo, web.config
    async with rt.sessionmaker.begin() as session:
        row = await session.get(models.App, app.id)
        assert row is not None
        row.previews_enabled, row.preview_domain = True, "preview.acme.dev"
    fake_github.add_source(REPO, SHA_B, build_setup.SITE)
    number = random.randint(100, 99999)  # preview namespaces outlive a failed test: never reuse one
    namespace = f"web-pr-{number}"
    fake_github.add_pull(REPO, number, head_ref="feature/preview", head_sha=SHA_B)
    try:
        comment_id, _ = await say(live_hook, fake_github, ".deploy", number=number)
        await _status_says(fake_github, number, comment_id, "waiting for the build")
        # Said twice while it builds: one deploy follows one comment, the later one is told which.
        later_id, _ = await say(live_hook, fake_github, ".deploy", number=number)
        await _status_says(fake_github, number, later_id, "waiting for the build")
        [build] = await build_setup.all_builds(rt)
        async with build_setup.builder_worker(rt, fake_github, config):
            built = await build_setup.wait_build(rt, build.id)
            assert built.status == builds.SUCCEEDED, (built.error, built.log)
        [deploy] = await command_deploys(rt, comment_id)
        assert (await wait_finished(live_hook, deploy.id)).status == "succeeded"
        assert (deploy.namespace, deploy.image, deploy.preview_id is not None) == (
            namespace, f"{repo}@{built.digest}", True,
        )  # fmt: skip
        await _notified(rt)
        await reacted(fake_github, comment_id, "rocket")
        status = await _status_says(
            fake_github, number, comment_id, "✅ done", f"preview {namespace}", f"{repo}@{built.digest}"
        )
        assert "build #" not in status["body"], status["body"]
        assert fake_github.reactions(REPO, comment_id) == ["eyes", "rocket"]
        assert (
            len(await build_setup.all_builds(rt)) == 1 and await build_setup.count(rt, models.Deployment) == 1
        )
        await _status_says(
            fake_github, number, later_id, f"the preview's deploy #{deploy.id} is followed by an earlier"
        )
        assert await command_deploys(rt, later_id) == []
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(namespace)


async def test_deploy_to_a_preview_whose_build_fails_ends_confused_naming_the_build(
    live_hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    rt = live_hook.rt
    await build_setup.offline_build_app(rt, **build_setup.preview_changes("registry.invalid/acme/web"))
    await _alice_may_deploy(rt, fake_github)
    fake_github.add_source(REPO, SHA_B, {"README.md": "nothing to build\n"})
    number = 50
    comment_id, build = await _waiting(
        live_hook, fake_github, ".deploy", number=number, head_ref="feature/p-broken"
    )
    failed = await build_setup.run_build(rt, build.id, fake=fake_github, settings=settings)
    assert failed.status == builds.FAILED and failed.waiting is None
    await reacted(fake_github, comment_id, "confused")
    status = await _status_says(
        fake_github, number, comment_id, "not deployed", f"`web`: not deployed: build #{build.id} of {SHA_B[:7]} failed",
        f"`shipit builds logs web {build.id}",
    )  # fmt: skip
    assert "waiting" not in status["body"] and "queued" not in status["body"], status["body"]
    assert fake_github.reactions(REPO, comment_id) == ["eyes", "confused"]
    assert await build_setup.count(rt, models.Deployment) == 0


async def test_a_builder_dying_while_a_comment_waits_builds_again_and_deploys_once(
    world: World, live_hook: Hook, fake_github: FakeGitHub, web: Web
) -> None:
    # A `.deploy to ENV` waits for its build; the builder taking the build dies mid-build (the
    # process's task ends while it fetches the source: nothing after that is committed, its job keeps
    # its lease).  The lease runs out, another builder takes the job and builds the commit again: the
    # comment is deployed once, with one status comment, as if nothing had happened.
    rt = live_hook.rt
    app, repo, config = web.app, web.repo, web.config
    fake_github.add_source(REPO, SHA_B, build_setup.SITE)
    number = 51
    comment_id, build = await _waiting(
        live_hook, fake_github, ".deploy to production", number=number, head_ref="feature/crash"
    )

    # The first builder claims the build job and dies while it fetches the source.
    async with rt.sessionmaker.begin() as session:
        job = await jobs.claim(
            session, owner="dead-builder", lease_seconds=300, kinds=[builds.BUILD_JOB],
            skip_locked=rt.engine.dialect.name == "postgresql",
        )  # fmt: skip
    assert job is not None and job.kind == builds.BUILD_JOB and job.attempts == 1
    github = GitHubClient(
        credentials=Credentials(
            api_url=fake_github.url, token=fake_github.token, seconds_between_requests=None,
            seconds_between_writes=None,
        )
    )  # fmt: skip
    try:
        dying = asyncio.create_task(
            builds.run_job(ctx=rt.core, job=job, builder=builder_process.builder_of(config, fetcher=github))
        )
        await fake_github.wait_for_call("get_tarball", timeout=60)
        dying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dying
    finally:
        await github.close()
    crashed = await build_setup.build_row(rt, build.id)
    assert (crashed.status, crashed.digest) == (builds.BUILDING, None)  # died mid-build, as intended
    assert [w[pr_commands.REF_KEY]["comment_id"] for w in crashed.waiting or []] == [comment_id]
    assert await command_deploys(rt, comment_id) == []

    # Its lease runs out (as after the crash); a live builder takes the job and builds it again.
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.Job)
            .where(models.Job.id == job.id)
            .values(lease_until=models.utcnow() - dt.timedelta(seconds=1))
        )
    built, deploy = await _built_and_deployed(
        live_hook, fake_github, config, build=build.id, comment=comment_id
    )
    image = f"{repo}@{built.digest}"
    assert (deploy.app_id, deploy.image, deploy.status) == (app.id, image, "succeeded")
    await _notified(rt)
    await reacted(fake_github, comment_id, "rocket")
    await _status_says(fake_github, number, comment_id, "`.deploy to production`", "✅ done", image)
    # Built twice (a fetch a run), the job run twice, everything else once.
    async with rt.sessionmaker() as session:
        row = await session.get(models.Job, job.id)
        assert row is not None and (row.state, row.attempts) == (jobs.DONE, 2)
        not_deployed = await session.scalars(
            select(models.Event).where(models.Event.kind == events.PR_COMMAND_NOT_DEPLOYED)
        )
        assert list(not_deployed) == []
    assert {c.path_params["ref"] for c in fake_github.calls("get_tarball")} == {SHA_B}
    assert len(fake_github.calls("get_tarball")) == 2
    assert built.waiting is None and len(await build_setup.all_builds(rt)) == 1
    assert await build_setup.count(rt, models.Deployment) == 1
    created = [
        c for c in fake_github.calls("create_issue_comment") if comments.marker(comment_id) in c.arg("body")
    ]
    assert len(created) == 1 and len(status_comments(fake_github, number, comment_id)) == 1
    assert fake_github.reactions(REPO, comment_id) == ["eyes", "rocket"]


async def test_deploy_to_a_preview_that_moved_on_while_its_build_ran_says_not_deployed(
    live_hook: Hook, fake_github: FakeGitHub, offline_previews: build_setup.Pushing
) -> None:
    # `.deploy` waits for the build of SHA_B; a push moves the preview to SHA_C before it ends.  SHA_B
    # is still built (the comment asked for it) but the preview does not take it: the comment says so.
    rt = live_hook.rt
    config = offline_previews.config
    await _alice_may_deploy(rt, fake_github)
    fake_github.add_source(REPO, SHA_B, build_setup.SITE)
    number = 52
    comment_id, build = await _waiting(
        live_hook, fake_github, ".deploy", number=number, head_ref="feature/moving"
    )
    moved = await live_hook.post("pull_request", pr_payload("synchronize", number=number, sha=SHA_C))
    assert moved.json()["decisions"][0]["action"] == "build"
    assert (
        await build_setup.build_row(rt, build.id)
    ).status == builds.QUEUED  # the comment's: not superseded
    # Only the comment's build runs here (SHA_C's source is not there: its build fails, unrelated).
    built = await build_setup.run_build(rt, build.id, fake=fake_github, settings=config)
    assert built.status == builds.SUCCEEDED, (built.error, built.log)
    await reacted(fake_github, comment_id, "confused")
    status = await _status_says(
        fake_github, number, comment_id, "not deployed", f"the preview did not take {SHA_B[:7]}"
    )
    assert "waiting" not in status["body"], status["body"]
    assert await command_deploys(rt, comment_id) == []
