"""The test control plane behaves like a cluster in the ways shipit relies on.

These run against the real apiserver/controllers/kwok started by the `kube_env` fixture; if one fails,
every Kubernetes test built on top would mislead, so they come first.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from tests import helpers
from tests.testenv import controlplane, plugin

T = TypeVar("T")

TIMEOUT_S = 90.0
eventually = functools.partial(helpers.eventually, timeout=TIMEOUT_S, interval=0.2)


def deployment(*, name: str, image: str, replicas: int = 1, progress_deadline: int | None = None) -> Any:
    labels = {"app.kubernetes.io/name": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            progress_deadline_seconds=progress_deadline,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="app",
                            image=image,
                            ports=[client.V1ContainerPort(container_port=8080)],
                        )
                    ]
                ),
            ),
        ),
    )


def condition(obj: Any, kind: str) -> Any:
    for c in (obj.status.conditions if obj.status else None) or []:
        if c.type == kind:
            return c
    return None


async def test_deployment_becomes_available_with_ready_pods(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    await apps.create_namespaced_deployment(namespace, deployment(name="web", image="nginx:1.27", replicas=2))

    def available(d: Any) -> bool:
        c = condition(d, "Available")
        return (
            d.status.observed_generation == d.metadata.generation
            and d.status.ready_replicas == 2
            and d.status.updated_replicas == 2
            and c is not None
            and c.status == "True"
        )

    await eventually(
        lambda: apps.read_namespaced_deployment("web", namespace), available, what="Deployment web Available"
    )
    pods = await core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=web")
    assert len(pods.items) == 2
    for pod in pods.items:
        assert pod.status.phase == "Running"
        assert condition(pod, "Ready").status == "True"
        assert pod.spec.node_name
        assert pod.status.container_statuses[0].ready is True


async def test_server_side_apply_records_the_field_manager(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": namespace},
        "data": {"greeting": "hello"},
    }
    applied = await core.patch_namespaced_config_map(
        "cfg",
        namespace,
        body,
        field_manager="shipit",
        force=True,
        # The bundled stubs omit _content_type, which the generated client does accept.
        _content_type="application/apply-patch+yaml",  # type: ignore[call-arg]
    )
    assert applied.data == {"greeting": "hello"}
    assert "shipit" in {m.manager for m in applied.metadata.managed_fields}


def hpa(*, name: str, min_replicas: int, max_replicas: int) -> client.V2HorizontalPodAutoscaler:
    return client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name=name
            ),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            metrics=[
                client.V2MetricSpec(
                    type="Resource",
                    resource=client.V2ResourceMetricSource(
                        name="cpu",
                        target=client.V2MetricTarget(type="Utilization", average_utilization=70),
                    ),
                )
            ],
        ),
    )


async def test_hpa_v2_is_accepted(kube_api: client.ApiClient, namespace: str) -> None:
    autoscaling = client.AutoscalingV2Api(kube_api)
    await autoscaling.create_namespaced_horizontal_pod_autoscaler(
        namespace, hpa(name="web", min_replicas=2, max_replicas=10)
    )
    stored = await autoscaling.read_namespaced_horizontal_pod_autoscaler("web", namespace)
    assert stored.spec.min_replicas == 2
    assert stored.spec.max_replicas == 10
    assert stored.spec.metrics[0].resource.target.average_utilization == 70


@pytest.mark.parametrize(
    ("min_replicas", "max_replicas", "field"),
    [(3, 1, "spec.maxReplicas"), (0, 5, "spec.minReplicas")],
    ids=["max-below-min", "min-zero-without-alpha-gate"],
)
async def test_invalid_hpa_is_rejected(
    kube_api: client.ApiClient, namespace: str, min_replicas: int, max_replicas: int, field: str
) -> None:
    autoscaling = client.AutoscalingV2Api(kube_api)
    with pytest.raises(ApiException) as err:
        await autoscaling.create_namespaced_horizontal_pod_autoscaler(
            namespace, hpa(name="web", min_replicas=min_replicas, max_replicas=max_replicas)
        )
    assert err.value.status == 422
    assert field in str(err.value.body)


async def test_ingress_and_secret_are_accepted(kube_api: client.ApiClient, namespace: str) -> None:
    core, networking = client.CoreV1Api(kube_api), client.NetworkingV1Api(kube_api)
    await core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="web-env"), string_data={"DATABASE_URL": "postgres://x"}
        ),
    )
    secret = await core.read_namespaced_secret("web-env", namespace)
    assert base64.b64decode(secret.data["DATABASE_URL"]) == b"postgres://x"

    await networking.create_namespaced_ingress(
        namespace,
        client.V1Ingress(
            metadata=client.V1ObjectMeta(
                name="web", annotations={"cert-manager.io/cluster-issuer": "letsencrypt"}
            ),
            spec=client.V1IngressSpec(
                ingress_class_name="nginx",
                tls=[client.V1IngressTLS(hosts=["web.example.com"], secret_name="web-tls")],
                rules=[
                    client.V1IngressRule(
                        host="web.example.com",
                        http=client.V1HTTPIngressRuleValue(
                            paths=[
                                client.V1HTTPIngressPath(
                                    path="/",
                                    path_type="Prefix",
                                    backend=client.V1IngressBackend(
                                        service=client.V1IngressServiceBackend(
                                            name="web", port=client.V1ServiceBackendPort(number=80)
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
        ),
    )
    ingress = await networking.read_namespaced_ingress("web", namespace)
    assert ingress.spec.rules[0].host == "web.example.com"

    with pytest.raises(ApiException) as err:
        await networking.create_namespaced_ingress(
            namespace,
            client.V1Ingress(
                metadata=client.V1ObjectMeta(name="bad"),
                spec=client.V1IngressSpec(rules=[client.V1IngressRule(host="Not_A_Host!")]),
            ),
        )
    assert err.value.status == 422


@pytest.mark.usefixtures("simulated_failures")
async def test_fail_image_never_becomes_ready_and_deadline_is_exceeded(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    await apps.create_namespaced_deployment(
        namespace, deployment(name="web", image="ghcr.io/acme/web:fail-1", progress_deadline=5)
    )

    def deadline_exceeded(d: Any) -> bool:
        c = condition(d, "Progressing")
        return c is not None and c.status == "False" and c.reason == "ProgressDeadlineExceeded"

    failed = await eventually(
        lambda: apps.read_namespaced_deployment("web", namespace),
        deadline_exceeded,
        what="Progressing=False/ProgressDeadlineExceeded",
    )
    assert not failed.status.ready_replicas
    assert condition(failed, "Available").status == "False"

    async def the_pod() -> Any:
        pods = await core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=web")
        return pods.items[0] if pods.items else None

    # kwok's crash-loop stage restarts the container every few seconds; the pod must stay unready.
    pod = await eventually(
        the_pod,
        lambda p: (
            p is not None
            and bool(p.status.container_statuses)
            and p.status.container_statuses[0].restart_count >= 1
        ),
        what="the fail- pod to be restarted",
    )
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Running"
    assert condition(pod, "Ready").status == "False"
    assert status.ready is False
    assert status.state.waiting.reason == "CrashLoopBackOff"
    assert status.last_state.terminated.exit_code == 1


@pytest.mark.usefixtures("simulated_failures")
async def test_only_the_image_tag_decides_failure(kube_api: client.ApiClient, namespace: str) -> None:
    # "fail-" in the registry or repository path is not a failing tag: this pod must become Ready.
    apps = client.AppsV1Api(kube_api)
    await apps.create_namespaced_deployment(
        namespace, deployment(name="web", image="registry.local:5000/fail-team/web:1.0")
    )
    await eventually(
        lambda: apps.read_namespaced_deployment("web", namespace),
        lambda d: d.status.ready_replicas == 1,
        what="a pod whose path (not tag) contains fail- to become Ready",
    )


async def test_deleting_a_namespace_removes_what_is_in_it(kube_api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    name = f"t-del-{uuid.uuid4().hex[:8]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        await eventually(
            lambda: core.list_namespaced_service_account(name),
            lambda sas: any(sa.metadata.name == "default" for sa in sas.items),
            what="the default serviceaccount",
        )
        await apps.create_namespaced_deployment(name, deployment(name="web", image="nginx:1.27", replicas=2))
        await core.create_namespaced_secret(
            name, client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"})
        )
        await eventually(
            lambda: core.list_namespaced_pod(name),
            lambda pods: len(pods.items) == 2,
            what="two pods",
        )

        await core.delete_namespace(name)

        async def namespace_status() -> int:
            try:
                await core.read_namespace(name)
            except ApiException as e:
                return int(e.status)
            return 200

        await eventually(namespace_status, lambda s: s == 404, what=f"namespace {name} to be finalized")
        assert (await core.list_namespaced_pod(name)).items == []
        assert (await apps.list_namespaced_deployment(name)).items == []
        assert (await core.list_namespaced_secret(name)).items == []
    finally:
        try:
            await core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the component processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_or_killed_starter_leaves_no_process_behind(sig: signal.Signals) -> None:
    plugin.require_local_binaries()
    repo = Path(__file__).resolve().parents[2]
    starter = subprocess.Popen(
        [sys.executable, "-m", "tests.testenv.controlplane", "up"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        workdir = None
        assert starter.stdout is not None
        for line in starter.stdout:
            if line.startswith("kubeconfig: "):
                workdir = Path(line.removeprefix("kubeconfig: ").strip()).parent
                break
        assert workdir is not None, "the starter never printed its kubeconfig path"
        assert len(controlplane.pids_using(workdir)) == len(controlplane.BINARIES)

        starter.send_signal(sig)
        starter.wait(timeout=60)

        deadline = time.monotonic() + 30
        while controlplane.pids_using(workdir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert controlplane.pids_using(workdir) == []
        if sig == signal.SIGKILL:
            # Nothing ran in the starter; the next start sweeps up what it left on disk.
            assert workdir.exists()
            assert workdir in controlplane.remove_stale_workdirs()
        assert not workdir.exists()
    finally:
        starter.kill()
        starter.wait()


async def test_a_slow_tag_becomes_ready_only_after_a_delay(kube_api: Any, namespace: str) -> None:
    """`slow-` tags give tests a window in which a rollout is still being watched (crash-resume test)."""
    core = client.CoreV1Api(kube_api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "slow"},
        "spec": {"containers": [{"name": "c", "image": "ghcr.io/acme/web:slow-1"}]},
    }
    await core.create_namespaced_pod(namespace, pod)
    loop = asyncio.get_running_loop()
    created = loop.time()
    ready_at = None
    while loop.time() - created < 60:
        p = await core.read_namespaced_pod("slow", namespace)
        conditions = {c.type: c.status for c in (p.status.conditions or [])}
        if conditions.get("Ready") == "True":
            ready_at = loop.time()
            break
        await asyncio.sleep(0.25)
    assert ready_at is not None, "a slow- pod must become ready eventually"


def job(*, name: str, image: str) -> dict[str, Any]:
    """A run-once Job as shipit's release phase makes them: no retry, the pod never restarted."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 60,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "release", "image": image, "command": ["/bin/sh", "-c", "true"]}],
                }
            },
        },
    }


