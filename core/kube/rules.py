"""The rules of a rollout and of a release Job, as pure functions of plain API objects.

The verdicts (evaluate_rollout, evaluate_release), progress and failing-container detection read
dicts and return the small frozen result types handed to core.  No client, no I/O: the watchers
feed them what the cluster says, and tests feed them hand-made objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.kube import render
from core.kube.objects import as_int, as_list, as_str, dig, str_dict, truncate

FAILING_WAIT_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)


# ---------------------------------------------------------------------------
# Results handed to core


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutProgress:
    ready: int
    updated: int
    desired: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutResult:
    ok: bool
    reason: str  # "Available" on success; else e.g. CrashLoopBackOff, ProgressDeadlineExceeded, Timeout
    message: str
    ready: int
    desired: int
    logs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplicaSetStatus:
    """One generation of the Deployment's pods: during or after a rollout the new and old ones differ."""

    name: str
    revision: str | None  # the shipit.dev/revision label of its pod template
    image: str
    desired: int
    ready: int
    new: bool  # the Deployment's current template (the newest ReplicaSet)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoscalerStatus:
    """The app's HPA (shipit's own) as the controller last wrote it: what it scales between and on,
    how many pods it counted and wants, and the pods' CPU use against their request now."""

    min_replicas: int
    max_replicas: int
    cpu_target_percent: int | None
    current_replicas: int
    desired_replicas: int
    cpu_current_percent: int | None  # None until the controller has had metrics
    last_scale_time: str | None
    scale_down_window_seconds: int | None = None  # None: no `behavior`, Kubernetes' default (300 s)


