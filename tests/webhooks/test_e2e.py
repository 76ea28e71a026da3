"""End to end: signed deliveries to the real app (worker running) -> the real local control plane ->
the fake GitHub REST API.  Previews open, update and close; pushes deploy; a rollback holds."""

from __future__ import annotations

import contextlib
import functools
import random
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from sqlalchemy import select

from core import apps, deploys
from core.apps import AppChanges
from storage import models
from tests import helpers
from tests.conftest import ADMIN, World
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import SHA_A, SHA_B, SHA_C, Hook, deployments, pr_payload, push_payload

TIMEOUT = 90.0
eventually = functools.partial(helpers.eventually, timeout=TIMEOUT)


async def _deployment(hook: Hook, deployment_id: int) -> models.Deployment:
    async with hook.rt.sessionmaker() as session:
        row = await session.get(models.Deployment, deployment_id)
    assert row is not None
    return row


async def wait_finished(hook: Hook, deployment_id: int) -> models.Deployment:
    async def done() -> bool:
        return (await _deployment(hook, deployment_id)).status in deploys.TERMINAL

    await eventually(done, what=f"deploy {deployment_id} to finish")
    return await _deployment(hook, deployment_id)


async def wait_github_states(
    hook: Hook, fake: FakeGitHub, deployment_id: int, *, last: str, timeout: float = TIMEOUT
) -> list[str]:
    async def reached() -> bool:
        d = await _deployment(hook, deployment_id)
        gh = (d.notify_refs or {}).get("github", {}).get("deployment_id")
        return bool(gh) and fake.deployment_states("acme/web", gh)[-1:] == [last]

    await eventually(reached, what=f"GitHub status {last} for deploy {deployment_id}", timeout=timeout)
    d = await _deployment(hook, deployment_id)
    return fake.deployment_states("acme/web", d.notify_refs["github"]["deployment_id"])


async def _link(world: World, **changes: Any) -> None:
    values: dict[str, Any] = {
        "image": "ghcr.io/acme/web:0.1",
        "git_repo": "acme/web",
        "git_branch": "main",
        "image_template": "ghcr.io/acme/web:{sha}",
        "health_path": None,
        **changes,
    }
    async with world.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name="web",
            namespace=world.namespace,
            changes=AppChanges(**values),
        )


async def _namespace_exists(kube_api: k8s.ApiClient, name: str) -> bool:
    try:
        await k8s.CoreV1Api(kube_api).read_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


async def test_preview_opens_updates_and_closes(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    number = random.randint(100, 99999)  # preview namespaces outlive a failed test: never reuse one
    namespace = f"web-pr-{number}"
    host = f"{namespace}.preview.acme.dev"
    await _link(
        world, previews_enabled=True, preview_domain="preview.acme.dev", preview_env={"PREVIEW": "yes"}
    )
    opened = pr_payload("opened", number=number, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    try:
        r = await live_hook.post("pull_request", opened)
        assert r.status_code == 202, r.text
        first_id = r.json()["decisions"][0]["deployment"]
        first = await wait_finished(live_hook, first_id)
        assert first.status == "succeeded", first.error

        # The cluster: namespace, Deployment Available with the PR head's image, Ingress at the preview host.
        apps_api, net = k8s.AppsV1Api(kube_api), k8s.NetworkingV1Api(kube_api)
        workload = await apps_api.read_namespaced_deployment("web", namespace)
        conditions = {c.type: c.status for c in workload.status.conditions}
        assert conditions["Available"] == "True"
        assert workload.spec.replicas == 1
        container = workload.spec.template.spec.containers[0]
        assert container.image == f"ghcr.io/acme/web:{SHA_A}"
        assert {e.name: e.value for e in container.env or []}["PREVIEW"] == "yes"
        ingress = await net.read_namespaced_ingress("web", namespace)
        assert ingress.spec.rules[0].host == host

        # GitHub: a transient preview environment, success with the URL, one comment with the URL.
        states = await wait_github_states(live_hook, fake_github, first_id, last="success")
        assert states[-2:] == ["in_progress", "success"]  # queued too, unless the rollout outran it
        gh_first = (await _deployment(live_hook, first_id)).notify_refs["github"]["deployment_id"]
        gh = fake_github.deployment(repo := "acme/web", gh_first)
        assert (gh["environment"], gh["transient_environment"]) == (f"preview/{namespace}", True)
        success = fake_github.deployment_statuses(repo, gh_first)[-1]
        assert success["environment_url"] == f"http://{host}"

        async def comment_says(text: str) -> bool:
            found = fake_github.comments(repo, number)
            return len(found) == 1 and text in found[0]["body"]

        await eventually(lambda: comment_says("ready at"), what="the PR comment to say ready")
        [comment] = fake_github.comments(repo, number)
        assert f"http://{host}" in comment["body"]

        # synchronize: the new head rolls out in the same namespace; the same comment is updated.
        r = await live_hook.post("pull_request", pr_payload("synchronize", number=number, sha=SHA_B))
        second_id = r.json()["decisions"][0]["deployment"]
        second = await wait_finished(live_hook, second_id)
        assert second.status == "succeeded", second.error
        workload = await apps_api.read_namespaced_deployment("web", namespace)
        assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_B}"
        await wait_github_states(live_hook, fake_github, second_id, last="success")
        await eventually(lambda: comment_says(f"`{SHA_B[:7]}`"), what="the comment to show the new commit")
        assert fake_github.comments(repo, number)[0]["id"] == comment["id"]
        assert len(fake_github.calls("create_issue_comment")) == 1

        # closed: the namespace is deleted, every GitHub deployment of the preview goes inactive.
        r = await live_hook.post("pull_request", pr_payload("closed", number=number, sha=SHA_B))
        assert r.status_code == 202

        async def gone() -> bool:
            return not await _namespace_exists(kube_api, namespace)

        await eventually(gone, what=f"namespace {namespace} to be deleted")
        gh_second = (await _deployment(live_hook, second_id)).notify_refs["github"]["deployment_id"]

        async def inactive() -> bool:
            return all(
                fake_github.deployment_states(repo, gh_id)[-1] == "inactive"
                for gh_id in (gh_first, gh_second)
            )

        await eventually(inactive, what="the preview deployments to go inactive")
        await eventually(lambda: comment_says("deleted (pull request"), what="the comment to say deleted")
        async with live_hook.rt.sessionmaker() as session:
            preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == number))
        assert preview is not None and preview.status == "closed"
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(namespace)