async def _job_pod(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    pods = await core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}")
    return pods.items[0] if pods.items else None


def _job_condition(j: Any) -> str | None:
    done = [
        c.type for c in (j.status.conditions or []) if c.type in ("Complete", "Failed") and c.status == "True"
    ]
    return done[0] if done else None


async def test_a_job_pod_runs_once_and_completes(kube_api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    await batch.create_namespaced_job(namespace, job(name="ok", image="ghcr.io/acme/web:1.0"))
    done = await eventually(
        lambda: batch.read_namespaced_job("ok", namespace), _job_condition, what="the Job to finish"
    )
    assert _job_condition(done) == "Complete" and done.status.succeeded == 1
    pod = await _job_pod(core, namespace, "ok")
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


@pytest.mark.usefixtures("simulated_failures")
async def test_a_job_pod_of_a_fail_tag_fails_once_with_exit_code_1(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """restartPolicy Never: no crash loop (pod-crashloop.yaml skips it), the pod fails (pod-job-failed.yaml)."""
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    await batch.create_namespaced_job(namespace, job(name="bad", image="ghcr.io/acme/web:fail-1"))
    done = await eventually(
        lambda: batch.read_namespaced_job("bad", namespace), _job_condition, what="the Job to finish"
    )
    assert _job_condition(done) == "Failed" and done.status.failed == 1 and not done.status.succeeded
    pod = await _job_pod(core, namespace, "bad")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1 and terminated.reason == "Error"
    assert pod.status.container_statuses[0].restart_count == 0


def _cpu_nanocores(text: str) -> int:
    # metrics-server writes CPU in nanocores ("20000000n"); the simulated usage is given in millicores.
    if text.endswith("n"):
        return int(text[:-1])
    if text.endswith("m"):
        return int(text[:-1]) * 1_000_000
    return int(float(text) * 1_000_000_000)


async def test_pod_metrics_report_the_simulated_usage(kube_api: client.ApiClient, namespace: str) -> None:
    """metrics-server (through the aggregation layer) reports what kwok simulates for a running pod: the
    default per container, or the pod's kwok.x-k8s.io/usage-* annotations."""
    apps = client.AppsV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    plain = deployment(name="web", image="nginx:1.27", replicas=1)
    annotated = deployment(name="busy", image="nginx:1.27", replicas=1)
    annotated.spec.template.metadata.annotations = {
        "kwok.x-k8s.io/usage-cpu": "250m",
        "kwok.x-k8s.io/usage-memory": "100Mi",
    }
    await apps.create_namespaced_deployment(namespace, plain)
    await apps.create_namespaced_deployment(namespace, annotated)

    async def pod_metrics() -> dict[str, Any]:
        listing = await custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
        return {item["metadata"]["labels"]["app.kubernetes.io/name"]: item for item in listing["items"]}

    # A new pod has metrics after metrics-server's second scrape of it (10 s apart).
    found = await eventually(pod_metrics, lambda m: {"web", "busy"} <= set(m), what="PodMetrics of both pods")
    by_app = {app: {c["name"]: c["usage"] for c in item["containers"]} for app, item in found.items()}
    assert by_app["web"]["app"]["memory"] == controlplane.POD_MEMORY_USAGE
    assert by_app["busy"]["app"]["memory"] == "100Mi"
    # CPU is a rate over two scrapes of a cumulative counter that kwok computes at scrape time, so it
    # is off by the scrape's own latency (seen: 250004963n for 250m): within 1 %.
    assert _cpu_nanocores(by_app["web"]["app"]["cpu"]) == pytest.approx(20_000_000, rel=0.01)
    assert _cpu_nanocores(by_app["busy"]["app"]["cpu"]) == pytest.approx(250_000_000, rel=0.01)


async def test_the_metrics_api_is_discovered_and_namespaces_still_finish(kube_api: client.ApiClient) -> None:
    """An aggregated API that is registered but not Available breaks discovery, and the namespace
    controller (which needs all of it) would leave every deleted namespace Terminating."""
    core = client.CoreV1Api(kube_api)
    groups = await client.ApisApi(kube_api).get_api_versions()
    assert "metrics.k8s.io" in {g.name for g in groups.groups}
    name = f"t-metrics-{uuid.uuid4().hex[:8]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    await core.delete_namespace(name)

    async def namespace_status() -> int:
        try:
            await core.read_namespace(name)
        except ApiException as e:
            return int(e.status)
        return 200

    await eventually(namespace_status, lambda s: s == 404, what=f"namespace {name} to be finalized")
