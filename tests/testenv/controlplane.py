"""A throwaway Kubernetes control plane for tests and for trying shipit by hand.

shipit's job is talking to Kubernetes, so its tests talk to a real API server (validation, server-side
apply, the deployment/replicaset/HPA/namespace controllers) instead of a mocked client. There is no
container engine here, so the processes run directly: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (built by scripts/testenv-build) and kwok, which plays the kubelet for one fake node so
pods get scheduled and become Ready without running anything. As kwokctl's binary runtime does,
metrics-server serves the Metrics API (metrics.k8s.io) through the apiserver's aggregation layer,
scraping the resource metrics kwok emulates for its node: every container "uses" POD_CPU_USAGE and
POD_MEMORY_USAGE unless its pod's kwok.x-k8s.io/usage-cpu / usage-memory annotations say otherwise.
Container logs are files: kwok serves a pod's container log (tail, follow) from the file a kwok `Logs`
object names; the `pod_logs` fixture (plugin.PodLogs) appends CRI-format lines to such a file under the
workdir and creates the object.

Everything lives in a temporary directory outside the repository and every process runs in its own
process group, killed on stop(), at interpreter exit and (on Linux) when this process dies.

By hand: ``python -m tests.testenv.controlplane up`` prints ``export KUBECONFIG=...``; Ctrl-C stops it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

K8S_VERSION = "v1.36.3"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "metrics-server")
NODE_NAME = "kwok-node-0"
# kwok manages only nodes carrying this annotation, so it never touches a real node.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Same expression as the selector of stages/pod-crashloop.yaml: a container whose image tag starts with
# "fail-". kwok's pod-ready stage gets it as DoesNotExist so the two stages never both match a pod.
FAIL_IMAGE_KEY = '.spec.containers.[] | select( .image | test(":fail-[^/]*$") ) | .name'
SLOW_READY_SECONDS = 8
SLOW_READY_EXPRESSION = (
    f'if ([.spec.containers[] | select(.image | test(":slow-[^/]*$"))] | length) > 0 '
    f'then "{SLOW_READY_SECONDS}s" else "0s" end'
)
OWN_STAGES_DIR = Path(__file__).resolve().parent / "stages"
# Upstream kwok stage files copied by scripts/testenv-build, in the order they are passed to kwok.
UPSTREAM_STAGES = (
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
)
# kwok's resource-metrics emulation copied by scripts/testenv-build (kustomize/metrics of the same module).
UPSTREAM_METRICS = ("metrics-resource.yaml", "usage-from-annotation.yaml")
# What each container of a kwok pod uses, per container, when its pod has no usage annotations.
POD_CPU_USAGE = "20m"
POD_MEMORY_USAGE = "32Mi"
# Upstream's defaults in usage-from-annotation.yaml, replaced by the two above.
_UPSTREAM_USAGE_DEFAULTS = {"cpu": 'Quantity("1m")', "memory": 'Quantity("1Mi")'}
METRICS_API = "v1beta1.metrics.k8s.io"
# The smallest resolution metrics-server accepts; a new pod has metrics after one or two scrapes.
METRIC_RESOLUTION = "10s"
START_TIMEOUT_S = 120.0
WORKDIR_PREFIX = "shipit-testenv-"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message names the component and its last log lines."""


@dataclass(frozen=True)
class KubeEnv:
    """How to reach a cluster: what the `kube_env` fixture hands to tests."""

    kubeconfig_path: Path
    kubeconfig: str
    server: str
    # Where the pod_logs fixture puts container log files kwok serves; None on a cluster not started here.
    pod_logs_dir: Path | None = None


