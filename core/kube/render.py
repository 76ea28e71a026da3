"""Revision -> Kubernetes manifests, as pure functions.

Kept free of I/O so what we send to a cluster can be unit-tested without one,
and so a retried job renders byte-for-byte the same objects (server-side apply
is then a no-op).  The adapter (core.kube.client) does the talking.

The rendered Secrets carry secret values (base64): never log manifests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from core.kube import spec as spec_mod

FIELD_MANAGER = "shipit"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_REVISION = "shipit.dev/revision"
# Ownership: shipit applies over, and deletes, only objects carrying managed-by plus these two
# with its own project and app (see core.kube.ownership.ownership_problem).
LABEL_PROJECT = "shipit.dev/project"
LABEL_APP = "shipit.dev/app"
ANNOTATION_CHECKSUM = "shipit.dev/config-checksum"
ANNOTATION_CLUSTER_ISSUER = "cert-manager.io/cluster-issuer"

PORT_NAME = "http"
SERVICE_PORT = 80


def ownership_labels(*, project: str, app: str | None = None) -> dict[str, str]:
    """What marks an object as shipit's for `project` (and `app`); namespaces carry no app."""
    owned = {LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_PROJECT: project}
    if app is not None:
        owned[LABEL_APP] = app
    return owned


def labels(spec: spec_mod.WorkloadSpec) -> dict[str, str]:
    """Labels carried by every object we render (ours win over extra_labels)."""
    return {
        **spec.extra_labels,
        LABEL_NAME: spec.app,
        LABEL_INSTANCE: spec.instance or spec.app,
        **ownership_labels(project=spec.project, app=spec.app),
        LABEL_REVISION: str(spec.revision),
    }


def selector(spec: spec_mod.WorkloadSpec) -> dict[str, str]:
    """The Deployment selector is immutable, so it holds only labels that never change.

    Not the ownership labels either: Deployments made before they existed could not be updated.
    """
    return {LABEL_NAME: spec.app, LABEL_INSTANCE: spec.instance or spec.app}


def config_checksum(spec: spec_mod.WorkloadSpec) -> str:
    """What must roll the pods although it is not in the pod template itself.

    Secret values live in another object, so a changed secret would not roll
    the pods on its own; the checksum annotation on the template does.  core
    supplies `secret_checksum` (it should not be a plain hash of low-entropy
    values); when it is missing we fall back to hashing the data so a change
    still rolls the pods.
    """
    secret_part = spec.secret_checksum
    if not secret_part and spec.secret_data:
        secret_part = hashlib.sha256(json.dumps(spec.secret_data, sort_keys=True).encode()).hexdigest()
    payload = {
        "secret": secret_part,
        "secret_name": spec.secret_name,
        "env": sorted(spec.env.items()),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _metadata(spec: spec_mod.WorkloadSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec)}


def render_secret(spec: spec_mod.WorkloadSpec) -> dict[str, Any]:
    # `data` rather than `stringData`: server-side apply tracks ownership of
    # data.<key>, so a key removed from the spec is removed from the Secret.
    data = {
        key: base64.b64encode(value.encode()).decode("ascii")
        for key, value in sorted(spec.secret_data.items())
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, spec.secret_name),
        "type": "Opaque",
        "data": data,
    }


PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"
PULL_SECRET_KEY = ".dockerconfigjson"


def dockerconfigjson(pull: spec_mod.PullSecret) -> str:
    """The `.dockerconfigjson` document for one registry, as `docker login` writes it."""
    auth = base64.b64encode(f"{pull.username}:{pull.password}".encode()).decode("ascii")
    return json.dumps(
        {"auths": {pull.server: {"username": pull.username, "password": pull.password, "auth": auth}}},
        sort_keys=True,
    )


def render_pull_secret(spec: spec_mod.WorkloadSpec, pull: spec_mod.PullSecret) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, spec.pull_secret_name),
        "type": PULL_SECRET_TYPE,
        "data": {PULL_SECRET_KEY: base64.b64encode(dockerconfigjson(pull).encode()).decode("ascii")},
    }


def _probe(spec: spec_mod.WorkloadSpec, health: spec_mod.HealthCheck) -> dict[str, Any]:
    return {
        "httpGet": {"path": health.path, "port": health.port or spec.port},
        "initialDelaySeconds": health.initial_delay_seconds,
        "periodSeconds": health.period_seconds,
    }


