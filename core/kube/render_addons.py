"""Add-on (managed database) -> Kubernetes manifests, and its state from what the cluster reports.

Pure functions, like core.kube.render's: what shipit sends for an add-on is unit-tested without a
cluster, and a retried provisioning job renders the same objects (server-side apply is a no-op).

An add-on is three objects in its app's namespace, all carrying shipit's ownership labels for the
app plus `shipit.dev/addon`: a Secret holding the generated password, a headless Service, and a
one-replica StatefulSet whose storage comes from a volumeClaimTemplate (so the PersistentVolumeClaim
outlives the StatefulSet: deleting the add-on keeps the data unless asked not to).  The password
reaches the container through a secretKeyRef, never as a literal in the StatefulSet's spec.

The rendered Secret carries the password (base64): never log it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

from core.kube import render
from core.kube.objects import as_int, as_str, dig

LABEL_ADDON = "shipit.dev/addon"
PASSWORD_KEY = "password"
DATA_VOLUME = "data"
# The StatefulSet controller names the pod's claim "<template>-<statefulset>-<ordinal>".
MAX_NAME = 52  # the controller-revision-hash label (name + "-" + 10 characters) must fit in 63

POSTGRES = "postgres"
REDIS = "redis"
KINDS = (POSTGRES, REDIS)

# The variable the app gets, per kind (Heroku's names).
URL_KEYS = {POSTGRES: "DATABASE_URL", REDIS: "REDIS_URL"}
PORTS = {POSTGRES: 5432, REDIS: 6379}
# Both official images run their server as uid/gid 999 (the image's postgres / redis user).
IMAGE_USER = 999
POSTGRES_USER = "app"
POSTGRES_DB = "app"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    storage: str


PLANS: dict[str, Plan] = {
    "small": Plan(cpu_request="100m", cpu_limit="500m", memory_request="256Mi", memory_limit="512Mi", storage="1Gi"),
    "medium": Plan(cpu_request="250m", cpu_limit="1", memory_request="512Mi", memory_limit="1Gi", storage="10Gi"),
}  # fmt: skip
DEFAULT_PLAN = "small"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AddonSpec:
    kind: str  # postgres | redis
    plan: str
    project: str
    app: str
    namespace: str
    image: str
    password: str = dataclasses.field(repr=False)
    storage_class: str | None = None

    @property
    def name(self) -> str:
        return object_name(app=self.app, kind=self.kind)


def object_name(*, app: str, kind: str) -> str:
    """`<app>-<kind>`; a long app name is cut and made unique again with a hash of the whole."""
    name = f"{app}-{kind}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(app.encode()).hexdigest()[:6]
    keep = MAX_NAME - len(kind) - len(digest) - 2
    return f"{app[:keep].rstrip('-')}-{digest}-{kind}"


def claim_name(*, app: str, kind: str) -> str:
    """The PersistentVolumeClaim the StatefulSet controller makes for the add-on's one pod."""
    return f"{DATA_VOLUME}-{object_name(app=app, kind=kind)}-0"


def labels(spec: AddonSpec) -> dict[str, str]:
    return {
        render.LABEL_NAME: spec.name,
        render.LABEL_INSTANCE: spec.name,
        **render.ownership_labels(project=spec.project, app=spec.app),
        LABEL_ADDON: spec.kind,
    }


def selector(spec: AddonSpec) -> dict[str, str]:
    return {render.LABEL_NAME: spec.name, LABEL_ADDON: spec.kind}


def connection_url(spec: AddonSpec) -> str:
    """What the app gets as DATABASE_URL / REDIS_URL: holds the password, treat as a secret."""
    host = f"{spec.name}.{spec.namespace}.svc"
    port = PORTS[spec.kind]
    if spec.kind == POSTGRES:
        return f"postgresql://{POSTGRES_USER}:{spec.password}@{host}:{port}/{POSTGRES_DB}"
    return f"redis://:{spec.password}@{host}:{port}/0"


def _metadata(spec: AddonSpec) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)}


def render_secret(spec: AddonSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec),
        "type": "Opaque",
        "data": {PASSWORD_KEY: base64.b64encode(spec.password.encode()).decode("ascii")},
    }


def render_service(spec: AddonSpec) -> dict[str, Any]:
    """Headless: the StatefulSet's governing Service; its name resolves to the ready pod."""
    port = PORTS[spec.kind]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "clusterIP": "None",
            "selector": selector(spec),
            "ports": [{"name": spec.kind, "port": port, "targetPort": spec.kind, "protocol": "TCP"}],
        },
    }