async def test_a_push_deploys_and_reports_and_the_domain_adds_and_removes_the_ingress(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    await _link(world, domain="web.acme.dev")
    delivery = "push-e2e-1"
    r = await live_hook.post("push", push_payload(sha=SHA_A), delivery=delivery)
    again = await live_hook.post("push", push_payload(sha=SHA_A), delivery=delivery)
    assert again.json()["result"] == "duplicate"
    deployment_id = r.json()["decisions"][0]["deployment"]
    done = await wait_finished(live_hook, deployment_id)
    assert done.status == "succeeded", done.error
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_A}"
    net = k8s.NetworkingV1Api(kube_api)
    ingress = await net.read_namespaced_ingress("web", world.namespace)
    assert ingress.spec.rules[0].host == "web.acme.dev"
    assert ingress.spec.ingress_class_name == "nginx"

    states = await wait_github_states(live_hook, fake_github, deployment_id, last="success")
    assert states[-2:] == ["in_progress", "success"]
    [gh] = fake_github.deployments("acme/web")  # the duplicate delivery deployed nothing
    assert gh["environment"] == "staging"
    assert (
        fake_github.deployment_statuses("acme/web", gh["id"])[-1]["environment_url"] == "https://web.acme.dev"
    )
    assert len(await deployments(live_hook.rt)) == 1

    # Clearing the domain removes the Ingress with the next deploy.
    async with live_hook.rt.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=live_hook.rt.core, actor=ADMIN, name="web", changes=AppChanges(domain=None)
        )
    r = await live_hook.post("push", push_payload(sha=SHA_B))
    done = await wait_finished(live_hook, r.json()["decisions"][0]["deployment"])
    assert done.status == "succeeded", done.error
    try:
        await net.read_namespaced_ingress("web", world.namespace)
        raise AssertionError("the Ingress is still there after the domain was cleared")
    except ApiException as e:
        assert e.status == 404


async def test_a_failed_rollout_reports_failure_with_the_reason(
    world: World, live_hook: Hook, fake_github: FakeGitHub
) -> None:
    await _link(world, image_template="ghcr.io/acme/web:fail-{short_sha}", progress_deadline_seconds=5)
    r = await live_hook.post("push", push_payload(sha=SHA_A))
    deployment_id = r.json()["decisions"][0]["deployment"]
    done = await wait_finished(live_hook, deployment_id)
    assert done.status == "failed"
    states = await wait_github_states(live_hook, fake_github, deployment_id, last="failure")
    assert states[-2:] == ["in_progress", "failure"]
    gh_id = (await _deployment(live_hook, deployment_id)).notify_refs["github"]["deployment_id"]
    description = fake_github.deployment_statuses("acme/web", gh_id)[-1]["description"]
    assert description.startswith("failed: ") and len(description) <= 140


async def test_a_push_after_a_rollback_waits_until_resume(world: World, live_hook: Hook) -> None:
    await _link(world)
    for sha in (SHA_A, SHA_B):
        r = await live_hook.post("push", push_payload(sha=sha))
        done = await wait_finished(live_hook, r.json()["decisions"][0]["deployment"])
        assert done.status == "succeeded", done.error
    async with live_hook.rt.sessionmaker.begin() as session:
        rolled = await deploys.rollback(session, ctx=live_hook.rt.core, actor=ADMIN, app_name="web")
    done = await wait_finished(live_hook, rolled.deployment.id)
    assert (done.status, done.image) == ("succeeded", f"ghcr.io/acme/web:{SHA_A}")

    r = await live_hook.post("push", push_payload(sha=SHA_C))
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip"
    assert "auto-deploy is paused (rolled back to revision 1" in decision["reason"]
    assert len(await deployments(live_hook.rt)) == 3

    async with live_hook.rt.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="pause", on=False)
    r = await live_hook.post("push", push_payload(sha=SHA_C))
    [decision] = r.json()["decisions"]
    assert decision["action"] == "deploy"
    done = await wait_finished(live_hook, decision["deployment"])
    assert (done.status, done.image) == ("succeeded", f"ghcr.io/acme/web:{SHA_C}")
