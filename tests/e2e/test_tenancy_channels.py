"""Tenancy from every channel, on the real control plane.

Two projects share one cluster.  `acme` holds its namespace; `beta` holds another, where it runs an
app shipit deployed (`ledger`) beside objects nobody created through shipit (`payroll`), and a namespace
named like one of acme's preview namespaces.  An admin of acme then tries, through the API, the CLI,
Slack and GitHub, to create in, apply over and delete in beta's namespaces.  Every attempt is refused,
no answer names beta, and beta's objects, read back from the API server, are exactly as they were.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from pydantic import SecretStr
from sqlalchemy import func, select
from typer.testing import CliRunner

from core import apps, clusters, deploys, projects
from shipit import cli
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import SlackSender, User, slack_on
from tests.conftest import ADMIN, LiveServer, World
from tests.fakes.github_api import FakeGitHub
from tests.fakes.slack_api import FakeSlack
from tests.shipit.conftest import make_token
from tests.webhooks.conftest import SECRET as GITHUB_SECRET
from tests.webhooks.conftest import Hook, pr_payload, push_payload

ALICE = User("U0ALICE01", "alice")  # admin of acme on Slack
SHA = "a" * 40


@pytest.fixture
def settings(settings: Settings, fake_slack: FakeSlack, fake_github: FakeGitHub) -> Settings:
    """Slack and GitHub both on, against their fakes: every channel at once."""
    return slack_on(settings, fake_slack).model_copy(
        update={
            "github_webhook_secret": SecretStr(GITHUB_SECRET),
            "github_token": SecretStr(fake_github.token),
            "github_api_url": fake_github.url,
            "github_write_interval_seconds": 0,
        }
    )


async def _wait_deploy(rt: Runtime, *, app: str, timeout: float = 90) -> models.Deployment:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with rt.sessionmaker() as session:
            d = await session.scalar(
                select(models.Deployment)
                .join(models.App, models.App.id == models.Deployment.app_id)
                .where(models.App.name == app)
                .order_by(models.Deployment.id.desc())
                .limit(1)
            )
        if d is not None and d.status in deploys.TERMINAL:
            return d
        if loop.time() > deadline:
            raise AssertionError(f"deploy of {app} did not finish within {timeout}s")
        await asyncio.sleep(0.2)


async def _fingerprint(api: Any, *, namespace: str) -> dict[str, Any]:
    """Everything that would show a change to beta's objects: specs, labels, generations, uids."""
    apps_v1, core_v1 = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    out: dict[str, Any] = {}
    for d in (await apps_v1.list_namespaced_deployment(namespace)).items:
        out[f"Deployment/{d.metadata.name}"] = (
            d.metadata.uid,
            d.metadata.generation,
            d.metadata.labels,
            api.sanitize_for_serialization(d.spec),
        )
    for s in (await core_v1.list_namespaced_service(namespace)).items:
        out[f"Service/{s.metadata.name}"] = (s.metadata.uid, s.metadata.resource_version)
    for s in (await core_v1.list_namespaced_secret(namespace)).items:
        out[f"Secret/{s.metadata.name}"] = (s.metadata.uid, s.metadata.resource_version)
    ns = await core_v1.read_namespace(namespace)
    out["Namespace"] = (ns.metadata.uid, ns.metadata.labels, ns.status.phase)
    return out


async def _foreign_workload(api: Any, *, namespace: str, name: str) -> None:
    """A Deployment and Service made by hand (kubectl's field manager, no shipit labels)."""
    labels = {"app": name}
    await k8s.AppsV1Api(api).create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": name, "image": f"registry.beta/{name}:3"}]},
                },
            },
        },
        field_manager="kubectl-client-side-apply",
    )
    await k8s.CoreV1Api(api).create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        field_manager="kubectl-client-side-apply",
    )


@pytest.fixture
async def beta_namespaces(kube_api: Any) -> AsyncIterator[tuple[str, str]]:
    """beta's app namespace and a namespace named like acme's preview of PR 7 (`tenx-pr-7`, made unique)."""
    core_v1 = k8s.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:6]
    names = (f"books-{suffix}", f"tenx{suffix}-pr-7")
    for name in names:
        await core_v1.create_namespace({"metadata": {"name": name}})
    yield names
    for name in names:
        await core_v1.delete_namespace(name)


