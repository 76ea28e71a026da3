"""The add-on manifests and the state read from them: pure functions, no cluster."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from core.kube import render_addons as r


def spec(kind: str = "postgres", **values: Any) -> r.AddonSpec:
    base: dict[str, Any] = {
        "kind": kind,
        "plan": "small",
        "project": "acme",
        "app": "web",
        "namespace": "apps",
        "image": "postgres:16" if kind == "postgres" else "redis:7",
        "password": "pw-" + "x" * 40,
    }
    return r.AddonSpec(**{**base, **values})


@pytest.mark.parametrize("kind", r.KINDS)
def test_every_object_carries_the_ownership_labels(kind: str) -> None:
    s = spec(kind)
    manifests = r.render_addon(s)
    assert [m["kind"] for m in manifests] == ["Secret", "Service", "StatefulSet"]
    for m in manifests:
        assert m["metadata"]["name"] == f"web-{kind}" and m["metadata"]["namespace"] == "apps"
        assert {
            "app.kubernetes.io/managed-by": "shipit",
            "shipit.dev/project": "acme",
            "shipit.dev/app": "web",
            "shipit.dev/addon": kind,
        }.items() <= m["metadata"]["labels"].items()
    claim = manifests[2]["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["labels"] == manifests[2]["metadata"]["labels"]


@pytest.mark.parametrize("kind", r.KINDS)
def test_the_password_is_only_in_the_secret(kind: str) -> None:
    s = spec(kind)
    secret, service, sts = r.render_addon(s)
    assert base64.b64decode(secret["data"]["password"]).decode() == s.password
    assert s.password not in json.dumps(service) + json.dumps(sts)
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
    assert refs == [{"name": f"web-{kind}", "key": "password"}]
    assert s.password not in repr(s)


@pytest.mark.parametrize("kind", r.KINDS)
def test_restricted_pod_security_resources_probe_and_storage(kind: str) -> None:
    sts = r.render_statefulset(spec(kind, plan="medium", storage_class="fast"))
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 999
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert "exec" in container["readinessProbe"]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == f"web-{kind}"
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "10Gi" and claim["storageClassName"] == "fast"
    assert (
        "storageClassName" not in r.render_statefulset(spec(kind))["spec"]["volumeClaimTemplates"][0]["spec"]
    )
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_headless_service_selects_the_pod() -> None:
    s = spec("redis")
    service, sts = r.render_service(s), r.render_statefulset(s)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert (
        sts["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["port"] == 6379


def test_connection_urls() -> None:
    pw = "x" * 40
    assert r.connection_url(spec(password=pw)) == f"postgresql://app:{pw}@web-postgres.apps.svc:5432/app"
    assert r.connection_url(spec("redis", password=pw)) == f"redis://:{pw}@web-redis.apps.svc:6379/0"
    assert r.claim_name(app="web", kind="redis") == "data-web-redis-0"


def test_long_names_are_cut_and_stay_distinct() -> None:
    a, b = r.object_name(app="a" * 63, kind="postgres"), r.object_name(app="a" * 60, kind="postgres")
    assert len(a) <= r.MAX_NAME and len(b) <= r.MAX_NAME and a != b
    assert r.object_name(app="web", kind="redis") == "web-redis"


def _sts(*, generation: int = 1, observed: int = 1, ready: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "currentReplicas": 1},
    }


def test_state_is_read_from_the_statefulset_and_its_claim() -> None:
    assert r.observe(None, None).state == "missing"
    assert r.observe(_sts(ready=1), None) == r.Observed(state="ready")
    # A pod ready for an older generation is not the add-on the spec asks for.
    assert r.observe(_sts(generation=2, observed=1, ready=1), None).state == "provisioning"
    pending = r.observe(_sts(), {"metadata": {"name": "data-web-postgres-0"}, "status": {"phase": "Pending"}})
    assert pending.state == "provisioning"
    assert pending.detail == "PersistentVolumeClaim data-web-postgres-0 is Pending: no volume bound to it yet"
    bound = r.observe(_sts(), {"metadata": {"name": "c"}, "status": {"phase": "Bound"}})
    assert bound.state == "provisioning" and "storage bound; 0/1 pod ready" in bound.detail
    assert "PersistentVolumeClaim to be created" in r.observe(_sts(), None).detail
