"""Fork previews end to end: signed deliveries to the real app (worker running) -> the real local
control plane.  What a fork's preview gets of the app's secrets is read back from the API server:
with previews_from_forks=approved nothing, even once approved; with always, the app's values."""

from __future__ import annotations

import base64
import contextlib
import random
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from core import apps, projects, secrets
from core.apps import AppChanges
from tests.conftest import ADMIN, World
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import SHA_A, Hook, deployments, fork_pr_payload
from tests.webhooks.test_e2e import wait_finished

SECRET_VALUE = "s3cret-db-password-of-the-app"


async def _fork_app(world: World, *, policy: str) -> None:
    async with world.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name="web",
            namespace=world.namespace,
            changes=AppChanges(
                image="ghcr.io/acme/web:0.1",
                git_repo="acme/web",
                git_branch="main",
                image_template="ghcr.io/acme/web:{sha}",
                previews_enabled=True,
                preview_domain="preview.acme.dev",
                previews_from_forks=policy,
            ),
        )
        await secrets.set_values(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            app_name="web",
            values={"DATABASE_PASSWORD": SECRET_VALUE},
        )
        await projects.set_access(
            session, actor=ADMIN, project_name=world.project, subject="github:maint", role="developer"
        )


async def _what_the_pods_get(kube_api: k8s.ApiClient, namespace: str) -> tuple[dict[str, str], list[str]]:
    """(the Secret the pods read, decoded; every plain env value of the container)."""
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    container = workload.spec.template.spec.containers[0]
    values: dict[str, str] = {}
    for source in container.env_from or []:
        if source.secret_ref is None:
            continue
        secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret(source.secret_ref.name, namespace)
        values.update({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
    return values, [e.value or "" for e in container.env or []]


async def _deploy_fork_preview(live_hook: Hook, fake_github: FakeGitHub, *, number: int, label: bool) -> int:
    opened = fork_pr_payload("opened", number=number, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    r = await live_hook.post("pull_request", opened)
    assert r.status_code == 202, r.text
    decision: dict[str, Any] = r.json()["decisions"][0]
    if label:
        assert decision["action"] == "wait", decision
        assert await deployments(live_hook.rt) == []
        r = await live_hook.post(
            "pull_request",
            fork_pr_payload("labeled", number=number, sha=SHA_A, label="shipit:preview", sender="maint"),
        )
        decision = r.json()["decisions"][0]
    assert decision["action"] == "deploy", decision
    deployment = await wait_finished(live_hook, int(decision["deployment"]))
    assert deployment.status == "succeeded", deployment.error
    return deployment.id


async def test_an_approved_fork_preview_runs_without_the_apps_secrets(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    number = random.randint(100, 99999)  # preview namespaces outlive a failed test: never reuse one
    namespace = f"web-pr-{number}"
    await _fork_app(world, policy="approved")
    try:
        await _deploy_fork_preview(live_hook, fake_github, number=number, label=True)
        workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
        assert workload.spec.template.spec.containers[0].image == f"ghcr.io/acme/web:{SHA_A}"
        secret_values, env_values = await _what_the_pods_get(kube_api, namespace)
        assert secret_values == {}
        assert SECRET_VALUE not in env_values
        # Nothing in the preview's namespace holds the value, whatever its name.
        for secret in (await k8s.CoreV1Api(kube_api).list_namespaced_secret(namespace)).items:
            decoded = [base64.b64decode(v).decode(errors="replace") for v in (secret.data or {}).values()]
            assert SECRET_VALUE not in decoded, secret.metadata.name
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(namespace)


async def test_a_fork_preview_gets_the_apps_secrets_only_with_always(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    number = random.randint(100, 99999)
    namespace = f"web-pr-{number}"
    await _fork_app(world, policy="always")
    try:
        await _deploy_fork_preview(live_hook, fake_github, number=number, label=False)
        secret_values, _ = await _what_the_pods_get(kube_api, namespace)
        assert secret_values == {"DATABASE_PASSWORD": SECRET_VALUE}
    finally:
        with contextlib.suppress(ApiException):
            await k8s.CoreV1Api(kube_api).delete_namespace(namespace)