def autoscaler_of(hpa: Mapping[str, Any]) -> AutoscalerStatus:
    """An autoscaling/v2 HPA's spec and status, its CPU utilization metric picked out."""
    target: int | None = None
    for metric in as_list(dig(hpa, "spec", "metrics")):
        if dig(metric, "type") == "Resource" and dig(metric, "resource", "name") == "cpu":
            value = dig(metric, "resource", "target", "averageUtilization")
            target = value if isinstance(value, int) else None
    current: int | None = None
    for metric in as_list(dig(hpa, "status", "currentMetrics")):
        if dig(metric, "type") == "Resource" and dig(metric, "resource", "name") == "cpu":
            value = dig(metric, "resource", "current", "averageUtilization")
            current = value if isinstance(value, int) else None
    scaled = dig(hpa, "status", "lastScaleTime")
    window = dig(hpa, "spec", "behavior", "scaleDown", "stabilizationWindowSeconds")
    return AutoscalerStatus(
        min_replicas=as_int(dig(hpa, "spec", "minReplicas"), 1),
        max_replicas=as_int(dig(hpa, "spec", "maxReplicas")),
        cpu_target_percent=target,
        current_replicas=as_int(dig(hpa, "status", "currentReplicas")),
        desired_replicas=as_int(dig(hpa, "status", "desiredReplicas")),
        cpu_current_percent=current,
        last_scale_time=scaled if isinstance(scaled, str) else None,
        scale_down_window_seconds=window if isinstance(window, int) else None,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploymentStatus:
    image: str
    revision: str | None  # the shipit.dev/revision label
    desired: int
    ready: int
    updated: int
    available: int
    generation: int
    observed_generation: int
    conditions: list[Condition]
    # New first, then the old ones that still have pods; never added together.
    replica_sets: list[ReplicaSetStatus] = dataclasses.field(default_factory=list)
    # shipit's HPA of the app, when autoscaling is on: then it, not the deploy, sets `desired`.
    autoscaler: AutoscalerStatus | None = None


# ---------------------------------------------------------------------------
# Usage: a pod's figures from the Metrics API


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodMetrics:
    """One pod's PodMetrics (metrics.k8s.io/v1beta1) as the cluster wrote them: quantity strings."""

    pod: str
    window: str  # e.g. "10.5s": the span the CPU rate was measured over
    timestamp: str
    containers: dict[str, tuple[str, str]]  # container -> (cpu, memory)
    labels: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # the pod's, as metrics-server copies them


def pod_metrics_of(item: dict[str, Any]) -> PodMetrics:
    containers: dict[str, tuple[str, str]] = {}
    for c in item.get("containers") or []:
        if not isinstance(c, dict):
            continue
        usage = c.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        containers[str(c.get("name") or "")] = (str(usage.get("cpu") or "0"), str(usage.get("memory") or "0"))
    return PodMetrics(
        pod=as_str(dig(item, "metadata", "name")),
        window=str(item.get("window") or ""),
        timestamp=str(item.get("timestamp") or ""),
        containers=containers,
        labels=str_dict(dig(item, "metadata", "labels")),
    )


# ---------------------------------------------------------------------------
# Rollouts: the verdict on a Deployment from it and its current pods


def conditions_of(deployment: dict[str, Any]) -> dict[str, Condition]:
    out: dict[str, Condition] = {}
    for raw in as_list(dig(deployment, "status", "conditions")):
        cond = Condition(
            type=as_str(dig(raw, "type")),
            status=as_str(dig(raw, "status")),
            reason=as_str(dig(raw, "reason")),
            message=as_str(dig(raw, "message")),
        )
        out[cond.type] = cond
    return out


def desired_of(deployment: dict[str, Any]) -> int:
    return as_int(dig(deployment, "spec", "replicas"), 1)


def progress_of(deployment: dict[str, Any]) -> RolloutProgress:
    status = dig(deployment, "status")
    return RolloutProgress(
        ready=as_int(dig(status, "readyReplicas")),
        updated=as_int(dig(status, "updatedReplicas")),
        desired=desired_of(deployment),
    )


def template_identity(deployment: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """Labels and checksum annotation of the current pod template: they pick its pods."""
    meta = dig(deployment, "spec", "template", "metadata")
    checksum = dig(meta, "annotations", render.ANNOTATION_CHECKSUM)
    return str_dict(dig(meta, "labels")), checksum if isinstance(checksum, str) else None


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def is_current_pod(pod: dict[str, Any], identity: tuple[dict[str, str], str | None]) -> bool:
    labels, checksum = identity
    pod_labels = str_dict(dig(pod, "metadata", "labels"))
    if not labels.items() <= pod_labels.items():
        return False
    pod_checksum = dig(pod, "metadata", "annotations", render.ANNOTATION_CHECKSUM)
    return bool(pod_checksum == checksum)


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    pod: str | None
    container: str | None


def failing_container(pods: Mapping[str, dict[str, Any]]) -> Failure | None:
    for pod_name in sorted(pods):
        pod = pods[pod_name]
        statuses = as_list(dig(pod, "status", "initContainerStatuses")) + as_list(
            dig(pod, "status", "containerStatuses")
        )
        for cs in statuses:
            waiting = dig(cs, "state", "waiting")
            reason = as_str(dig(waiting, "reason"))
            if reason in FAILING_WAIT_REASONS:
                detail = as_str(dig(waiting, "message"))
                container = as_str(dig(cs, "name"))
                message = f"pod {pod_name} container {container}: {reason}"
                if detail:
                    message += f": {truncate(detail)}"
                return Failure(reason, message, pod_name, container)
    return None


def why_not_started(pod: dict[str, Any]) -> str | None:
    """Why a pod has no container that ever ran (so no logs to show), or None if one did."""
    name = as_str(dig(pod, "metadata", "name"))
    statuses = as_list(dig(pod, "status", "containerStatuses"))
    for cs in statuses:
        if (
            dig(cs, "state", "running")
            or dig(cs, "state", "terminated")
            or dig(cs, "lastState", "terminated")
        ):
            return None
    for cond in as_list(dig(pod, "status", "conditions")):
        if dig(cond, "type") == "PodScheduled" and dig(cond, "status") == "False":
            detail = as_str(dig(cond, "message")) or as_str(dig(cond, "reason"))
            return f"pod {name} is not scheduled: {truncate(detail)}"
    for cs in statuses:
        reason = as_str(dig(cs, "state", "waiting", "reason"))
        if reason:
            return f"pod {name} has not started: {reason}"
    return f"pod {name} has not started (phase {as_str(dig(pod, 'status', 'phase')) or 'unknown'})"


def evaluate_rollout(deployment: dict[str, Any], pods: Mapping[str, dict[str, Any]]) -> RolloutResult | None:
    """The verdict on a rollout from the Deployment and its current pods; None while it is undecided.

    Pure, so the rules can be read (and tested) in one place.  `pods` must hold
    only pods of the Deployment's current template.
    """
    progress = progress_of(deployment)
    failure = failing_container(pods)
    if failure is not None:
        return RolloutResult(
            ok=False,
            reason=failure.reason,
            message=failure.message,
            ready=progress.ready,
            desired=progress.desired,
        )
    generation = as_int(dig(deployment, "metadata", "generation"))
    observed = as_int(dig(deployment, "status", "observedGeneration"))
    if observed < generation:
        return None  # the controller has not seen this spec yet; its status is about an older one
    conditions = conditions_of(deployment)
    progressing = conditions.get("Progressing")
    if (
        progressing is not None
        and progressing.status == "False"
        and progressing.reason == "ProgressDeadlineExceeded"
    ):
        return RolloutResult(
            ok=False,
            reason="ProgressDeadlineExceeded",
            message=progressing.message or "the rollout made no progress within its deadline",
            ready=progress.ready,
            desired=progress.desired,
        )
    status = dig(deployment, "status")
    total = as_int(dig(status, "replicas"))
    available = as_int(dig(status, "availableReplicas"))
    available_cond = conditions.get("Available")
    if (
        progress.updated >= progress.desired
        and total <= progress.updated
        and available >= progress.desired
        and available_cond is not None
        and available_cond.status == "True"
    ):
        return RolloutResult(
            ok=True,
            reason="Available",
            message=f"{available}/{progress.desired} replicas available at generation {generation}",
            ready=progress.ready,
            desired=progress.desired,
        )
    return None


# ---------------------------------------------------------------------------
# The release phase: the verdict on a release Job, as pure functions of the Job and its pods

JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReleaseResult:
    ok: bool
    # "Complete" on success; else the failed container's reason (Error, OOMKilled...), the Job's
    # (DeadlineExceeded, BackoffLimitExceeded), Timeout or Deleted
    reason: str
    message: str
    job: str
    logs: list[str] = dataclasses.field(default_factory=list)


def release_failure(pods: Mapping[str, dict[str, Any]]) -> Failure | None:
    """The first container of a release pod that ended with a non-zero exit code."""
    for pod_name in sorted(pods):
        for cs in as_list(dig(pods[pod_name], "status", "containerStatuses")):
            terminated = dig(cs, "state", "terminated")
            code = dig(terminated, "exitCode")
            if isinstance(code, int) and code != 0:
                container = as_str(dig(cs, "name"))
                reason = as_str(dig(terminated, "reason")) or "Error"
                message = f"pod {pod_name} container {container}: {reason} (exit code {code})"
                detail = as_str(dig(terminated, "message"))
                if detail:
                    message += f": {truncate(detail)}"
                return Failure(reason, message, pod_name, container)
    return None


def _waiting_reasons(pods: Mapping[str, dict[str, Any]]) -> list[str]:
    return sorted(
        {
            reason
            for pod in pods.values()
            for cs in as_list(dig(pod, "status", "containerStatuses"))
            if (reason := as_str(dig(cs, "state", "waiting", "reason")))
        }
    )


def evaluate_release(job: dict[str, Any], pods: Mapping[str, dict[str, Any]]) -> ReleaseResult | None:
    """The verdict on a release Job (backoffLimit 0) from it and its pods; None while it runs.

    A pod that failed decides at once (with backoffLimit 0 the Job cannot succeed any more), with
    its container's reason and exit code; kwok, like many clusters, serves no logs to say more.
    """
    name = as_str(dig(job, "metadata", "name"))
    conditions = conditions_of(job)
    complete = conditions.get("Complete")
    if complete is not None and complete.status == "True":
        return ReleaseResult(ok=True, reason="Complete", message=f"release job {name} completed", job=name)
    failure = release_failure(pods)
    if failure is not None:
        return ReleaseResult(
            ok=False, reason=failure.reason, message=f"release command failed: {failure.message}", job=name
        )
    failed = conditions.get("Failed")
    if failed is not None and failed.status == "True":
        message = f"release job {name} failed: {failed.reason or 'Failed'}"
        if failed.message:
            message += f": {truncate(failed.message)}"
        waiting = _waiting_reasons(pods)
        if waiting:
            message += f" (its pod was waiting: {', '.join(waiting)})"
        return ReleaseResult(ok=False, reason=failed.reason or "Failed", message=message, job=name)
    return None
