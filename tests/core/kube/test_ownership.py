"""shipit never takes over, nor deletes, what it did not create (issue 8).

Foreign objects are made directly with the test's own kubernetes client under a kubectl-like field
manager, and read back from the API server afterwards: a refused deploy must leave them exactly as
they were (same resourceVersion, same spec).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s
from sqlalchemy import select

from core import apps, errors, previews
from core.apps import AppChanges
from core.kube import client as kube_client
from core.kube import ownership, render, spec
from core.worker import run_until_idle
from storage import models
from tests.conftest import ADMIN, LiveServer, World
from tests.core.kube.conftest import workload_spec
from tests.shipit.conftest import make_token, table_rows

IMAGE = "ghcr.io/acme/ledger:1.0.0"
KUBECTL_APPLY = "kubectl-client-side-apply"
ROLLOUT_TIMEOUT = 120.0


def make_spec(namespace: str, **overrides: Any) -> spec.WorkloadSpec:
    values = {
        "app": "ledger",
        "project": "payments",
        "image": IMAGE,
        "replicas": 1,
        "secret_data": {"TOKEN": "s3cret"},
    }
    return workload_spec(namespace, **{**values, **overrides})


# --------------------------------------------------------------------------- foreign objects


def deployment_body(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod_labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels if labels is not None else {"app": name, "team": "b"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": name, "image": "registry.team-b/ledger:7"}]},
            },
        },
    }


def service_body(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels if labels is not None else {"team": "b"}},
        "spec": {"selector": {"app": "team-b-ledger"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def hpa_body(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels or {"team": "b"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "team-b-worker"},
            "minReplicas": 1,
            "maxReplicas": 4,
        },
    }


def ingress_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "labels": {"team": "b"}},
        "spec": {
            "rules": [
                {
                    "host": "team-b.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "team-b", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        },
    }


def legacy_labels(app: str, revision: str = "1") -> dict[str, str]:
    """What shipit put on objects before the project and app labels existed."""
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": app,
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/revision": revision,
    }


async def read_all(kube_api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """What exists under the app's names, as the API server has it (kind -> object or None)."""
    apps_v1, core_v1 = k8s.AppsV1Api(kube_api), k8s.CoreV1Api(kube_api)
    hpas, networking = k8s.AutoscalingV2Api(kube_api), k8s.NetworkingV1Api(kube_api)
    reads = {
        "Deployment": apps_v1.read_namespaced_deployment(name, namespace),
        "Service": core_v1.read_namespaced_service(name, namespace),
        "Secret": core_v1.read_namespaced_secret(f"{name}-secrets", namespace),
        "HorizontalPodAutoscaler": hpas.read_namespaced_horizontal_pod_autoscaler(name, namespace),
        "Ingress": networking.read_namespaced_ingress(name, namespace),
    }
    out: dict[str, Any] = {}
    for kind, read in reads.items():
        try:
            obj = await read
        except k8s.ApiException as e:
            assert e.status == 404, e
            obj = None
        out[kind] = obj if obj is None or obj.metadata.deletion_timestamp is None else None
    return out


def assert_untouched(before: Any, after: Any) -> None:
    """Nobody but the cluster's own controllers wrote to the object since `before`.

    For objects a controller keeps writing status to (Deployments, HPAs), where the resourceVersion
    moves on by itself: same object, same generation (any spec change bumps it), same spec and
    labels, and no write by a shipit field manager in its managedFields.
    """
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation == before.metadata.generation
    assert after.metadata.labels == before.metadata.labels
    assert after.spec == before.spec
    assert after.metadata.deletion_timestamp is None
    assert shipit_writes(after) == shipit_writes(before)


def shipit_writes(obj: Any) -> list[tuple[str, str, Any, Any]]:
    """shipit's managedFields entries: a write by shipit would add one or change its time and fields."""
    return [
        (e.manager, e.operation, e.time, e.fields_v1)
        for e in obj.metadata.managed_fields or []
        if e.manager.startswith("shipit")
    ]


