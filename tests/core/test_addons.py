"""Add-on jobs on the real control plane: a crash half-way or a second delivery neither loses nor
doubles anything (the jobs are re-runnable: apply is idempotent, each step checks what is done)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from sqlalchemy import func, select

from core import addons, apps, jobs
from core.errors import TransientError
from core.kube.client import Kube
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World
from tests.core.test_deploys import _create, _drain, _kube
from tests.helpers import eventually
from tests.shipit.test_addons import _read
from tests.shipit.test_addons import persistent_volumes as persistent_volumes  # the fixture

pytestmark = pytest.mark.both_databases


async def _job(rt: Runtime, kind: str) -> jobs.JobView:
    """The newest job of a kind as a worker would have held it (one that then died, say)."""
    async with rt.sessionmaker() as session:
        job = await session.scalar(
            select(models.Job).where(models.Job.kind == kind).order_by(models.Job.id.desc())
        )
    assert job is not None
    return jobs.JobView(
        id=job.id,
        kind=job.kind,
        payload=job.payload,
        attempts=1,
        max_attempts=job.max_attempts,
        lease_owner="gone",
    )


async def _count(rt: Runtime, model: Any, *where: Any) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _state(rt: Runtime) -> str | None:
    async with rt.sessionmaker() as session:
        return await session.scalar(select(models.Addon.state))


async def test_a_crash_or_a_second_delivery_neither_loses_nor_doubles(
    world: World, kube_api: k8s.ApiClient, persistent_volumes: list[str]
) -> None:
    rt, ns = world.rt, world.namespace
    rt.core.config.addon_ready_poll_seconds = 0.2
    await _create(world)
    async with rt.sessionmaker.begin() as session:
        await addons.create(session, ctx=rt.core, actor=ADMIN, app_name="web", kind="postgres")
    pv = f"pv-{ns}"
    persistent_volumes.append(pv)
    await k8s.CoreV1Api(kube_api).create_persistent_volume(
        k8s.V1PersistentVolume(
            metadata=k8s.V1ObjectMeta(name=pv),
            spec=k8s.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteOnce"],
                storage_class_name="",
                host_path=k8s.V1HostPathVolumeSource(path=f"/tmp/{pv}"),
                claim_ref=k8s.V1ObjectReference(namespace=ns, name="data-web-postgres-0"),
            ),
        )
    )

    # A worker ran the provisioning job, applied the objects and died before the pod was ready.
    provision = await _job(rt, addons.PROVISION_JOB)
    with contextlib.suppress(TransientError):
        await addons.run_provision_job(ctx=rt.core, job=provision)
    assert await _read(kube_api, "StatefulSet", ns, "web-postgres") is not None

    # The job is still in the queue: the next worker finishes it.
    async def drained() -> str | None:
        await _drain(rt)
        return await _state(rt)

    assert await eventually(drained, lambda s: s == "ready", what="ready", timeout=90) == "ready"
    versions = await _count(rt, models.SecretVersion)
    # Delivered again (a duplicate, or a lease that ran out at the wrong moment): nothing doubles.
    await addons.run_provision_job(ctx=rt.core, job=provision)
    assert await _count(rt, models.SecretVersion) == versions
    assert await _count(rt, models.AuditEvent, models.AuditEvent.action == "addon.ready") == 1
    assert await _count(rt, models.Job, models.Job.kind == addons.PROVISION_JOB) == 1

    # Destroy; the job dies after deleting the StatefulSet; the user runs destroy again.
    async with rt.sessionmaker.begin() as session:
        await addons.destroy(session, ctx=rt.core, actor=ADMIN, app_name="web", kind="postgres")
    kube: Kube = await _kube(world)
    assert await kube.delete(kind="StatefulSet", name="web-postgres", namespace=ns, project="acme", app="web")
    async with rt.sessionmaker.begin() as session:
        again = await addons.destroy(session, ctx=rt.core, actor=ADMIN, app_name="web", kind="postgres")
        assert again.state == "deleting"
    assert await _count(rt, models.Job, models.Job.kind == addons.DESTROY_JOB) == 1  # not doubled
    await _drain(rt)
    assert await _state(rt) is None
    assert await _read(kube_api, "Service", ns, "web-postgres") is None
    assert await _read(kube_api, "Secret", ns, "web-postgres") is None
    assert await _read(kube_api, "PersistentVolumeClaim", ns, "data-web-postgres-0") is not None
    assert await _count(rt, models.AuditEvent, models.AuditEvent.action == "addon.delete_object") == 2
    async with rt.sessionmaker() as session:
        app = await apps.get(session, actor=ADMIN, name="web")
        keys = set(await session.scalars(select(models.Secret.key).where(models.Secret.app_id == app.id)))
    assert "DATABASE_URL" not in keys
    # The destroy job delivered again after the row is gone: nothing to do, nothing fails.
    await addons.run_destroy_job(ctx=rt.core, job=await _job(rt, addons.DESTROY_JOB))