async def test_no_channel_reaches_another_projects_namespace(
    world: World,
    live_server: LiveServer,
    kube_api: Any,
    beta_namespaces: tuple[str, str],
    fake_slack: FakeSlack,
    fake_github: FakeGitHub,
    tmp_path: Path,
) -> None:
    rt = live_server.rt
    beta_ns, preview_ns = beta_namespaces
    fake_github.add_repo("acme/tenx")
    tenx = preview_ns.removesuffix("-pr-7")

    # beta: its own namespaces, an app shipit deployed there, and objects shipit never made.
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="beta")
        await clusters.grant(session, actor=ADMIN, cluster=world.cluster, project="beta", namespace=beta_ns)
        await clusters.grant(
            session, actor=ADMIN, cluster=world.cluster, project="beta", namespace=preview_ns
        )
        await apps.create(
            session,
            actor=ADMIN,
            project="beta",
            cluster=world.cluster,
            name="ledger",
            namespace=beta_ns,
            changes=apps.AppChanges(image="registry.beta/ledger:1.0", git_repo="beta/ledger",
                                    image_template="registry.beta/ledger:{sha}", git_branch="main"),
        )  # fmt: skip
        await deploys.request(
            session,
            ctx=rt.core,
            actor=ADMIN,
            app_name="ledger",
            image="registry.beta/ledger:1.0",
            trigger="api",
        )
    assert (await _wait_deploy(rt, app="ledger")).status == deploys.SUCCEEDED
    await _foreign_workload(kube_api, namespace=beta_ns, name="payroll")
    await _foreign_workload(kube_api, namespace=preview_ns, name=tenx)

    # acme: alice is its admin on every channel; acme's own app is in acme's namespace.
    async with rt.sessionmaker.begin() as session:
        for subject in ("user:alice", ALICE.subject, "github:alice"):
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject=subject, role="admin"
            )
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster=world.cluster,
            name=tenx,
            namespace=world.namespace,
            changes=apps.AppChanges(image="ghcr.io/acme/tenx:1", git_repo="acme/tenx", git_branch="main",
                                    image_template="ghcr.io/acme/tenx:{sha}", previews_enabled=True,
                                    preview_domain="preview.acme.dev"),
        )  # fmt: skip
    before = {ns: await _fingerprint(kube_api, namespace=ns) for ns in beta_namespaces}
    token = await make_token(rt, subject="user:alice", admin=False)
    answers: list[str] = []

    # --- REST API ---------------------------------------------------------------------------------
    async with httpx.AsyncClient(
        base_url=f"{live_server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        missing = await api.delete("/apps/no-such-app")
        assert missing.status_code == 404
        for name in ("payroll", "ledger2"):
            r = await api.post(
                "/apps",
                json={"name": name, "project": "acme", "cluster": world.cluster, "namespace": beta_ns,
                      "image": "ghcr.io/acme/x:1", "deploy": True},
            )  # fmt: skip
            assert r.status_code == 409, r.text
            answers.append(r.text)
        r = await api.post("/projects", json={"name": "evil"})
        assert r.status_code == 403, r.text
        r = await api.post(
            f"/clusters/{world.cluster}/grants", json={"project": "acme", "namespace": beta_ns}
        )
        assert r.status_code == 403, r.text
        attempts = [
            ("DELETE", "/apps/ledger", None),
            ("POST", "/apps/ledger/deploys", {"image": "ghcr.io/acme/evil:1"}),
            ("PATCH", "/apps/ledger", {"env": {"EVIL": "1"}}),
            ("PUT", "/apps/ledger/secrets", {"values": {"EVIL": "1"}}),
            ("POST", "/apps/ledger/scale", {"replicas": 0}),
            ("POST", "/apps/ledger/rollback", {}),
            ("POST", "/apps/ledger/lock", {"reason": "mine now"}),
        ]
        for method, path, body in attempts:
            r = await api.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json() == json.loads(missing.text.replace("no-such-app", "ledger")), (method, path)
            answers.append(r.text)

    # --- CLI ----------------------------------------------------------------------------------------
    runner = CliRunner()
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": token}
    for args in (
        ["apps", "create", "payroll", "--project", "acme", "--cluster", world.cluster, "--namespace", beta_ns,
         "--image", "ghcr.io/acme/x:1"],
        ["apps", "delete", "ledger", "--yes"],
        ["deploy", "ledger", "ghcr.io/acme/evil:1"],
        ["rollback", "ledger"],
    ):  # fmt: skip
        result = await asyncio.to_thread(runner.invoke, cli.app, args, env=env)
        assert result.exit_code != 0, (args, result.stdout)
        answers.append(result.stderr)

    # --- Slack --------------------------------------------------------------------------------------
    slack = SlackSender(url=live_server.url, fake=fake_slack)
    try:
        for text in (
            "deploy ledger ghcr.io/acme/evil:1",
            "rollback ledger",
            "scale ledger min=1 max=2",
            "secrets set ledger EVIL=1",
            "lock ledger mine now",
        ):
            reply = await slack.command(text, user=ALICE)
            said = json.dumps(reply)
            assert "ledger" in said and "no app named" in said, (text, reply)
            answers.append(said)
    finally:
        await slack.close()

    # --- GitHub: a push to acme's repo deploys only acme's app; acme's PR preview cannot take beta's
    # namespace of the same name.
    async with httpx.AsyncClient(timeout=30) as client:
        hook = Hook(url=live_server.url, rt=rt, client=client)
        r = await hook.post("pull_request", pr_payload("opened", number=7, sha=SHA, repo="acme/tenx"))
        assert r.status_code in (200, 202), r.text
        answers.append(r.text)
        r = await hook.post("push", push_payload(sha=SHA, repo="acme/tenx"))
        assert r.status_code == 202, r.text
    pushed = await _wait_deploy(rt, app=tenx)
    assert pushed.namespace == world.namespace
    async with rt.sessionmaker() as session:
        preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == 7))
        ledger_deploys = await session.scalar(
            select(func.count())
            .select_from(models.Deployment)
            .join(models.App, models.App.id == models.Deployment.app_id)
            .where(models.App.name == "ledger")
        )
    assert preview is not None and preview.status == "failed", preview and preview.status
    assert ledger_deploys == 1  # beta's own first deploy, nothing since

    # Nothing of beta was changed, and no answer named beta.
    await asyncio.sleep(1)  # let anything wrongly queued reach the cluster before we look
    after = {ns: await _fingerprint(kube_api, namespace=ns) for ns in beta_namespaces}
    assert after == before
    for answer in answers:
        assert "beta" not in answer, answer