def _password_env(spec: AddonSpec, name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": spec.name, "key": PASSWORD_KEY}}}


def _container(spec: AddonSpec) -> dict[str, Any]:
    port = PORTS[spec.kind]
    if spec.kind == POSTGRES:
        mount = "/var/lib/postgresql/data"
        env = [
            _password_env(spec, "POSTGRES_PASSWORD"),
            {"name": "POSTGRES_USER", "value": POSTGRES_USER},
            {"name": "POSTGRES_DB", "value": POSTGRES_DB},
            # A subdirectory: the volume's root may hold lost+found, which initdb refuses.
            {"name": "PGDATA", "value": f"{mount}/pgdata"},
        ]
        probe_cmd = ["pg_isready", "-h", "127.0.0.1", "-U", POSTGRES_USER, "-d", POSTGRES_DB]
        command: dict[str, Any] = {}
    else:
        mount = "/data"
        env = [_password_env(spec, "REDIS_PASSWORD")]
        # $(VAR) is expanded by the kubelet: the password stays out of the spec.
        command = {"args": ["redis-server", "--appendonly", "yes", "--requirepass", "$(REDIS_PASSWORD)"]}
        probe_cmd = ["sh", "-c", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG']
    plan = PLANS[spec.plan]
    return {
        "name": spec.kind,
        "image": spec.image,
        **command,
        "env": env,
        "ports": [{"name": spec.kind, "containerPort": port, "protocol": "TCP"}],
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": mount}],
        "resources": {
            "requests": {"cpu": plan.cpu_request, "memory": plan.memory_request},
            "limits": {"cpu": plan.cpu_limit, "memory": plan.memory_limit},
        },
        "readinessProbe": {
            "exec": {"command": probe_cmd},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
        },
        # Pod Security "restricted": non-root, no escalation, no capabilities, the runtime's seccomp.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER,
            "runAsGroup": IMAGE_USER,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def render_statefulset(spec: AddonSpec) -> dict[str, Any]:
    plan = PLANS[spec.plan]
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": plan.storage}},
    }
    if spec.storage_class:
        claim_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(spec),
        "spec": {
            "serviceName": spec.name,
            "replicas": 1,
            "selector": {"matchLabels": selector(spec)},
            # The claims stay when the StatefulSet goes (the default, said out loud): data outlives it.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": labels(spec)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": IMAGE_USER,
                        "runAsGroup": IMAGE_USER,
                        "fsGroup": IMAGE_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_container(spec)],
                },
            },
            "volumeClaimTemplates": [
                {
                    # The claim carries the ownership labels too, so a destroy may prove it ours.
                    "metadata": {"name": DATA_VOLUME, "labels": labels(spec)},
                    "spec": claim_spec,
                }
            ],
        },
    }


def render_addon(spec: AddonSpec) -> list[dict[str, Any]]:
    """In apply order: the Secret the pod reads, the governing Service, then the StatefulSet."""
    return [render_secret(spec), render_service(spec), render_statefulset(spec)]


def owned_objects(*, app: str, kind: str) -> list[tuple[str, str]]:
    """(kind, name) of what provisioning creates, in delete order (the workload first); no claims."""
    name = object_name(app=app, kind=kind)
    return [("StatefulSet", name), ("Service", name), ("Secret", name)]


# ---------------------------------------------------------------------------
# State, read from the StatefulSet (and its claim when the pod is not ready)

PROVISIONING = "provisioning"
READY = "ready"
FAILED = "failed"
DELETING = "deleting"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observed:
    state: str  # provisioning | ready | missing
    detail: str = ""


def observe(statefulset: dict[str, Any] | None, claim: dict[str, Any] | None) -> Observed:
    """What the cluster says about an add-on: ready only when its StatefulSet has observed its
    current generation and its one pod is ready; otherwise why not, as far as the objects tell."""
    if statefulset is None:
        return Observed(state="missing", detail="its StatefulSet does not exist")
    generation = as_int(dig(statefulset, "metadata", "generation"))
    observed = as_int(dig(statefulset, "status", "observedGeneration"))
    ready = as_int(dig(statefulset, "status", "readyReplicas"))
    if observed >= generation and ready >= 1:
        return Observed(state=READY)
    if claim is None:
        return Observed(state=PROVISIONING, detail="waiting for its PersistentVolumeClaim to be created")
    phase = as_str(dig(claim, "status", "phase"))
    if phase != "Bound":
        name = as_str(dig(claim, "metadata", "name"))
        return Observed(
            state=PROVISIONING,
            detail=f"PersistentVolumeClaim {name} is {phase or 'Pending'}: no volume bound to it yet",
        )
    current = as_int(dig(statefulset, "status", "currentReplicas"))
    return Observed(state=PROVISIONING, detail=f"storage bound; {ready}/1 pod ready ({current} created)")
