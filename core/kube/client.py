"""The Kubernetes adapter's face: Kube, one cluster, and KubeClients, one Kube per cluster.

The adapter is the only code that talks to clusters.  Everything else in shipit sees plain values
(manifests as dicts, small frozen result types) and core.errors, never kubernetes_asyncio objects,
so a library quirk or a cluster outage is translated once, at this boundary.  Kube composes the
parts, each in its own module:

- connection: the ApiClient built from kubeconfig text, the request helpers, plain reads;
- api_errors: HTTP statuses and ApiExceptions mapped to core.errors;
- applying (with the pure ownership rules): server-side apply, deletes, namespaces, dry run;
- watching (with the pure rollout and release rules): rollouts, release Jobs, pod logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from core.kube import diff as diff_mod
from core.kube import render
from core.kube import spec as spec_mod
from core.kube.applying import Applier, NamespaceOrigin
from core.kube.connection import Connection, api_client_from_kubeconfig
from core.kube.objects import as_str, dig
from core.kube.ownership import Target, target_of
from core.kube.rules import DeploymentStatus, PodMetrics, ReleaseResult, RolloutProgress, RolloutResult
from core.kube.watching import LogLine, Watcher


class Kube:
    """One cluster: a single ApiClient (one aiohttp session) built from kubeconfig text."""

    def __init__(self, *, api_client: Any, request_timeout: float) -> None:
        self._conn = Connection(api_client=api_client, request_timeout=request_timeout)
        self._applier = Applier(self._conn)
        self._watcher = Watcher(self._conn)

    @classmethod
    async def from_kubeconfig(
        cls, *, kubeconfig: str, request_timeout: float = 30.0, local_references: bool = False
    ) -> Kube:
        """`local_references=True` only for the operator's own kubeconfig read on their own machine
        (the CLI's `clusters kubeconfig-from-sa`), never for one stored in shipit."""
        api_client = await api_client_from_kubeconfig(
            kubeconfig=kubeconfig, local_references=local_references
        )
        return cls(api_client=api_client, request_timeout=request_timeout)

    @property
    def host(self) -> str:
        return self._conn.host

    async def close(self) -> None:
        await self._conn.close()

    # -- reads (connection) ----------------------------------------------------------

    async def check(self) -> str:
        """Connectivity and credentials check; returns the server's gitVersion."""
        return await self._conn.check()

    async def get(self, *, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as the API server has it, or None.  Do not log what this returns (Secrets)."""
        return await self._conn.get(kind=kind, name=name, namespace=namespace)

    async def service_account_token(self, *, namespace: str, service_account: str) -> tuple[str, str]:
        return await self._conn.service_account_token(namespace=namespace, service_account=service_account)

    async def deployment_status(self, *, namespace: str, name: str) -> DeploymentStatus | None:
        return await self._conn.deployment_status(namespace=namespace, name=name)

    async def pod_metrics(self, *, namespace: str, app: str) -> list[PodMetrics]:
        """The Metrics API's figures for the app's pods (those `logs` reads: its name label)."""
        return await self._conn.pod_metrics(namespace=namespace, selector=f"{render.LABEL_NAME}={app}")

    async def namespace_pod_metrics(self, *, namespace: str) -> list[PodMetrics]:
        """One list for every app's pods in the namespace (those with a name label), each with its
        labels: the usage sampler groups them by app rather than asking once per app."""
        return await self._conn.pod_metrics(namespace=namespace, selector=render.LABEL_NAME)

    # -- applying ----------------------------------------------------------------------

    async def apply(self, *, manifests: list[dict[str, Any]]) -> None:
        await self._applier.apply(manifests=manifests)

    async def apply_workload(
        self, *, spec: spec_mod.WorkloadSpec, namespace_origin: NamespaceOrigin = "granted"
    ) -> None:
        await self._applier.apply_workload(spec=spec, namespace_origin=namespace_origin)

    async def delete(self, *, kind: str, name: str, namespace: str | None, project: str, app: str) -> bool:
        return await self._applier.delete(kind=kind, name=name, namespace=namespace, project=project, app=app)

    async def ensure_namespace(
        self,
        *,
        name: str,
        project: str,
        namespace_origin: NamespaceOrigin = "granted",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        await self._applier.ensure_namespace(
            name=name, project=project, namespace_origin=namespace_origin, labels=labels
        )

    async def namespace_exists(self, *, name: str) -> bool:
        return await self._applier.namespace_exists(name=name)

    async def delete_namespace(self, *, name: str, project: str) -> bool:
        return await self._applier.delete_namespace(name=name, project=project)

    async def dry_run_workload(self, *, spec: spec_mod.WorkloadSpec) -> diff_mod.WorkloadDiff:
        return await self._applier.dry_run_workload(spec=spec)

    # -- watching ----------------------------------------------------------------------

    async def wait_rollout(
        self,
        *,
        namespace: str,
        name: str,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole rollout, not one call
        on_progress: Callable[[RolloutProgress], Awaitable[None]] | None = None,
    ) -> RolloutResult:
        return await self._watcher.wait_rollout(
            namespace=namespace, name=name, timeout=timeout, on_progress=on_progress
        )

    def pod_logs(
        self,
        *,
        namespace: str,
        app: str,
        tail_lines: int = 100,
        follow: bool = False,
        shared_tail: bool = False,
        selector: str | None = None,
        container: str | None = None,
    ) -> AsyncGenerator[LogLine, None]:
        """Log lines of the app's pods, with their pod and container (see Watcher.pod_logs).

        Its own generator, not one wrapped around it: closing this one stops the streams.
        """
        return self._watcher.pod_logs(
            namespace=namespace,
            app=app,
            tail_lines=tail_lines,
            follow=follow,
            shared_tail=shared_tail,
            selector=selector,
            container=container,
        )

    # -- the release phase: applying, then watching ---------------------------------------

    async def run_release(
        self,
        *,
        spec: spec_mod.WorkloadSpec,
        namespace_origin: NamespaceOrigin = "granted",
        active_deadline_seconds: int,
        ttl_seconds_after_finished: int,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole release, not one call
    ) -> ReleaseResult:
        """Run the spec's release command as a Job and wait for its verdict; nothing else is touched.

        The Job reads a Secret of its own (render_release_secret), made before it and then owned
        by it.  Safe to call again after a crash: the same names are applied again (a no-op), and a
        Job that already finished returns its verdict at once.  A Job with no verdict within
        `timeout` is deleted, so its command cannot still run after the deploy was called failed.
        """
        name = render.release_name(spec)
        job = render.render_release_job(
            spec,
            active_deadline_seconds=active_deadline_seconds,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
        )
        uid = await self._create_job(
            spec=spec,
            namespace_origin=namespace_origin,
            job=job,
            secret=lambda job_uid: render.render_release_secret(spec, job_uid=job_uid),
        )
        verdict = await self._watcher.wait_release(namespace=spec.namespace, name=name, timeout=timeout)
        if verdict is not None:
            return verdict
        await self._applier.delete_exact(target_of(job), uid=uid)
        return ReleaseResult(
            ok=False,
            reason="Timeout",
            message=f"release job {spec.namespace}/{name} did not finish within {timeout:g}s; it was deleted",
            job=name,
        )

    async def _create_job(
        self,
        *,
        spec: spec_mod.WorkloadSpec,
        namespace_origin: NamespaceOrigin,
        job: dict[str, Any],
        secret: Callable[[str | None], dict[str, Any]],
    ) -> str:
        """Apply the Job's own Secret, then the Job, then hand the Secret to the Job; the Job's uid."""
        await self._applier.ensure_namespace_once(
            name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
        )
        name = as_str(dig(job, "metadata", "name"))
        await self.apply(manifests=[secret(None)])
        await self.apply(manifests=[job])
        applied = await self.get(kind="Job", name=name, namespace=spec.namespace)
        uid = as_str(dig(applied, "metadata", "uid"))
        if uid:
            await self.apply(manifests=[secret(uid)])
        return uid

    # -- one-off runs (`shipit run`) -------------------------------------------------

    async def start_run(
        self,
        *,
        spec: spec_mod.WorkloadSpec,
        name: str,
        command: list[str],
        namespace_origin: NamespaceOrigin = "granted",
        active_deadline_seconds: int,
        ttl_seconds_after_finished: int,
    ) -> dict[str, Any]:
        """Create the run's Job (and its Secret) and return the Job as the API server has it."""
        job = render.render_run_job(
            spec,
            name=name,
            command=command,
            active_deadline_seconds=active_deadline_seconds,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
        )
        await self._create_job(
            spec=spec,
            namespace_origin=namespace_origin,
            job=job,
            secret=lambda job_uid: render.render_run_secret(spec, name=name, job_uid=job_uid),
        )
        return await self.get(kind="Job", name=name, namespace=spec.namespace) or job

    async def list_labelled(
        self, *, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` carrying all of `labels`.  Do not log what this returns."""
        return await self._conn.list_labelled(kind=kind, namespace=namespace, labels=labels)

    async def delete_exact(
        self, *, kind: str, name: str, namespace: str, project: str, app: str, uid: str
    ) -> bool:
        """Delete the object read and checked before (by uid), propagation Background."""
        target = Target(kind=kind, name=name, namespace=namespace, project=project, app=app, instance=app)
        return await self._applier.delete_exact(target, uid=uid)


class KubeClients:
    """One Kube per cluster, built on first use and rebuilt when its kubeconfig changes.

    A replaced client is not closed at once (a rollout may still be watching
    through it); every client is closed by close() at shutdown.
    """

    def __init__(self, *, request_timeout: float = 30.0) -> None:
        self._request_timeout = request_timeout
        self._clients: dict[str, tuple[str, Kube]] = {}
        self._retired: list[Kube] = []
        self._lock = asyncio.Lock()

    async def get(self, *, key: str, kubeconfig: str) -> Kube:
        fingerprint = hashlib.sha256(kubeconfig.encode()).hexdigest()
        async with self._lock:
            cached = self._clients.get(key)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            kube = await Kube.from_kubeconfig(kubeconfig=kubeconfig, request_timeout=self._request_timeout)
            if cached is not None:
                self._retired.append(cached[1])
            self._clients[key] = (fingerprint, kube)
            return kube

    async def forget(self, *, key: str) -> None:
        """Drop and close one cluster's client (the cluster was removed)."""
        async with self._lock:
            cached = self._clients.pop(key, None)
        if cached is not None:
            await cached[1].close()

    async def close(self) -> None:
        async with self._lock:
            kubes = [kube for _, kube in self._clients.values()] + self._retired
            self._clients.clear()
            self._retired.clear()
        for kube in kubes:
            with contextlib.suppress(Exception):
                await kube.close()