def render_deployment(spec: spec_mod.WorkloadSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": spec.app,
        "image": spec.image,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
        "envFrom": [{"secretRef": {"name": spec.secret_name}}],
        "resources": {
            "requests": {"cpu": spec.resources.cpu_request, "memory": spec.resources.memory_request},
            "limits": {"cpu": spec.resources.cpu_limit, "memory": spec.resources.memory_limit},
        },
    }
    if spec.health is not None:
        container["livenessProbe"] = _probe(spec, spec.health)
        container["readinessProbe"] = _probe(spec, spec.health)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(spec)},
        "progressDeadlineSeconds": spec.progress_deadline_seconds,
        "revisionHistoryLimit": 10,
        # maxUnavailable 0: the old pods keep serving until new ones are Ready,
        # so a failing image never takes the app down.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": labels(spec),
                "annotations": {ANNOTATION_CHECKSUM: config_checksum(spec)},
            },
            "spec": {"containers": [container]},
        },
    }
    if spec.pull_secret is not None:
        deployment_spec["template"]["spec"]["imagePullSecrets"] = [{"name": spec.pull_secret_name}]
    if spec.autoscaling is None:
        # Omitted under an HPA: owning spec.replicas would fight the autoscaler.
        deployment_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.app),
        "spec": deployment_spec,
    }


def render_service(spec: spec_mod.WorkloadSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.app),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(spec),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_hpa(spec: spec_mod.WorkloadSpec, autoscaling: spec_mod.Autoscaling) -> dict[str, Any]:
    hpa: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, spec.app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.app},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.cpu_target_percent,
                        },
                    },
                }
            ],
        },
    }
    if autoscaling.scale_down_window_seconds is not None:
        # Only the window: the server fills in the rest of `behavior` (policies, scaleUp) with its defaults.
        hpa["spec"]["behavior"] = {
            "scaleDown": {"stabilizationWindowSeconds": autoscaling.scale_down_window_seconds}
        }
    return hpa


def tls_secret_name(spec: spec_mod.WorkloadSpec) -> str:
    return f"{spec.app}-tls"


def render_ingress(spec: spec_mod.WorkloadSpec, ingress: spec_mod.IngressSpec) -> dict[str, Any]:
    metadata = _metadata(spec, spec.app)
    ingress_spec: dict[str, Any] = {
        "ingressClassName": ingress.ingress_class,
        "rules": [
            {
                "host": ingress.host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": spec.app, "port": {"name": PORT_NAME}}},
                        }
                    ]
                },
            }
        ],
    }
    if ingress.tls_cluster_issuer:
        metadata["annotations"] = {ANNOTATION_CLUSTER_ISSUER: ingress.tls_cluster_issuer}
        ingress_spec["tls"] = [{"hosts": [ingress.host], "secretName": tls_secret_name(spec)}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": ingress_spec,
    }


def render(spec: spec_mod.WorkloadSpec) -> list[dict[str, Any]]:
    """All objects for `spec`, in apply order (the Secret before the pods that read it)."""
    manifests = [render_secret(spec)]
    if spec.pull_secret is not None:
        manifests.append(render_pull_secret(spec, spec.pull_secret))
    manifests += [render_deployment(spec), render_service(spec)]
    if spec.autoscaling is not None:
        manifests.append(render_hpa(spec, spec.autoscaling))
    if spec.ingress is not None:
        manifests.append(render_ingress(spec, spec.ingress))
    return manifests


def render_absent(spec: spec_mod.WorkloadSpec) -> list[tuple[str, str]]:
    """(kind, name) of the optional objects this spec turns off, to be deleted.

    Delete these BEFORE applying: an HPA left running while the Deployment
    gets its replicas back would scale it straight away again.
    """
    absent: list[tuple[str, str]] = []
    if spec.autoscaling is None:
        absent.append(("HorizontalPodAutoscaler", spec.app))
    if spec.ingress is None:
        absent.append(("Ingress", spec.app))
    if spec.pull_secret is None:
        # Credentials removed since the last deploy: their copy in the cluster goes too.
        absent.append(("Secret", spec.pull_secret_name))
    return absent


# ---------------------------------------------------------------- the release phase

LABEL_COMPONENT = "app.kubernetes.io/component"
RELEASE_COMPONENT = "release"
RELEASE_CONTAINER = "release"
_MAX_NAME = 63  # a DNS label; the Job controller puts the Job's name in a label on its pods


