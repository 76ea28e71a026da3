"""Deploy, rollback, secret change and autoscaling against the real local control plane."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy import select, update

from core import apps, autoscaling, clusters, deploys, events, jobs, secrets
from core.kube.client import Kube
from core.worker import run_until_idle
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World


async def _kube(w: World) -> Kube:
    async with w.rt.sessionmaker() as session:
        cluster = await clusters.get(session, name=w.cluster)
        return await clusters.client(cluster, ctx=w.rt.core)


async def _create(w: World, name: str = "web", **changes: Any) -> None:
    async with w.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=w.project,
            cluster=w.cluster,
            name=name,
            changes=apps.AppChanges(
                **{"image": "ghcr.io/acme/web:1.0", "progress_deadline_seconds": 20, **changes}
            ),
        )


async def _drain(rt: Runtime) -> None:
    await run_until_idle(rt.core, handlers=rt.handlers(), within=120)


async def _deploy(w: World, image: str | None = None, name: str = "web") -> models.Deployment:
    async with w.rt.sessionmaker.begin() as session:
        d = (
            await deploys.request(
                session, ctx=w.rt.core, actor=ADMIN, app_name=name, image=image, trigger="api"
            )
        ).deployment
    await _drain(w.rt)
    return await _reload(w.rt, d.id)


async def _reload(rt: Runtime, deployment_id: int) -> models.Deployment:
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        return d


async def _event_kinds(rt: Runtime, deployment_id: int) -> list[str]:
    async with rt.sessionmaker() as session:
        return list(
            await session.scalars(
                select(models.Event.kind)
                .where(models.Event.deployment_id == deployment_id)
                .order_by(models.Event.id)
            )
        )


async def test_deploy_applies_everything_and_succeeds_when_available(world: World) -> None:
    await _create(
        world,
        env={"MODE": "prod"},
        health_path="/healthz",
        health_initial_delay=3,
        cpu_limit="750m",
        port=9000,
    )
    async with world.rt.sessionmaker.begin() as session:
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"API_KEY": "k-1"}
        )
    d = await _deploy(world)
    assert d.status == deploys.SUCCEEDED, d.error
    assert d.applied_at is not None and d.finished_at is not None and d.ready == d.desired == 1
    kinds = await _event_kinds(world.rt, d.id)
    assert (
        kinds[0] == events.DEPLOY_QUEUED
        and events.DEPLOY_STARTED in kinds
        and kinds[-1] == events.DEPLOY_SUCCEEDED
    )

    kube = await _kube(world)
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "shipit" and labels["shipit.dev/revision"] == "1"
    # The worker fills the project into the spec: the objects say whose they are.
    assert labels["shipit.dev/project"] == world.project and labels["shipit.dev/app"] == "web"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/web:1.0"
    assert container["envFrom"] == [{"secretRef": {"name": "web-secrets"}}]
    assert {"name": "MODE", "value": "prod"} in container["env"]
    assert (
        container["resources"]["limits"]["cpu"] == "750m"
        and container["resources"]["requests"]["memory"] == "128Mi"
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["initialDelaySeconds"] == 3
    status = dep["status"]
    assert status["observedGeneration"] >= dep["metadata"]["generation"] and status["availableReplicas"] == 1
    service = await kube.get(kind="Service", name="web", namespace=world.namespace)
    assert service is not None and service["spec"]["ports"][0]["targetPort"] in (9000, "http")
    secret = await kube.get(kind="Secret", name="web-secrets", namespace=world.namespace)
    assert secret is not None and base64.b64decode(secret["data"]["API_KEY"]) == b"k-1"
    managers = {m["manager"] for m in dep["metadata"]["managedFields"]}
    assert "shipit" in managers


async def test_a_superseded_deploy_never_applies_anything(world: World) -> None:
    """A worker that claimed a deploy's job just before a newer request superseded the deploy still
    runs that job (only queued jobs are cancelled): it must end it without touching the cluster."""
    await _create(world)
    async with world.rt.sessionmaker.begin() as session:
        old = (
            await deploys.request(
                session, ctx=world.rt.core, actor=ADMIN, app_name="web", image="1.1", trigger="api"
            )
        ).deployment
    async with world.rt.sessionmaker.begin() as session:
        new = (
            await deploys.request(
                session, ctx=world.rt.core, actor=ADMIN, app_name="web", image="1.2", trigger="api"
            )
        ).deployment
    async with world.rt.sessionmaker.begin() as session:
        # As if a worker had claimed the old job before the supersede committed (only queued jobs
        # are cancelled) and then lost its lease: the job runs, its deploy is superseded.
        await session.execute(
            update(models.Job).where(models.Job.dedupe_key == f"deploy:{old.id}").values(state=jobs.QUEUED)
        )
    await _drain(world.rt)
    old, new = await _reload(world.rt, old.id), await _reload(world.rt, new.id)
    assert (old.status, old.started_at, old.applied_at) == (deploys.SUPERSEDED, None, None)
    assert new.status == deploys.SUCCEEDED, new.error
    assert events.DEPLOY_STARTED not in await _event_kinds(world.rt, old.id)
    async with world.rt.sessionmaker() as session:
        job = await session.scalar(select(models.Job).where(models.Job.dedupe_key == f"deploy:{old.id}"))
    assert job is not None and job.state == jobs.DONE and job.attempts == 1  # it ran, and did nothing
    dep = await (await _kube(world)).get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None
    # Applied once, with the new image: an apply of 1.1 first would have made generation 2.
    assert dep["metadata"]["generation"] == 1
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.2"


async def test_secret_change_rolls_the_pods(world: World) -> None:
    await _create(world)
    await _deploy(world)
    kube = await _kube(world)
    before = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert before is not None
    async with world.rt.sessionmaker.begin() as session:
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"DB_URL": "pg://x"}
        )
    d = await _deploy(world)
    assert d.status == deploys.SUCCEEDED, d.error
    after = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert after is not None
    key = "shipit.dev/config-checksum"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )
    assert after["metadata"]["generation"] > before["metadata"]["generation"]


async def test_rollback_restores_the_previous_revision_and_pauses_auto_deploy(world: World) -> None:
    await _create(world)
    assert (await _deploy(world)).status == deploys.SUCCEEDED
    assert (await _deploy(world, image="1.1")).status == deploys.SUCCEEDED
    async with world.rt.sessionmaker.begin() as session:
        d = (await deploys.rollback(session, ctx=world.rt.core, actor=ADMIN, app_name="web")).deployment
    await _drain(world.rt)
    d = await _reload(world.rt, d.id)
    assert d.status == deploys.SUCCEEDED and d.revision_number == 3 and d.image == "ghcr.io/acme/web:1.0"
    assert events.DEPLOY_ROLLED_BACK in await _event_kinds(world.rt, d.id)
    kube = await _kube(world)
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert (
        dep is not None
        and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.0"
    )
    async with world.rt.sessionmaker() as session:
        app = await session.scalar(select(models.App))
        revision = await session.scalar(select(models.Revision).where(models.Revision.number == 3))
    assert app is not None and app.auto_deploy_paused and "revision 1" in (app.paused_reason or "")
    assert revision is not None and revision.source == "rollback" and revision.rollback_of == 1
    # An explicit revision number works too.
    async with world.rt.sessionmaker.begin() as session:
        d2 = (
            await deploys.rollback(session, ctx=world.rt.core, actor=ADMIN, app_name="web", revision=2)
        ).deployment
    await _drain(world.rt)
    assert (await _reload(world.rt, d2.id)).image == "ghcr.io/acme/web:1.1"


async def test_autoscaling_on_creates_an_hpa_and_off_deletes_it(world: World) -> None:
    await _create(world, replicas=2)
    await _deploy(world)
    async with world.rt.sessionmaker.begin() as session:
        d = (
            await autoscaling.scale(
                session,
                ctx=world.rt.core,
                actor=ADMIN,
                app_name="web",
                min_replicas=2,
                max_replicas=5,
                cpu_target=70,
            )
        ).deployment
    await _drain(world.rt)
    assert (await _reload(world.rt, d.id)).status == deploys.SUCCEEDED
    kube = await _kube(world)
    hpa = await kube.get(kind="HorizontalPodAutoscaler", name="web", namespace=world.namespace)
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 5
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None and dep["spec"]["replicas"] == 2, "replicas must not drop while handed to the HPA"
    shipit_fields = [m for m in dep["metadata"]["managedFields"] if m["manager"] == "shipit"]
    assert all("f:replicas" not in m.get("fieldsV1", {}).get("f:spec", {}) for m in shipit_fields)

    async with world.rt.sessionmaker.begin() as session:
        d = (
            await autoscaling.scale(session, ctx=world.rt.core, actor=ADMIN, app_name="web", replicas=3)
        ).deployment
    await _drain(world.rt)
    assert (await _reload(world.rt, d.id)).status == deploys.SUCCEEDED
    assert await kube.get(kind="HorizontalPodAutoscaler", name="web", namespace=world.namespace) is None
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None and dep["spec"]["replicas"] == 3 and dep["status"]["availableReplicas"] == 3


async def test_a_failing_image_ends_failed_with_the_reason(world: World, simulated_failures: None) -> None:
    await _create(world, image="ghcr.io/acme/web:fail-boom")
    d = await _deploy(world)
    assert d.status == deploys.FAILED
    assert d.error is not None and ("CrashLoopBackOff" in d.error or "ProgressDeadlineExceeded" in d.error)
    assert d.logs, "a failed deploy carries the failing pod's last log lines (or why there are none)"
    assert (await _event_kinds(world.rt, d.id))[-1] == events.DEPLOY_FAILED


async def test_invalid_spec_fails_at_once_without_retries(world: World) -> None:
    await _create(world)
    async with world.rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App))
        assert app is not None
        app.memory_limit = "lots"  # bypasses validation, as a corrupted row would; the API server rejects it
    d = await _deploy(world)
    assert d.status == deploys.FAILED and d.error is not None and "memory" in d.error.lower()
    async with world.rt.sessionmaker() as session:
        job = await session.scalar(select(models.Job).where(models.Job.dedupe_key == f"deploy:{d.id}"))
    assert job is not None and job.attempts == 1


@pytest.mark.parametrize("n_apps", [3])
async def test_each_app_deploys_one_at_a_time(world: World, n_apps: int) -> None:
    for i in range(n_apps):
        await _create(world, name=f"svc-{i}")
    async with world.rt.sessionmaker.begin() as session:
        for i in range(n_apps):
            await deploys.request(session, ctx=world.rt.core, actor=ADMIN, app_name=f"svc-{i}", trigger="api")
    await _drain(world.rt)
    async with world.rt.sessionmaker() as session:
        statuses = list(await session.scalars(select(models.Deployment.status)))
    assert statuses == [deploys.SUCCEEDED] * n_apps