async def delete_namespace(kube_api: k8s.ApiClient, name: str) -> None:
    try:
        await k8s.CoreV1Api(kube_api).delete_namespace(name)
    except k8s.ApiException as e:
        if e.status != 404:
            raise


OWNED = {
    "app.kubernetes.io/managed-by": "shipit",
    "shipit.dev/project": "payments",
    "shipit.dev/app": "ledger",
}


# --------------------------------------------------------------------------- the rules, without a cluster


def obj_with(labels: dict[str, str], managers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"labels": labels, "managedFields": managers or []}}


def check(obj: dict[str, Any], **who: str) -> str | None:
    return ownership.ownership_problem(
        obj,
        kind="Service",
        namespace="team-b",
        name="ledger",
        project=who.get("project", "payments"),
        app=who.get("app", "ledger"),
    )


def test_ours_and_legacy_objects_pass_the_check() -> None:
    assert check(obj_with({**OWNED, "team": "x"})) is None
    assert check(obj_with(legacy_labels("ledger"))) is None


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({"team": "b"}, "was not created by shipit"),
        ({}, "was not created by shipit"),
        ({**OWNED, "app.kubernetes.io/managed-by": "helm"}, "was not created by shipit"),
        ({**OWNED, "shipit.dev/project": "other"}, "belongs to another shipit project"),
        ({**OWNED, "shipit.dev/app": "api"}, "belongs to app api of this project"),
        ({**OWNED, "shipit.dev/app": ""}, "belongs to app (none) of this project"),
        (legacy_labels("api"), "managed-by shipit but not for app ledger"),
        ({**legacy_labels("ledger"), "shipit.dev/app": "api"}, "managed-by shipit but not for app ledger"),
    ],
)
def test_everything_else_is_refused_with_the_reason(labels: dict[str, str], why: str) -> None:
    problem = check(obj_with(labels))
    assert problem is not None
    assert problem.startswith("Service team-b/ledger already exists and ")
    assert why in problem


def test_the_manager_named_is_the_one_owning_most_fields_not_a_status_writer() -> None:
    managers = [
        {
            "manager": "kube-controller-manager",
            "subresource": "status",
            "fieldsV1": {"f:a": {}, "f:b": {}, "f:c": {}},
        },
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}},
        {
            "manager": KUBECTL_APPLY,
            "operation": "Update",
            "fieldsV1": {"f:spec": {"f:a": {}, "f:b": {}, "f:c": {}}},
        },
    ]
    problem = check(obj_with({"team": "b"}, managers))
    assert problem is not None and f"(field manager {KUBECTL_APPLY!r})" in problem
    assert "(field manager 'unknown')" in (check(obj_with({})) or "")


def test_namespace_rule_wants_managed_by_and_this_project() -> None:
    ns = ownership.namespace_problem
    ours = {"app.kubernetes.io/managed-by": "shipit", "shipit.dev/project": "payments"}
    assert ns(obj_with(ours), name="n", project="payments") is None
    assert "another shipit project" in (ns(obj_with(ours), name="n", project="acme") or "")
    assert "not created by shipit" in (
        ns(obj_with({"app.kubernetes.io/managed-by": "shipit"}), name="n", project="payments") or ""
    )
    assert "not created by shipit" in (ns(obj_with({}), name="n", project="payments") or "")


# --------------------------------------------------------------------------- apply, on the real API server


