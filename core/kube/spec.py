"""What the Kubernetes adapter needs to know about one app at one revision.

A plain, frozen value built by core from a revision snapshot (plus decrypted
secrets) so that rendering stays a pure function and the adapter never sees
ORM objects.  `secret_data` and `pull_secret` hold plaintext: never log a WorkloadSpec
or a rendered Secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Resources:
    cpu_request: str = "100m"
    cpu_limit: str = "500m"
    memory_request: str = "128Mi"
    memory_limit: str = "256Mi"


@dataclass(frozen=True, kw_only=True)
class HealthCheck:
    """One HTTP GET probe used for both liveness and readiness."""

    path: str
    port: int | None = None  # None: the container port
    initial_delay_seconds: int = 0
    period_seconds: int = 10


@dataclass(frozen=True, kw_only=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    cpu_target_percent: int
    # spec.behavior.scaleDown.stabilizationWindowSeconds; None renders no `behavior` (Kubernetes' 300 s).
    scale_down_window_seconds: int | None = None


@dataclass(frozen=True, kw_only=True)
class IngressSpec:
    host: str
    ingress_class: str = "nginx"
    # cert-manager ClusterIssuer; None renders no TLS section.
    tls_cluster_issuer: str | None = None


@dataclass(frozen=True, kw_only=True)
class PullSecret:
    """Credentials the kubelet uses to pull the app's image (a kubernetes.io/dockerconfigjson Secret)."""

    server: str  # the `auths` key: the registry host (Docker Hub: https://index.docker.io/v1/)
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    app: str  # DNS-1123 label; names the Deployment, Service, HPA, Ingress
    project: str  # the owning project's name: labels every object so shipit only touches its own
    namespace: str
    revision: int
    image: str
    replicas: int = 1
    port: int = 8080
    env: dict[str, str] = field(default_factory=dict)
    secret_data: dict[str, str] = field(default_factory=dict, repr=False)
    secret_checksum: str = ""
    resources: Resources = field(default_factory=Resources)
    health: HealthCheck | None = None
    autoscaling: Autoscaling | None = None
    ingress: IngressSpec | None = None
    progress_deadline_seconds: int = 600
    instance: str = ""  # app.kubernetes.io/instance; defaults to app
    extra_labels: dict[str, str] = field(default_factory=dict)
    pull_secret: PullSecret | None = field(default=None, repr=False)
    # Run once per deploy as a Job with this image, env and secrets before the Deployment changes.
    release_command: str | None = None

    @property
    def secret_name(self) -> str:
        return f"{self.app}-secrets"

    @property
    def pull_secret_name(self) -> str:
        return f"{self.app}-registry"
