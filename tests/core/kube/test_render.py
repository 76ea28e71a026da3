"""The render functions are pure: these tests need no cluster."""

from __future__ import annotations

import base64
import json
from typing import Any

from core.kube import render, spec


def make_spec(**overrides: Any) -> spec.WorkloadSpec:
    values: dict[str, Any] = {
        "app": "web",
        "project": "acme",
        "namespace": "team-a",
        "revision": 3,
        "image": "ghcr.io/acme/web:1.2.3",
        "replicas": 2,
        "port": 8080,
        "env": {"B": "2", "A": "1"},
        "secret_data": {"DB_PASSWORD": "hunter2"},
        "secret_checksum": "abc",
    }
    values.update(overrides)
    return spec.WorkloadSpec(**values)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    containers = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_minimal_spec_renders_secret_deployment_service_in_apply_order() -> None:
    manifests = render.render(make_spec())
    assert [m["kind"] for m in manifests] == ["Secret", "Deployment", "Service"]
    assert [m["metadata"]["name"] for m in manifests] == ["web-secrets", "web", "web"]
    assert all(m["metadata"]["namespace"] == "team-a" for m in manifests)


def test_every_object_carries_the_standard_labels() -> None:
    manifests = render.render(
        make_spec(
            autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=70),
            ingress=spec.IngressSpec(host="web.example.com"),
            extra_labels={
                "team": "a",
                "app.kubernetes.io/name": "spoofed",
                "shipit.dev/project": "someone-else",
                "shipit.dev/app": "spoofed",
                "app.kubernetes.io/managed-by": "helm",
            },
        )
    )
    expected = {
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/instance": "web",
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/project": "acme",
        "shipit.dev/app": "web",
        "shipit.dev/revision": "3",
        "team": "a",
    }
    assert len(manifests) == 5
    for manifest in manifests:
        assert manifest["metadata"]["labels"] == expected, manifest["kind"]
    template = by_kind(manifests)["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"] == expected


def test_selector_uses_only_name_and_instance() -> None:
    manifests = by_kind(render.render(make_spec(instance="web-pr-7", revision=9)))
    expected = {"app.kubernetes.io/name": "web", "app.kubernetes.io/instance": "web-pr-7"}
    # Not the ownership labels: a Deployment's selector is immutable, so ones made before them
    # could not be updated.
    assert manifests["Deployment"]["spec"]["selector"] == {"matchLabels": expected}
    assert manifests["Service"]["spec"]["selector"] == expected
    # The selector must match the pod template, or the API server rejects the Deployment.
    template_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert expected.items() <= template_labels.items()


def test_secret_is_opaque_base64_data() -> None:
    secret = by_kind(render.render(make_spec(secret_data={"B": "x", "A": "p@ss wörd"})))["Secret"]
    assert secret["type"] == "Opaque"
    assert "stringData" not in secret
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"A": "p@ss wörd", "B": "x"}


def test_secret_is_rendered_even_when_empty_so_envfrom_resolves() -> None:
    manifests = by_kind(render.render(make_spec(secret_data={}, secret_checksum="")))
    assert manifests["Secret"]["data"] == {}
    assert container(list(manifests.values()))["envFrom"] == [{"secretRef": {"name": "web-secrets"}}]


def test_container_image_port_env_resources() -> None:
    c = container(
        render.render(
            make_spec(
                resources=spec.Resources(
                    cpu_request="250m", cpu_limit="1", memory_request="64Mi", memory_limit="1Gi"
                )
            )
        )
    )
    assert c["name"] == "web"
    assert c["image"] == "ghcr.io/acme/web:1.2.3"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert c["envFrom"] == [{"secretRef": {"name": "web-secrets"}}]
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert "livenessProbe" not in c
    assert "readinessProbe" not in c


def test_default_resources() -> None:
    c = container(render.render(make_spec()))
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


def test_health_check_gives_liveness_and_readiness_probes() -> None:
    c = container(
        render.render(
            make_spec(health=spec.HealthCheck(path="/healthz", initial_delay_seconds=5, period_seconds=7))
        )
    )
    expected = {"httpGet": {"path": "/healthz", "port": 8080}, "initialDelaySeconds": 5, "periodSeconds": 7}
    assert c["livenessProbe"] == expected
    assert c["readinessProbe"] == expected


def test_health_check_on_its_own_port() -> None:
    c = container(render.render(make_spec(health=spec.HealthCheck(path="/ready", port=9000))))
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9000}


def test_deployment_rollout_settings() -> None:
    d = by_kind(render.render(make_spec(progress_deadline_seconds=120)))["Deployment"]["spec"]
    assert d["replicas"] == 2
    assert d["progressDeadlineSeconds"] == 120
    assert d["revisionHistoryLimit"] == 10
    assert d["strategy"]["type"] == "RollingUpdate"


def test_service_maps_port_80_to_the_named_container_port() -> None:
    svc = by_kind(render.render(make_spec(port=3000)))["Service"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_autoscaling_renders_hpa_and_leaves_replicas_to_it() -> None:
    manifests = by_kind(
        render.render(
            make_spec(autoscaling=spec.Autoscaling(min_replicas=2, max_replicas=6, cpu_target_percent=65))
        )
    )
    assert "replicas" not in manifests["Deployment"]["spec"]
    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["name"] == "web"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}},
        }
    ]


