"""Render kustomize directories and apply what they render to the test control plane.

Shared by the manifest tests and the cluster-lifecycle test (which applies the target-cluster bundle).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"

# kind -> (API group/version path, plural, namespaced): every kind the manifests hold.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("api/v1", "namespaces", False),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "Secret": ("api/v1", "secrets", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Service": ("api/v1", "services", True),
    "Deployment": ("apis/apps/v1", "deployments", True),
    "StatefulSet": ("apis/apps/v1", "statefulsets", True),
    "Ingress": ("apis/networking.k8s.io/v1", "ingresses", True),
    "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies", True),
    "PodDisruptionBudget": ("apis/policy/v1", "poddisruptionbudgets", True),
    "ClusterRole": ("apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ServiceMonitor": ("apis/monitoring.coreos.com/v1", "servicemonitors", True),
    "PrometheusRule": ("apis/monitoring.coreos.com/v1", "prometheusrules", True),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}


def filled_copy(tmp_path: Path) -> Path:
    """The manifests directory with its example env files filled in, as an operator would."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("secrets.env", "postgres.env"))
    (copy / "base" / "secrets.env").write_text(
        (copy / "base" / "secrets.env.example")
        .read_text()
        .replace("SHIPIT_MASTER_KEY=\n", "SHIPIT_MASTER_KEY=" + "A" * 43 + "=\n")
    )
    builder = copy / "builder"
    (builder / "secrets.env").write_text(
        (builder / "secrets.env.example")
        .read_text()
        .replace("SHIPIT_MASTER_KEY=\n", "SHIPIT_MASTER_KEY=" + "A" * 43 + "=\n")
    )
    pg = copy / "overlays" / "postgres"
    (pg / "postgres.env").write_text((pg / "postgres.env.example").read_text())
    return copy


def build(path: Path) -> list[dict[str, Any]]:
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "kustomize"), "build", str(path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    except subprocess.CalledProcessError as e:
        if e.returncode == 3 and not os.environ.get("CI"):
            pytest.skip("kustomize: go is not installed")
        raise AssertionError(f"kustomize build {path} failed:\n{e.stderr}") from None
    return [doc for doc in yaml.safe_load_all(out) if doc]


def path_of(obj: dict[str, Any]) -> str:
    prefix, plural, namespaced = KINDS[obj["kind"]]
    ns = obj["metadata"].get("namespace")
    base = f"/{prefix}/namespaces/{ns}/{plural}" if namespaced else f"/{prefix}/{plural}"
    return f"{base}/{obj['metadata']['name']}"


async def call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    response = await api.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    try:
        data = json.loads(await response.read())
    finally:
        response.release()
    assert isinstance(data, dict)
    return data


async def apply(api: client.ApiClient, obj: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    """Server-side apply; with `dry_run` the API server validates and admits it but stores nothing."""
    query = [("fieldManager", "manifests-test"), ("force", "true"), ("fieldValidation", "Strict")]
    if dry_run:
        query.append(("dryRun", "All"))
    return await call(
        api, "PATCH", path_of(obj), query=query, body=obj, content_type="application/apply-patch+yaml"
    )
