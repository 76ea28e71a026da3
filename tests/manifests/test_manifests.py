"""The kustomize manifests: they render, the real API server admits every object (server-side dry
run), the base holds the promised hardening, the alerts use metrics shipit really exports, and the
target-cluster ClusterRole grants exactly what shipit's Kubernetes adapter uses.

ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: a minimal CRD for each (any spec
accepted) is installed first, so the dry run checks their group, version, kind, names and
namespace; their content is checked here against shipit's metric names instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import REGISTRY

from tests.manifests import kustomize
from tests.testenv.plugin import KubeEnv, api_client

pytestmark = pytest.mark.timeout(900)


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in _by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    copy = kustomize.filled_copy(tmp_path_factory.mktemp("m"))
    return {
        name: kustomize.build(copy / name)
        for name in (
            "base",
            "overlays/postgres",
            "monitoring",
            "target-cluster",
            "target-cluster/namespaced",
            "builder",
        )
    }


def test_base_deployment_is_hardened_and_highly_available(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = rendered["base"]
    dep = _one(base, "Deployment", "shipit")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["affinity"]["podAntiAffinity"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "shipit"
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    # The rest of the restricted Pod Security profile: no host namespaces, only harmless volume types.
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"} for v in pod["volumes"])
    ns = _one(base, "Namespace", "shipit")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        # The only writable paths: /tmp and the data dir, both thrown away with the pod.
        assert mounts["/tmp"] in emptydirs and mounts["/srv/shipit/var"] in emptydirs
        # The image name was replaced by `images:`, with a tag.
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", c["image"]), c["image"]
    main = _one(
        [{"kind": "c", "metadata": {"name": c["name"]}, **c} for c in pod["containers"]], "c", "shipit"
    )
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["initContainers"][0]["args"] == ["db", "upgrade"]
    # Secrets come from the generated Secret (its hashed name), never inline in the Deployment.
    secret = _one(base, "Secret")
    assert secret["metadata"]["name"].startswith("shipit-")
    refs = [e["secretRef"]["name"] for e in main["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    assert {"SHIPIT_MASTER_KEY", "SHIPIT_DATABASE_URL"} <= set(secret["data"])
    assert "value" not in json.dumps(main.get("env", []))


def test_base_exposes_the_right_paths_with_tls_and_limits_traffic(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base = rendered["base"]
    ing = _one(base, "Ingress", "shipit")
    paths = {p["path"] for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/", "/api", "/slack", "/github"}
    assert ing["spec"]["tls"][0]["hosts"] == [ing["spec"]["rules"][0]["host"]]
    pdb = _one(base, "PodDisruptionBudget")
    pod_labels = _one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    netpol = _one(base, "NetworkPolicy", "shipit")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    sources = [f for rule in netpol["spec"]["ingress"] for f in rule["from"]]
    assert all(set(f) == {"namespaceSelector"} for f in sources), "ingress only from a namespace"
    egress_ports = {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]}
    assert {53, 5432, 443} <= egress_ports
    assert all(_one(base, "Service")["spec"]["selector"].items() <= pod_labels.items() for _ in [0])


def test_postgres_overlay_adds_a_database_only_shipit_reaches(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pg = rendered["overlays/postgres"]
    sts = _one(pg, "StatefulSet", "shipit-postgres")
    assert sts["metadata"]["namespace"] == "shipit"
    assert sts["spec"]["volumeClaimTemplates"]
    svc = _one(pg, "Service", "shipit-postgres")
    assert svc["spec"]["selector"] == sts["spec"]["template"]["metadata"]["labels"]
    secret = next(s for s in _by_kind(pg, "Secret") if s["metadata"]["name"].startswith("shipit-postgres"))
    env_from = sts["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    # The base is all there too.
    assert _one(pg, "Deployment", "shipit")


# The capabilities the baseline Pod Security Standard lets a container add.
BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip


def test_the_builder_runs_apart_with_only_what_buildah_needs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from shipit.settings import Settings

    objs = rendered["builder"]
    dep = _one(objs, "Deployment", "shipit-builder")
    ns = _one(objs, "Namespace")["metadata"]
    # Its own namespace: the server's keeps enforcing restricted, and holds nothing of the builder.
    assert ns["name"] == "shipit-builder" != "shipit"
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"shipit-builder"}
    server_ns = _one(rendered["base"], "Namespace", "shipit")
    assert server_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not [
        o
        for name in ("base", "overlays/postgres")
        for o in rendered[name]
        if "builder" in o["metadata"]["name"]
    ]
    labels = ns["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # for the Unconfined seccomp profile
    assert (
        labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "baseline"
    )

    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"] == ["builder"] and not pod.get("initContainers")  # the server migrates the database
    # No Kubernetes API rights: no token, no binding of any kind.
    assert pod["serviceAccountName"] == "shipit-builder" and pod["automountServiceAccountToken"] is False
    assert _one(objs, "ServiceAccount", "shipit-builder")["automountServiceAccountToken"] is False
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    # Root and three capabilities, measured as buildah's minimum; nothing privileged, nothing of the host.
    psc, sc = pod["securityContext"], c["securityContext"]
    assert (psc["runAsUser"], psc["runAsNonRoot"]) == (0, False)
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]}
    assert set(sc["capabilities"]["add"]) <= BASELINE_CAPS
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"))
    assert all(set(v) == {"name", "emptyDir"} for v in pod["volumes"])
    assert psc["seccompProfile"] == psc["appArmorProfile"] == {"type": "Unconfined"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["ephemeral-storage"]
    # Every path buildah and the build write to is a volume (the root file system is read-only).
    config = _one(objs, "ConfigMap")["data"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for key in ("SHIPIT_BUILD_ROOT", "SHIPIT_BUILD_RUNROOT", "SHIPIT_BUILD_DIR", "SHIPIT_DATA_DIR"):
        assert any(config[key] == m or config[key].startswith(m + "/") for m in mounts), key
    assert {"/tmp", "/var/tmp"} <= mounts
    # The settings it is given exist, and are valid (the cache is one repository per app).
    fields = set(Settings.model_fields)
    assert {k.removeprefix("SHIPIT_").lower() for k in config} <= fields
    Settings(**{k.removeprefix("SHIPIT_").lower(): v for k, v in config.items()})
    # Its Secret holds what a build needs and none of the server's channel secrets.
    secret = _one(objs, "Secret")
    refs = [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    assert set(secret["data"]) == {"SHIPIT_DATABASE_URL", "SHIPIT_MASTER_KEY", "SHIPIT_GITHUB_TOKEN"}
    # It serves nothing: no Service, no ingress traffic; it reaches DNS, PostgreSQL and HTTPS.
    assert not _by_kind(objs, "Service")
    netpol = _one(objs, "NetworkPolicy", "shipit-builder")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert netpol["spec"]["ingress"] == [] and set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]} == {53, 5432, 443}
    # The bundled database admits it from its namespace.
    pg = _one(rendered["overlays/postgres"], "NetworkPolicy", "shipit-postgres")
    sources = pg["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shipit-builder"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "shipit-builder"}},
    } in sources


def test_the_builder_image_is_the_shipit_image_with_buildah() -> None:
    # Not in the server's image (weight, and a tool the restricted pod may not run anyway): a build arg.
    text = (kustomize.ROOT / "Containerfile").read_text()
    assert re.search(r"^ARG WITH_BUILDAH=false$", text, re.M)
    install = re.search(r"^RUN if \[ \"\$WITH_BUILDAH\" = true \].*?(?=^\S)", text, re.M | re.S)
    assert install and "apt-get install" in install.group(0) and " buildah" in install.group(0)
    script = (kustomize.ROOT / "scripts" / "build-image").read_text()
    assert "WITH_BUILDAH=true" in script and "buildah --version" in script


def _exported_metric_names() -> set[str]:
    import core.metrics  # noqa: F401  (registers the core metrics)
    import shipit.app  # noqa: F401  (registers the HTTP and queue metrics)

    # The names Prometheus sees, including those of labelled metrics not yet incremented.
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def test_alerts_and_dashboard_use_metrics_shipit_exports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    mon = rendered["monitoring"]
    exported = {n for n in _exported_metric_names() if n.startswith("shipit_")}
    rule = _one(mon, "PrometheusRule", "shipit")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"ShipitDeployFailureRateHigh", "ShipitQueueBacklog", "ShipitWebhookErrors"} <= alerts
    dashboard = json.loads(_one(mon, "ConfigMap", "shipit-grafana-dashboard")["data"]["shipit.json"])
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bshipit_[a-z_]+", e)}
    assert used, "no shipit metric in the rules"
    assert used <= exported, f"not exported by shipit: {sorted(used - exported)}"
    # Label values the rules match on are the ones the code sets.
    assert 'outcome="failed"' in exprs[0] and 'state="queued"' in " ".join(exprs)
    monitor = _one(mon, "ServiceMonitor", "shipit")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


# What core/kube/ (connection, applying, watching) does on a cluster, as (api group, resource) -> verbs.
EXPECTED_RBAC = {
    ("", "namespaces"): {"get", "create", "delete"},
    ("", "secrets"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "replicasets"): {"get", "list"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "ingresses"): {"get", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("apps", "statefulsets"): {"get", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "delete"},
}


def test_the_target_cluster_role_grants_exactly_what_shipit_uses(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from core.kube import connection

    role = _one(rendered["target-cluster"], "ClusterRole", "shipit-deployer")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RBAC
    # Every kind the adapter can apply is covered (a new kind there must be added to the bundle).
    for info in connection.KINDS.values():
        group = "" if info.api_version == "v1" else info.api_version.split("/")[0]
        assert (group, info.plural) in granted, f"{info.plural} is missing from the ClusterRole"
    token = _one(rendered["target-cluster"], "Secret", "shipit-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["namespace"] == "shipit-system"
    crb = _one(rendered["target-cluster"], "ClusterRoleBinding")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "shipit", "namespace": "shipit-system"}]
    namespaced = rendered["target-cluster/namespaced"]
    assert not _by_kind(namespaced, "ClusterRoleBinding")
    assert _one(namespaced, "RoleBinding")["roleRef"]["name"] == "shipit-deployer"


def _minimal_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


async def _wait_established(api: Any, name: str) -> None:
    import asyncio

    for _ in range(100):
        crd = await kustomize.call(
            api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        )
        if any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (crd.get("status") or {}).get("conditions") or []
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"CRD {name} never became established")


async def test_the_api_server_admits_every_object(
    rendered: dict[str, list[dict[str, Any]]], kube_env: KubeEnv
) -> None:
    async with api_client(kube_env) as api:
        for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")):
            crd = _minimal_crd(kind, plural)
            await kustomize.apply(api, crd, dry_run=False)
            await _wait_established(api, crd["metadata"]["name"])
        objs = [o for name in rendered for o in rendered[name]]
        # Namespaces for real (a dry-run object in a missing namespace is refused), the rest dry run.
        for ns in {o["metadata"].get("namespace") for o in objs} - {None}:
            await kustomize.apply(
                api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, dry_run=False
            )
        refused = []
        for obj in objs:
            try:
                answer = await kustomize.apply(api, obj, dry_run=True)
            except ApiException as e:
                refused.append(f"{obj['kind']} {obj['metadata']['name']}: {e.status} {e.body}")
                continue
            assert answer["kind"] == obj["kind"]
        assert not refused, "\n".join(refused)
        # The pod template validates as a Pod in its namespace.  (The test control plane has no
        # PodSecurity admission, so the restricted profile is checked field by field above.)  Its
        # ServiceAccount for real: admission refuses a pod whose account is missing.  (Before, this
        # call's refusal went unnoticed: the answer was not checked.)
        for name, ns, deployment in (
            ("base", "shipit", "shipit"),
            ("builder", "shipit-builder", "shipit-builder"),
        ):
            dep = _one(rendered[name], "Deployment", deployment)
            await kustomize.apply(api, _one(rendered[name], "ServiceAccount"), dry_run=False)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{deployment}-template-check", "namespace": ns},
                "spec": dep["spec"]["template"]["spec"],
            }
            answer = await kustomize.call(
                api, "POST", f"/api/v1/namespaces/{ns}/pods", query=[("dryRun", "All")], body=pod
            )
            assert answer["kind"] == "Pod", (deployment, answer.get("message"))


def test_examples_are_the_only_env_files_in_git() -> None:
    root = kustomize.MANIFESTS
    ignored = (root.parent / ".gitignore").read_text()
    assert "manifests/**/secrets.env" in ignored and "manifests/**/postgres.env" in ignored
    assert (root / "base" / "secrets.env.example").is_file()
    example = (root / "base" / "secrets.env.example").read_text()
    assert re.search(r"^SHIPIT_MASTER_KEY=$", example, re.M), "the example must not carry a key"
    builder = (root / "builder" / "secrets.env.example").read_text()
    assert re.search(r"^SHIPIT_MASTER_KEY=$", builder, re.M) and re.search(
        r"^SHIPIT_GITHUB_TOKEN=$", builder, re.M
    )
    assert Path(root / "overlays" / "postgres" / "postgres.env.example").is_file()


def test_the_image_copies_every_package() -> None:
    """A package left out of the Containerfile builds fine and fails only when the image starts."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", (root / "Containerfile").read_text(), flags=re.M))
    assert set(packages) <= copied, sorted(set(packages) - copied)
