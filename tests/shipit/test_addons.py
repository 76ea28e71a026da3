"""Add-ons over HTTP with tokens, on the real Kubernetes API server, the worker running.

The test control plane has no storage provisioner: a PersistentVolumeClaim stays Pending, the
scheduler does not place a pod whose claim is unbound, and shipit must say "provisioning" (and
why) for as long as that lasts.  The test then makes a PersistentVolume for the claim, as an
operator (or a provisioner) would, and the add-on becomes ready for real: the claim binds, kwok
runs the pod, the StatefulSet reports it ready, and only then does the app get DATABASE_URL.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from sqlalchemy import select

from core.kube import render_addons
from storage import models
from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import deployed_app, wait_deploy
from tests.shipit.conftest import make_token

pytestmark = pytest.mark.both_databases


class Recorder:
    """Every answer the API gave in this test, to search for the password afterwards."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def hook(self, response: httpx.Response) -> None:
        await response.aread()
        self.texts.append(json.dumps(dict(response.headers)) + response.text)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def as_(live_server: LiveServer, recorder: Recorder) -> AsyncIterator[Any]:
    made: list[httpx.AsyncClient] = []

    async def client(subject: str, *, admin: bool = False) -> httpx.AsyncClient:
        token = await make_token(live_server.rt, subject=subject, admin=admin)
        c = httpx.AsyncClient(
            base_url=live_server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            event_hooks={"response": [recorder.hook]},
        )
        made.append(c)
        return c

    yield client
    for c in made:
        await c.aclose()


