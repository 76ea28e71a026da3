"""Preview environments in core: naming, what a preview deploy renders, the cap, the reaper, teardown."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from core import apps, clusters, deploys, events, gitops, previews, projects, revisions
from core.apps import AppChanges
from core.context import Core
from core.kube import render
from core.kube.client import Kube
from core.worker import run_until_idle
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World
from tests.testenv.plugin import KubeEnv

OFFLINE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]
current-context: c
users: [{name: u, user: {token: nothing}}]
"""
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


async def _app(rt: Runtime, *, cluster: str = "test", namespace: str = "default", **changes: object) -> None:
    async with rt.sessionmaker.begin() as session:
        if not await session.scalar(select(models.Project.id).where(models.Project.name == "acme")):
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        if not await session.scalar(select(models.Cluster.id).where(models.Cluster.name == cluster)):
            await clusters.add(
                session,
                ctx=rt.core,
                actor=ADMIN,
                name=cluster,
                kubeconfig_text=OFFLINE_KUBECONFIG,
                version="v1.36.3",
            )
        values: dict[str, object] = {
            "image": "ghcr.io/acme/web:0.1",
            "git_repo": "acme/web",
            "git_branch": "main",
            "image_template": "ghcr.io/acme/web:{sha}",
            "previews_enabled": True,
            "preview_domain": "preview.acme.dev",
            **changes,
        }
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster=cluster,
            name="web",
            namespace=namespace,
            changes=AppChanges(**values),  # type: ignore[arg-type]
        )


async def _open(rt: Runtime, number: int, *, sha: str = SHA) -> gitops.Outcome:
    async with rt.sessionmaker.begin() as session:
        return await previews.on_pull_request(
            session,
            ctx=rt.core,
            repo="acme/web",
            number=number,
            action="opened",
            head_sha=sha,
            head_ref="feature/x",
            sender="octocat",
        )


async def _preview(rt: Runtime, number: int) -> models.Preview:
    async with rt.sessionmaker() as session:
        preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == number))
    assert preview is not None
    return preview


def test_namespace_is_app_pr_number_and_stays_a_dns_label() -> None:
    assert previews.namespace_for(app_name="web", number=7) == "web-pr-7"
    long = previews.namespace_for(app_name="a" * 62 + "b", number=12345)
    assert len(long) == 63 and long.endswith("-pr-12345")
    assert previews.namespace_for(app_name="ab-" + "c" * 60, number=1).count("--") == 0


async def test_a_preview_deploy_renders_one_replica_no_hpa_preview_env_and_its_own_host(rt: Runtime) -> None:
    await _app(
        rt,
        env={"MODE": "prod", "KEEP": "1"},
        preview_env={"MODE": "preview"},
        min_replicas=2,
        max_replicas=5,
        replicas=3,
        domain="web.acme.dev",
        tls_issuer="letsencrypt",
    )
    await _open(rt, 7)
    async with rt.sessionmaker() as session:
        deployment = await session.scalar(select(models.Deployment))
        assert deployment is not None
        revision = await session.get(models.Revision, deployment.revision_id)
        preview = await session.get(models.Preview, deployment.preview_id)
        app = await session.get(models.App, deployment.app_id)
    assert revision is not None and preview is not None and app is not None
    spec = deploys.workload_spec(
        ctx=rt.core,
        app_name="web",
        project="acme",
        namespace=deployment.namespace,
        revision=deployment.revision_number,
        snapshot=revisions.of_revision(revision),
        secret_data={"TOKEN": "s3cret"},
        secret_checksum="x",
        preview=preview,
        preview_env=dict(app.preview_env),
    )
    kinds = {m["kind"]: m for m in render.render(spec)}
    assert "HorizontalPodAutoscaler" not in kinds
    assert ("HorizontalPodAutoscaler", "web") in render.render_absent(spec)
    assert kinds["Deployment"]["metadata"]["namespace"] == "web-pr-7"
    assert kinds["Deployment"]["spec"]["replicas"] == 1
    env = {
        e["name"]: e.get("value")
        for e in kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODE"] == "preview" and env["KEEP"] == "1"
    assert kinds["Secret"]["metadata"]["namespace"] == "web-pr-7"  # the app's secrets, copied
    ingress = kinds["Ingress"]
    assert ingress["spec"]["rules"][0]["host"] == "web-pr-7.preview.acme.dev"
    assert ingress["spec"]["tls"][0]["hosts"] == ["web-pr-7.preview.acme.dev"]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert preview.url == "https://web-pr-7.preview.acme.dev"


@pytest.mark.both_databases
async def test_the_cap_counts_open_previews_only(rt: Runtime) -> None:
    await _app(rt, preview_max_open=2)
    assert (await _open(rt, 1)).deployed
    assert (await _open(rt, 2)).deployed
    refused = await _open(rt, 3)
    assert not refused.deployed and "limit (preview_max_open=2)" in refused.decisions[0].reason
    # Pushing to an open preview is never refused.
    assert (await _open(rt, 2, sha="1" * 40)).deployed
    async with rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App))
        assert app is not None
        await previews.close(
            session, ctx=rt.core, app=app, actor=ADMIN, number=1, reason="pull request #1 was closed"
        )
    assert (await _open(rt, 3)).deployed


