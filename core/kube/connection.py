"""The connection to one cluster: an ApiClient built from kubeconfig text, and the request helpers.

Every request of the adapter goes through Connection.open with `_preload_content=False`: we read
the body ourselves (see api_errors), so no library code logs a response (Secrets!) and every
failure is mapped to core.errors in one place.  Also the few plain reads (version, one object, a
service account's token, a Deployment's status) that belong to neither applying nor watching.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import exceptions as k8s_exceptions

from core import errors
from core.kube import render
from core.kube.api_errors import CONNECTION_ERRORS, api_exception_error, connection_error, http_error
from core.kube.objects import as_int, as_list, as_str, dig, str_dict, truncate
from core.kube.rules import (
    DeploymentStatus,
    PodMetrics,
    ReplicaSetStatus,
    autoscaler_of,
    conditions_of,
    desired_of,
    label_selector,
    pod_metrics_of,
)


def _same_owner(hpa: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """An HPA shown as the app's autoscaler only if shipit made it for the Deployment's project."""
    labels, owners = str_dict(dig(hpa, "metadata", "labels")), str_dict(dig(deployment, "metadata", "labels"))
    return (
        labels.get(render.LABEL_MANAGED_BY) == render.FIELD_MANAGER
        and labels.get(render.LABEL_PROJECT) is not None
        and labels.get(render.LABEL_PROJECT) == owners.get(render.LABEL_PROJECT)
    )


_VERSION = re.compile(r"[A-Za-z0-9.+_-]{1,64}")  # a gitVersion such as v1.31.2+k3s1; else "unknown"


@dataclasses.dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool


# What apply/delete know how to address; rendering never produces anything else.
KINDS: dict[str, Kind] = {
    "Namespace": Kind("v1", "namespaces", namespaced=False),
    "Secret": Kind("v1", "secrets", namespaced=True),
    "ConfigMap": Kind("v1", "configmaps", namespaced=True),
    "Service": Kind("v1", "services", namespaced=True),
    "Deployment": Kind("apps/v1", "deployments", namespaced=True),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers", namespaced=True),
    "Ingress": Kind("networking.k8s.io/v1", "ingresses", namespaced=True),
    "Job": Kind("batch/v1", "jobs", namespaced=True),
    "Pod": Kind("v1", "pods", namespaced=True),  # read only: a one-off run's pod (core.runs)
    # Add-ons (managed databases): core.kube.render_addons.
    "StatefulSet": Kind("apps/v1", "statefulsets", namespaced=True),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims", namespaced=True),
}


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise errors.PermanentError(f"shipit cannot manage objects of kind {kind!r}") from None


def api_path(kind: str, *, namespace: str | None = None, name: str | None = None) -> str:
    info = _kind(kind)
    base = "/api/v1" if info.api_version == "v1" else f"/apis/{info.api_version}"
    if info.namespaced:
        if not namespace:
            raise errors.PermanentError(f"{kind} {name or ''} needs a namespace")
        base += f"/namespaces/{namespace}"
    base += f"/{info.plural}"
    return f"{base}/{name}" if name else base


# ---------------------------------------------------------------------------
# Kubeconfig text -> ApiClient

# Kubeconfig entries that make the client run a program or read a file on the shipit host.  A
# kubeconfig comes from a user (`clusters add`), so honouring them would let anyone who may add a
# cluster execute commands or read the server's files: only inline credentials are accepted.
_FORBIDDEN_CLUSTER_KEYS = ("certificate-authority",)
_FORBIDDEN_USER_KEYS = (
    "exec",
    "auth-provider",
    "client-certificate",
    "client-key",
    "tokenFile",
    "token-file",
)
# What to do instead, so the refusal of a laptop's ~/.kube/config (the README's tour) is not a dead end.
_INLINE_FILES = "`kubectl config view --minify --flatten --raw` writes one with the files inlined"
_NO_PROGRAMS = "use a service account's token instead (manifests/target-cluster)"


def _refuse_local_references(kubeconfig: dict[str, Any]) -> None:
    sections = (("clusters", "cluster", _FORBIDDEN_CLUSTER_KEYS), ("users", "user", _FORBIDDEN_USER_KEYS))
    for section, inner, forbidden in sections:
        for entry in as_list(kubeconfig.get(section)):
            body = dig(entry, inner)
            if not isinstance(body, dict):
                continue
            for key in forbidden:
                if body.get(key):
                    remedy = _INLINE_FILES if "certificate" in key or "key" in key else _NO_PROGRAMS
                    raise errors.InvalidInput(
                        f"the kubeconfig's {section[:-1]} {as_str(dig(entry, 'name'))!r} uses {key!r}; "
                        "shipit accepts only inline credentials (certificate-authority-data, "
                        f"client-certificate-data, client-key-data, token): {remedy}",
                        field="kubeconfig",
                    )


async def api_client_from_kubeconfig(*, kubeconfig: str, local_references: bool = False) -> Any:
    """An ApiClient for the kubeconfig's current context, which must carry its credentials inline.

    `local_references=True` only for the operator's own kubeconfig read on their own machine
    (the CLI's `clusters kubeconfig-from-sa`), never for one stored in shipit."""
    try:
        data = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as e:
        raise errors.InvalidInput("the kubeconfig is not valid YAML", field="kubeconfig") from e
    if not isinstance(data, dict) or not data.get("clusters"):
        raise errors.InvalidInput("the kubeconfig names no cluster", field="kubeconfig")
    if not local_references:
        _refuse_local_references(data)
    configuration = k8s_client.Configuration()
    try:
        await k8s_config.load_kube_config_from_dict(config_dict=data, client_configuration=configuration)
        api_client = k8s_client.ApiClient(configuration=configuration)
    except (k8s_config.ConfigException, KeyError, ValueError, TypeError, OSError) as e:
        # Config messages name fields and files, not credential values.
        raise errors.InvalidInput(
            f"the kubeconfig cannot be used: {type(e).__name__}: {truncate(str(e))}", field="kubeconfig"
        ) from e
    return api_client


class Connection:
    """One cluster: a single ApiClient (one aiohttp session), shared by the applier and the watcher."""

    def __init__(self, *, api_client: Any, request_timeout: float) -> None:
        self.api = api_client
        self.timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=min(request_timeout, 10.0))

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    async def close(self) -> None:
        await self.api.close()

    # -- raw HTTP ----------------------------------------------------------

    async def open(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        request_timeout: aiohttp.ClientTimeout | None = None,
        quote_server: bool = True,
    ) -> Any:
        """Send a request; return the open aiohttp response (2xx only) for the caller to read and release.

        `quote_server=False`: errors name the status code only, never what the server answered."""
        try:
            response = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": accept, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout or self.timeout,
            )
        except k8s_exceptions.ApiException as e:
            # Unquoted: not even in a traceback's cause (ApiException's text holds the body).
            raise api_exception_error(e, what=what, quote=quote_server) from (e if quote_server else None)
        except CONNECTION_ERRORS as e:
            raise connection_error(e, what=what) from e
        except k8s_config.ConfigException as e:
            raise errors.PermanentError(f"{what}: cluster credentials unusable: {e}") from e
        if not 200 <= response.status <= 299:
            try:
                raw = await response.read()
            except CONNECTION_ERRORS:
                raw = b""
            finally:
                response.release()
            raise http_error(
                status=response.status, body=raw, headers=response.headers, what=what, quote=quote_server
            )
        return response

    async def request_bytes(self, method: str, path: str, *, what: str, **kwargs: Any) -> bytes:
        response = await self.open(method, path, what=what, **kwargs)
        try:
            data: bytes = await response.read()
        except CONNECTION_ERRORS as e:
            raise connection_error(e, what=what) from e
        finally:
            response.release()
        return data

    async def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        data = await self.request_bytes(method, path, what=what, **kwargs)
        if not data:
            return {}
        try:
            parsed = json.loads(data)
        except ValueError as e:
            raise errors.TransientError(f"{what}: the API server answered something that is not JSON") from e
        return parsed if isinstance(parsed, dict) else {}

    # -- basics --------------------------------------------------------------

    async def check(self) -> str:
        """Connectivity and credentials check; returns the server's gitVersion."""
        # The server is not trusted yet: its errors are reported by status code only.
        version = await self.request(
            "GET", "/version", what=f"reach the cluster at {self.host}", quote_server=False
        )
        # /version is public on most clusters; discovery (/api) needs an authenticated user, so it
        # proves the credentials without asking for any permission a namespace-scoped one may lack.
        await self.request(
            "GET", "/api", what=f"authenticate to the cluster at {self.host}", quote_server=False
        )
        found = as_str(version.get("gitVersion"))
        return found if _VERSION.fullmatch(found) else "unknown"

    async def get(self, *, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as the API server has it, or None.  Do not log what this returns (Secrets)."""
        try:
            return await self.request(
                "GET",
                api_path(kind, namespace=namespace, name=name),
                what=f"read {kind} {namespace or ''}/{name}",
            )
        except errors.NotFound:
            return None

    async def list_labelled(
        self, *, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` carrying all of `labels`.  Do not log what this returns."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        listing = await self.request(
            "GET",
            api_path(kind, namespace=namespace),
            what=f"list {kind} in {namespace}",
            query=[("labelSelector", selector)],
        )
        return [item for item in as_list(listing.get("items")) if isinstance(item, dict)]

    async def service_account_token(self, *, namespace: str, service_account: str) -> tuple[str, str]:
        """(token, base64 CA) from the `kubernetes.io/service-account-token` Secret of an account, as
        the token controller filled it in.  For building a kubeconfig; the token is never logged."""
        what = f"read the token of service account {namespace}/{service_account}"
        listing = await self.request(
            "GET",
            api_path("Secret", namespace=namespace),
            what=what,
            query=[("fieldSelector", "type=kubernetes.io/service-account-token")],
        )
        for item in as_list(listing.get("items")):
            annotations = str_dict(dig(item, "metadata", "annotations"))
            if annotations.get("kubernetes.io/service-account.name") != service_account:
                continue
            data = str_dict(item.get("data"))
            if data.get("token") and data.get("ca.crt"):
                return base64.b64decode(data["token"]).decode(), data["ca.crt"]
        raise errors.NotFound(
            f"{what}: no filled-in Secret of type kubernetes.io/service-account-token for it in "
            f"namespace {namespace} (apply manifests/target-cluster first; the token controller "
            "fills it in within seconds)"
        )

    # -- status --------------------------------------------------------------------

    async def deployment_status(self, *, namespace: str, name: str) -> DeploymentStatus | None:
        deployment = await self.get(kind="Deployment", namespace=namespace, name=name)
        if deployment is None:
            return None
        containers = as_list(dig(deployment, "spec", "template", "spec", "containers"))
        status = dig(deployment, "status")
        revision = dig(deployment, "metadata", "labels", render.LABEL_REVISION)
        replica_sets, hpa = await asyncio.gather(
            self._replica_sets(namespace=namespace, deployment=deployment),
            self.get(kind="HorizontalPodAutoscaler", namespace=namespace, name=name),
        )
        return DeploymentStatus(
            replica_sets=replica_sets,
            autoscaler=autoscaler_of(hpa) if hpa is not None and _same_owner(hpa, deployment) else None,
            image=as_str(dig(containers[0], "image")) if containers else "",
            revision=revision if isinstance(revision, str) else None,
            desired=desired_of(deployment),
            ready=as_int(dig(status, "readyReplicas")),
            updated=as_int(dig(status, "updatedReplicas")),
            available=as_int(dig(status, "availableReplicas")),
            generation=as_int(dig(deployment, "metadata", "generation")),
            observed_generation=as_int(dig(status, "observedGeneration")),
            conditions=list(conditions_of(deployment).values()),
        )

    async def pod_metrics(self, *, namespace: str, selector: str) -> list[PodMetrics]:
        """What the Metrics API (metrics-server) measured for the pods matching `selector`, by pod name.

        A cluster without it answers 404 for the group (no APIService) or 503 (registered, but its
        server is down): errors.NoMetricsApi, said plainly, rather than a cluster failure."""
        what = f"read pod metrics in {namespace}"
        try:
            listing = await self.request(
                "GET",
                f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
                what=what,
                query=[("labelSelector", selector)],
            )
        except (errors.NotFound, errors.TransientError) as e:
            if e.http_status not in (404, 503):
                raise
            state = "has no" if e.http_status == 404 else "has an unavailable"
            raise errors.NoMetricsApi(
                f"{what}: this cluster {state} Metrics API (metrics.k8s.io, served by metrics-server), "
                "so shipit cannot tell what the app's pods use; install metrics-server on it"
            ) from e
        found = [pod_metrics_of(item) for item in as_list(listing.get("items")) if isinstance(item, dict)]
        return sorted(found, key=lambda m: m.pod)

    async def _replica_sets(self, *, namespace: str, deployment: dict[str, Any]) -> list[ReplicaSetStatus]:
        """The Deployment's ReplicaSets (owned by it), newest first; old ones only while they have pods."""
        uid = as_str(dig(deployment, "metadata", "uid"))
        match = str_dict(dig(deployment, "spec", "selector", "matchLabels"))
        listing = await self.request(
            "GET",
            f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            what=f"list replica sets in {namespace}",
            query=[("labelSelector", label_selector(match))] if match else [],
        )
        owned: list[tuple[int, dict[str, Any]]] = []
        for rs in as_list(listing.get("items")):
            owners = as_list(dig(rs, "metadata", "ownerReferences"))
            if not any(as_str(dig(o, "uid")) == uid for o in owners):
                continue
            number = as_str(dig(rs, "metadata", "annotations", "deployment.kubernetes.io/revision"))
            owned.append((int(number) if number.isdigit() else 0, rs))
        owned.sort(key=lambda item: item[0], reverse=True)
        out: list[ReplicaSetStatus] = []
        for i, (_, rs) in enumerate(owned):
            desired, ready = as_int(dig(rs, "spec", "replicas")), as_int(dig(rs, "status", "readyReplicas"))
            if i > 0 and desired == 0 and ready == 0 and as_int(dig(rs, "status", "replicas")) == 0:
                continue
            containers = as_list(dig(rs, "spec", "template", "spec", "containers"))
            revision = dig(rs, "spec", "template", "metadata", "labels", render.LABEL_REVISION)
            out.append(
                ReplicaSetStatus(
                    name=as_str(dig(rs, "metadata", "name")),
                    revision=revision if isinstance(revision, str) else None,
                    image=as_str(dig(containers[0], "image")) if containers else "",
                    desired=desired,
                    ready=ready,
                    new=i == 0,
                )
            )
        return out