@pytest.fixture
async def persistent_volumes(kube_api: k8s.ApiClient) -> AsyncIterator[list[str]]:
    """Names of PersistentVolumes a test made (cluster-wide objects): deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            await k8s.CoreV1Api(kube_api).delete_persistent_volume(name)
        except ApiException as e:
            if e.status != 404:
                raise


async def _read(kube_api: k8s.ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    core, apps_v1 = k8s.CoreV1Api(kube_api), k8s.AppsV1Api(kube_api)
    read = {
        "StatefulSet": apps_v1.read_namespaced_stateful_set,
        "Service": core.read_namespaced_service,
        "Secret": core.read_namespaced_secret,
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
    }[kind]
    try:
        obj = await read(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    result: dict[str, Any] = kube_api.sanitize_for_serialization(obj)
    return result


async def _addons(c: httpx.AsyncClient, app: str = "web") -> list[dict[str, Any]]:
    r = await c.get(f"/api/v1/apps/{app}/addons")
    assert r.status_code == 200, r.text
    return list(r.json())


async def _secret_keys(c: httpx.AsyncClient) -> list[str]:
    return [s["key"] for s in (await c.get("/api/v1/apps/web/secrets")).json()]


async def _setup(world: World, as_: Any) -> dict[str, httpx.AsyncClient]:
    admin = await as_("user:root", admin=True)
    await deployed_app(admin, world)
    assert (await admin.post("/api/v1/projects", json={"name": "rival"})).status_code == 201
    people = {"admin": admin}
    for subject, project, role in (
        ("user:pat", "acme", "admin"),
        ("user:dev", "acme", "developer"),
        ("user:vic", "acme", "viewer"),
        ("user:rita", "rival", "admin"),
    ):
        r = await admin.put(f"/api/v1/projects/{project}/members/{subject}", json={"role": role})
        assert r.status_code == 200, r.text
        people[subject.split(":")[1]] = await as_(subject)
    return people


async def test_postgres_create_ready_list_destroy_keeps_the_data(
    world: World,
    live_server: LiveServer,
    as_: Any,
    recorder: Recorder,
    kube_api: k8s.ApiClient,
    persistent_volumes: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    live_server.rt.core.config.addon_ready_poll_seconds = 0.3
    ns = world.namespace
    people = await _setup(world, as_)
    dev, vic, rita, pat = people["dev"], people["vic"], people["rita"], people["pat"]

    # Tenancy: no role in acme looks like no such app; a viewer may look but not create.
    r = await rita.post("/api/v1/apps/web/addons", json={"kind": "postgres"})
    assert r.status_code == 404, r.text
    assert (await rita.get("/api/v1/apps/web/addons")).status_code == 404
    r = await vic.post("/api/v1/apps/web/addons", json={"kind": "postgres"})
    assert r.status_code == 403, r.text
    r = await dev.post("/api/v1/apps/web/addons", json={"kind": "mysql"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "kind", r.text

    # A developer creates it: 202 with its state, the work left to a job.
    r = await dev.post("/api/v1/apps/web/addons", json={"kind": "postgres", "plan": "small"})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["state"] == "provisioning" and created["secret_key"] == "DATABASE_URL"
    assert created["name"] == "web-postgres" and created["namespace"] == ns
    again = await dev.post("/api/v1/apps/web/addons", json={"kind": "postgres", "plan": "medium"})
    assert again.status_code == 409 and again.json()["error"]["field"] == "kind", again.text
    assert "already has a postgres add-on" in again.json()["error"]["message"]

    # Its objects, each with shipit's labels for the app and the add-on's own.
    want = {
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/project": "acme",
        "shipit.dev/app": "web",
        "shipit.dev/addon": "postgres",
    }
    for kind in ("Secret", "Service", "StatefulSet"):
        obj = await eventually(lambda k=kind: _read(kube_api, k, ns, "web-postgres"), what=kind, timeout=60)  # type: ignore[misc]
        assert want.items() <= obj["metadata"]["labels"].items(), (kind, obj["metadata"]["labels"])
        assert any(m["manager"] == "shipit" for m in obj["metadata"]["managedFields"]), kind
    secret = await _read(kube_api, "Secret", ns, "web-postgres")
    assert secret is not None
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32
    sts = await _read(kube_api, "StatefulSet", ns, "web-postgres")
    assert sts is not None
    assert password not in json.dumps(sts)  # the pod reads it by secretKeyRef, the spec never holds it
    pod_security = sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert pod_security["runAsNonRoot"] and pod_security["allowPrivilegeEscalation"] is False
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"
    assert (await _read(kube_api, "Service", ns, "web-postgres") or {})["spec"]["clusterIP"] == "None"

    # No storage provisioner here: the claim stays Pending, the pod unscheduled, and shipit says so.
    claim = "data-web-postgres-0"
    pvc = await eventually(lambda: _read(kube_api, "PersistentVolumeClaim", ns, claim), what="claim")
    assert pvc["status"]["phase"] == "Pending" and pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    listed = await eventually(
        lambda: _addons(vic), lambda rows: "PersistentVolumeClaim" in rows[0]["detail"], what="pending claim"
    )
    assert listed[0]["state"] == "provisioning" and "Pending" in listed[0]["detail"], listed
    assert "DATABASE_URL" not in await _secret_keys(pat)

    # A volume for the claim: it binds, the pod runs, the StatefulSet says ready, the app gets its URL.
    pv = f"pv-{ns}"
    persistent_volumes.append(pv)
    await k8s.CoreV1Api(kube_api).create_persistent_volume(
        k8s.V1PersistentVolume(
            metadata=k8s.V1ObjectMeta(name=pv),
            spec=k8s.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteOnce"],
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                host_path=k8s.V1HostPathVolumeSource(path=f"/tmp/{pv}"),
                claim_ref=k8s.V1ObjectReference(namespace=ns, name=claim),
            ),
        )
    )
    listed = await eventually(
        lambda: _addons(dev), lambda rows: rows[0]["state"] == "ready", what="ready", timeout=90
    )
    assert listed[0] == {**created, "state": "ready", "detail": "", "error": None}
    assert "DATABASE_URL" in await _secret_keys(pat)
    # As `secrets set` does: the running app rolls onto the new secret with a config deploy.
    deploys = (await pat.get("/api/v1/apps/web/deploys")).json()
    config = next(d for d in deploys if d["trigger"] == "config")
    assert (await wait_deploy(pat, config["id"]))["status"] == "succeeded"
    app_secret = await _read(kube_api, "Secret", ns, "web-secrets")
    assert app_secret is not None
    url = base64.b64decode(app_secret["data"]["DATABASE_URL"]).decode()
    assert url == f"postgresql://app:{password}@web-postgres.{ns}.svc:5432/app"

    # Destroy: not for developers; an admin's answers 202 "deleting", and everything but the data goes.
    r = await dev.delete("/api/v1/apps/web/addons/postgres")
    assert r.status_code == 403, r.text
    assert (await rita.delete("/api/v1/apps/web/addons/postgres")).status_code == 404
    r = await pat.delete("/api/v1/apps/web/addons/postgres")
    assert r.status_code == 202 and r.json()["state"] == "deleting", r.text
    await eventually(lambda: _addons(pat), lambda rows: rows == [], what="destroyed", timeout=60)
    for kind in ("StatefulSet", "Service", "Secret"):
        assert await _read(kube_api, kind, ns, "web-postgres") is None, kind
    assert await _read(kube_api, "PersistentVolumeClaim", ns, claim) is not None  # the data is kept
    assert "DATABASE_URL" not in await _secret_keys(pat)
    r = await pat.delete("/api/v1/apps/web/addons/postgres")
    assert r.status_code == 404, r.text

    async with live_server.rt.sessionmaker() as session:
        actions = list(
            await session.scalars(
                select(models.AuditEvent.action)
                .where(models.AuditEvent.action.like("addon.%"))
                .order_by(models.AuditEvent.id)
            )
        )
        details = [a.details for a in await session.scalars(select(models.AuditEvent))]
    assert actions == [
        "addon.create",
        "addon.ready",
        "addon.destroy",
        "addon.delete_object",
        "addon.delete_object",
        "addon.delete_object",
        "addon.destroyed",
    ], actions

    # The password (and so the URL) is nowhere: not in an answer, an audit row, or a log record.
    everything = [*recorder.texts, json.dumps(details)]
    everything += [f"{rec.getMessage()} {rec.exc_text or ''} {rec.__dict__}" for rec in caplog.records]
    assert caplog.records
    for text in everything:
        assert password not in text and url not in text


async def test_destroy_refuses_what_shipit_did_not_create_then_finishes(
    world: World, live_server: LiveServer, as_: Any, kube_api: k8s.ApiClient
) -> None:
    live_server.rt.core.config.addon_ready_poll_seconds = 0.3
    ns = world.namespace
    people = await _setup(world, as_)
    pat = people["pat"]
    r = await pat.post("/api/v1/apps/web/addons", json={"kind": "redis"})
    assert r.status_code == 202, r.text
    await eventually(lambda: _read(kube_api, "StatefulSet", ns, "web-redis"), what="statefulset", timeout=60)
    # Someone replaces the add-on's Service with one of their own under the same name.
    core = k8s.CoreV1Api(kube_api)
    await core.delete_namespaced_service("web-redis", ns)
    await core.create_namespaced_service(
        ns,
        k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name="web-redis", labels={"team": "theirs"}),
            spec=k8s.V1ServiceSpec(ports=[k8s.V1ServicePort(port=6379)]),
        ),
    )

    r = await pat.delete("/api/v1/apps/web/addons/redis", params={"delete_data": "true"})
    assert r.status_code == 202, r.text
    failed = await eventually(
        lambda: _addons(pat), lambda rows: rows[0]["state"] == "failed", what="refused", timeout=60
    )
    assert "Service" in failed[0]["error"] and "was not created by shipit" in failed[0]["error"], failed
    # Theirs is untouched; what was shipit's is gone.
    theirs = await _read(kube_api, "Service", ns, "web-redis")
    assert theirs is not None and theirs["metadata"]["labels"] == {"team": "theirs"}
    assert await _read(kube_api, "StatefulSet", ns, "web-redis") is None
    assert await _read(kube_api, "Secret", ns, "web-redis") is None

    # Once it is out of the way, destroying again finishes the job (what is gone already is skipped).
    await core.delete_namespaced_service("web-redis", ns)
    r = await pat.delete("/api/v1/apps/web/addons/redis", params={"delete_data": "true"})
    assert r.status_code == 202 and r.json()["state"] == "deleting", r.text
    await eventually(lambda: _addons(pat), lambda rows: rows == [], what="destroyed", timeout=60)
    # --delete-data: the claim goes too (once its pod is gone: the pvc-protection finalizer)
    await eventually(
        lambda: _read(kube_api, "PersistentVolumeClaim", ns, "data-web-redis-0"),
        lambda c: c is None,
        what="pvc",
    )


def test_names_fit_the_statefulset_limits() -> None:
    long = "a" * 63
    name = render_addons.object_name(app=long, kind="postgres")
    assert len(name) <= render_addons.MAX_NAME and name.endswith("-postgres")
    assert name != render_addons.object_name(app="a" * 62, kind="postgres")


async def test_create_does_not_apply_over_what_shipit_did_not_create(
    world: World, live_server: LiveServer, as_: Any, kube_api: k8s.ApiClient
) -> None:
    ns = world.namespace
    people = await _setup(world, as_)
    core = k8s.CoreV1Api(kube_api)
    await core.create_namespaced_secret(
        ns, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="web-redis"), string_data={"password": "theirs"})
    )
    r = await people["dev"].post("/api/v1/apps/web/addons", json={"kind": "redis"})
    assert r.status_code == 202, r.text
    failed = await eventually(
        lambda: _addons(people["vic"]), lambda rows: rows[0]["state"] == "failed", what="failed", timeout=60
    )
    assert "Secret" in failed[0]["error"] and "was not created by shipit" in failed[0]["error"], failed
    theirs = await _read(kube_api, "Secret", ns, "web-redis")
    assert theirs is not None and base64.b64decode(theirs["data"]["password"]) == b"theirs"
    assert await _read(kube_api, "StatefulSet", ns, "web-redis") is None  # nothing applied after the refusal
    assert "REDIS_URL" not in await _secret_keys(people["pat"])
