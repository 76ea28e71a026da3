"""What the adapter applies, rendered from a revision's snapshot: pure, no I/O."""

from __future__ import annotations

import logging

from core import revisions as snapshots  # `revisions` is this module's list of an app's revisions
from core.context import Core
from core.kube.spec import Autoscaling, HealthCheck, IngressSpec, Resources, WorkloadSpec
from storage import models

log = logging.getLogger(__name__)


def workload_spec(
    *,
    ctx: Core,
    app_name: str,
    project: str,
    namespace: str,
    revision: int,
    snapshot: snapshots.Snapshot,
    secret_data: dict[str, str],
    secret_checksum: str,
    preview: models.Preview | None = None,
    preview_env: dict[str, str] | None = None,
) -> WorkloadSpec:
    """What the adapter applies, rendered from a revision's snapshot and nothing else."""
    snap = snapshot
    scaling = snap.autoscaling
    domain = snap.domain
    env = dict(snap.env)
    replicas = snap.replicas
    labels: dict[str, str] = {}
    if preview is not None:
        # Previews are small and short-lived: one replica, no HPA, their own host.
        env.update(preview_env or {})
        replicas, scaling = 1, None
        domain = preview.url.split("://", 1)[-1].split("/", 1)[0] if preview.url else None
        labels["shipit.dev/preview"] = str(preview.pr_number)
    ingress = None
    if domain:
        ingress = IngressSpec(
            host=domain,
            ingress_class=snap.ingress_class or ctx.config.default_ingress_class,
            tls_cluster_issuer=snap.tls_issuer or ctx.config.default_tls_issuer,
        )
    r, h = snap.resources, snap.health
    return WorkloadSpec(
        app=app_name,
        project=project,
        namespace=namespace,
        revision=revision,
        image=snap.image_ref,
        replicas=replicas,
        port=snap.port,
        env=env,
        secret_data=secret_data,
        secret_checksum=secret_checksum,
        resources=Resources(
            cpu_request=r.cpu_request,
            cpu_limit=r.cpu_limit,
            memory_request=r.memory_request,
            memory_limit=r.memory_limit,
        ),
        health=HealthCheck(
            path=h.path,
            port=h.port,
            initial_delay_seconds=h.initial_delay_seconds,
            period_seconds=h.period_seconds,
        )
        if h
        else None,
        autoscaling=Autoscaling(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            cpu_target_percent=scaling.cpu_target_percent,
            scale_down_window_seconds=scaling.scale_down_window_seconds,
        )
        if scaling
        else None,
        ingress=ingress,
        progress_deadline_seconds=snap.progress_deadline_seconds,
        extra_labels=labels,
        release_command=snap.release_command or None,
    )