def test_no_scale_down_window_renders_no_behavior_and_a_window_renders_only_it() -> None:
    def hpa(window: int | None) -> dict[str, Any]:
        scaling = spec.Autoscaling(
            min_replicas=1, max_replicas=3, cpu_target_percent=50, scale_down_window_seconds=window
        )
        return by_kind(render.render(make_spec(autoscaling=scaling)))["HorizontalPodAutoscaler"]

    # Unset: the HPA an app had before the setting existed, byte for byte (Kubernetes' own 300 s applies).
    default = hpa(None)
    assert default["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1,
        "maxReplicas": 3,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
            }
        ],
    }
    assert hpa(30)["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 30}}
    # 0 is a window too (scale down at once), not "unset".
    assert hpa(0)["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 0}}
    assert {k: v for k, v in hpa(30)["spec"].items() if k != "behavior"} == default["spec"]


def test_ingress_without_tls() -> None:
    ingress = by_kind(render.render(make_spec(ingress=spec.IngressSpec(host="web.example.com"))))["Ingress"]
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert "annotations" not in ingress["metadata"]
    assert "tls" not in ingress["spec"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "web.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"] == {"service": {"name": "web", "port": {"name": "http"}}}


def test_ingress_with_cert_manager_tls() -> None:
    ingress = by_kind(
        render.render(
            make_spec(
                ingress=spec.IngressSpec(
                    host="web.example.com", ingress_class="traefik", tls_cluster_issuer="letsencrypt"
                )
            )
        )
    )["Ingress"]
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["tls"] == [{"hosts": ["web.example.com"], "secretName": "web-tls"}]


def checksum(s: spec.WorkloadSpec) -> str:
    template = by_kind(render.render(s))["Deployment"]["spec"]["template"]
    value: str = template["metadata"]["annotations"]["shipit.dev/config-checksum"]
    return value


def test_checksum_changes_with_secret_checksum_and_env_only() -> None:
    base = checksum(make_spec())
    assert len(base) == 64
    assert checksum(make_spec()) == base
    assert checksum(make_spec(secret_checksum="other")) != base
    assert checksum(make_spec(env={"A": "1", "B": "3"})) != base
    # Image and replicas are in the template (or outside it) already.
    assert checksum(make_spec(image="ghcr.io/acme/web:2", replicas=5)) == base


def test_checksum_falls_back_to_the_secret_data_when_core_gave_none() -> None:
    one = checksum(make_spec(secret_checksum="", secret_data={"K": "1"}))
    two = checksum(make_spec(secret_checksum="", secret_data={"K": "2"}))
    assert one != two


def test_no_secret_value_outside_the_secret_object() -> None:
    manifests = render.render(make_spec(secret_data={"TOKEN": "s3cr3t-value"}, secret_checksum=""))
    others = [m for m in manifests if m["kind"] != "Secret"]
    text = json.dumps(others)
    assert "s3cr3t-value" not in text
    assert base64.b64encode(b"s3cr3t-value").decode() not in text


def test_render_is_deterministic() -> None:
    s = make_spec(
        autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=50),
        ingress=spec.IngressSpec(host="a.example.com", tls_cluster_issuer="le"),
    )
    assert json.dumps(render.render(s)) == json.dumps(render.render(s))


def test_render_absent_names_what_the_spec_turns_off() -> None:
    assert render.render_absent(make_spec()) == [
        ("HorizontalPodAutoscaler", "web"),
        ("Ingress", "web"),
        ("Secret", "web-registry"),
    ]
    full = make_spec(
        autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=50),
        ingress=spec.IngressSpec(host="a.example.com"),
        pull_secret=spec.PullSecret(server="ghcr.io", username="bot", password="pw"),
    )
    assert render.render_absent(full) == []


def test_pull_secret_renders_a_dockerconfigjson_secret_referenced_by_the_pod() -> None:
    pull = spec.PullSecret(server="ghcr.io", username="acme-bot", password="p@ss:wörd")
    manifests = render.render(make_spec(pull_secret=pull))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests][:3] == [
        ("Secret", "web-secrets"),
        ("Secret", "web-registry"),
        ("Deployment", "web"),
    ]
    secret = manifests[1]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["labels"]["shipit.dev/app"] == "web"
    assert secret["metadata"]["labels"]["shipit.dev/project"] == "acme"
    doc = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert doc == {
        "auths": {
            "ghcr.io": {
                "username": "acme-bot",
                "password": "p@ss:wörd",
                "auth": base64.b64encode("acme-bot:p@ss:wörd".encode()).decode(),
            }
        }
    }
    template = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    assert template["imagePullSecrets"] == [{"name": "web-registry"}]
    assert (
        "imagePullSecrets"
        not in by_kind(render.render(make_spec()))["Deployment"]["spec"]["template"]["spec"]
    )
    assert "p@ss" not in repr(make_spec(pull_secret=pull))


def test_ownership_labels_name_the_project_and_app_on_objects_and_pod_template() -> None:
    manifests = render.render(
        make_spec(
            app="ledger",
            project="payments",
            autoscaling=spec.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=70),
            ingress=spec.IngressSpec(host="ledger.example.com"),
        )
    )
    owned = {
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/project": "payments",
        "shipit.dev/app": "ledger",
    }
    assert {m["kind"] for m in manifests} == {
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Ingress",
    }
    for manifest in manifests:
        assert owned.items() <= manifest["metadata"]["labels"].items(), manifest["kind"]
    template = by_kind(manifests)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert owned.items() <= template.items()


def test_namespace_ownership_labels_carry_no_app() -> None:
    assert render.ownership_labels(project="payments") == {
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/project": "payments",
    }