def release_name(spec: spec_mod.WorkloadSpec) -> str:
    """`<app>-release-<revision>`, the app part shortened so the whole stays a DNS label."""
    suffix = f"-release-{spec.revision}"
    return spec.app[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def _release_labels(spec: spec_mod.WorkloadSpec) -> dict[str, str]:
    return {**labels(spec), LABEL_COMPONENT: RELEASE_COMPONENT}


def _job_secret(
    spec: spec_mod.WorkloadSpec, *, name: str, labels: dict[str, str], job_uid: str | None
) -> dict[str, Any]:
    # The spec's secrets under the Job's own name; owned by the Job once it exists (`job_uid`),
    # so it goes when the Job's TTL removes the Job.
    metadata: dict[str, Any] = {"name": name, "namespace": spec.namespace, "labels": labels}
    if job_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid}
        ]
    return {**render_secret(spec), "metadata": metadata}


def _pod_labels(job_labels: dict[str, str]) -> dict[str, str]:
    # Without app.kubernetes.io/name and instance: those select the app's pods (Service, log
    # readers, rollout watch), and a Job's pod must never receive traffic or pass for one of them.
    return {k: v for k, v in job_labels.items() if k not in (LABEL_NAME, LABEL_INSTANCE)}


def _job(
    spec: spec_mod.WorkloadSpec,
    *,
    name: str,
    labels: dict[str, str],
    container_name: str,
    command: list[str],
    active_deadline_seconds: int,
    ttl_seconds_after_finished: int,
) -> dict[str, Any]:
    """A Job running `command` once with the spec's image, env, resources and its own Secret (`name`)."""
    container: dict[str, Any] = {
        "name": container_name,
        "image": spec.image,
        "command": command,
        "env": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
        "envFrom": [{"secretRef": {"name": name}}],
        "resources": {
            "requests": {"cpu": spec.resources.cpu_request, "memory": spec.resources.memory_request},
            "limits": {"cpu": spec.resources.cpu_limit, "memory": spec.resources.memory_limit},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": active_deadline_seconds,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": _pod_labels(labels)},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def render_release_secret(spec: spec_mod.WorkloadSpec, *, job_uid: str | None = None) -> dict[str, Any]:
    """The secrets of THIS revision under the Job's own name, for the release pod's envFrom.

    Not the app's Secret: applying that before the release would hand the new values to the
    running pods (any restart reads them) although a failed release must leave the app as it was.
    With `job_uid` the Secret is owned by the Job, so it goes when the Job's TTL removes the Job.
    """
    return _job_secret(spec, name=release_name(spec), labels=_release_labels(spec), job_uid=job_uid)


def render_release_job(
    spec: spec_mod.WorkloadSpec, *, active_deadline_seconds: int, ttl_seconds_after_finished: int
) -> dict[str, Any]:
    """The Job that runs `spec.release_command` once, with the new image, env and secrets.

    backoffLimit 0 and restartPolicy Never: a release (a migration, say) is not retried behind
    anyone's back; the deploy fails and a person decides.  activeDeadlineSeconds ends one that hangs.
    """
    if not spec.release_command:
        raise ValueError("render_release_job needs a spec with a release_command")
    return _job(
        spec,
        name=release_name(spec),
        labels=_release_labels(spec),
        container_name=RELEASE_CONTAINER,
        command=["/bin/sh", "-c", spec.release_command],
        active_deadline_seconds=active_deadline_seconds,
        ttl_seconds_after_finished=ttl_seconds_after_finished,
    )


# ---------------------------------------------------------------- one-off runs (`shipit run`)

RUN_COMPONENT = "run"
RUN_CONTAINER = "run"
LABEL_RUN = "shipit.dev/run"


def run_labels(spec: spec_mod.WorkloadSpec, *, name: str) -> dict[str, str]:
    return {**labels(spec), LABEL_COMPONENT: RUN_COMPONENT, LABEL_RUN: name}


def render_run_secret(
    spec: spec_mod.WorkloadSpec, *, name: str, job_uid: str | None = None
) -> dict[str, Any]:
    """The revision's secrets under the run Job's own name, as the release Job has them."""
    return _job_secret(spec, name=name, labels=run_labels(spec, name=name), job_uid=job_uid)


def render_run_job(
    spec: spec_mod.WorkloadSpec,
    *,
    name: str,
    command: list[str],
    active_deadline_seconds: int,
    ttl_seconds_after_finished: int,
) -> dict[str, Any]:
    """A one-off command as given (argv, no shell) in the revision's image, env and secrets; never retried."""
    return _job(
        spec,
        name=name,
        labels=run_labels(spec, name=name),
        container_name=RUN_CONTAINER,
        command=list(command),
        active_deadline_seconds=active_deadline_seconds,
        ttl_seconds_after_finished=ttl_seconds_after_finished,
    )
