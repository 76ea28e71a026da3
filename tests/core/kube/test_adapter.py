"""The Kubernetes adapter against the real local control plane (tests/testenv).

Objects are read back with a separate kubernetes_asyncio client (`kube_api`),
so these tests check what the API server holds, not what the adapter believes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from core import errors
from core.kube import client as kube_client
from core.kube import render, rules, spec
from tests import helpers
from tests.core.kube.conftest import workload_spec
from tests.testenv.controlplane import KubeEnv

IMAGE = "ghcr.io/acme/web:1.0.0"
ROLLOUT_TIMEOUT = 120.0


def make_spec(namespace: str, **overrides: Any) -> spec.WorkloadSpec:
    values: dict[str, Any] = {
        "app": "web",
        "project": "acme",
        "image": IMAGE,
        "replicas": 2,
        "port": 8080,
        "env": {"LOG_LEVEL": "info"},
        "secret_data": {"DB_PASSWORD": "hunter2"},
        "health": spec.HealthCheck(path="/healthz", initial_delay_seconds=1, period_seconds=5),
    }
    return workload_spec(namespace, **{**values, **overrides})


async def deploy(kube: kube_client.Kube, s: spec.WorkloadSpec) -> rules.RolloutResult:
    await kube.apply_workload(spec=s)
    return await kube.wait_rollout(namespace=s.namespace, name=s.app, timeout=ROLLOUT_TIMEOUT)


def shipit_owns(obj: Any, *path: str) -> bool:
    """Whether field manager `shipit` (Apply) owns the field at `path` (e.g. "f:spec", "f:replicas")."""
    for entry in obj.metadata.managed_fields or []:
        if entry.manager == "shipit" and entry.operation == "Apply":
            node = entry.fields_v1
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                return True
    return False


async def replica_sets(kube_api: k8s.ApiClient, namespace: str) -> list[Any]:
    rs = await k8s.AppsV1Api(kube_api).list_namespaced_replica_set(namespace)
    return list(rs.items)


async def test_check_returns_the_server_version(kube: kube_client.Kube) -> None:
    version = await kube.check()
    assert version.startswith("v1.")


async def test_apply_rendered_spec_becomes_available_and_reads_back(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    s = make_spec(namespace)
    progress: list[rules.RolloutProgress] = []

    async def on_progress(p: rules.RolloutProgress) -> None:
        progress.append(p)

    await kube.apply_workload(spec=s)
    result = await kube.wait_rollout(
        namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT, on_progress=on_progress
    )
    assert result.ok, result
    assert result.reason == "Available"
    assert (result.ready, result.desired) == (2, 2)
    assert progress and progress[-1] == rules.RolloutProgress(ready=2, updated=2, desired=2)

    apps, core = k8s.AppsV1Api(kube_api), k8s.CoreV1Api(kube_api)
    d = await apps.read_namespaced_deployment("web", namespace)
    expected_labels = {
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/instance": "web",
        "app.kubernetes.io/managed-by": "shipit",
        "shipit.dev/project": "acme",
        "shipit.dev/app": "web",
        "shipit.dev/revision": "1",
    }
    assert d.metadata.labels == expected_labels
    assert d.spec.template.metadata.labels == expected_labels
    assert d.spec.selector.match_labels == {
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/instance": "web",
    }
    assert d.spec.replicas == 2
    assert d.spec.progress_deadline_seconds == 600
    assert d.spec.revision_history_limit == 10
    assert d.spec.template.metadata.annotations["shipit.dev/config-checksum"] == render.config_checksum(s)
    (c,) = d.spec.template.spec.containers
    assert c.name == "web"
    assert c.image == IMAGE
    assert [(e.name, e.value) for e in c.env] == [("LOG_LEVEL", "info")]
    assert c.env_from[0].secret_ref.name == "web-secrets"
    assert c.resources.requests == {"cpu": "100m", "memory": "128Mi"}
    assert c.resources.limits == {"cpu": "500m", "memory": "256Mi"}
    for probe in (c.liveness_probe, c.readiness_probe):
        assert probe.http_get.path == "/healthz"
        assert probe.http_get.port == 8080
        assert probe.period_seconds == 5
    assert any(cond.type == "Available" and cond.status == "True" for cond in d.status.conditions)
    assert shipit_owns(d, "f:spec", "f:replicas")

    svc = await core.read_namespaced_service("web", namespace)
    assert svc.spec.type == "ClusterIP"
    assert [(p.name, p.port, p.target_port) for p in svc.spec.ports] == [("http", 80, "http")]
    assert svc.metadata.labels == expected_labels

    secret = await core.read_namespaced_secret("web-secrets", namespace)
    assert secret.type == "Opaque"
    assert base64.b64decode(secret.data["DB_PASSWORD"]) == b"hunter2"
    assert secret.metadata.labels == expected_labels

    pods = await core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=web")
    assert len(pods.items) == 2

    status = await kube.deployment_status(namespace=namespace, name="web")
    assert status is not None
    assert status.image == IMAGE
    assert status.revision == "1"
    assert (status.desired, status.ready, status.available, status.updated) == (2, 2, 2, 2)
    assert {c.type for c in status.conditions} >= {"Available", "Progressing"}
    assert await kube.deployment_status(namespace=namespace, name="nope") is None


async def test_apply_again_is_idempotent_and_a_finished_rollout_returns_at_once(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    s = make_spec(namespace, ingress=spec.IngressSpec(host="web.example.com"))
    assert (await deploy(kube, s)).ok
    apps = k8s.AppsV1Api(kube_api)
    before = await apps.read_namespaced_deployment("web", namespace)

    await kube.apply_workload(spec=s)
    after = await apps.read_namespaced_deployment("web", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.metadata.resource_version == before.metadata.resource_version
    # A worker that died after the rollout finished resumes here: the verdict comes from the first list.
    again = await kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT)
    assert again.ok
    assert len(await replica_sets(kube_api, namespace)) == 1


async def test_image_change_rolls_out_at_the_new_generation(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    assert (await deploy(kube, make_spec(namespace))).ok
    result = await deploy(kube, make_spec(namespace, revision=2, image="ghcr.io/acme/web:2.0.0"))
    assert result.ok, result

    d = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    assert d.status.observed_generation == d.metadata.generation == 2
    assert d.status.updated_replicas == 2
    assert d.spec.template.spec.containers[0].image == "ghcr.io/acme/web:2.0.0"
    pods = await k8s.CoreV1Api(kube_api).list_namespaced_pod(namespace)
    live = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    assert {p.spec.containers[0].image for p in live} == {"ghcr.io/acme/web:2.0.0"}
    assert {p.metadata.labels["shipit.dev/revision"] for p in live} == {"2"}


async def test_autoscaling_on_hands_replicas_to_the_hpa_and_off_deletes_it(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    apps = k8s.AppsV1Api(kube_api)
    hpas = k8s.AutoscalingV2Api(kube_api)
    assert (await deploy(kube, make_spec(namespace, replicas=3))).ok

    scaled = make_spec(
        namespace,
        revision=2,
        replicas=3,
        autoscaling=spec.Autoscaling(min_replicas=2, max_replicas=5, cpu_target_percent=60),
    )
    await kube.apply_workload(spec=scaled)
    d = await apps.read_namespaced_deployment("web", namespace)
    # Not reset to 1 when shipit stopped sending spec.replicas.
    assert d.spec.replicas == 3
    assert not shipit_owns(d, "f:spec", "f:replicas")
    assert shipit_owns(d, "f:spec", "f:template")
    hpa = await hpas.read_namespaced_horizontal_pod_autoscaler("web", namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.scale_target_ref.name == "web"
    assert hpa.spec.metrics[0].resource.target.average_utilization == 60
    assert hpa.metadata.labels["shipit.dev/revision"] == "2"
    assert (await kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT)).ok

    # A re-apply under autoscaling does not take replicas back.
    await kube.apply_workload(spec=scaled)
    assert not shipit_owns(await apps.read_namespaced_deployment("web", namespace), "f:spec", "f:replicas")

    result = await deploy(kube, make_spec(namespace, revision=3, replicas=1))
    assert result.ok, result
    assert (result.ready, result.desired) == (1, 1)
    with pytest.raises(k8s.ApiException) as gone:
        await hpas.read_namespaced_horizontal_pod_autoscaler("web", namespace)
    assert gone.value.status == 404
    d = await apps.read_namespaced_deployment("web", namespace)
    assert d.spec.replicas == 1
    assert shipit_owns(d, "f:spec", "f:replicas")
    assert (
        await kube.delete(
            kind="HorizontalPodAutoscaler", name="web", namespace=namespace, project="acme", app="web"
        )
        is False
    )


async def test_secret_change_rolls_the_pods_through_the_checksum(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    first = make_spec(namespace, secret_data={"A": "1", "B": "2"}, secret_checksum="one")
    assert (await deploy(kube, first)).ok
    assert len(await replica_sets(kube_api, namespace)) == 1

    second = make_spec(namespace, secret_data={"A": "changed"}, secret_checksum="two")
    assert render.config_checksum(second) != render.config_checksum(first)
    result = await deploy(kube, second)
    assert result.ok, result

    sets = await replica_sets(kube_api, namespace)
    assert len(sets) == 2
    checksums = {rs.spec.template.metadata.annotations["shipit.dev/config-checksum"] for rs in sets}
    assert checksums == {render.config_checksum(first), render.config_checksum(second)}
    secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret("web-secrets", namespace)
    # Server-side apply of `data` prunes the key shipit stopped sending.
    assert {k: base64.b64decode(v) for k, v in secret.data.items()} == {"A": b"changed"}


async def test_crashing_image_fails_with_crashloopbackoff(kube: kube_client.Kube, namespace: str) -> None:
    assert (await deploy(kube, make_spec(namespace, replicas=1))).ok
    bad = make_spec(namespace, revision=2, replicas=1, image="ghcr.io/acme/web:fail-1")
    await kube.apply_workload(spec=bad)
    result = await kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT)
    assert not result.ok
    assert result.reason == "CrashLoopBackOff"
    assert "web" in result.message
    assert result.desired == 1
    assert result.logs  # the last lines, or one line saying why there are none (kwok runs no containers)
    # The old pod keeps serving: maxUnavailable is 0.
    status = await kube.deployment_status(namespace=namespace, name="web")
    assert status is not None
    assert status.available == 1


async def test_a_watch_cancelled_midway_is_resumed_by_the_next_one(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    assert (await deploy(kube, make_spec(namespace))).ok
    await kube.apply_workload(spec=make_spec(namespace, revision=2, image="ghcr.io/acme/web:2.0.0"))
    # A worker dies while watching: its wait is cancelled wherever it was.
    first = asyncio.create_task(kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    result = await kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT)
    assert result.ok, result
    d = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    assert d.status.observed_generation == 2
    assert d.status.updated_replicas == 2


async def test_unschedulable_pods_end_in_progress_deadline_exceeded(
    kube: kube_client.Kube, namespace: str
) -> None:
    s = make_spec(namespace, replicas=1, progress_deadline_seconds=5)
    manifests = render.render(s)
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    # No node carries this label, so the pod stays Pending without any container failing.
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {"shipit.dev/test": "no-such-node"}
    await kube.apply(manifests=manifests)
    result = await kube.wait_rollout(namespace=namespace, name="web", timeout=ROLLOUT_TIMEOUT)
    assert not result.ok
    assert result.reason == "ProgressDeadlineExceeded"
    assert (result.ready, result.desired) == (0, 1)
    assert len(result.logs) == 1
    assert "not scheduled" in result.logs[0]


async def test_rollout_that_does_not_finish_in_time_reports_timeout(
    kube: kube_client.Kube, namespace: str
) -> None:
    manifests = render.render(make_spec(namespace, replicas=1))
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {"shipit.dev/test": "no-such-node"}
    await kube.apply(manifests=manifests)
    result = await kube.wait_rollout(namespace=namespace, name="web", timeout=2)
    assert not result.ok
    assert result.reason == "Timeout"
    assert result.desired == 1


async def test_wait_rollout_of_a_missing_deployment_is_not_found(
    kube: kube_client.Kube, namespace: str
) -> None:
    with pytest.raises(errors.NotFound):
        await kube.wait_rollout(namespace=namespace, name="nothing-here", timeout=10)


async def test_invalid_quantity_is_a_permanent_error_naming_the_field(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    s = make_spec(namespace, resources=spec.Resources(cpu_request="lots"))
    with pytest.raises(errors.PermanentError) as e:
        await kube.apply_workload(spec=s)
    message = str(e.value)
    assert "spec.template.spec.containers[0].resources.requests.cpu" in message
    assert "Deployment" in message
    assert "hunter2" not in message
    with pytest.raises(k8s.ApiException):
        await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)


async def test_invalid_value_is_a_permanent_error_naming_the_field(
    kube: kube_client.Kube, namespace: str
) -> None:
    with pytest.raises(errors.PermanentError) as e:
        await kube.apply_workload(spec=make_spec(namespace, port=70000))
    assert "containerPort" in str(e.value)


async def test_secret_values_never_reach_error_messages(kube: kube_client.Kube, namespace: str) -> None:
    manifests = render.render(make_spec(namespace, secret_data={"OK": "s3cr3t-value"}))
    secret = manifests[0]
    secret["data"]["not a valid key!"] = base64.b64encode(b"s3cr3t-value").decode()
    with pytest.raises(errors.PermanentError) as e:
        await kube.apply(manifests=[secret])
    assert "s3cr3t-value" not in str(e.value)
    assert base64.b64encode(b"s3cr3t-value").decode() not in str(e.value)


def closed_port() -> int:
    return helpers.refused_port()


def kubeconfig_with(
    kube_env: KubeEnv, *, server: str | None = None, user: dict[str, Any] | None = None
) -> str:
    doc = yaml.safe_load(kube_env.kubeconfig)
    if server is not None:
        for cluster in doc["clusters"]:
            cluster["cluster"]["server"] = server
    if user is not None:
        for entry in doc["users"]:
            entry["user"] = user
    return str(yaml.safe_dump(doc))


async def test_unreachable_server_is_a_transient_error(kube_env: KubeEnv) -> None:
    text = kubeconfig_with(kube_env, server=f"https://127.0.0.1:{closed_port()}")
    kube = await kube_client.Kube.from_kubeconfig(kubeconfig=text, request_timeout=5)
    try:
        with pytest.raises(errors.TransientError) as e:
            await kube.check()
        assert "unreachable" in str(e.value)
        with pytest.raises(errors.TransientError):
            await kube.apply(manifests=render.render(make_spec("default")))
        with pytest.raises(errors.TransientError):
            await kube.wait_rollout(namespace="default", name="web", timeout=10)
    finally:
        await kube.close()


@pytest.mark.parametrize(
    "text",
    ["", "{not yaml", "clusters: []", "apiVersion: v1\nclusters:\n- name: x\n  cluster: {}\n"],
)
async def test_unusable_kubeconfig_is_invalid_input(text: str) -> None:
    with pytest.raises(errors.InvalidInput) as e:
        await kube_client.Kube.from_kubeconfig(kubeconfig=text)
    assert e.value.field == "kubeconfig"


@pytest.mark.parametrize(
    ("section", "body"),
    [
        ("user", {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh"}}),
        ("user", {"auth-provider": {"name": "gcp", "config": {"cmd-path": "/bin/sh"}}}),
        ("user", {"tokenFile": "/etc/shadow"}),
        ("user", {"client-certificate": "/etc/ssl/x.pem", "client-key": "/etc/ssl/x.key"}),
        ("cluster", {"certificate-authority": "/etc/passwd"}),
    ],
)
async def test_kubeconfig_that_runs_programs_or_reads_files_is_refused(
    kube_env: KubeEnv, section: str, body: dict[str, Any]
) -> None:
    doc = yaml.safe_load(kube_env.kubeconfig)
    for entry in doc[f"{section}s"]:
        entry[section] = {**entry[section], **body}
    with pytest.raises(errors.InvalidInput) as e:
        await kube_client.Kube.from_kubeconfig(kubeconfig=yaml.safe_dump(doc))
    assert e.value.field == "kubeconfig"
    assert next(iter(body)) in str(e.value)
    # It says what to do: inline the files, or use a token (nothing can inline a program).
    files = "certificate" in next(iter(body)) or "key" in next(iter(body))
    remedy = "kubectl config view --minify --flatten --raw" if files else "service account's token"
    assert remedy in str(e.value), str(e.value)


async def test_missing_permission_is_a_permanent_error_naming_it(
    kube_env: KubeEnv, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    await core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata={"name": "nobody"}))
    token = await core.create_namespaced_service_account_token(
        "nobody", namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    )
    text = kubeconfig_with(kube_env, user={"token": token.status.token})
    kube = await kube_client.Kube.from_kubeconfig(kubeconfig=text)
    try:
        with pytest.raises(errors.PermanentError) as e:
            await kube.apply(manifests=render.render(make_spec(namespace)))
        message = str(e.value)
        assert "403" in message
        # The first request is the ownership read of what exists under the app's names.
        assert "cannot get resource" in message
        assert "secrets" in message
        # Authenticated though powerless: the connectivity check passes, as for a namespace-scoped account.
        assert (await kube.check()).startswith("v1.")
    finally:
        await kube.close()


async def test_rejected_credentials_are_a_permanent_error(kube_env: KubeEnv) -> None:
    kube = await kube_client.Kube.from_kubeconfig(
        kubeconfig=kubeconfig_with(kube_env, user={"token": "bogus"})
    )
    try:
        with pytest.raises(errors.PermanentError) as e:
            await kube.check()
        assert "401" in str(e.value)
    finally:
        await kube.close()


async def test_ingress_applied_and_removed(
    kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str
) -> None:
    networking = k8s.NetworkingV1Api(kube_api)
    with_ingress = make_spec(
        namespace,
        ingress=spec.IngressSpec(
            host="web.example.com", ingress_class="nginx", tls_cluster_issuer="letsencrypt"
        ),
    )
    await kube.apply_workload(spec=with_ingress)
    ingress = await networking.read_namespaced_ingress("web", namespace)
    assert ingress.spec.ingress_class_name == "nginx"
    assert ingress.metadata.annotations == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress.spec.tls[0].hosts == ["web.example.com"]
    assert ingress.spec.tls[0].secret_name == "web-tls"
    rule = ingress.spec.rules[0]
    assert rule.host == "web.example.com"
    assert rule.http.paths[0].backend.service.name == "web"
    assert rule.http.paths[0].backend.service.port.name == "http"

    await kube.apply_workload(spec=make_spec(namespace, revision=2))
    with pytest.raises(k8s.ApiException) as gone:
        await networking.read_namespaced_ingress("web", namespace)
    assert gone.value.status == 404


async def test_namespace_lifecycle(kube: kube_client.Kube, kube_api: k8s.ApiClient, namespace: str) -> None:
    name = f"{namespace}-pr-1"
    assert not await kube.namespace_exists(name=name)
    await kube.ensure_namespace(
        name=name, project="acme", namespace_origin="created", labels={"shipit.dev/preview": "true"}
    )
    await kube.ensure_namespace(
        name=name, project="acme", namespace_origin="created", labels={"shipit.dev/preview": "true"}
    )
    assert await kube.namespace_exists(name=name)
    ns = await k8s.CoreV1Api(kube_api).read_namespace(name)
    assert ns.metadata.labels["shipit.dev/preview"] == "true"
    assert ns.metadata.labels["app.kubernetes.io/managed-by"] == "shipit"
    assert ns.metadata.labels["shipit.dev/project"] == "acme"
    assert await kube.delete_namespace(name=name, project="acme")
    ns = await k8s.CoreV1Api(kube_api).read_namespace(name)
    assert ns.metadata.deletion_timestamp is not None or ns.status.phase == "Terminating"
    # Already terminating: nothing more to do, and no 409 from deleting it again.
    assert await kube.delete_namespace(name=name, project="acme")
    assert await kube.delete_namespace(name=f"{namespace}-never-existed", project="acme") is False


async def test_pod_logs_of_a_missing_app_is_not_found(kube: kube_client.Kube, namespace: str) -> None:
    with pytest.raises(errors.NotFound):
        async for _ in kube.pod_logs(namespace=namespace, app="ghost", tail_lines=10):
            pass


async def test_pod_logs_yields_one_line_per_pod_at_least(kube: kube_client.Kube, namespace: str) -> None:
    assert (await deploy(kube, make_spec(namespace, replicas=2))).ok
    got = [line async for line in kube.pod_logs(namespace=namespace, app="web", tail_lines=10)]
    # kwok runs no containers, so each pod answers with its logs or a line saying why there are none.
    assert got
    # Two pods: every line says which one it comes from, as a field and in its text.
    assert {(line.pod.startswith("web-"), line.container, line.several) for line in got} == {
        (True, "web", True)
    }
    assert len({line.pod for line in got}) == 2
    assert all(line.text == f"{line.pod}: {line.line}" for line in got), got


async def test_clients_are_cached_per_cluster_and_rebuilt_when_the_kubeconfig_changes(
    kube_env: KubeEnv,
) -> None:
    clients = kube_client.KubeClients()
    try:
        one = await clients.get(key="c1", kubeconfig=kube_env.kubeconfig)
        assert await clients.get(key="c1", kubeconfig=kube_env.kubeconfig) is one
        other = await clients.get(key="c2", kubeconfig=kube_env.kubeconfig)
        assert other is not one
        changed = kube_env.kubeconfig + "\n# rotated\n"
        rebuilt = await clients.get(key="c1", kubeconfig=changed)
        assert rebuilt is not one
        assert (await rebuilt.check()).startswith("v1.")
        # The replaced client stays usable for whoever still holds it (a rollout being watched).
        assert (await one.check()).startswith("v1.")
    finally:
        await clients.close()
