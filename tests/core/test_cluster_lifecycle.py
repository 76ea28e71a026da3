"""A cluster connected the way the README says: the target-cluster RBAC bundle applied with the admin
kubeconfig, a kubeconfig for its service account built by `shipit clusters kubeconfig-from-sa`, and
`clusters add`.  The whole deploy flow then runs with that account's permissions only (the test
control plane authorizes with RBAC), and a namespace outside a namespaced RoleBinding is refused with
a clear message.  Also the lifecycle commands: clusters update / delete, projects delete.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from core import apps, autoscaling, clusters, deploys, previews, projects, secrets, status
from core.apps import AppChanges
from core.errors import PermissionDenied, ShipitError
from core.identity import Actor
from core.worker import run_until_idle
from shipit import cli
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, LiveServer
from tests.manifests import kustomize
from tests.shipit.conftest import make_token
from tests.testenv.plugin import KubeEnv, api_client

pytestmark = pytest.mark.timeout(900)
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


async def _apply_bundle(kube_env: KubeEnv, objs: list[dict[str, Any]]) -> None:
    async with api_client(kube_env) as api:
        for obj in objs:
            await kustomize.apply(api, obj, dry_run=False)
        secret = next(o for o in objs if o["kind"] == "Secret")
        path = kustomize.path_of(secret)
        for _ in range(300):  # the token controller fills the Secret in within a moment
            if (await kustomize.call(api, "GET", path)).get("data", {}).get("token"):
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the service-account token Secret was never filled in")


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


async def _kubeconfig_from_sa(kube_env: KubeEnv, *, service_account: str = "shipit") -> str:
    text = await asyncio.to_thread(
        _cli,
        "clusters",
        "kubeconfig-from-sa",
        "--server",
        kube_env.server,
        "--kubeconfig",
        str(kube_env.kubeconfig_path),
        "--service-account",
        service_account,
        "--name",
        "prod",
    )
    doc = yaml.safe_load(text)
    user = doc["users"][0]["user"]
    assert set(user) == {"token"}, "only the service account's token, not the admin's certificate"
    assert doc["clusters"][0]["cluster"]["certificate-authority-data"]
    assert doc["contexts"][0]["context"]["namespace"] == "shipit-system"
    return text


@pytest.fixture
async def sa_kubeconfig(kube_env: KubeEnv) -> str:
    """The cluster-wide bundle, as shipped, applied with the admin kubeconfig."""
    await _apply_bundle(kube_env, kustomize.build(kustomize.MANIFESTS / "target-cluster"))
    return await _kubeconfig_from_sa(kube_env)


async def _add_cluster(rt: Runtime, *, name: str, kubeconfig: str, namespaces: list[str]) -> None:
    version = await clusters.check(ctx=rt.core, kubeconfig_text=kubeconfig, key=f"check:{name}")
    async with rt.sessionmaker.begin() as session:
        if not await session.scalar(select(models.Project.id).where(models.Project.name == "acme")):
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        await clusters.add(
            session,
            ctx=rt.core,
            actor=ADMIN,
            name=name,
            kubeconfig_text=kubeconfig,
            default_namespace=namespaces[0],
            version=version,
        )
        for ns in namespaces:
            await clusters.grant(session, actor=ADMIN, cluster=name, project="acme", namespace=ns)


async def _drain(rt: Runtime) -> None:
    await run_until_idle(rt.core, handlers={**rt.handlers(), **previews.HANDLERS}, within=240)


async def _deploy(rt: Runtime, app: str, **kwargs: Any) -> models.Deployment:
    async with rt.sessionmaker.begin() as session:
        d = (
            await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name=app, trigger="api", **kwargs)
        ).deployment
    await _drain(rt)
    return await _reload(rt, d.id)


async def _reload(rt: Runtime, deployment_id: int) -> models.Deployment:
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        return d


async def test_the_bundle_is_enough_for_the_whole_deploy_flow(
    rt: Runtime, sa_kubeconfig: str, namespace: str
) -> None:
    await _add_cluster(rt, name="prod", kubeconfig=sa_kubeconfig, namespaces=[namespace])
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="prod",
            name="web",
            namespace=namespace,
            changes=AppChanges(
                image="ghcr.io/acme/web:1.0",
                progress_deadline_seconds=30,
                domain="web.acme.dev",
                git_repo="acme/web",
                image_template="ghcr.io/acme/web:{sha}",
                previews_enabled=True,
                preview_domain="preview.acme.dev",
            ),
        )
    first = await _deploy(rt, "web")
    assert first.status == deploys.SUCCEEDED, first.error

    async with rt.sessionmaker.begin() as session:
        await secrets.set_values(
            session, ctx=rt.core, actor=ADMIN, app_name="web", values={"DB_URL": "pg://x"}
        )
    second = await _deploy(rt, "web", image="ghcr.io/acme/web:1.1")
    assert second.status == deploys.SUCCEEDED, second.error

    async with rt.sessionmaker.begin() as session:
        scaled = (
            await autoscaling.scale(
                session,
                ctx=rt.core,
                actor=ADMIN,
                app_name="web",
                min_replicas=2,
                max_replicas=4,
                cpu_target=70,
            )
        ).deployment
    await _drain(rt)
    assert (await _reload(rt, scaled.id)).status == deploys.SUCCEEDED
    kube = await rt.core.kube.get(key="sa-check", kubeconfig=sa_kubeconfig)
    assert await kube.get(kind="HorizontalPodAutoscaler", name="web", namespace=namespace) is not None

    async with rt.sessionmaker.begin() as session:
        back = (
            await deploys.rollback(session, ctx=rt.core, actor=ADMIN, app_name="web", revision=1)
        ).deployment
    await _drain(rt)
    back = await _reload(rt, back.id)
    assert back.status == deploys.SUCCEEDED and back.image == "ghcr.io/acme/web:1.0", back.error

    # Revision 1 had no autoscaling: the account deleted the HPA.  The rest is there, read back
    # through the account itself.
    assert await kube.get(kind="HorizontalPodAutoscaler", name="web", namespace=namespace) is None
    for kind, name in (
        ("Deployment", "web"),
        ("Service", "web"),
        ("Secret", "web-secrets"),
        ("Ingress", "web"),
    ):
        assert await kube.get(kind=kind, name=name, namespace=namespace) is not None, kind

    # Status and logs.
    async with rt.sessionmaker() as session:
        target = await status.target(session, ctx=rt.core, actor=ADMIN, app_name="web")
    live = await status.live(ctx=rt.core, target=target)
    assert live is not None
    try:
        lines = [line async for line in status.logs(ctx=rt.core, target=target, tail_lines=5, follow=False)]
    except ShipitError as e:  # kwok's pods may have no log to give; a refusal is what must not happen
        assert "403" not in str(e) and "forbidden" not in str(e).lower(), e
    else:
        assert lines

    # A preview: its own namespace created by the account, then deleted whole.
    async with rt.sessionmaker.begin() as session:
        await previews.on_pull_request(
            session,
            ctx=rt.core,
            repo="acme/web",
            number=7,
            action="opened",
            head_sha=SHA,
            head_ref="feature/x",
            sender="octocat",
        )
    await _drain(rt)
    async with rt.sessionmaker() as session:
        preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == 7))
    assert preview is not None and preview.status == "ready", preview and preview.status
    assert await kube.namespace_exists(name=preview.namespace)
    async with rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        await previews.close(session, ctx=rt.core, app=app, actor=ADMIN, number=7, reason="closed")
    await _drain(rt)
    for _ in range(300):
        ns = await kube.get(kind="Namespace", name=preview.namespace)
        if ns is None or ns["metadata"].get("deletionTimestamp"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the preview namespace was not deleted")

    async with rt.sessionmaker() as session:
        errors = [d.error for d in await session.scalars(select(models.Deployment)) if d.error]
    assert not [e for e in errors if "403" in e or "forbidden" in e.lower()], errors


async def test_a_namespace_outside_a_namespaced_rolebinding_is_refused_clearly(
    rt: Runtime, kube_env: KubeEnv, namespace: str
) -> None:
    """The namespaced variant: a RoleBinding in one namespace only.  Deploying there works; deploying
    into another namespace (granted in shipit, but not bound on the cluster) fails with the 403 named."""
    other = f"{namespace}-x"
    async with api_client(kube_env) as api:
        await kustomize.call(
            api,
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}},
        )
    objs = []
    for obj in kustomize.build(kustomize.MANIFESTS / "target-cluster" / "namespaced"):
        obj = copy.deepcopy(obj)
        # Its own account, so the cluster-wide binding other tests apply does not apply to it.
        if obj["kind"] == "ServiceAccount":
            obj["metadata"]["name"] = "shipit-limited"
        elif obj["kind"] == "Secret":
            obj["metadata"]["name"] = "shipit-limited-token"
            obj["metadata"]["annotations"]["kubernetes.io/service-account.name"] = "shipit-limited"
        elif obj["kind"] == "RoleBinding":
            obj["metadata"]["namespace"] = namespace
            obj["subjects"][0]["name"] = "shipit-limited"
        objs.append(obj)
    assert {o["kind"] for o in objs} == {
        "Namespace",
        "ServiceAccount",
        "Secret",
        "ClusterRole",
        "RoleBinding",
    }
    await _apply_bundle(kube_env, objs)
    kubeconfig = await _kubeconfig_from_sa(kube_env, service_account="shipit-limited")
    await _add_cluster(rt, name="limited", kubeconfig=kubeconfig, namespaces=[namespace, other])
    async with rt.sessionmaker.begin() as session:
        for name, ns in (("inside", namespace), ("outside", other)):
            await apps.create(
                session,
                actor=ADMIN,
                project="acme",
                cluster="limited",
                name=name,
                namespace=ns,
                changes=AppChanges(image="ghcr.io/acme/web:1.0", progress_deadline_seconds=30),
            )
    inside = await _deploy(rt, "inside")
    assert inside.status == deploys.SUCCEEDED, inside.error
    outside = await _deploy(rt, "outside")
    assert outside.status == deploys.FAILED
    assert outside.error is not None
    assert "permission missing on the cluster (403)" in outside.error, outside.error
    assert other in outside.error and "system:serviceaccount:shipit-system:shipit-limited" in outside.error
    async with rt.sessionmaker() as session:
        job = await session.scalar(select(models.Job).where(models.Job.dedupe_key == f"deploy:{outside.id}"))
    assert job is not None and job.attempts == 1, "a refusal is permanent: not retried"


def _run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args), env=env)


async def test_clusters_update_and_delete_and_projects_delete_from_the_cli(
    live_server: LiveServer, sa_kubeconfig: str, tmp_path: Path
) -> None:
    rt = live_server.rt
    env = {"SHIPIT_URL": live_server.url, "SHIPIT_TOKEN": await make_token(rt)}

    async def shipit(*args: str) -> Any:
        return await asyncio.to_thread(_run, env, *args)

    good = tmp_path / "prod.kubeconfig"
    good.write_text(sa_kubeconfig)
    assert (await shipit("projects", "create", "acme")).exit_code == 0
    added = await shipit("clusters", "add", "prod", "--kubeconfig", str(good), "--namespace", "apps")
    assert added.exit_code == 0, added.output
    assert (await shipit("clusters", "grant", "prod", "acme", "--namespace", "apps")).exit_code == 0

    # A kubeconfig whose token the cluster rejects is refused, and the stored one stays.
    doc = yaml.safe_load(sa_kubeconfig)
    doc["users"][0]["user"]["token"] = "not-a-valid-token"
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text(yaml.safe_dump(doc))
    refused = await shipit("clusters", "update", "prod", "--kubeconfig", str(bad))
    assert refused.exit_code != 0
    assert "not-a-valid-token" not in refused.output
    async with rt.sessionmaker() as session:
        stored = clusters.kubeconfig(await clusters.get(session, name="prod"), ctx=rt.core)
    assert stored == sa_kubeconfig

    # A good one replaces it (re-checked), and the cached client is dropped.
    doc = yaml.safe_load(sa_kubeconfig)
    doc["contexts"][0]["context"]["namespace"] = "elsewhere"
    newer = tmp_path / "newer.kubeconfig"
    newer.write_text(yaml.safe_dump(doc))
    updated = await shipit("clusters", "update", "prod", "--kubeconfig", str(newer))
    assert updated.exit_code == 0, updated.output
    assert "updated cluster prod" in updated.output
    async with rt.sessionmaker() as session:
        cluster = await clusters.get(session, name="prod")
        assert yaml.safe_load(clusters.kubeconfig(cluster, ctx=rt.core))["contexts"][0]["context"][
            "namespace"
        ] == ("elsewhere")
        assert cluster.last_check_at is not None and cluster.server_version
        actions = list(await session.scalars(select(models.AuditEvent.action)))
    assert "cluster.update" in actions

    # Refused while an app uses them.
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="prod",
            name="web",
            namespace="apps",
            changes=AppChanges(image="ghcr.io/acme/web:1.0"),
        )
    busy = await shipit("clusters", "delete", "prod")
    assert busy.exit_code != 0 and "acme/web" in busy.output, busy.output
    busy = await shipit("projects", "delete", "acme")
    assert busy.exit_code != 0 and "web" in busy.output, busy.output

    # Only the owner deletes a project; only a global admin deletes a cluster.
    dev = Actor(subject="user:dev", channel="api")
    async with rt.sessionmaker.begin() as session:
        await apps.delete(session, actor=ADMIN, name="web")
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject="user:dev", role="admin")
    async with rt.sessionmaker() as session:
        with pytest.raises(PermissionDenied):
            await projects.delete(session, actor=dev, name="acme")
        with pytest.raises(PermissionDenied):
            await clusters.delete(session, actor=dev, name="prod")

    gone = await shipit("clusters", "delete", "prod")
    assert gone.exit_code == 0, gone.output
    gone = await shipit("projects", "delete", "acme")
    assert gone.exit_code == 0, gone.output
    async with rt.sessionmaker() as session:
        assert not list(await session.scalars(select(models.Cluster)))
        assert not list(await session.scalars(select(models.Project)))
        assert not list(await session.scalars(select(models.ClusterGrant)))
        assert not list(await session.scalars(select(models.NamespaceClaim)))
    listed = await shipit("clusters", "list")
    assert "prod" not in listed.output


async def test_the_bundle_is_enough_for_add_ons(rt: Runtime, sa_kubeconfig: str, namespace: str) -> None:
    """Create (apply, read the StatefulSet and its claim) and destroy with the data, all through the
    bundle's service account: no step is refused."""
    from core import addons

    rt.core.config.addon_ready_poll_seconds = 0.2
    await _add_cluster(rt, name="prod", kubeconfig=sa_kubeconfig, namespaces=[namespace])
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="prod", name="web", namespace=namespace,
            changes=AppChanges(image="ghcr.io/acme/web:1.0"),
        )  # fmt: skip
        await addons.create(session, ctx=rt.core, actor=ADMIN, app_name="web", kind="redis")
    await run_until_idle(rt.core, handlers=rt.handlers(), within=60)  # applies, then waits (no volume here)
    kube = await rt.core.kube.get(key="sa-check", kubeconfig=sa_kubeconfig)
    for _ in range(300):
        if await kube.get(kind="PersistentVolumeClaim", name="data-web-redis-0", namespace=namespace):
            break
        await asyncio.sleep(0.1)
    async with rt.sessionmaker() as session:
        where, rows = await addons.rows_for(session, ctx=rt.core, actor=ADMIN, app_name="web")
    [seen] = await addons.observed(ctx=rt.core, where=where, rows=rows)
    assert (
        seen.state == "provisioning" and "PersistentVolumeClaim data-web-redis-0 is Pending" in seen.detail
    ), seen

    async with rt.sessionmaker.begin() as session:
        await addons.destroy(
            session, ctx=rt.core, actor=ADMIN, app_name="web", kind="redis", delete_data=True
        )
    for _ in range(100):
        await run_until_idle(rt.core, handlers=rt.handlers(), within=60)
        async with rt.sessionmaker() as session:
            if await session.scalar(select(models.Addon.id)) is None:
                break
        await asyncio.sleep(0.1)
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(models.Addon.id)) is None
        errors = [j.last_error for j in await session.scalars(select(models.Job)) if j.last_error]
    assert not [e for e in errors if "403" in e or "forbidden" in e.lower()], errors
    assert await kube.get(kind="StatefulSet", name="web-redis", namespace=namespace) is None