@pytest.mark.both_databases
async def test_the_reaper_tears_down_previews_idle_past_the_ttl(rt: Runtime) -> None:
    await _app(rt, preview_ttl_hours=24)
    await _open(rt, 1)
    await _open(rt, 2)
    async with rt.sessionmaker.begin() as session:
        idle = await session.scalar(select(models.Preview).where(models.Preview.pr_number == 1))
        assert idle is not None
        idle.last_activity_at = models.utcnow() - dt.timedelta(hours=25)
        idle.expires_at = models.utcnow() - dt.timedelta(hours=1)
    async with rt.sessionmaker.begin() as session:
        assert await previews.reap(session, ctx=rt.core) == ["web-pr-1"]
    async with rt.sessionmaker.begin() as session:
        assert await previews.reap(session, ctx=rt.core) == []  # once
    one, two = await _preview(rt, 1), await _preview(rt, 2)
    assert one.status == "closing" and one.closed_at is not None
    assert two.status == "deploying" and two.closed_at is None
    async with rt.sessionmaker() as session:
        [job] = list(
            await session.scalars(select(models.Job).where(models.Job.kind == previews.TEARDOWN_JOB))
        )
    assert job.payload["reason"] == "no activity for 24 hours"
    # In 24 hours the other one goes too.
    async with rt.sessionmaker.begin() as session:
        later = models.utcnow() + dt.timedelta(hours=24, minutes=1)
        assert await previews.reap(session, ctx=rt.core, now=later) == ["web-pr-2"]


async def test_a_teardown_queued_before_a_reopen_leaves_the_preview_alone(rt: Runtime) -> None:
    await _app(rt)
    await _open(rt, 1)
    async with rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App))
        assert app is not None
        await previews.close(session, ctx=rt.core, app=app, actor=ADMIN, number=1, reason="closed")
    await _open(rt, 1)  # reopened before the worker got to the teardown
    # The cluster is unreachable: reaching it would fail this test, so this also shows it is not contacted.
    await run_until_idle(rt.core, handlers={previews.TEARDOWN_JOB: previews.HANDLERS[previews.TEARDOWN_JOB]})
    preview = await _preview(rt, 1)
    assert (preview.status, preview.closed_at) == ("deploying", None)


async def test_teardown_deletes_the_namespace_and_reports_closed(world: World, kube_env: KubeEnv) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
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
                image_template="ghcr.io/acme/web:{sha}",
                previews_enabled=True,
                preview_domain="preview.acme.dev",
            ),
        )
    await _open(rt, 5)
    handlers = {**rt.handlers(), **previews.HANDLERS}
    await run_until_idle(rt.core, handlers=handlers, within=240)
    preview = await _preview(rt, 5)
    assert preview.status == "ready", preview.status
    kube = await _kube(rt.core)
    assert await kube.namespace_exists(name="web-pr-5")

    async with rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App))
        assert app is not None
        await previews.close(
            session, ctx=rt.core, app=app, actor=ADMIN, number=5, reason="pull request #5 was closed"
        )
    await run_until_idle(rt.core, handlers=handlers, within=240)
    assert not await kube.namespace_exists(name="web-pr-5")
    preview = await _preview(rt, 5)
    assert preview.status == "closed"
    async with rt.sessionmaker() as session:
        closed = await session.scalar(select(models.Event).where(models.Event.kind == events.PREVIEW_CLOSED))
    assert closed is not None and closed.preview_id == preview.id
    assert closed.payload["reason"] == "pull request #5 was closed"


async def _kube(ctx: Core) -> Kube:
    async with ctx.sessionmaker() as session:
        cluster = await session.scalar(select(models.Cluster))
        assert cluster is not None
        return await clusters.client(cluster, ctx=ctx)