# kwok's Logs kind (kwok.x-k8s.io/v1alpha1): which file is a pod's container log. Only what kwok's
# informer needs, so no manifest has to be copied from the module: a namespaced kind, fields kept as sent.
LOGS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "logs.kwok.x-k8s.io"},
    "spec": {
        "group": "kwok.x-k8s.io",
        "names": {"kind": "Logs", "listKind": "LogsList", "plural": "logs", "singular": "logs"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def cri_log_line(line: str, *, at: datetime.datetime | None = None, stream: str = "stdout") -> str:
    """One line in the CRI log format kwok reads (as the kubelet does): time, stream, F(ull), text."""
    when = (at or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    return f"{when.strftime('%Y-%m-%dT%H:%M:%S.%f')}000Z {stream} F {line}\n"


def pod_log_path(logs_dir: Path, *, namespace: str, pod: str, container: str) -> Path:
    return logs_dir / namespace / pod / f"{container}.log"


def logs_object(logs_dir: Path, *, namespace: str, pod: str, container: str) -> dict[str, Any]:
    """The kwok Logs object that makes kwok serve pod_log_path() as the container's log."""
    path = pod_log_path(logs_dir, namespace=namespace, pod=pod, container=container)
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {"logs": [{"containers": [container], "logsFile": str(path), "follow": True}]},
    }


def cache_root() -> Path:
    override = os.environ.get("SHIPIT_TESTENV_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "shipit" / "testenv"


def version_dir() -> Path:
    return cache_root() / f"k8s-{K8S_VERSION.removeprefix('v')}"


def bin_dir() -> Path:
    return version_dir() / "bin"


def upstream_stages_dir() -> Path:
    return version_dir() / "stages"


def upstream_metrics_dir() -> Path:
    return version_dir() / "metrics"


def missing_files() -> list[str]:
    """Binaries, stage and metrics files that scripts/testenv-build should have put in the cache."""
    missing = [name for name in BINARIES if not os.access(bin_dir() / name, os.X_OK)]
    missing += [f"stages/{name}" for name in UPSTREAM_STAGES if not (upstream_stages_dir() / name).is_file()]
    missing += [
        f"metrics/{name}" for name in UPSTREAM_METRICS if not (upstream_metrics_dir() / name).is_file()
    ]
    return missing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pids_using(path: Path) -> list[int]:
    """Processes whose command line mentions `path` (every component gets its workdir in a flag)."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def remove_stale_workdirs() -> list[Path]:
    """Clean up after control planes whose owner was SIGKILLed (no atexit ran): kill leftovers, drop files."""
    removed = []
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        for pid in pids_using(workdir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates ---------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    # EC keys: generated in microseconds where RSA takes tens of milliseconds each.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class _Pki:
    ca_cert: bytes
    ca_key: bytes
    serving_cert: bytes
    serving_key: bytes
    admin_cert: bytes
    admin_key: bytes
    sa_public: bytes
    sa_private: bytes
    # The aggregation layer: the apiserver proxies metrics.k8s.io to metrics-server with this client
    # certificate (from its own CA, as kubeadm does) and the X-Remote-User/Group headers.
    front_proxy_ca_cert: bytes
    front_proxy_client_cert: bytes
    front_proxy_client_key: bytes
    # metrics-server's serving certificate (checked by the apiserver through the APIService's caBundle)
    # and kwok's, which plays the kubelet's serving certificate for metrics-server's scrapes.
    metrics_server_cert: bytes
    metrics_server_key: bytes
    kubelet_cert: bytes
    kubelet_key: bytes


def make_ca(
    *, common_name: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def _make_pki() -> _Pki:
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
    ca, ca_key = make_ca(common_name="shipit-testenv-ca", not_before=not_before, not_after=not_after)
    proxy_ca, proxy_ca_key = make_ca(
        common_name="shipit-testenv-front-proxy-ca", not_before=not_before, not_after=not_after
    )

    def leaf(
        *,
        key: ec.EllipticCurvePrivateKey,
        name: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[Any],
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] = (ca, ca_key),
    ) -> x509.Certificate:
        issuer_cert, issuer_key = issuer
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    serving_key = _key()
    serving = leaf(
        key=serving_key,
        name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ],
    )
    admin_key = _key()
    admin = leaf(
        key=admin_key,
        name=x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "shipit-testenv-admin"),
            ]
        ),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=[],
    )
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    proxy_client_key = _key()
    proxy_client = leaf(
        key=proxy_client_key,
        name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-client")]),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=[],
        issuer=(proxy_ca, proxy_ca_key),
    )
    metrics_key = _key()
    metrics = leaf(
        key=metrics_key,
        name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics-server")]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        # The aggregator checks the name <service>.<namespace>.svc, whatever address it dials.
        sans=[x509.DNSName("metrics-server.kube-system.svc"), x509.DNSName("localhost"), loopback],
    )
    kubelet_key = _key()
    kubelet = leaf(
        key=kubelet_key,
        name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_NAME)]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName(NODE_NAME), loopback],
    )
    sa_key = _key()
    return _Pki(
        ca_cert=_cert_pem(ca),
        ca_key=_key_pem(ca_key),
        serving_cert=_cert_pem(serving),
        serving_key=_key_pem(serving_key),
        admin_cert=_cert_pem(admin),
        admin_key=_key_pem(admin_key),
        sa_public=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        sa_private=_key_pem(sa_key),
        front_proxy_ca_cert=_cert_pem(proxy_ca),
        front_proxy_client_cert=_cert_pem(proxy_client),
        front_proxy_client_key=_key_pem(proxy_client_key),
        metrics_server_cert=_cert_pem(metrics),
        metrics_server_key=_key_pem(metrics_key),
        kubelet_cert=_cert_pem(kubelet),
        kubelet_key=_key_pem(kubelet_key),
    )


def _kubeconfig(*, server: str, pki: _Pki) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    # Certificates are embedded so the text alone is a complete kubeconfig (shipit stores it encrypted).
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "shipit-testenv",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "shipit-testenv-admin",
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "shipit-testenv",
                "context": {"cluster": "shipit-testenv", "user": "shipit-testenv-admin"},
            }
        ],
        "current-context": "shipit-testenv",
    }
    return yaml.safe_dump(doc, sort_keys=False)


# --- processes ------------------------------------------------------------------------------------------


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process is SIGKILLed, the kernel kills the
    # component too, so no orphaned apiserver survives a hard kill. The signal fires when the *thread*
    # that forked exits, hence only used when starting from the main thread (see _spawn).
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok + metrics-server on loopback
    ports."""

    def __init__(
        self, *, binaries: Path | None = None, keep_workdir: bool = False, metrics_server: bool = True
    ) -> None:
        self._bin = binaries or bin_dir()
        self._keep = keep_workdir
        # False: a cluster without the Metrics API, as many are (what shipit says then is tested).
        self._metrics_server = metrics_server
        self._procs: list[_Proc] = []
        self._workdir: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        self._api_port = 0
        self.env: KubeEnv | None = None
        self.startup_seconds: float | None = None
        # Seconds from start() until each readiness check passed, for the start-up figures in the docs.
        self.milestones: dict[str, float] = {}
        self._began = 0.0

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    def __enter__(self) -> KubeEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> KubeEnv:
        if self.env is not None:
            return self.env
        needed = [b for b in BINARIES if self._metrics_server or b != "metrics-server"]
        missing = [name for name in needed if not os.access(self._bin / name, os.X_OK)]
        if missing:
            raise ControlPlaneError(f"missing binaries in {self._bin}: {', '.join(missing)}")
        began = self._began = time.monotonic()
        atexit.register(self.stop)
        try:
            self.env = self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self.env

    def stop(self) -> None:
        """Kill every component's process group; idempotent, safe from atexit and signal handlers."""
        procs, self._procs = self._procs, []
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2  # throwaway state: no point in a long graceful shutdown
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            # The group may hold children of the component even after the leader exited.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        workdir, self._workdir = self._workdir, None
        if workdir is not None and not self._keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir is not None:
            # Kept on purpose (logs to read): the stale-workdir sweep only removes dirs with an owner.pid.
            (workdir / "owner.pid").unlink(missing_ok=True)
        self.env = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    # -- start-up, in dependency order but overlapping where the components retry on their own ----------

    def _start(self) -> KubeEnv:
        remove_stale_workdirs()
        work = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self._workdir = work
        (work / "owner.pid").write_text(str(os.getpid()))
        pki = _make_pki()
        files = {
            "ca.crt": pki.ca_cert,
            "ca.key": pki.ca_key,
            "apiserver.crt": pki.serving_cert,
            "apiserver.key": pki.serving_key,
            "admin.crt": pki.admin_cert,
            "admin.key": pki.admin_key,
            "sa.pub": pki.sa_public,
            "sa.key": pki.sa_private,
            "front-proxy-ca.crt": pki.front_proxy_ca_cert,
            "front-proxy-client.crt": pki.front_proxy_client_cert,
            "front-proxy-client.key": pki.front_proxy_client_key,
            "metrics-server.crt": pki.metrics_server_cert,
            "metrics-server.key": pki.metrics_server_key,
            "kubelet.crt": pki.kubelet_cert,
            "kubelet.key": pki.kubelet_key,
        }
        pki_dir = work / "pki"
        pki_dir.mkdir(mode=0o700)
        for name, data in files.items():
            (pki_dir / name).write_bytes(data)
        p = {name: str(pki_dir / name) for name in files}

        etcd_port, peer_port = free_port(), free_port()
        self._api_port = api_port = free_port()
        kcm_port, sched_port = free_port(), free_port()
        kwok_port, metrics_port = free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig_text = _kubeconfig(server=server, pki=pki)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text)
        kubeconfig.chmod(0o600)

        ctx = ssl.create_default_context(cafile=p["ca.crt"])
        ctx.load_cert_chain(p["admin.crt"], p["admin.key"])
        self._ssl = ctx

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                "--name=shipit-testenv",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=shipit-testenv={peer_url}",
                "--unsafe-no-fsync=true",  # throwaway data: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ],
        )
        # The apiserver waits for etcd by itself, so both start together.
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={work / 'apiserver'}",
                f"--tls-cert-file={p['apiserver.crt']}",
                f"--tls-private-key-file={p['apiserver.key']}",
                f"--client-ca-file={p['ca.crt']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p['sa.pub']}",
                f"--service-account-signing-key-file={p['sa.key']}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # A loopback advertise address is not a valid Endpoints IP; nothing in-cluster calls it.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                # The aggregation layer, for metrics.k8s.io. Aggregator routing stays off: it would dial
                # the Service's endpoints, and metrics-server's is an ExternalName Service (as kwokctl's).
                f"--requestheader-client-ca-file={p['front-proxy-ca.crt']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p['front-proxy-client.crt']}",
                f"--proxy-client-key-file={p['front-proxy-client.key']}",
                # pods/log is proxied to the node's kubelet port, kwok's server: check its certificate as a
                # hardened cluster does, rather than trusting whatever answers there.
                f"--kubelet-certificate-authority={p['ca.crt']}",
            ],
        )
        # The other components wait for the apiserver on their own, so they start as soon as it serves at
        # all and their start-up overlaps its ~2 s of RBAC bootstrapping (they use system:masters anyway).
        self._wait("kube-apiserver serving", lambda: self._get_status("/version") == 200)
        # Before kwok starts, so its Logs informer lists at once instead of backing off on a 404.
        self._wait("CustomResourceDefinition logs.kwok.x-k8s.io created", self._create_logs_crd)

        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                "--controllers=*",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={work / 'kube-controller-manager'}",
                f"--service-account-private-key-file={p['sa.key']}",
                f"--root-ca-file={p['ca.crt']}",
                f"--cluster-signing-cert-file={p['ca.crt']}",
                f"--cluster-signing-key-file={p['ca.key']}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                # Faster than the 15 s default so HPA status shows up while a test is still looking.
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={work / 'kube-scheduler'}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
            ],
        )
        stage_files = self._stage_files(work)
        kwok_home = work / "kwok-home"
        kwok_home.mkdir()
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
                "--cidr=10.64.0.0/16",
                # The node's InternalIP and kubelet port are where metrics-server scrapes it: kwok's server.
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
                f"--tls-cert-file={p['kubelet.crt']}",
                f"--tls-private-key-file={p['kubelet.key']}",
                "--node-lease-duration-seconds=40",
                # Container logs come from the files kwok Logs objects name (see plugin.PodLogs).
                "--enable-crds=Logs",
                *[f"--config={f}" for f in [*stage_files, *self._metrics_files(work)]],
            ],
            # kwok also loads ~/.kwok/kwok.yaml if present: keep a developer's own kwok setup out.
            env={"HOME": str(kwok_home)},
        )
        # Started before the APIService exists: it serves discovery (what makes the APIService Available)
        # at once and scrapes the node every METRIC_RESOLUTION.
        if self._metrics_server:
            self._spawn_metrics_server(kubeconfig=kubeconfig, port=metrics_port, p=p)
        self._wait(f"node {NODE_NAME} created", self._create_node)
        if self._metrics_server:
            self._wait(f"APIService {METRICS_API} created", lambda: self.register_metrics_api(metrics_port))
        self._wait("kube-apiserver /readyz", lambda: self._get_status("/readyz") == 200)
        self._wait("kube-controller-manager /healthz", lambda: self._healthz(kcm_port))
        self._wait("kube-scheduler /healthz", lambda: self._healthz(sched_port))
        self._wait(f"node {NODE_NAME} Ready (kwok)", self._node_ready)
        # The serviceaccount controller gives every namespace its "default" account; pods need it.
        self._wait(
            "serviceaccount default/default (kube-controller-manager)",
            lambda: self._get_status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
        )
        # Until it is Available, discovery of metrics.k8s.io fails, and with it the namespace controller:
        # a deleted namespace would stay Terminating. So nothing runs before it.
        if self._metrics_server:
            self._wait(f"APIService {METRICS_API} Available (metrics-server)", self._metrics_api_available)
        pod_logs_dir = work / "pod-logs"
        pod_logs_dir.mkdir()
        return KubeEnv(
            kubeconfig_path=kubeconfig, kubeconfig=kubeconfig_text, server=server, pod_logs_dir=pod_logs_dir
        )

    def _spawn_metrics_server(self, *, kubeconfig: Path, port: int, p: dict[str, str]) -> None:
        self._spawn(
            "metrics-server",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={p['metrics-server.crt']}",
                f"--tls-private-key-file={p['metrics-server.key']}",
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-use-node-status-port",
                f"--kubelet-certificate-authority={p['ca.crt']}",
                f"--metric-resolution={METRIC_RESOLUTION}",
                "--kubelet-request-timeout=5s",  # must stay under 90 % of the resolution
                "--profiling=false",
            ],
        )

    def _stage_files(self, work: Path) -> list[Path]:
        src = upstream_stages_dir()
        out = work / "stages"
        out.mkdir()
        files: list[Path] = []
        for name in UPSTREAM_STAGES:
            path = src / name
            if not path.is_file():
                raise ControlPlaneError(f"missing kwok stage {path}: run scripts/testenv-build")
            if name == "pod-ready.yaml":
                doc = yaml.safe_load(path.read_text())
                doc["spec"]["selector"]["matchExpressions"].append(
                    {"key": FAIL_IMAGE_KEY, "operator": "DoesNotExist"}
                )
                # A tag starting with "slow-" takes SLOW_READY_SECONDS to become ready, so tests can act
                # while a rollout is being watched (the crash-resume test kills shipit then).
                doc["spec"]["delay"] = {
                    "durationMilliseconds": 0,
                    "durationFrom": {"jq": {"expression": SLOW_READY_EXPRESSION}},
                }
                path = out / name
                path.write_text(yaml.safe_dump(doc, sort_keys=False))
            files.append(path)
        files.extend(sorted(OWN_STAGES_DIR.glob("*.yaml")))
        return files

    def _metrics_files(self, work: Path) -> list[Path]:
        src = upstream_metrics_dir()
        out = work / "metrics"
        out.mkdir()
        files: list[Path] = []
        for name in UPSTREAM_METRICS:
            path = src / name
            if not path.is_file():
                raise ControlPlaneError(f"missing kwok metrics file {path}: run scripts/testenv-build")
            if name == "usage-from-annotation.yaml":
                text = path.read_text()
                for resource, default in _UPSTREAM_USAGE_DEFAULTS.items():
                    if default not in text:
                        raise ControlPlaneError(f"{path}: no default {default} for {resource} to replace")
                text = text.replace(_UPSTREAM_USAGE_DEFAULTS["cpu"], f'Quantity("{POD_CPU_USAGE}")')
                text = text.replace(_UPSTREAM_USAGE_DEFAULTS["memory"], f'Quantity("{POD_MEMORY_USAGE}")')
                path = out / name
                path.write_text(text)
            files.append(path)
        return files

    def register_metrics_api(self, port: int) -> bool:
        """The Service and APIService kwokctl creates from metrics-server's manifest, for a local process:
        an ExternalName Service pointing at loopback, the APIService at its port.  Public for tests that
        register a Metrics API nothing serves (on a control plane of their own: discovery breaks)."""
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        }
        api_service = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": METRICS_API, "labels": {"k8s-app": "metrics-server"}},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": port},
                "caBundle": base64.b64encode(self._file("pki/ca.crt")).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }
        for path, body in (
            ("/api/v1/namespaces/kube-system/services", service),
            ("/apis/apiregistration.k8s.io/v1/apiservices", api_service),
        ):
            status, resp = self._request("POST", path, body)
            if status in (400, 422):
                raise ControlPlaneError(f"creating {body['kind']} failed: HTTP {status}: {resp}")
            if status not in (200, 201, 409):
                return False  # kube-system or RBAC not bootstrapped yet
        return True

    def _metrics_api_available(self) -> bool:
        status, api_service = self._request(
            "GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{METRICS_API}"
        )
        if status != 200 or not isinstance(api_service, dict):
            return False
        conditions = api_service.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)

    def _file(self, relative: str) -> bytes:
        return (self._workdir_required() / relative).read_bytes()

    def _spawn(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> None:
        log = self._workdir_required() / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(self._bin / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills the component and its children
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
                env={**os.environ, **(env or {})},
            )
        self._procs.append(_Proc(name=name, popen=popen, log=log))

    def _workdir_required(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("control plane is not started")
        return self._workdir

    def _wait(self, what: str, check: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            for proc in self._procs:
                code = proc.popen.poll()
                if code is not None:
                    raise ControlPlaneError(
                        f"{proc.name} exited with code {code} while waiting for {what}; "
                        f"last lines of {proc.log}:\n{proc.tail()}"
                    )
            try:
                if check():
                    self.milestones[what] = round(time.monotonic() - self._began, 2)
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}:\n{p.tail(10)}" for p in self._procs)
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # -- tiny HTTPS client: the starter must not depend on the code under test ---------------------------

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self._api_port, context=self._ssl, timeout=10)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def _get_status(self, path: str) -> int:
        return self._request("GET", path)[0]

    def _healthz(self, port: int) -> bool:
        # Components serve their own self-signed certificate; only liveness is checked here.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _create_node(self) -> bool:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {
                    KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                    # metrics-server scrapes this path instead of the kubelet's /metrics/resource: where
                    # kwok serves the node's emulated resource metrics (metrics-resource.yaml).
                    "metrics.k8s.io/resource-metrics-path": f"/metrics/nodes/{NODE_NAME}/metrics/resource",
                },
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            },
        }
        status, resp = self._request("POST", "/api/v1/nodes", node)
        if status in (200, 201, 409):
            return True
        if status in (400, 422):
            raise ControlPlaneError(f"creating node {NODE_NAME} failed: HTTP {status}: {resp}")
        return False  # the apiserver is still starting (403 before RBAC is bootstrapped, 5xx, ...)

    def _create_logs_crd(self) -> bool:
        status, resp = self._request(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", LOGS_CRD
        )
        if status in (400, 422):
            raise ControlPlaneError(f"creating the Logs CRD failed: HTTP {status}: {resp}")
        return status in (200, 201, 409)

    def _node_ready(self) -> bool:
        status, node = self._request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200 or not isinstance(node, dict):
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@contextlib.contextmanager
def running(*, keep_workdir: bool = False) -> Iterator[KubeEnv]:
    cp = ControlPlane(keep_workdir=keep_workdir)
    try:
        yield cp.start()
    finally:
        cp.stop()


def _up() -> int:
    out = sys.stdout
    missing = missing_files()
    if missing:
        out.write(f"missing in {version_dir()}: {', '.join(missing)}; run scripts/testenv-build first\n")
        return 2
    cp = ControlPlane()

    def request_stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    try:
        out.write(f"starting the test control plane ({K8S_VERSION}) from {bin_dir()} ...\n")
        out.flush()
        env = cp.start()
        out.write(
            f"ready in {cp.startup_seconds:.1f}s: API server {env.server}, logs in {cp.workdir}\n"
            f"kubeconfig: {env.kubeconfig_path}\n\n"
            f"    export KUBECONFIG={env.kubeconfig_path}\n\n"
            "Ctrl-C stops it and removes everything.\n"
        )
        out.flush()
        while True:
            for proc in cp._procs:
                code = proc.popen.poll()
                if code is not None:
                    out.write(f"{proc.name} exited with code {code}:\n{proc.tail()}\n")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        out.write("\nstopping ...\n")
        return 0
    except ControlPlaneError as e:
        out.write(f"{e}\n")
        return 1
    finally:
        cp.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["up"]:
        return _up()
    sys.stderr.write("usage: python -m tests.testenv.controlplane up\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
