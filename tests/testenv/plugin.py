"""pytest fixtures that give tests a real Kubernetes API server.

`kube_env` (session) starts the local control plane from tests/testenv/controlplane.py the first time a
test asks for it, so tests that never touch Kubernetes do not pay for it. SHIPIT_TEST_KUBECONFIG points
the suite at an existing cluster (kind, a real one) instead. When the binaries are missing the Kubernetes
tests are skipped with one line naming the reason, except under CI=true where they fail: a broken control
plane must never let CI pass silently.

`namespace` (function) creates a fresh namespace and deletes it afterwards, so tests do not see each
other's objects. `kube_api` (function) is a kubernetes_asyncio ApiClient for the tests' own checks.
`simulated_failures` (function) skips a test unless the cluster is this control plane, whose kwok stage
turns images tagged `fail-*` into crash-looping pods (a real cluster would report ImagePullBackOff).
`pod_logs` (function) writes lines into a pod's container log, which kwok then serves through the API
server's pods/log (tail, follow); skipped on a cluster not started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from tests.testenv import controlplane
from tests.testenv.controlplane import KubeEnv

__all__ = [
    "KubeEnv",
    "api_client",
    "kube_api",
    "kube_env",
    "namespace",
    "pod_logs",
    "require_local_binaries",
    "simulated_failures",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _env_from_kubeconfig(path: Path) -> KubeEnv:
    text = path.read_text()
    doc = yaml.safe_load(text)
    current = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    cluster_name = contexts[current]["cluster"] if current in contexts else next(iter(clusters))
    return KubeEnv(kubeconfig_path=path, kubeconfig=text, server=clusters[cluster_name]["server"])


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"Kubernetes test control plane unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no Kubernetes test control plane: {reason}")


def require_local_binaries() -> None:
    """Skip (developer machine) or fail (CI=true) the calling test when the control plane is not built."""
    missing = controlplane.missing_files()
    if len(missing) >= len(controlplane.BINARIES):
        _unavailable(f"not built in {controlplane.version_dir()} (run `make testenv`)")
    if missing:
        _unavailable(f"{', '.join(missing)} missing in {controlplane.version_dir()} (run `make testenv`)")


def _stop_on_sigterm() -> None:
    # Turn SIGTERM into KeyboardInterrupt so pytest unwinds and fixture teardown / atexit kill the
    # control plane, instead of the interpreter dying with the processes still running.
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def kube_env() -> Iterator[KubeEnv]:
    external = os.environ.get("SHIPIT_TEST_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        if not path.is_file():
            _unavailable(f"SHIPIT_TEST_KUBECONFIG={external} is not a file")
        yield _env_from_kubeconfig(path)
        return
    missing = controlplane.missing_files()
    if len(missing) >= len(controlplane.BINARIES):
        _unavailable(f"not built in {controlplane.version_dir()} (run `make testenv`)")
    if missing:
        _unavailable(f"{', '.join(missing)} missing in {controlplane.version_dir()} (run `make testenv`)")
    _stop_on_sigterm()
    cp = controlplane.ControlPlane(keep_workdir=os.environ.get("SHIPIT_TESTENV_KEEP") == "1")
    try:
        env = cp.start()
    except controlplane.ControlPlaneError as e:
        # A control plane that is built but does not start is a real failure, on any machine.
        pytest.fail(f"Kubernetes test control plane did not start: {e}", pytrace=False)
    try:
        yield env
    finally:
        cp.stop()


@contextlib.asynccontextmanager
async def api_client(env: KubeEnv) -> AsyncIterator[client.ApiClient]:
    """A kubernetes_asyncio client for `env`, closed on exit."""
    doc: dict[str, Any] = yaml.safe_load(env.kubeconfig)
    api = await config.new_client_from_config_dict(doc)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def kube_api(kube_env: KubeEnv) -> AsyncIterator[client.ApiClient]:
    async with api_client(kube_env) as api:
        yield api


@pytest.fixture
async def namespace(kube_env: KubeEnv) -> AsyncIterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    async with api_client(kube_env) as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"shipit.dev/test": "true"}))
        )
        # Pods are refused until the serviceaccount controller has created "default" in the new
        # namespace; hand out a namespace in the state an existing one is in.
        await _wait_for_default_serviceaccount(core, name)
    yield name
    async with api_client(kube_env) as api:
        # Not waiting for the namespace controller: the next test gets its own namespace anyway.
        try:
            await client.CoreV1Api(api).delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


async def _wait_for_default_serviceaccount(core: client.CoreV1Api, namespace: str) -> None:
    delay = 0.02
    for _ in range(200):
        try:
            await core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as e:
            if e.status != 404:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise AssertionError(f"serviceaccount default never appeared in namespace {namespace}")


@pytest.fixture
async def simulated_failures(kube_env: KubeEnv) -> None:
    async with api_client(kube_env) as api:
        try:
            node = await client.CoreV1Api(api).read_node(controlplane.NODE_NAME)
        except ApiException as e:
            if e.status != 404:
                raise
            node = None
    key, value = controlplane.KWOK_NODE_ANNOTATION
    if node is None or (node.metadata.annotations or {}).get(key) != value:
        pytest.skip("needs the shipit test control plane (kwok simulates `fail-` images), not this cluster")


class PodLogs:
    """Container logs of this control plane's pods: lines written here are what kwok serves as the log."""

    def __init__(self, *, logs_dir: Path, api: client.ApiClient) -> None:
        self._dir = logs_dir
        self._api = api

    async def pods(self, *, namespace: str, app: str) -> list[str]:
        """Names of the app's pods (by shipit's app label), sorted."""
        listing = await client.CoreV1Api(self._api).list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/name={app}"
        )
        return sorted(p.metadata.name for p in listing.items)

    async def write(
        self, *, namespace: str, pod: str, container: str, lines: Sequence[str], partial_last: bool = False
    ) -> None:
        """Append `lines` to the container's log; the first write also makes kwok serve the file and waits
        until the API server answers with it. `partial_last`: the last line has no end of line yet (a CRI
        "P" record, as a runtime writes a line still being printed)."""
        path = controlplane.pod_log_path(self._dir, namespace=namespace, pod=pod, container=container)
        first = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [controlplane.cri_log_line(line) for line in lines]
        if partial_last and records:
            records[-1] = records[-1].replace(" stdout F ", " stdout P ", 1).removesuffix("\n") + "\n"
        with path.open("a") as f:
            f.write("".join(records))
        if not first:
            return
        body = controlplane.logs_object(self._dir, namespace=namespace, pod=pod, container=container)
        try:
            await client.CustomObjectsApi(self._api).create_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", namespace, "logs", body
            )
        except ApiException as e:
            if e.status != 409:
                raise
        # kwok learns of the Logs object through a watch: until then the log is "not found".
        core = client.CoreV1Api(self._api)
        delay = 0.02
        for _ in range(100):
            try:
                await core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=1)
                return
            except ApiException as e:
                if e.status not in (400, 404, 500):
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        raise AssertionError(f"kwok never served the log of {namespace}/{pod}/{container}")


@pytest.fixture
async def pod_logs(kube_env: KubeEnv) -> AsyncIterator[PodLogs]:
    if kube_env.pod_logs_dir is None:
        pytest.skip("needs the shipit test control plane (kwok serves pod logs from files), not this cluster")
    async with api_client(kube_env) as api:
        yield PodLogs(logs_dir=kube_env.pod_logs_dir, api=api)
