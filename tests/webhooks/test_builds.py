"""Builds from source: a signed push over HTTP to the real app -> a build job -> a real `shipit builder`
worker -> real buildah (vfs, the test's own store) -> a real registry -> the deploy of the pushed
digest on the real Kubernetes API server.  Also: one build per commit, a newer push supersedes a
queued build, a failing build deploys nothing, and the read side (API, role checked first)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from sqlalchemy import select

from core import builds, deploys, projects, tokens
from shipit import builder as builder_process
from shipit import runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN, World
from tests.fakes.github_api import FakeGitHub
from tests.testenv import buildah
from tests.webhooks import build_setup
from tests.webhooks.build_setup import pushing, settings, store
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    SHA_C,
    Hook,
    deliver_notifications,
    make_app,
    offline_cluster,
    push_payload,
    submit_together,
)
from webhooks.client import Credentials, GitHubClient

__all__ = ["pushing", "settings", "store"]  # the fixtures, used by name

pytestmark = pytest.mark.both_databases


def test_the_servers_worker_never_runs_builds() -> None:
    # buildah cannot run in the restricted shipit pod: only `shipit builder` registers the handler.
    assert builds.BUILD_JOB not in runtime.job_handlers()


async def test_a_push_builds_pushes_and_deploys_the_digest(
    world: World,
    live_hook: Hook,
    fake_github: FakeGitHub,
    pushing: build_setup.Pushing,
    kube_api: k8s.ApiClient,
) -> None:
    rt = world.rt
    host, config = pushing.host, pushing.config
    base, (_, password) = config.build_static_image, next(iter(pushing.registry.users.items()))
    await build_setup.build_app(world, build_image=pushing.repo)
    fake_github.add_source("acme/web", SHA_A, build_setup.SITE)

    r = await live_hook.post("push", push_payload(sha=SHA_A))
    assert r.status_code == 202, r.text
    [decision] = r.json()["decisions"]
    assert decision["action"] == "build", decision
    build_id = decision["build"]
    # The server's own worker leaves the build queued: no builder runs yet.
    assert (await build_setup.build_row(rt, build_id)).status == builds.QUEUED

    async with build_setup.builder_worker(rt, fake_github, config):
        build = await build_setup.wait_build(rt, build_id)
        assert build.status == builds.SUCCEEDED, (build.error, build.log)
        assert build.pack == "static" and build.digest and build.digest.startswith("sha256:")
        assert build.deployment_id is not None
        deployment = await build_setup.eventually(
            lambda: _finished(rt, build.deployment_id or 0), what="the built image's deploy"
        )
    assert deployment.status == "succeeded", deployment.error
    image = f"{host}/acme/web@{build.digest}"
    assert (deployment.image, deployment.git_sha, deployment.git_ref, deployment.trigger) == (
        image, SHA_A, "refs/heads/main", "push",
    )  # fmt: skip

    # The registry holds the tag of the commit, at the digest deployed.
    assert await build_setup.tagged_digest(pushing.registry, tag=SHA_A) == build.digest
    # The cluster runs the digest, pulled with the project's credentials.
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    spec = workload.spec.template.spec
    assert spec.containers[0].image == image
    assert [s.name for s in spec.image_pull_secrets or []] == ["web-registry"]
    # Source fetched through the tarball API, the codeload redirect followed without our token.
    # (A builder whose lease ran out on a loaded machine builds again, as after a crash: a fetch a
    # run, one deploy in all.)
    fetches, codeloads = fake_github.calls("get_tarball"), fake_github.calls("codeload_tarball")
    assert fetches and {c.path_params["ref"] for c in fetches} == {SHA_A}
    assert codeloads and not any("authorization" in c.headers for c in codeloads)
    assert await build_setup.count(rt, models.Deployment) == 1
    # The log: the generated Containerfile on the configured base; never the registry password.
    assert f"FROM {base}" in (build.log or "") and "Successfully" not in (build.error or "")
    assert password not in (build.log or "")
    async with rt.sessionmaker() as session:
        audit_rows = list(
            await session.scalars(select(models.AuditEvent).where(models.AuditEvent.action == "build.queue"))
        )
        kinds = [e.kind for e in await session.scalars(select(models.Event).order_by(models.Event.id))]
    assert [a.details["sha"] for a in audit_rows] == [SHA_A]
    assert {"build.queued", "build.succeeded"} <= set(kinds)
    succeeded = await build_setup.eventually(
        lambda: _statuses(fake_github, "shipit/build (web)"), what="the build's commit status"
    )
    assert succeeded[-1]["state"] == "success" and build.digest[:19] in succeeded[-1]["description"]
    assert password not in json.dumps([a.details for a in audit_rows])


async def test_a_second_build_of_an_unchanged_tree_reuses_the_registry_layer_cache(
    world: World,
    live_hook: Hook,
    fake_github: FakeGitHub,
    store: buildah.Store,
    settings: Settings,
    pushing: build_setup.Pushing,
    tmp_path: Path,
) -> None:
    # Two commits with the same tree; the second is built by another builder (a fresh store, as on
    # another replica or after a restart): its steps come from the registry cache, not run again.
    rt = world.rt
    host = pushing.host
    base = f"{host}/base/busybox:1"
    await build_setup.build_app(world, build_image=pushing.repo)
    tree = {
        "Dockerfile": f"FROM {base}\nRUN echo built-once > /step\nCOPY index.html /srv/index.html\n",
        "index.html": "<h1>cached</h1>\n",
    }
    fake_github.add_source("acme/web", SHA_A, tree)
    fake_github.add_source("acme/web", SHA_B, tree)

    first_id = (await live_hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
    first = await build_setup.run_build(rt, first_id, fake=fake_github, settings=settings)
    assert first.status == builds.SUCCEEDED, (first.error, first.log)
    log = first.log or ""
    assert f"--cache-to {host}/acme/web/cache" in log and "Pushing cache" in log, log
    assert "Using cache" not in log
    async with httpx.AsyncClient() as http:
        listed = await http.get(
            f"{pushing.registry.url}/v2/acme/web/cache/tags/list", headers=pushing.registry.headers()
        )
    assert listed.status_code == 200 and len(listed.json()["tags"]) >= 2, listed.text  # RUN and COPY
    # The builder's store keeps the base only: the built image and its cache layers live in the registry.
    assert store.run("images", "--format", "{{.Name}}").split() == [f"{host}/base/busybox"]

    other_dir = tmp_path / "other-builder"
    other_dir.mkdir()
    other = buildah.store(other_dir)
    try:
        other_settings = settings.model_copy(
            update={"build_root": str(other.root), "build_runroot": str(other.runroot)}
        )
        second_id = (await live_hook.post("push", push_payload(sha=SHA_B))).json()["decisions"][0]["build"]
        second = await build_setup.run_build(rt, second_id, fake=fake_github, settings=other_settings)
        assert second.status == builds.SUCCEEDED, (second.error, second.log)
        log = second.log or ""
        assert log.count(f"Cache pulled from remote {host}/acme/web/cache:") == 2, log
        assert log.count("Using cache") == 2, log
        # The same layers, so the same image: the second build made nothing new.
        assert second.digest == first.digest
        assert other.run("images", "--format", "{{.Name}}").split() == [f"{host}/base/busybox"]
    finally:
        other.remove()


async def _statuses(fake: FakeGitHub, context: str) -> list[dict[str, Any]]:
    return [s for s in fake.commit_statuses("acme/web", SHA_A) if s["context"] == context]


async def _finished(rt: Runtime, deployment_id: int) -> models.Deployment | None:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, deployment_id)
    return row if row is not None and row.status in deploys.TERMINAL else None


async def test_a_failing_build_fails_clearly_and_deploys_nothing(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    buildah.require_buildah()
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    fake_github.add_source("acme/web", SHA_A, {"Dockerfile": "FROM scratch\nCOPY missing.txt /missing.txt\n"})
    r = await hook.post("push", push_payload(sha=SHA_A))
    build_id = r.json()["decisions"][0]["build"]
    build = await build_setup.run_build(rt, build_id, fake=fake_github, settings=settings)
    assert build.status == builds.FAILED and build.pack is None
    assert build.error == "buildah bud failed (exit status 125); see the build's log" or (
        build.error or ""
    ).startswith("buildah bud failed"), build.error
    assert "missing.txt" in (build.log or "")
    assert "pack dockerfile: Dockerfile found" in (build.log or "")
    assert build.deployment_id is None
    assert await build_setup.count(rt, models.Deployment) == 0
    async with rt.sessionmaker() as session:
        failed = await session.scalar(select(models.Event).where(models.Event.kind == builds.BUILD_FAILED))
    assert failed is not None and failed.payload["build"] == build_id
    # GitHub shows the commit red, with the reason.
    await deliver_notifications(rt)
    [status] = fake_github.commit_statuses("acme/web", SHA_A)
    assert (status["state"], status["context"]) == ("failure", "shipit/build (web)")
    assert status["description"].startswith(f"build #{build_id} failed: buildah bud failed")


async def test_a_tree_no_pack_fits_fails_the_build(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    fake_github.add_source("acme/web", SHA_A, {"README.md": "nothing to build\n"})
    build_id = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
    build = await build_setup.run_build(rt, build_id, fake=fake_github, settings=settings)
    assert build.status == builds.FAILED
    assert (build.error or "").startswith("cannot tell how to build this commit")
    assert await build_setup.count(rt, models.Deployment) == 0


async def test_one_build_per_commit_and_a_newer_push_supersedes_a_queued_one(hook: Hook) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.acme.dev/acme/web")
    first = await hook.post("push", push_payload(sha=SHA_A))
    build_a = first.json()["decisions"][0]["build"]
    # A second push of the same sha (another delivery) and a redelivery of the first: no second build.
    again = await hook.post("push", push_payload(sha=SHA_A))
    assert again.json()["decisions"][0]["action"] == "skip"
    assert f"build #{build_a}" in again.json()["decisions"][0]["reason"]
    redelivered = await hook.post("push", push_payload(sha=SHA_A), delivery=hook.sent[0])
    assert redelivered.status_code == 200 and redelivered.json()["result"] == "duplicate"
    assert await build_setup.count(rt, models.Build) == 1
    assert await build_setup.count(rt, models.Job, models.Job.kind == builds.BUILD_JOB) == 1
    # A newer commit supersedes the queued build (and cancels its job); nothing was deployed.
    build_b = (await hook.post("push", push_payload(sha=SHA_B))).json()["decisions"][0]["build"]
    a, b = await build_setup.build_row(rt, build_a), await build_setup.build_row(rt, build_b)
    assert (a.status, b.status) == (builds.SUPERSEDED, builds.QUEUED)
    async with rt.sessionmaker() as session:
        states = dict(
            (j.payload["build_id"], j.state)
            for j in await session.scalars(select(models.Job).where(models.Job.kind == builds.BUILD_JOB))
        )
    assert states == {build_a: "cancelled", build_b: "queued"}
    assert await build_setup.count(rt, models.Deployment) == 0
    # A push to a branch the app does not track builds nothing.
    other = await hook.post("push", push_payload(sha=SHA_C, ref="refs/heads/feature"))
    assert other.json()["decisions"] == []
    assert await build_setup.count(rt, models.Build) == 2


async def test_builds_are_read_with_a_role_and_missing_without(hook: Hook) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.acme.dev/acme/web")
    build_id = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="other")
        _, viewer = await tokens.create(session, actor=ADMIN, name="v", subject="user:vera")
        _, stranger = await tokens.create(session, actor=ADMIN, name="s", subject="user:sam")
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="user:vera", role="viewer"
        )
    async with httpx.AsyncClient(base_url=f"{hook.url}/api/v1") as http:
        seen = await http.get("/apps/web/builds", headers={"Authorization": f"Bearer {viewer}"})
        assert seen.status_code == 200, seen.text
        [row] = seen.json()
        assert (row["id"], row["sha"], row["status"], row["log"]) == (build_id, SHA_A, "queued", None)
        one = await http.get(f"/apps/web/builds/{build_id}", headers={"Authorization": f"Bearer {viewer}"})
        assert one.status_code == 200 and one.json()["image"] == "registry.acme.dev/acme/web"
        for path in ("/apps/web/builds", f"/apps/web/builds/{build_id}"):
            hidden = await http.get(path, headers={"Authorization": f"Bearer {stranger}"})
            assert hidden.status_code == 404 and "no app named 'web'" in hidden.json()["error"]["message"]
        missing = await http.get("/apps/web/builds/999999", headers={"Authorization": f"Bearer {viewer}"})
        assert missing.status_code == 404


async def test_build_settings_are_validated_naming_the_field(rt: Runtime) -> None:
    await offline_cluster(rt)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"build_enabled": True}, "build_image"),
        ({"build_enabled": True, "build_image": "registry.acme.dev/acme/web:1.0"}, "build_image"),
        ({"build_enabled": True, "build_image": "Not An Image"}, "build_image"),
        (
            {"build_enabled": True, "build_image": "r.dev/acme/web", "build_context": "../etc"},
            "build_context",
        ),
        ({"build_enabled": True, "build_image": "r.dev/acme/web", "build_context": "/srv"}, "build_context"),
        ({"build_enabled": True, "build_image": "r.dev/acme/web", "git_repo": None}, "git_repo"),
    ]
    for changes, field in cases:
        with pytest.raises(Exception) as e:
            await make_app(rt, image_template=None, **changes)
        assert getattr(e.value, "field", None) == field, (changes, e.value)
    app = await make_app(
        rt,
        image_template=None,
        build_enabled=True,
        build_image="r.dev/acme/web",
        build_context="./services/web/",
    )
    assert (app.build_context, app.build_image) == ("services/web", "r.dev/acme/web")


async def test_shipit_builder_claims_build_jobs_until_stopped(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    # `shipit builder` as the command runs it (its own runtime on the same database), stopped by an
    # event instead of SIGTERM.  The tree has nothing to build, so no buildah is needed to see it work.
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    fake_github.add_source("acme/web", SHA_B, {"notes.txt": "no pack here\n"})
    build_id = (await hook.post("push", push_payload(sha=SHA_B))).json()["decisions"][0]["build"]
    stop = asyncio.Event()
    task = asyncio.create_task(builder_process.serve(settings, stop=stop))
    try:
        build = await build_setup.wait_build(rt, build_id)
    finally:
        stop.set()
        await task
    assert build.status == builds.FAILED and "cannot tell how to build" in (build.error or "")
    assert build.log is not None and f"fetching acme/web@{SHA_B}" in build.log


async def test_a_commit_github_cannot_give_fails_the_build(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    build_id = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
    build = await build_setup.run_build(rt, build_id, fake=fake_github, settings=settings)
    assert build.status == builds.FAILED
    assert build.error == (
        f"tarball of acme/web@{SHA_C[:7]}: not found, or not visible to shipit's GitHub credentials"
    )
    assert [c.status for c in fake_github.calls("get_tarball")] == [404]
    assert await build_setup.count(rt, models.Deployment) == 0


async def test_a_failed_build_is_run_again_on_request_and_only_then(
    hook: Hook, fake_github: FakeGitHub, settings: Settings
) -> None:
    rt = hook.rt
    await build_setup.offline_build_app(rt, build_image="registry.invalid/acme/web")
    async with rt.sessionmaker.begin() as session:
        _, admin = await tokens.create(session, actor=ADMIN, name="a", subject="user:ada", is_admin=True)
        _, viewer = await tokens.create(session, actor=ADMIN, name="v", subject="user:vera")
        _, stranger = await tokens.create(session, actor=ADMIN, name="s", subject="user:sam")
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="user:vera", role="viewer"
        )
    build_id = (await hook.post("push", push_payload(sha=SHA_C))).json()["decisions"][0]["build"]
    async with build_setup.builder_worker(rt, fake_github, settings):
        assert (await build_setup.wait_build(rt, build_id)).status == builds.FAILED  # GitHub's 404
    retry = f"/apps/web/builds/{build_id}/retry"
    async with httpx.AsyncClient(base_url=f"{hook.url}/api/v1") as http:

        async def post(path: str, token: str) -> httpx.Response:
            return await http.post(path, headers={"Authorization": f"Bearer {token}"})

        # Tenancy first: a viewer may not, a stranger sees no app; neither changed anything.
        assert (await post(retry, viewer)).status_code == 403
        hidden = await post(retry, stranger)
        assert hidden.status_code == 404 and "no app named 'web'" in hidden.json()["error"]["message"]
        assert (await build_setup.build_row(rt, build_id)).status == builds.FAILED
        # The commit is there now: run again, the same row, a second run with its own outcome.
        fake_github.add_source("acme/web", SHA_C, {"README.md": "nothing to build\n"})
        again = await post(retry, admin)
        assert again.status_code == 202, again.text
        assert (again.json()["status"], again.json()["runs"], again.json()["error"]) == ("queued", 2, None)
        # Only a failed build runs again: a queued one is refused, naming the field.
        queued = await post(retry, admin)
        assert queued.status_code == 409 and queued.json()["error"]["field"] == "build_id", queued.text
        build = await build_setup.run_build(rt, build_id, fake=fake_github, settings=settings)
        assert build.status == builds.FAILED and (build.error or "").startswith("cannot tell how to build")
        assert [c.status for c in fake_github.calls("get_tarball")] == [
            404,
            302,
        ]  # GitHub redirects to its download host
        assert await build_setup.count(rt, models.Event, models.Event.kind == builds.BUILD_FAILED) == 2
        assert await build_setup.count(rt, models.AuditEvent, models.AuditEvent.action == "build.retry") == 1
        # A newer commit's build holds the app: the older one is not built (and deployed) over it.
        newer = (await hook.post("push", push_payload(sha=SHA_A))).json()["decisions"][0]["build"]
        refused = await post(retry, admin)
        assert refused.status_code == 409 and f"build #{newer}" in refused.json()["error"]["message"]
    assert await build_setup.count(rt, models.Build) == 2
    assert await build_setup.count(rt, models.Deployment) == 0


async def test_a_batch_of_pushes_builds_each_commit_once_beside_deploying_apps(rt: Runtime) -> None:
    # Deliveries arriving together share one transaction (webhooks.ingest): a building app and an
    # app deploying images in one batch, the same commit twice, a newer one superseding.
    await build_setup.offline_build_app(rt, build_image="registry.acme.dev/acme/web")
    await make_app(rt, name="api", namespace="api")
    outcomes = await submit_together(
        rt,
        [
            ("a", push_payload(sha=SHA_A)),
            ("a-again", push_payload(sha=SHA_A)),
            ("b", push_payload(sha=SHA_B)),
        ],
    )
    actions = [{d.app: d.action for d in o.decisions} for o in outcomes]
    assert actions == [
        {"api": "deploy", "web": "build"},
        {"api": "skip", "web": "skip"},
        {"api": "deploy", "web": "build"},
    ]
    async with rt.sessionmaker() as session:
        rows = {b.sha: b.status for b in await session.scalars(select(models.Build))}
        deployed = [
            d.image for d in await session.scalars(select(models.Deployment).order_by(models.Deployment.id))
        ]
    assert rows == {SHA_A: builds.SUPERSEDED, SHA_B: builds.QUEUED}
    assert deployed == [f"ghcr.io/acme/web:{SHA_A}", f"ghcr.io/acme/web:{SHA_B}"]  # api's image template


async def test_the_layer_cache_is_one_repository_per_app_or_none() -> None:
    # A repository shared by every app would let one project write the layers another's builds reuse.
    with pytest.raises(ValueError, match="build_cache_repo"):
        Settings(build_cache_repo="registry.acme.dev/shared-cache")
    fetcher = GitHubClient(credentials=Credentials(api_url="http://127.0.0.1:9", token="t"))
    per_app = builder_process.builder_of(Settings(build_cache_repo="{image}-cache"), fetcher=fetcher)
    assert per_app.cache_of("ghcr.io/acme/web") == "ghcr.io/acme/web-cache"
    off = builder_process.builder_of(Settings(build_cache_repo=""), fetcher=fetcher)
    assert off.cache_of("ghcr.io/acme/web") is None
    await fetcher.close()