async def test_deploy_over_foreign_objects_is_refused_and_leaves_them_unchanged(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    apps_v1, core_v1 = k8s.AppsV1Api(kube_api), k8s.CoreV1Api(kube_api)
    theirs = await apps_v1.create_namespaced_deployment(
        namespace, deployment_body("ledger"), field_manager=KUBECTL_APPLY
    )
    their_service = await core_v1.create_namespaced_service(
        namespace, service_body("ledger"), field_manager="kubectl"
    )

    with pytest.raises(errors.Conflict) as refused:
        await kube.apply_workload(spec=make_spec(namespace))
    message = str(refused.value)
    assert refused.value.status_code == 409
    assert f"Deployment {namespace}/ledger already exists and was not created by shipit" in message
    assert f"field manager {KUBECTL_APPLY!r}" in message
    assert f"Service {namespace}/ledger already exists" in message
    assert "field manager 'kubectl'" in message
    assert "s3cret" not in message

    after = await apps_v1.read_namespaced_deployment("ledger", namespace)
    assert_untouched(theirs, after)
    assert after.metadata.labels == {"app": "ledger", "team": "b"}
    assert after.spec.selector.match_labels == {"app": "ledger"}
    assert after.spec.template.spec.containers[0].image == "registry.team-b/ledger:7"
    service_after = await core_v1.read_namespaced_service("ledger", namespace)
    assert service_after.metadata.resource_version == their_service.metadata.resource_version
    assert service_after.spec.selector == {"app": "team-b-ledger"}
    # Refused before anything was applied: not even the Secret.
    assert (await read_all(kube_api, namespace, "ledger"))["Secret"] is None


async def test_objects_of_another_project_or_app_are_refused(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    await kube.apply_workload(spec=make_spec(namespace, project="other"))
    before = await read_all(kube_api, namespace, "ledger")

    with pytest.raises(errors.Conflict) as refused:
        await kube.apply_workload(spec=make_spec(namespace, revision=2, image="ghcr.io/acme/ledger:2"))
    assert f"Deployment {namespace}/ledger already exists and belongs to another shipit project" in str(
        refused.value
    )
    assert "field manager 'shipit'" in str(refused.value)
    after = await read_all(kube_api, namespace, "ledger")
    assert after["Deployment"].metadata.generation == before["Deployment"].metadata.generation
    assert after["Deployment"].spec == before["Deployment"].spec
    for kind in ("Service", "Secret"):
        assert after[kind].metadata.resource_version == before[kind].metadata.resource_version, kind
    for kind in ("Deployment", "Service", "Secret"):
        assert after[kind].metadata.labels["shipit.dev/project"] == "other"

    # Same project, other app: a Service named "api" that app "ledger" made is not app "api"'s.
    await k8s.CoreV1Api(kube_api).create_namespaced_service(
        namespace, service_body("api", labels={**OWNED}), field_manager="shipit"
    )
    with pytest.raises(errors.Conflict) as other_app:
        await kube.apply_workload(spec=make_spec(namespace, app="api"))
    assert f"Service {namespace}/api already exists and belongs to app ledger of this project" in str(
        other_app.value
    )


async def test_legacy_objects_without_the_project_label_are_adopted(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    # As an earlier shipit left them: its labels minus project and app, its selector.
    old = make_spec(namespace)
    for manifest in render.render(old):
        manifest["metadata"]["labels"] = legacy_labels("ledger")
        if manifest["kind"] == "Deployment":
            manifest["spec"]["template"]["metadata"]["labels"] = legacy_labels("ledger")
            await k8s.AppsV1Api(kube_api).create_namespaced_deployment(
                namespace, manifest, field_manager="shipit"
            )
        elif manifest["kind"] == "Service":
            await k8s.CoreV1Api(kube_api).create_namespaced_service(
                namespace, manifest, field_manager="shipit"
            )
        else:
            await k8s.CoreV1Api(kube_api).create_namespaced_secret(
                namespace, manifest, field_manager="shipit"
            )
    # ...and one that an earlier shipit made for another app is not adopted.
    await k8s.CoreV1Api(kube_api).create_namespaced_service(
        namespace, service_body("api", labels=legacy_labels("web")), field_manager="shipit"
    )
    with pytest.raises(errors.Conflict):
        await kube.apply_workload(spec=make_spec(namespace, app="api"))

    await kube.apply_workload(spec=make_spec(namespace, revision=2, image="ghcr.io/acme/ledger:2"))
    result = await kube.wait_rollout(namespace=namespace, name="ledger", timeout=ROLLOUT_TIMEOUT)
    assert result.ok, result
    now = await read_all(kube_api, namespace, "ledger")
    for kind in ("Deployment", "Service", "Secret"):
        assert OWNED.items() <= now[kind].metadata.labels.items(), kind
    assert now["Deployment"].spec.template.spec.containers[0].image == "ghcr.io/acme/ledger:2"
    assert OWNED.items() <= now["Deployment"].spec.template.metadata.labels.items()


async def test_every_applied_object_and_the_created_namespace_carry_the_ownership_labels(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    fresh = f"{namespace}-own"
    s = make_spec(
        fresh,
        autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=70),
        ingress=spec.IngressSpec(host="ledger.example.com"),
    )
    try:
        await kube.apply_workload(spec=s, namespace_origin="created")
        ns = await k8s.CoreV1Api(kube_api).read_namespace(fresh)
        assert ns.metadata.labels["app.kubernetes.io/managed-by"] == "shipit"
        assert ns.metadata.labels["shipit.dev/project"] == "payments"
        assert "shipit.dev/app" not in ns.metadata.labels
        objs = await read_all(kube_api, fresh, "ledger")
        for kind, obj in objs.items():
            assert obj is not None, kind
            assert OWNED.items() <= obj.metadata.labels.items(), kind
        assert OWNED.items() <= objs["Deployment"].spec.template.metadata.labels.items()
        # The selector stays as it was: it is immutable on Deployments made before the labels.
        assert objs["Deployment"].spec.selector.match_labels == {
            "app.kubernetes.io/name": "ledger",
            "app.kubernetes.io/instance": "ledger",
        }
        # Applying again into the namespace shipit created for this project is fine.
        await kube.apply_workload(spec=s, namespace_origin="created")
    finally:
        await delete_namespace(kube_api, fresh)


async def test_turning_autoscaling_and_ingress_off_leaves_foreign_ones_alone(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    hpas, networking = k8s.AutoscalingV2Api(kube_api), k8s.NetworkingV1Api(kube_api)
    hpa = await hpas.create_namespaced_horizontal_pod_autoscaler(
        namespace, hpa_body("ledger"), field_manager="kubectl-create"
    )
    ingress = await networking.create_namespaced_ingress(
        namespace, ingress_body("ledger"), field_manager="kubectl-create"
    )

    # No HPA or Ingress in the spec: shipit would delete its own, but these are not.
    await kube.apply_workload(spec=make_spec(namespace))
    assert (await kube.wait_rollout(namespace=namespace, name="ledger", timeout=ROLLOUT_TIMEOUT)).ok
    now = await read_all(kube_api, namespace, "ledger")
    assert_untouched(hpa, now["HorizontalPodAutoscaler"])
    assert now["Ingress"].metadata.resource_version == ingress.metadata.resource_version
    # Nor is the foreign HPA shown as the app's autoscaler in its status.
    live = await kube.deployment_status(namespace=namespace, name="ledger")
    assert live is not None and live.autoscaler is None

    # Turning them on would apply over them: refused.
    with pytest.raises(errors.Conflict) as refused:
        await kube.apply_workload(
            spec=make_spec(
                namespace,
                revision=2,
                autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=2, cpu_target_percent=50),
            )
        )
    assert f"HorizontalPodAutoscaler {namespace}/ledger already exists" in str(refused.value)
    assert "'kubectl-create'" in str(refused.value)
    after = await hpas.read_namespaced_horizontal_pod_autoscaler("ledger", namespace)
    assert_untouched(hpa, after)
    assert after.spec.scale_target_ref.name == "team-b-worker"


async def test_delete_removes_only_objects_of_this_projects_app(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    await kube.apply_workload(spec=make_spec(namespace))
    await k8s.CoreV1Api(kube_api).create_namespaced_service(
        namespace, service_body("foreign"), field_manager="kubectl"
    )

    with pytest.raises(errors.Conflict) as refused:
        await kube.delete(
            kind="Service", name="foreign", namespace=namespace, project="payments", app="foreign"
        )
    assert f"Service {namespace}/foreign already exists and was not created by shipit" in str(refused.value)
    with pytest.raises(errors.Conflict):
        await kube.delete(kind="Service", name="ledger", namespace=namespace, project="other", app="ledger")
    with pytest.raises(errors.Conflict):
        await kube.delete(
            kind="Secret", name="ledger-secrets", namespace=namespace, project="payments", app="api"
        )
    still = await read_all(kube_api, namespace, "ledger")
    assert still["Service"] is not None and still["Secret"] is not None
    assert (await read_all(kube_api, namespace, "foreign"))["Service"] is not None

    assert await kube.delete(
        kind="Service", name="ledger", namespace=namespace, project="payments", app="ledger"
    )
    assert (await read_all(kube_api, namespace, "ledger"))["Service"] is None


# --------------------------------------------------------------------------- namespaces


async def test_a_granted_namespace_is_deployed_into_as_it_is(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    before = await k8s.CoreV1Api(kube_api).read_namespace(namespace)
    await kube.apply_workload(spec=make_spec(namespace))  # "granted" is the default
    after = await k8s.CoreV1Api(kube_api).read_namespace(namespace)
    assert (
        after.metadata.labels
        == before.metadata.labels
        == {
            "shipit.dev/test": "true",
            "kubernetes.io/metadata.name": namespace,
        }
    )
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_a_granted_namespace_that_does_not_exist_is_created_with_our_labels(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    fresh = f"{namespace}-granted"
    try:
        await kube.ensure_namespace(name=fresh, project="payments")
        ns = await k8s.CoreV1Api(kube_api).read_namespace(fresh)
        assert ns.metadata.labels["app.kubernetes.io/managed-by"] == "shipit"
        assert ns.metadata.labels["shipit.dev/project"] == "payments"
    finally:
        await delete_namespace(kube_api, fresh)


async def test_a_created_namespace_that_exists_unlabelled_is_refused_and_untouched(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core_v1 = k8s.CoreV1Api(kube_api)
    before = await core_v1.read_namespace(namespace)
    creator = before.metadata.managed_fields[0].manager

    with pytest.raises(errors.Conflict) as refused:
        await kube.apply_workload(spec=make_spec(namespace), namespace_origin="created")
    assert f"namespace {namespace} already exists and was not created by shipit" in str(refused.value)
    assert f"field manager {creator!r}" in str(refused.value)
    with pytest.raises(errors.Conflict):
        await kube.delete_namespace(name=namespace, project="payments")

    after = await core_v1.read_namespace(namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.labels == before.metadata.labels
    assert after.metadata.deletion_timestamp is None
    assert (await read_all(kube_api, namespace, "ledger"))["Deployment"] is None


async def test_a_namespace_made_by_someone_else_just_before_our_create_is_returned_not_merged(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    # The race ensure_namespace can lose: the namespace appears between its read and its create.
    before = await k8s.CoreV1Api(kube_api).read_namespace(namespace)
    theirs = await kube._applier._create_namespace(name=namespace, project="payments", labels=None)
    assert theirs is not None and theirs["metadata"]["uid"] == before.metadata.uid
    assert ownership.namespace_problem(theirs, name=namespace, project="payments") is not None
    after = await k8s.CoreV1Api(kube_api).read_namespace(namespace)
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_a_namespace_of_another_project_is_neither_adopted_nor_deleted(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    theirs = f"{namespace}-other"
    try:
        await kube.ensure_namespace(name=theirs, project="other", namespace_origin="created")
        before = await k8s.CoreV1Api(kube_api).read_namespace(theirs)
        with pytest.raises(errors.Conflict) as refused:
            await kube.ensure_namespace(name=theirs, project="payments", namespace_origin="created")
        assert "belongs to another shipit project" in str(refused.value)
        with pytest.raises(errors.Conflict):
            await kube.delete_namespace(name=theirs, project="payments")
        after = await k8s.CoreV1Api(kube_api).read_namespace(theirs)
        assert after.metadata.resource_version == before.metadata.resource_version
        assert after.metadata.deletion_timestamp is None
        assert await kube.delete_namespace(name=theirs, project="other")
    finally:
        await delete_namespace(kube_api, theirs)


# --------------------------------------------------------------------------- through core, the worker and the API


async def wait_deploy(api: httpx.AsyncClient, deployment_id: int) -> dict[str, Any]:
    async with asyncio.timeout(240):
        while True:
            d = (await api.get(f"/api/v1/deploys/{deployment_id}")).json()
            if d["status"] in ("succeeded", "failed", "superseded", "cancelled"):
                return dict(d)
            await asyncio.sleep(0.2)


@pytest.fixture
async def api(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    token = await make_token(live_server.rt)
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


async def test_a_deploy_onto_a_foreign_deployment_fails_at_once_naming_it(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    theirs = await k8s.AppsV1Api(kube_api).create_namespaced_deployment(
        world.namespace, deployment_body("ledger"), field_manager=KUBECTL_APPLY
    )
    r = await api.post(
        "/api/v1/apps",
        json={"name": "ledger", "project": world.project, "cluster": world.cluster, "image": IMAGE},
    )
    assert r.status_code == 201, r.text
    done = await wait_deploy(api, r.json()["deployment"]["id"])
    assert done["status"] == "failed", done
    assert (
        f"Deployment {world.namespace}/ledger already exists and was not created by shipit" in done["error"]
    )
    assert KUBECTL_APPLY in done["error"]
    [job] = [j for j in await table_rows(live_server.rt, "jobs") if j["kind"] == "deploy"]
    assert job["attempts"] == 1  # refused for good, not retried

    after = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("ledger", world.namespace)
    assert_untouched(theirs, after)
    assert after.spec.template.spec.containers[0].image == "registry.team-b/ledger:7"

    # Deleting the app leaves team-b's Deployment where it is.
    deleted = await api.delete("/api/v1/apps/ledger")
    assert deleted.status_code == 200, deleted.text
    assert f"Deployment {world.namespace}/ledger" in deleted.json()["warning"]
    kept = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("ledger", world.namespace)
    assert_untouched(theirs, kept)


async def test_deleting_an_app_deletes_its_objects_and_leaves_everyone_elses(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    r = await api.post(
        "/api/v1/apps",
        json={"name": "ledger", "project": world.project, "cluster": world.cluster, "image": IMAGE},
    )
    assert r.status_code == 201, r.text
    assert (await wait_deploy(api, r.json()["deployment"]["id"]))["status"] == "succeeded"
    ours = await read_all(kube_api, world.namespace, "ledger")
    assert ours["Deployment"].metadata.labels["shipit.dev/project"] == world.project
    # Under the app's names but not its own: an unlabelled Ingress, and another project's HPA.
    ingress = await k8s.NetworkingV1Api(kube_api).create_namespaced_ingress(
        world.namespace, ingress_body("ledger"), field_manager="kubectl-create"
    )
    other = {**OWNED, "shipit.dev/project": "someone-else"}
    hpa = await k8s.AutoscalingV2Api(kube_api).create_namespaced_horizontal_pod_autoscaler(
        world.namespace, hpa_body("ledger", labels=other), field_manager="shipit"
    )

    deleted = await api.delete("/api/v1/apps/ledger")
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["workload_removed"] is True
    assert f"Ingress {world.namespace}/ledger already exists and was not created by shipit" in body["warning"]
    assert (
        f"HorizontalPodAutoscaler {world.namespace}/ledger already exists and belongs to another"
        in body["warning"]
    )

    left = await read_all(kube_api, world.namespace, "ledger")
    assert left["Deployment"] is None and left["Service"] is None and left["Secret"] is None
    assert left["Ingress"].metadata.resource_version == ingress.metadata.resource_version
    assert_untouched(hpa, left["HorizontalPodAutoscaler"])


async def test_a_preview_whose_namespace_exists_unlabelled_is_refused_and_left_alone(
    world: World, kube_api: k8s.ApiClient
) -> None:
    rt = world.rt
    preview_ns = "ledger-pr-5"
    core_v1 = k8s.CoreV1Api(kube_api)
    await core_v1.create_namespace(
        {"metadata": {"name": preview_ns, "labels": {"team": "b"}}}, field_manager="kubectl-create"
    )
    try:
        before = await core_v1.read_namespace(preview_ns)
        async with rt.sessionmaker.begin() as session:
            await apps.create(
                session,
                actor=ADMIN,
                project=world.project,
                cluster=world.cluster,
                name="ledger",
                namespace=world.namespace,
                changes=AppChanges(
                    image=IMAGE,
                    git_repo="acme/ledger",
                    image_template="ghcr.io/acme/ledger:{sha}",
                    previews_enabled=True,
                    preview_domain="preview.acme.dev",
                ),
            )
            outcome = await previews.on_pull_request(
                session,
                ctx=rt.core,
                repo="acme/ledger",
                number=5,
                action="opened",
                head_sha="6dcb09b5b57875f334f61aebed695e2e4193db5e",
                head_ref="feature/x",
                sender="octocat",
            )
        assert outcome.deployed
        handlers = {**rt.handlers(), **previews.HANDLERS}
        await run_until_idle(rt.core, handlers=handlers, within=240)

        async with rt.sessionmaker() as session:
            preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == 5))
            deployment = await session.scalar(
                select(models.Deployment).where(models.Deployment.preview_id.is_not(None))
            )
        assert preview is not None and deployment is not None
        assert preview.status == "failed"
        assert deployment.status == "failed"
        assert f"namespace {preview_ns} already exists and was not created by shipit" in (
            deployment.error or ""
        )
        assert "'kubectl-create'" in (deployment.error or "")
        assert (await read_all(kube_api, preview_ns, "ledger"))["Deployment"] is None

        # Closing the preview closes it in shipit and leaves the namespace standing.
        async with rt.sessionmaker.begin() as session:
            app = await session.scalar(select(models.App).where(models.App.name == "ledger"))
            assert app is not None
            await previews.close(session, ctx=rt.core, app=app, actor=ADMIN, number=5, reason="closed")
        await run_until_idle(rt.core, handlers=handlers, within=240)
        async with rt.sessionmaker() as session:
            preview = await session.scalar(select(models.Preview).where(models.Preview.pr_number == 5))
        assert preview is not None and preview.status == "closed"

        after = await core_v1.read_namespace(preview_ns)
        assert after.metadata.resource_version == before.metadata.resource_version
        assert after.metadata.labels == before.metadata.labels
        assert after.metadata.deletion_timestamp is None
    finally:
        await delete_namespace(kube_api, preview_ns)


async def test_a_foreign_secret_is_refused_keeps_its_data_and_stays_out_of_the_message(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    value = base64.b64encode(b"team-b-password").decode()
    await k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "ledger-secrets", "labels": {"team": "b"}}, "data": {"PASSWORD": value}},
        field_manager="kubectl",
    )
    with pytest.raises(errors.Conflict) as refused:
        await kube.apply_workload(spec=make_spec(namespace))
    assert f"Secret {namespace}/ledger-secrets already exists" in str(refused.value)
    assert "team-b-password" not in str(refused.value) and value not in str(refused.value)
    secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret("ledger-secrets", namespace)
    assert secret.data == {"PASSWORD": value}
