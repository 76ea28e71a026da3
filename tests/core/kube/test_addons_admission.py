"""The add-on pods pass Pod Security `restricted`, as the real API server's admission judges it.

A namespace labelled to enforce the restricted profile, and the pod the StatefulSet controller would
make from the rendered template, created with dryRun=All: admission runs (and would refuse), nothing
is stored.  The same pod without the security settings is refused, so the check is real.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from core.kube import render_addons as r


def _pod(kind: str, namespace: str) -> dict[str, Any]:
    spec = r.AddonSpec(
        kind=kind, plan="small", project="acme", app="web", namespace=namespace,
        image="postgres:16" if kind == "postgres" else "redis:7", password="x" * 40,
    )  # fmt: skip
    template = r.render_statefulset(spec)["spec"]["template"]
    pod_spec = copy.deepcopy(template["spec"])
    # The controller mounts the claim of the volumeClaimTemplate as a volume of the pod.
    pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": f"data-{spec.name}-0"}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{spec.name}-0",
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": pod_spec,
    }


@pytest.mark.parametrize("kind", r.KINDS)
async def test_addon_pods_are_admitted_under_restricted(
    kind: str, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    await core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    await core.create_namespaced_pod(namespace, _pod(kind, namespace), dry_run="All")

    lax = _pod(kind, namespace)
    del lax["spec"]["securityContext"], lax["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as refused:
        await core.create_namespaced_pod(namespace, lax, dry_run="All")
    assert refused.value.status == 403 and "restricted" in str(refused.value.body)
