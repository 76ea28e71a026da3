"""The Kubernetes adapter: the only code that talks to clusters.

Everything else in shipit sees plain values (manifests as dicts, small frozen
result types) and core.errors, never kubernetes_asyncio objects, so a library
quirk or a cluster outage is translated once, here.  Requests go through the
ApiClient with `_preload_content=False`: we read the body ourselves, which
keeps the library from logging response bodies (Secrets!) at DEBUG and lets
one function map every HTTP failure.

Rollouts are followed with the watch API from a list's resourceVersion, so a
watcher started after a crash sees the cluster's current state first and
returns at once when the rollout already finished.

shipit never takes over what it did not create: before applying over or
deleting an object it reads it, and refuses (core Conflict) unless it carries
`app.kubernetes.io/managed-by: shipit` with this project's `shipit.dev/project`
and this app's `shipit.dev/app`.  Only objects proven ours are applied with
force; a namespace shipit did not create is never relabelled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Literal

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client import exceptions as k8s_exceptions

from core import errors
from core.kube import diff as diff_mod
from core.kube import render
from core.kube import spec as spec_mod

logger = logging.getLogger(__name__)

FIELD_MANAGER = render.FIELD_MANAGER
# Holds Deployment.spec.replicas for a moment while shipit lets go of it, so
# the field is not reset to 1 before the HPA takes it (see _hand_over_replicas).
HANDOVER_FIELD_MANAGER = "shipit-handover-to-hpa"

FAILING_WAIT_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)
LOG_TAIL_LINES = 20
FAILURE_LOG_TIMEOUT = 5.0
_MAX_MESSAGE = 800
_VERSION = re.compile(r"[A-Za-z0-9.+_-]{1,64}")  # a gitVersion such as v1.31.2+k3s1; else "unknown"

# Who a namespace came from, as the namespace claim records it: "granted" by an admin (deploy into it
# as it is, never relabel it) or "created" by shipit (exists only with shipit's labels for the project).
NamespaceOrigin = Literal["granted", "created"]
# Ask for metadata only when checking ownership: smaller answers, and a Secret's values never travel.
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclasses.dataclass(frozen=True)
class _Kind:
    api_version: str
    plural: str
    namespaced: bool


# What apply/delete know how to address; rendering never produces anything else.
KINDS: dict[str, _Kind] = {
    "Namespace": _Kind("v1", "namespaces", namespaced=False),
    "Secret": _Kind("v1", "secrets", namespaced=True),
    "ConfigMap": _Kind("v1", "configmaps", namespaced=True),
    "Service": _Kind("v1", "services", namespaced=True),
    "Deployment": _Kind("apps/v1", "deployments", namespaced=True),
    "HorizontalPodAutoscaler": _Kind("autoscaling/v2", "horizontalpodautoscalers", namespaced=True),
    "Ingress": _Kind("networking.k8s.io/v1", "ingresses", namespaced=True),
    "Job": _Kind("batch/v1", "jobs", namespaced=True),
}


def _kind(kind: str) -> _Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise errors.PermanentError(f"shipit cannot manage objects of kind {kind!r}") from None


def _path(kind: str, *, namespace: str | None = None, name: str | None = None) -> str:
    info = _kind(kind)
    base = "/api/v1" if info.api_version == "v1" else f"/apis/{info.api_version}"
    if info.namespaced:
        if not namespace:
            raise errors.PermanentError(f"{kind} {name or ''} needs a namespace")
        base += f"/namespaces/{namespace}"
    base += f"/{info.plural}"
    return f"{base}/{name}" if name else base


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


# ---------------------------------------------------------------------------
# Error mapping: the one place HTTP and connection failures become core.errors


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _parse_status(body: bytes | str | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the queue's own backoff applies


_CONVERSION_FAILURES = ("failed to convert new object", "unable to convert unstructured object")
# resource.Quantity's own pattern, as quoted in the API server's error.
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


def _bad_quantities(obj: Any, path: str = "") -> list[str]:
    """Paths of resource quantities in a manifest that the API server cannot parse.

    Its error for them names no field; we find them ourselves so the user learns which one.
    """
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("requests", "limits") and path.endswith("resources") and isinstance(value, dict):
                found += [
                    f"{here}.{name}"
                    for name, quantity in value.items()
                    if not (isinstance(quantity, int | float) or _QUANTITY.match(str(quantity)))
                ]
            else:
                found += _bad_quantities(value, here)
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            found += _bad_quantities(item, f"{path}[{index}]")
    return found


class _AlreadyExists(errors.TransientError):
    """409 AlreadyExists on a create: still a TransientError to everyone but the creator that checks for it."""


def _status_only(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _http_error(
    *,
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    what: str,
    quote: bool = True,
) -> errors.ShipitError:
    """Map an API server answer to our errors.  The Status message never holds object contents
    beyond names and the offending field values the server quotes; we never add the request body.

    With `quote=False` (a server not yet trusted: adding a cluster) nothing the server sent is
    repeated, only the status code and its standard reason: a hostile server could put anything
    in its answer, and this message is shown to the user and logged.
    """
    parsed = _parse_status(body) if quote else {}
    message = str(parsed.get("message") or parsed.get("reason") or "").strip()
    if quote and not message and isinstance(body, str | bytes) and body and not parsed:
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
    message = _truncate(message) if message else _status_only(status)
    text = f"{what}: {message}"
    if status == 401:
        return errors.PermanentError(f"{what}: the cluster rejected shipit's credentials (401): {message}")
    if status == 403:
        causes = (parsed.get("details") or {}).get("causes") or []
        if any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes):
            return errors.TransientError(f"{what}: the namespace is being deleted: {message}")
        return errors.PermanentError(f"{what}: permission missing on the cluster (403): {message}")
    if status == 404:
        return errors.NotFound(text)
    if status == 409:
        if parsed.get("reason") == "AlreadyExists":
            return _AlreadyExists(f"{what}: already exists: {message}")
        return errors.TransientError(f"{what}: conflict: {message}")
    if status == 500 and any(marker in message for marker in _CONVERSION_FAILURES):
        # The API server answers 500 when an applied object does not decode (a bad quantity, a
        # string for an int): a fault in what we sent, so retrying cannot help.
        return errors.PermanentError(f"{what}: rejected by the API server: {message}")
    if status == 429 or status >= 500:
        return errors.TransientError(text, retry_after=_retry_after(headers))
    return errors.PermanentError(f"{what}: rejected by the API server ({status}): {message}")


def _api_exception_error(
    exc: k8s_exceptions.ApiException, *, what: str, quote: bool = True
) -> errors.ShipitError:
    body: bytes | str | None = exc.body if exc.body else None
    if body is None and exc.reason:
        body = json.dumps({"message": exc.reason})
    headers = dict(exc.headers) if exc.headers else None
    return _http_error(status=int(exc.status or 0), body=body, headers=headers, what=what, quote=quote)


def _connection_error(exc: BaseException, *, what: str) -> errors.ShipitError:
    if isinstance(exc, aiohttp.ClientSSLError):
        return errors.PermanentError(f"{what}: TLS failure talking to the cluster: {exc}")
    if isinstance(exc, TimeoutError):
        return errors.TransientError(f"{what}: the cluster did not answer in time")
    return errors.TransientError(f"{what}: cluster unreachable: {type(exc).__name__}: {exc}")


_CONNECTION_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


# ---------------------------------------------------------------------------
# Small readers for API objects (plain dicts); the Any stays in here


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _conditions(deployment: dict[str, Any]) -> dict[str, Condition]:
    out: dict[str, Condition] = {}
    for raw in _list(_dig(deployment, "status", "conditions")):
        cond = Condition(
            type=_str(_dig(raw, "type")),
            status=_str(_dig(raw, "status")),
            reason=_str(_dig(raw, "reason")),
            message=_str(_dig(raw, "message")),
        )
        out[cond.type] = cond
    return out


def _desired(deployment: dict[str, Any]) -> int:
    return _int(_dig(deployment, "spec", "replicas"), 1)


def progress_of(deployment: dict[str, Any]) -> RolloutProgress:
    status = _dig(deployment, "status")
    return RolloutProgress(
        ready=_int(_dig(status, "readyReplicas")),
        updated=_int(_dig(status, "updatedReplicas")),
        desired=_desired(deployment),
    )


def _template_identity(deployment: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """Labels and checksum annotation of the current pod template: they pick its pods."""
    meta = _dig(deployment, "spec", "template", "metadata")
    checksum = _dig(meta, "annotations", render.ANNOTATION_CHECKSUM)
    return _str_dict(_dig(meta, "labels")), checksum if isinstance(checksum, str) else None


def _label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _is_current_pod(pod: dict[str, Any], identity: tuple[dict[str, str], str | None]) -> bool:
    labels, checksum = identity
    pod_labels = _str_dict(_dig(pod, "metadata", "labels"))
    if not labels.items() <= pod_labels.items():
        return False
    pod_checksum = _dig(pod, "metadata", "annotations", render.ANNOTATION_CHECKSUM)
    return bool(pod_checksum == checksum)


@dataclasses.dataclass(frozen=True)
class _Failure:
    reason: str
    message: str
    pod: str | None
    container: str | None


def _failing_container(pods: Mapping[str, dict[str, Any]]) -> _Failure | None:
    for pod_name in sorted(pods):
        pod = pods[pod_name]
        statuses = _list(_dig(pod, "status", "initContainerStatuses")) + _list(
            _dig(pod, "status", "containerStatuses")
        )
        for cs in statuses:
            waiting = _dig(cs, "state", "waiting")
            reason = _str(_dig(waiting, "reason"))
            if reason in FAILING_WAIT_REASONS:
                detail = _str(_dig(waiting, "message"))
                container = _str(_dig(cs, "name"))
                message = f"pod {pod_name} container {container}: {reason}"
                if detail:
                    message += f": {_truncate(detail)}"
                return _Failure(reason, message, pod_name, container)
    return None


def _why_not_started(pod: dict[str, Any]) -> str | None:
    """Why a pod has no container that ever ran (so no logs to show), or None if one did."""
    name = _str(_dig(pod, "metadata", "name"))
    statuses = _list(_dig(pod, "status", "containerStatuses"))
    for cs in statuses:
        if (
            _dig(cs, "state", "running")
            or _dig(cs, "state", "terminated")
            or _dig(cs, "lastState", "terminated")
        ):
            return None
    for cond in _list(_dig(pod, "status", "conditions")):
        if _dig(cond, "type") == "PodScheduled" and _dig(cond, "status") == "False":
            detail = _str(_dig(cond, "message")) or _str(_dig(cond, "reason"))
            return f"pod {name} is not scheduled: {_truncate(detail)}"
    for cs in statuses:
        reason = _str(_dig(cs, "state", "waiting", "reason"))
        if reason:
            return f"pod {name} has not started: {reason}"
    return f"pod {name} has not started (phase {_str(_dig(pod, 'status', 'phase')) or 'unknown'})"


def evaluate_rollout(deployment: dict[str, Any], pods: Mapping[str, dict[str, Any]]) -> RolloutResult | None:
    """The verdict on a rollout from the Deployment and its current pods; None while it is undecided.

    Pure, so the rules can be read (and tested) in one place.  `pods` must hold
    only pods of the Deployment's current template.
    """
    progress = progress_of(deployment)
    failure = _failing_container(pods)
    if failure is not None:
        return RolloutResult(
            ok=False,
            reason=failure.reason,
            message=failure.message,
            ready=progress.ready,
            desired=progress.desired,
        )
    generation = _int(_dig(deployment, "metadata", "generation"))
    observed = _int(_dig(deployment, "status", "observedGeneration"))
    if observed < generation:
        return None  # the controller has not seen this spec yet; its status is about an older one
    conditions = _conditions(deployment)
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
    status = _dig(deployment, "status")
    total = _int(_dig(status, "replicas"))
    available = _int(_dig(status, "availableReplicas"))
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
# Ownership: whose an existing object is, from its labels; who made it, from its managedFields


def _count_fields(fields: Any) -> int:
    if not isinstance(fields, dict):
        return 0
    return sum(1 + _count_fields(value) for value in fields.values())


def field_manager_of(obj: Mapping[str, Any]) -> str:
    """The field manager owning most of the object's own fields: in practice, who made it.

    Entries for subresources (status, scale) are controllers at work, not the author.
    """
    best, most = "", -1
    for entry in _list(_dig(obj, "metadata", "managedFields")):
        if _dig(entry, "subresource"):
            continue
        manager, count = _str(_dig(entry, "manager")), _count_fields(_dig(entry, "fieldsV1"))
        if manager and count > most:
            best, most = manager, count
    return best or "unknown"


def _where(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def ownership_problem(
    obj: Mapping[str, Any],
    *,
    kind: str,
    namespace: str | None,
    name: str,
    project: str,
    app: str,
    instance: str | None = None,
) -> str | None:
    """Why shipit must not apply over or delete this existing object for `project`'s `app`; None if ours.

    Ours: managed-by shipit with this project and app.  Objects from shipit versions before the
    project label (managed-by shipit, no shipit.dev/project, app.kubernetes.io/instance the app) are
    ours too: the namespace's claim by the project was checked in core before anything reaches here.
    """
    labels = _str_dict(_dig(obj, "metadata", "labels"))
    if labels.get(render.LABEL_MANAGED_BY) == FIELD_MANAGER:
        owner_project, owner_app = labels.get(render.LABEL_PROJECT), labels.get(render.LABEL_APP)
        if owner_project == project and owner_app == app:
            return None
        if (
            owner_project is None
            and owner_app in (None, app)
            and labels.get(render.LABEL_INSTANCE) == (instance or app)
        ):
            return None
        if owner_project == project:
            whose = f"belongs to app {owner_app or '(none)'} of this project"
        elif owner_project is None:
            whose = f"is labelled managed-by shipit but not for app {app}"
        else:
            whose = "belongs to another shipit project"
    else:
        whose = "was not created by shipit"
    return f"{_where(kind, namespace, name)} already exists and {whose} (field manager {field_manager_of(obj)!r})"


def namespace_problem(obj: Mapping[str, Any], *, name: str, project: str) -> str | None:
    """Why namespace `name` is not one shipit created for `project`; None if it is."""
    labels = _str_dict(_dig(obj, "metadata", "labels"))
    owned = render.ownership_labels(project=project)
    if owned.items() <= labels.items():
        return None
    if labels.get(render.LABEL_MANAGED_BY) == FIELD_MANAGER and render.LABEL_PROJECT in labels:
        whose = "belongs to another shipit project"
    else:
        whose = f"was not created by shipit for project {project}"
    return f"namespace {name} already exists and {whose} (field manager {field_manager_of(obj)!r})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Target:
    """One object shipit means to apply or delete, and whose it must be."""

    kind: str
    name: str
    namespace: str | None
    project: str
    app: str
    instance: str

    def problem(self, obj: Mapping[str, Any]) -> str | None:
        return ownership_problem(
            obj,
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            project=self.project,
            app=self.app,
            instance=self.instance,
        )


def _target_of(manifest: Mapping[str, Any]) -> _Target:
    """Where a rendered manifest goes and, from its own ownership labels, whose it is."""
    kind = _str(manifest.get("kind"))
    name = _str(_dig(manifest, "metadata", "name"))
    if not name:
        raise errors.PermanentError(f"{kind} manifest has no metadata.name")
    labels = _str_dict(_dig(manifest, "metadata", "labels"))
    project, app = labels.get(render.LABEL_PROJECT), labels.get(render.LABEL_APP)
    if labels.get(render.LABEL_MANAGED_BY) != FIELD_MANAGER or not project or not app:
        raise errors.PermanentError(f"{kind} {name}: the manifest carries no shipit ownership labels")
    return _Target(
        kind=kind,
        name=name,
        namespace=_str(_dig(manifest, "metadata", "namespace")) or None,
        project=project,
        app=app,
        instance=labels.get(render.LABEL_INSTANCE) or app,
    )


_NOT_TAKEN_OVER = (
    "shipit does not take over objects it did not create: remove or rename them, "
    "or deploy the app under another name or into another namespace"
)


async def _all(awaitables: list[Awaitable[Any]]) -> None:
    """Run concurrently, wait for all, then raise the first error (a core.errors one, not a group)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


@dataclasses.dataclass(frozen=True)
class _WatchEvent:
    source: str  # "deployment" | "pod"
    type: str  # ADDED, MODIFIED, DELETED, or END / ERROR from our pump
    obj: dict[str, Any] | None = None
    error: BaseException | None = None


class _Relist(Exception):
    """The watch lost its place (410 Gone, stream ended, template changed): list again."""


# ---------------------------------------------------------------------------


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


def _refuse_local_references(kubeconfig: dict[str, Any]) -> None:
    sections = (("clusters", "cluster", _FORBIDDEN_CLUSTER_KEYS), ("users", "user", _FORBIDDEN_USER_KEYS))
    for section, inner, forbidden in sections:
        for entry in _list(kubeconfig.get(section)):
            body = _dig(entry, inner)
            if not isinstance(body, dict):
                continue
            for key in forbidden:
                if body.get(key):
                    raise errors.InvalidInput(
                        f"the kubeconfig's {section[:-1]} {_str(_dig(entry, 'name'))!r} uses {key!r}; "
                        "shipit accepts only inline credentials (certificate-authority-data, "
                        "client-certificate-data, client-key-data, token)",
                        field="kubeconfig",
                    )


class Kube:
    """One cluster: a single ApiClient (one aiohttp session) built from kubeconfig text."""

    def __init__(self, *, api_client: Any, request_timeout: float) -> None:
        self._api = api_client
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=min(request_timeout, 10.0))
        self._apps = k8s_client.AppsV1Api(api_client)
        self._core = k8s_client.CoreV1Api(api_client)
        # (namespace, project, origin) ensured by this client; saves a round trip per deploy
        self._namespaces: set[tuple[str, str, str]] = set()

    @classmethod
    async def from_kubeconfig(
        cls, *, kubeconfig: str, request_timeout: float = 30.0, local_references: bool = False
    ) -> Kube:
        """`local_references=True` only for the operator's own kubeconfig read on their own machine
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
                f"the kubeconfig cannot be used: {type(e).__name__}: {_truncate(str(e))}", field="kubeconfig"
            ) from e
        return cls(api_client=api_client, request_timeout=request_timeout)

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    # -- raw HTTP ----------------------------------------------------------

    async def _open(
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
            response = await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": accept, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout or self._timeout,
            )
        except k8s_exceptions.ApiException as e:
            # Unquoted: not even in a traceback's cause (ApiException's text holds the body).
            raise _api_exception_error(e, what=what, quote=quote_server) from (e if quote_server else None)
        except _CONNECTION_ERRORS as e:
            raise _connection_error(e, what=what) from e
        except k8s_config.ConfigException as e:
            raise errors.PermanentError(f"{what}: cluster credentials unusable: {e}") from e
        if not 200 <= response.status <= 299:
            try:
                raw = await response.read()
            except _CONNECTION_ERRORS:
                raw = b""
            finally:
                response.release()
            raise _http_error(
                status=response.status, body=raw, headers=response.headers, what=what, quote=quote_server
            )
        return response

    async def _request_bytes(self, method: str, path: str, *, what: str, **kwargs: Any) -> bytes:
        response = await self._open(method, path, what=what, **kwargs)
        try:
            data: bytes = await response.read()
        except _CONNECTION_ERRORS as e:
            raise _connection_error(e, what=what) from e
        finally:
            response.release()
        return data

    async def _request(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        data = await self._request_bytes(method, path, what=what, **kwargs)
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
        version = await self._request(
            "GET", "/version", what=f"reach the cluster at {self.host}", quote_server=False
        )
        # /version is public on most clusters; discovery (/api) needs an authenticated user, so it
        # proves the credentials without asking for any permission a namespace-scoped one may lack.
        await self._request(
            "GET", "/api", what=f"authenticate to the cluster at {self.host}", quote_server=False
        )
        found = _str(version.get("gitVersion"))
        return found if _VERSION.fullmatch(found) else "unknown"

    async def get(self, *, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as the API server has it, or None.  Do not log what this returns (Secrets)."""
        try:
            return await self._request(
                "GET",
                _path(kind, namespace=namespace, name=name),
                what=f"read {kind} {namespace or ''}/{name}",
            )
        except errors.NotFound:
            return None

    # -- apply / delete ----------------------------------------------------------

    async def _current(self, target: _Target, *, full: bool = False) -> dict[str, Any] | None:
        """What exists under the target's kind and name (its metadata only unless `full`), or None."""
        try:
            return await self._request(
                "GET",
                _path(target.kind, namespace=target.namespace, name=target.name),
                what=f"read {_where(target.kind, target.namespace, target.name)}",
                accept="application/json" if full else _METADATA_ONLY,
            )
        except errors.NotFound:
            return None

    async def _current_all(self, targets: list[_Target]) -> list[dict[str, Any] | None]:
        """One concurrent read per target: the single round trip ownership costs an apply.

        The Deployment is read whole: handing its replicas over to an HPA needs its current value.
        """
        results = await asyncio.gather(
            *(self._current(t, full=t.kind == "Deployment") for t in targets), return_exceptions=True
        )
        found: list[dict[str, Any] | None] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            found.append(result)
        return found

    @staticmethod
    def _refuse_foreign(targets: list[_Target], found: list[dict[str, Any] | None]) -> None:
        problems = [
            problem
            for target, obj in zip(targets, found, strict=True)
            if obj is not None and (problem := target.problem(obj)) is not None
        ]
        if problems:
            raise errors.Conflict(f"{'; '.join(problems)}. {_NOT_TAKEN_OVER}")

    async def apply(self, *, manifests: list[dict[str, Any]]) -> None:
        """Server-side apply each manifest in order, as field manager `shipit`.

        Every manifest must carry shipit's ownership labels.  What already exists under the same
        kind and name must carry the same project and app, or nothing is applied (Conflict).
        """
        targets = [_target_of(m) for m in manifests]
        found = await self._current_all(targets)
        self._refuse_foreign(targets, found)
        await self._apply_checked(list(zip(targets, manifests, found, strict=True)))

    async def _apply_checked(
        self, items: list[tuple[_Target, dict[str, Any], dict[str, Any] | None]]
    ) -> None:
        """Apply manifests whose existing objects were proven ours (or did not exist), in order."""
        for target, manifest, current in items:
            if target.kind == "Deployment" and _dig(manifest, "spec", "replicas") is None:
                await self._hand_over_replicas(target=target, current=current)
            await self._apply_one(
                manifest,
                kind=target.kind,
                name=target.name,
                namespace=target.namespace,
                field_manager=FIELD_MANAGER,
                # Force takes fields back from other managers (the HPA's replicas after autoscaling is
                # turned off): only on objects proven ours.  A new object is applied without it, so
                # one created meanwhile by someone else conflicts (409) instead of being taken.
                force=current is not None,
            )
            logger.debug("applied %s", _where(target.kind, target.namespace, target.name))

    async def _apply_one(
        self,
        manifest: dict[str, Any],
        *,
        kind: str,
        name: str,
        namespace: str | None,
        field_manager: str,
        force: bool,
    ) -> dict[str, Any]:
        path = _path(kind, namespace=namespace, name=name)
        query = [("fieldManager", field_manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        try:
            return await self._request(
                "PATCH",
                path,
                what=f"apply {_where(kind, namespace, name)}",
                query=query,
                body=manifest,
                content_type="application/apply-patch+yaml",
            )
        except errors.PermanentError as e:
            bad = _bad_quantities(manifest) if "quantities must match" in str(e) else []
            if not bad:
                raise
            raise errors.PermanentError(f"{e} (invalid quantity at {', '.join(bad)})") from e

    async def _hand_over_replicas(self, *, target: _Target, current: dict[str, Any] | None) -> None:
        """Let go of spec.replicas without the API server resetting it to 1.

        When an applier stops sending a field it alone owns, server-side apply
        removes it and defaulting puts back replicas=1: a 10-pod app would drop
        to one pod until the HPA reacts.  As the Kubernetes docs advise, first
        make a second manager co-own the current value, then apply without it.
        `current` is the whole Deployment as read before the apply.
        """
        if current is None:
            return
        owns_replicas = any(
            _dig(entry, "manager") == FIELD_MANAGER
            and _dig(entry, "operation") == "Apply"
            and _dig(entry, "fieldsV1", "f:spec", "f:replicas") is not None
            for entry in _list(_dig(current, "metadata", "managedFields"))
        )
        if not owns_replicas:
            return
        namespace, name = target.namespace or "", target.name
        replicas = _int(_dig(current, "spec", "replicas"), 1)
        partial = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        await self._apply_one(
            partial,
            kind="Deployment",
            name=name,
            namespace=namespace,
            field_manager=HANDOVER_FIELD_MANAGER,
            force=True,  # the Deployment was proven ours before we got here
        )
        logger.info("handed Deployment %s/%s replicas=%d over to the HPA", namespace, name, replicas)

    async def apply_workload(
        self, *, spec: spec_mod.WorkloadSpec, namespace_origin: NamespaceOrigin = "granted"
    ) -> None:
        """Make the cluster match `spec`: what it turned off is deleted, the rest applied.

        Three round trips on the hot path: one concurrent read of every object the spec names (so
        nothing shipit did not create is applied over or deleted: Conflict before any change), then
        the Secret together with the deletes (an HPA left running would rescale the Deployment that
        just got its replicas back), then the Deployment (its pods read the Secret) together with
        everything that does not depend on it.  The namespace is ensured once per client (see
        ensure_namespace for `namespace_origin`); if it was deleted behind our back, the apply
        fails with NotFound and is retried once after ensuring it again.
        """
        key = (spec.namespace, spec.project, namespace_origin)
        # A created namespace is checked on every deploy: a cached "ours" could outlive a teardown
        # done elsewhere and a foreign namespace made since under the same name.
        if key not in self._namespaces or namespace_origin == "created":
            await self.ensure_namespace(
                name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
            )
        try:
            await self._apply_workload(spec)
        except errors.NotFound:
            self._namespaces.discard(key)
            await self.ensure_namespace(
                name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
            )
            await self._apply_workload(spec)

    async def _apply_workload(self, spec: spec_mod.WorkloadSpec) -> None:
        manifests = render.render(spec)
        targets = [_target_of(m) for m in manifests]
        absent = [
            _Target(
                kind=kind,
                name=name,
                namespace=spec.namespace,
                project=spec.project,
                app=spec.app,
                instance=spec.instance or spec.app,
            )
            for kind, name in render.render_absent(spec)
        ]
        found = await self._current_all(targets + absent)
        present, gone = found[: len(targets)], found[len(targets) :]
        self._refuse_foreign(targets, present)
        deletes: list[Awaitable[Any]] = []
        for target, obj in zip(absent, gone, strict=True):
            if obj is None:
                continue
            problem = target.problem(obj)
            if problem is not None:
                # Not ours to delete, and nothing we apply depends on it: leave it be.
                logger.warning("%s: left alone although app %s has none", problem, spec.app)
                continue
            deletes.append(self._delete_exact(target, uid=_str(_dig(obj, "metadata", "uid"))))
        items = list(zip(targets, manifests, present, strict=True))
        await _all([*deletes, self._apply_checked([i for i in items if i[0].kind == "Secret"])])
        await _all([self._apply_checked([i]) for i in items if i[0].kind != "Secret"])

    async def _delete_exact(self, target: _Target, *, uid: str) -> bool:
        """Delete the object read and checked before; False when it is gone already.

        The uid precondition makes sure it is that object, not one created again under its name since.
        """
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request(
                "DELETE",
                _path(target.kind, namespace=target.namespace, name=target.name),
                what=f"delete {_where(target.kind, target.namespace, target.name)}",
                body=body,
            )
        except errors.NotFound:
            return False
        return True

    async def delete(self, *, kind: str, name: str, namespace: str | None, project: str, app: str) -> bool:
        """Delete one object of `project`'s `app`; False when it did not exist.

        An object that exists but is not that app's is left alone: Conflict naming it and its manager.
        """
        target = _Target(kind=kind, name=name, namespace=namespace, project=project, app=app, instance=app)
        current = await self._current(target)
        if current is None:
            return False
        problem = target.problem(current)
        if problem is not None:
            raise errors.Conflict(f"{problem}; shipit deletes only what it created, so it is left as it is")
        return await self._delete_exact(target, uid=_str(_dig(current, "metadata", "uid")))

    # -- namespaces ----------------------------------------------------------

    async def ensure_namespace(
        self,
        *,
        name: str,
        project: str,
        namespace_origin: NamespaceOrigin = "granted",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Make sure namespace `name` exists for `project`, never adopting one shipit did not create.

        "granted" (an admin handed the namespace to the project): an existing namespace is used as
        it is, its labels untouched; a missing one is created with shipit's labels.
        "created" (shipit's own, e.g. a preview's): created with shipit's labels; one that exists
        is accepted only if it carries them for this project, else Conflict.
        """
        target = _Target(kind="Namespace", name=name, namespace=None, project=project, app="", instance="")
        current = await self._current(target)
        if current is None:
            current = await self._create_namespace(name=name, project=project, labels=labels)
        if current is not None and namespace_origin == "created":
            problem = namespace_problem(current, name=name, project=project)
            if problem is not None:
                raise errors.Conflict(
                    f"{problem}; shipit creates this namespace itself and does not take over an "
                    "existing one: delete or rename it, or pick another name"
                )
        if namespace_origin == "granted":
            self._namespaces.add((name, project, namespace_origin))

    async def _create_namespace(
        self, *, name: str, project: str, labels: Mapping[str, str] | None
    ) -> dict[str, Any] | None:
        """Create the namespace with shipit's labels; if someone else was faster, return theirs to check.

        A create (not an apply) so that a namespace made meanwhile is never merged into.
        """
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {**(labels or {}), **render.ownership_labels(project=project)},
            },
        }
        try:
            await self._request(
                "POST",
                _path("Namespace"),
                what=f"create namespace {name}",
                query=[("fieldManager", FIELD_MANAGER)],
                body=manifest,
            )
        except _AlreadyExists:
            return await self.get(kind="Namespace", name=name)
        return None

    async def namespace_exists(self, *, name: str) -> bool:
        return await self.get(kind="Namespace", name=name) is not None

    async def delete_namespace(self, *, name: str, project: str) -> bool:
        """Start deleting a namespace shipit created for `project`; False when it did not exist.

        Any other namespace is left alone: Conflict naming it and its manager.
        """
        self._namespaces = {key for key in self._namespaces if key[0] != name}
        target = _Target(kind="Namespace", name=name, namespace=None, project=project, app="", instance="")
        current = await self._current(target)
        if current is None:
            return False
        problem = namespace_problem(current, name=name, project=project)
        if problem is not None:
            raise errors.Conflict(
                f"{problem}; shipit deletes only namespaces it created, so it is left as it is"
            )
        if _dig(current, "metadata", "deletionTimestamp"):
            return True  # already going; deleting again would only answer 409
        return await self._delete_exact(target, uid=_str(_dig(current, "metadata", "uid")))

    async def service_account_token(self, *, namespace: str, service_account: str) -> tuple[str, str]:
        """(token, base64 CA) from the `kubernetes.io/service-account-token` Secret of an account, as
        the token controller filled it in.  For building a kubeconfig; the token is never logged."""
        what = f"read the token of service account {namespace}/{service_account}"
        listing = await self._request(
            "GET",
            _path("Secret", namespace=namespace),
            what=what,
            query=[("fieldSelector", "type=kubernetes.io/service-account-token")],
        )
        for item in _list(listing.get("items")):
            annotations = _str_dict(_dig(item, "metadata", "annotations"))
            if annotations.get("kubernetes.io/service-account.name") != service_account:
                continue
            data = _str_dict(item.get("data"))
            if data.get("token") and data.get("ca.crt"):
                return base64.b64decode(data["token"]).decode(), data["ca.crt"]
        raise errors.NotFound(
            f"{what}: no filled-in Secret of type kubernetes.io/service-account-token for it in "
            f"namespace {namespace} (apply manifests/target-cluster first; the token controller "
            "fills it in within seconds)"
        )

    # -- status and logs -------------------------------------------------------

    async def deployment_status(self, *, namespace: str, name: str) -> DeploymentStatus | None:
        deployment = await self.get(kind="Deployment", namespace=namespace, name=name)
        if deployment is None:
            return None
        containers = _list(_dig(deployment, "spec", "template", "spec", "containers"))
        status = _dig(deployment, "status")
        revision = _dig(deployment, "metadata", "labels", render.LABEL_REVISION)
        return DeploymentStatus(
            replica_sets=await self._replica_sets(namespace=namespace, deployment=deployment),
            image=_str(_dig(containers[0], "image")) if containers else "",
            revision=revision if isinstance(revision, str) else None,
            desired=_desired(deployment),
            ready=_int(_dig(status, "readyReplicas")),
            updated=_int(_dig(status, "updatedReplicas")),
            available=_int(_dig(status, "availableReplicas")),
            generation=_int(_dig(deployment, "metadata", "generation")),
            observed_generation=_int(_dig(status, "observedGeneration")),
            conditions=list(_conditions(deployment).values()),
        )

    async def _replica_sets(self, *, namespace: str, deployment: dict[str, Any]) -> list[ReplicaSetStatus]:
        """The Deployment's ReplicaSets (owned by it), newest first; old ones only while they have pods."""
        uid = _str(_dig(deployment, "metadata", "uid"))
        match = _str_dict(_dig(deployment, "spec", "selector", "matchLabels"))
        listing = await self._request(
            "GET",
            f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            what=f"list replica sets in {namespace}",
            query=[("labelSelector", _label_selector(match))] if match else [],
        )
        owned: list[tuple[int, dict[str, Any]]] = []
        for rs in _list(listing.get("items")):
            owners = _list(_dig(rs, "metadata", "ownerReferences"))
            if not any(_str(_dig(o, "uid")) == uid for o in owners):
                continue
            number = _str(_dig(rs, "metadata", "annotations", "deployment.kubernetes.io/revision"))
            owned.append((int(number) if number.isdigit() else 0, rs))
        owned.sort(key=lambda item: item[0], reverse=True)
        out: list[ReplicaSetStatus] = []
        for i, (_, rs) in enumerate(owned):
            desired, ready = _int(_dig(rs, "spec", "replicas")), _int(_dig(rs, "status", "readyReplicas"))
            if i > 0 and desired == 0 and ready == 0 and _int(_dig(rs, "status", "replicas")) == 0:
                continue
            containers = _list(_dig(rs, "spec", "template", "spec", "containers"))
            revision = _dig(rs, "spec", "template", "metadata", "labels", render.LABEL_REVISION)
            out.append(
                ReplicaSetStatus(
                    name=_str(_dig(rs, "metadata", "name")),
                    revision=revision if isinstance(revision, str) else None,
                    image=_str(_dig(containers[0], "image")) if containers else "",
                    desired=desired,
                    ready=ready,
                    new=i == 0,
                )
            )
        return out

    async def _list_pods(self, *, namespace: str, selector: str) -> dict[str, Any]:
        return await self._request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            what=f"list pods in {namespace}",
            query=[("labelSelector", selector)],
        )

    async def _pod_log_lines(
        self,
        *,
        namespace: str,
        pod: str,
        container: str | None,
        tail_lines: int,
        previous: bool = False,
        follow: bool = False,
        request_timeout: float | None = None,
    ) -> AsyncIterator[str]:
        query = [("tailLines", str(tail_lines))]
        if container:
            query.append(("container", container))
        if previous:
            query.append(("previous", "true"))
        if follow:
            query.append(("follow", "true"))
        what = f"read logs of pod {namespace}/{pod}"
        if follow:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=None)
        elif request_timeout is not None:
            timeout = aiohttp.ClientTimeout(total=request_timeout)
        else:
            timeout = self._timeout
        response = await self._open(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
            what=what,
            query=query,
            accept="*/*",
            request_timeout=timeout,
        )
        try:
            async for raw in response.content:
                yield raw.decode(errors="replace").rstrip("\r\n")
        except _CONNECTION_ERRORS as e:
            raise _connection_error(e, what=what) from e
        finally:
            response.release()

    async def pod_logs(
        self, *, namespace: str, app: str, tail_lines: int = 100, follow: bool = False
    ) -> AsyncIterator[str]:
        """Log lines of the app's pods, prefixed with the pod name when there are several.

        With follow, lines of all pods interleave as they come, until every stream ends.
        """
        listing = await self._list_pods(namespace=namespace, selector=f"{render.LABEL_NAME}={app}")
        pods = sorted(_str(_dig(p, "metadata", "name")) for p in _list(listing.get("items")))
        if not pods:
            raise errors.NotFound(f"app {app} has no pods in namespace {namespace}")
        prefix = len(pods) > 1

        async def lines_of(pod: str) -> AsyncIterator[str]:
            head = f"{pod}: " if prefix else ""
            try:
                async for line in self._pod_log_lines(
                    namespace=namespace, pod=pod, container=app, tail_lines=tail_lines, follow=follow
                ):
                    yield head + line
            except (errors.PermanentError, errors.NotFound) as e:
                # e.g. 400 "container is waiting to start", or a node that serves no logs (kwok):
                # say so and go on with the other pods.
                yield f"{head}(no logs: {e})"

        if not follow:
            for pod in pods:
                async for line in lines_of(pod):
                    yield line
            return

        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(maxsize=1000)

        async def pump(pod: str) -> None:
            try:
                async for line in lines_of(pod):
                    await queue.put(line)
            except Exception as e:
                await queue.put(e)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(pod)) for pod in pods]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _failure_logs(
        self, *, namespace: str, failure: _Failure | None, pods: Mapping[str, Any]
    ) -> list[str]:
        """The last lines of the failing pod, or one line saying why there are none."""
        pod = failure.pod if failure else None
        container = failure.container if failure else None
        if pod is None:
            # No container in a known failure state (e.g. progress deadline): take an unready pod.
            for name in sorted(pods):
                ready = [
                    c
                    for c in _list(_dig(pods[name], "status", "conditions"))
                    if _dig(c, "type") == "Ready" and _dig(c, "status") == "True"
                ]
                if not ready:
                    pod = name
                    break
        if pod is None:
            return ["(no logs: no failing pod found)"]
        if failure is None:
            never_started = _why_not_started(pods[pod])
            if never_started is not None:
                return [f"(no logs: {never_started})"]
        if failure is not None and failure.reason in {"ImagePullBackOff", "ErrImagePull", "InvalidImageName"}:
            return [f"(no logs: the container never started: {failure.reason})"]
        attempts = [True, False] if failure is not None and failure.reason == "CrashLoopBackOff" else [False]
        last_error = ""
        for previous in attempts:
            try:
                lines = [
                    line
                    async for line in self._pod_log_lines(
                        namespace=namespace,
                        pod=pod,
                        container=container,
                        tail_lines=LOG_TAIL_LINES,
                        previous=previous,
                        # Logs only decorate a failure report: never let them hold it up for long.
                        request_timeout=FAILURE_LOG_TIMEOUT,
                    )
                ]
            except errors.ShipitError as e:
                last_error = str(e)
                continue
            return lines[-LOG_TAIL_LINES:] if lines else [f"(no logs: pod {pod} wrote nothing)"]
        return [f"(no logs from pod {pod}: {_truncate(last_error)})"]

    # -- rollouts ----------------------------------------------------------------

    async def wait_rollout(
        self,
        *,
        namespace: str,
        name: str,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole rollout, not one call
        on_progress: Callable[[RolloutProgress], Awaitable[None]] | None = None,
    ) -> RolloutResult:
        """Follow a Deployment's rollout until it is Available at its current generation, fails, or times out.

        Safe to call again after a crash: the first list shows the current
        state, so a finished rollout returns at once.
        """
        last: dict[str, Any] = {}
        reported: list[RolloutProgress] = []

        async def report(deployment: dict[str, Any]) -> None:
            last["deployment"] = deployment
            progress = progress_of(deployment)
            if on_progress is not None and (not reported or reported[-1] != progress):
                reported.append(progress)
                await on_progress(progress)

        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    try:
                        return await self._follow_rollout(
                            namespace=namespace, name=name, report=report, loop_deadline=deadline.when()
                        )
                    except _Relist:
                        continue
        except TimeoutError:
            if not deadline.expired():
                raise errors.TransientError(
                    f"watch rollout of {namespace}/{name}: timed out talking to the cluster"
                ) from None
        progress = progress_of(last["deployment"]) if "deployment" in last else None
        return RolloutResult(
            ok=False,
            reason="Timeout",
            message=f"deployment {namespace}/{name} was not Available within {timeout:g}s",
            ready=progress.ready if progress else 0,
            desired=progress.desired if progress else 0,
        )

    async def _follow_rollout(
        self,
        *,
        namespace: str,
        name: str,
        report: Callable[[dict[str, Any]], Awaitable[None]],
        loop_deadline: float | None,
    ) -> RolloutResult:
        what = f"watch rollout of {namespace}/{name}"
        listing = await self._request(
            "GET",
            _path("Deployment", namespace=namespace),
            what=what,
            query=[("fieldSelector", f"metadata.name={name}")],
        )
        items = _list(listing.get("items"))
        if not items:
            raise errors.NotFound(f"deployment {namespace}/{name} does not exist")
        deployment: dict[str, Any] = items[0]
        deployment_rv = _str(_dig(listing, "metadata", "resourceVersion"))
        identity = _template_identity(deployment)
        selector = _label_selector(identity[0])
        pod_listing = await self._list_pods(namespace=namespace, selector=selector)
        pods = {
            _str(_dig(p, "metadata", "name")): p
            for p in _list(pod_listing.get("items"))
            if _is_current_pod(p, identity)
        }
        pods_rv = _str(_dig(pod_listing, "metadata", "resourceVersion"))

        await report(deployment)
        verdict = evaluate_rollout(deployment, pods)
        if verdict is not None:
            return await self._finish(namespace=namespace, verdict=verdict, pods=pods)

        # Streams end by themselves near our deadline, or every 5 minutes on a long wait: we then
        # list again, which also refreshes a resourceVersion the server may have compacted away.
        remaining = 300.0
        if loop_deadline is not None:
            remaining = loop_deadline - asyncio.get_running_loop().time()
        watch_seconds = max(1, min(300, int(remaining) + 1))
        queue: asyncio.Queue[_WatchEvent] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                self._pump(
                    queue,
                    "deployment",
                    self._apps.list_namespaced_deployment,
                    namespace=namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=deployment_rv,
                    timeout_seconds=watch_seconds,
                )
            ),
            asyncio.create_task(
                self._pump(
                    queue,
                    "pod",
                    self._core.list_namespaced_pod,
                    namespace=namespace,
                    label_selector=selector,
                    resource_version=pods_rv,
                    timeout_seconds=watch_seconds,
                )
            ),
        ]
        try:
            while True:
                event = await queue.get()
                if event.type == "END":
                    raise _Relist()
                if event.type == "ERROR":
                    exc = event.error
                    if isinstance(exc, k8s_exceptions.ApiException):
                        if exc.status == 410:
                            logger.debug("%s: resourceVersion too old, listing again", what)
                            raise _Relist()
                        raise _api_exception_error(exc, what=what) from exc
                    if isinstance(exc, _CONNECTION_ERRORS):
                        raise _connection_error(exc, what=what) from exc
                    raise errors.TransientError(f"{what}: watch failed: {type(exc).__name__}") from exc
                obj = event.obj or {}
                if event.source == "deployment":
                    if event.type == "DELETED":
                        progress = progress_of(deployment)
                        return RolloutResult(
                            ok=False,
                            reason="Deleted",
                            message=f"deployment {namespace}/{name} was deleted during the rollout",
                            ready=progress.ready,
                            desired=progress.desired,
                        )
                    deployment = obj
                    if _template_identity(deployment) != identity:
                        # A newer spec was applied: its pods carry other labels; follow those instead.
                        raise _Relist()
                    await report(deployment)
                else:
                    pod_name = _str(_dig(obj, "metadata", "name"))
                    if event.type == "DELETED" or not _is_current_pod(obj, identity):
                        pods.pop(pod_name, None)
                    else:
                        pods[pod_name] = obj
                verdict = evaluate_rollout(deployment, pods)
                if verdict is not None:
                    return await self._finish(namespace=namespace, verdict=verdict, pods=pods)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish(
        self, *, namespace: str, verdict: RolloutResult, pods: Mapping[str, dict[str, Any]]
    ) -> RolloutResult:
        if verdict.ok:
            return verdict
        failure = _failing_container(pods)
        logs = await self._failure_logs(namespace=namespace, failure=failure, pods=pods)
        return dataclasses.replace(verdict, logs=logs)

    async def _pump(
        self, queue: asyncio.Queue[_WatchEvent], source: str, func: Callable[..., Any], **kwargs: Any
    ) -> None:
        """Forward one watch stream's events to `queue`, then an END or ERROR marker."""
        try:
            async with _SharedClientWatch(self._api) as stream:
                async for event in stream.stream(
                    func,
                    allow_watch_bookmarks=True,
                    _request_timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=10.0, sock_read=float(kwargs["timeout_seconds"]) + 30.0
                    ),
                    **kwargs,
                ):
                    kind = _str(_dig(event, "type"))
                    raw = _dig(event, "raw_object")
                    if kind in {"ADDED", "MODIFIED", "DELETED"} and isinstance(raw, dict):
                        await queue.put(_WatchEvent(source, kind, raw))
            await queue.put(_WatchEvent(source, "END"))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            await queue.put(_WatchEvent(source, "END"))
        except Exception as e:
            await queue.put(_WatchEvent(source, "ERROR", error=e))

    # -- the release phase ---------------------------------------------------------

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
        key = (spec.namespace, spec.project, namespace_origin)
        if key not in self._namespaces or namespace_origin == "created":
            await self.ensure_namespace(
                name=spec.namespace, project=spec.project, namespace_origin=namespace_origin
            )
        name = render.release_name(spec)
        job = render.render_release_job(
            spec,
            active_deadline_seconds=active_deadline_seconds,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
        )
        await self.apply(manifests=[render.render_release_secret(spec)])
        await self.apply(manifests=[job])
        applied = await self.get(kind="Job", name=name, namespace=spec.namespace)
        uid = _str(_dig(applied, "metadata", "uid"))
        if uid:
            await self.apply(manifests=[render.render_release_secret(spec, job_uid=uid)])
        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    try:
                        return await self._follow_release(namespace=spec.namespace, name=name)
                    except _Relist:
                        continue
        except TimeoutError:
            if not deadline.expired():
                raise errors.TransientError(
                    f"watch release job {spec.namespace}/{name}: timed out talking to the cluster"
                ) from None
        target = _target_of(job)
        await self._delete_exact(target, uid=uid)
        return ReleaseResult(
            ok=False,
            reason="Timeout",
            message=f"release job {spec.namespace}/{name} did not finish within {timeout:g}s; it was deleted",
            job=name,
        )

    async def _follow_release(self, *, namespace: str, name: str) -> ReleaseResult:
        what = f"watch release job {namespace}/{name}"
        listing = await self._request(
            "GET",
            _path("Job", namespace=namespace),
            what=what,
            query=[("fieldSelector", f"metadata.name={name}")],
        )
        items = _list(listing.get("items"))
        if not items:
            raise errors.NotFound(f"release job {namespace}/{name} does not exist")
        job: dict[str, Any] = items[0]
        job_rv = _str(_dig(listing, "metadata", "resourceVersion"))
        # The controller-uid label picks this very Job's pods, not those of an older one of the same name.
        selector = f"{JOB_UID_LABEL}={_str(_dig(job, 'metadata', 'uid'))}"
        pod_listing = await self._list_pods(namespace=namespace, selector=selector)
        pods = {_str(_dig(p, "metadata", "name")): p for p in _list(pod_listing.get("items"))}
        verdict = evaluate_release(job, pods)
        if verdict is not None:
            return await self._finish_release(namespace=namespace, verdict=verdict, pods=pods)
        batch = k8s_client.BatchV1Api(self._api)
        queue: asyncio.Queue[_WatchEvent] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                self._pump(
                    queue,
                    "job",
                    batch.list_namespaced_job,
                    namespace=namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=job_rv,
                    timeout_seconds=300,
                )
            ),
            asyncio.create_task(
                self._pump(
                    queue,
                    "pod",
                    self._core.list_namespaced_pod,
                    namespace=namespace,
                    label_selector=selector,
                    resource_version=_str(_dig(pod_listing, "metadata", "resourceVersion")),
                    timeout_seconds=300,
                )
            ),
        ]
        try:
            while True:
                event = await queue.get()
                if event.type == "END":
                    raise _Relist()
                if event.type == "ERROR":
                    exc = event.error
                    if isinstance(exc, k8s_exceptions.ApiException):
                        if exc.status == 410:
                            raise _Relist()
                        raise _api_exception_error(exc, what=what) from exc
                    if isinstance(exc, _CONNECTION_ERRORS):
                        raise _connection_error(exc, what=what) from exc
                    raise errors.TransientError(f"{what}: watch failed: {type(exc).__name__}") from exc
                obj = event.obj or {}
                if event.source == "job":
                    if event.type == "DELETED":
                        return ReleaseResult(
                            ok=False,
                            reason="Deleted",
                            message=f"release job {namespace}/{name} was deleted before it finished",
                            job=name,
                        )
                    job = obj
                elif event.type == "DELETED":
                    pods.pop(_str(_dig(obj, "metadata", "name")), None)
                else:
                    pods[_str(_dig(obj, "metadata", "name"))] = obj
                verdict = evaluate_release(job, pods)
                if verdict is not None:
                    return await self._finish_release(namespace=namespace, verdict=verdict, pods=pods)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish_release(
        self, *, namespace: str, verdict: ReleaseResult, pods: Mapping[str, dict[str, Any]]
    ) -> ReleaseResult:
        if verdict.ok:
            return verdict
        failure = _release_failure(pods)
        logs = await self._failure_logs(namespace=namespace, failure=failure, pods=pods)
        return dataclasses.replace(verdict, logs=logs)

    # -- dry run -----------------------------------------------------------------------

    async def dry_run_workload(self, *, spec: spec_mod.WorkloadSpec) -> diff_mod.WorkloadDiff:
        """What apply_workload would change, field by field, changing nothing.

        Every object is read whole and put through a server-side apply with dryRun=All, so the
        answer carries the server's defaults and admission like the real apply would; objects that
        are not shipit's are refused (Conflict) just as an apply refuses them.  A missing namespace
        means everything would be created.  The answers hold Secret values: they go to diff_mod,
        which reports Secret keys only, and nowhere else.
        """
        manifests = render.render(spec)
        if await self.get(kind="Namespace", name=spec.namespace) is None:
            return diff_mod.WorkloadDiff(
                create=[f"Namespace/{spec.namespace}"]
                + [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
            )
        targets = [_target_of(m) for m in manifests]
        absent = [
            _Target(
                kind=kind,
                name=name,
                namespace=spec.namespace,
                project=spec.project,
                app=spec.app,
                instance=spec.instance or spec.app,
            )
            for kind, name in render.render_absent(spec)
        ]
        found = await asyncio.gather(*(self._current(t, full=True) for t in targets + absent))
        present, gone = list(found[: len(targets)]), found[len(targets) :]
        self._refuse_foreign(targets, present)
        result = diff_mod.WorkloadDiff()
        for target, manifest, live in zip(targets, manifests, present, strict=True):
            where = f"{target.kind}/{target.name}"
            if (
                target.kind == "Deployment"
                and live is not None
                and _dig(manifest, "spec", "replicas") is None
            ):
                # The real apply first hands the live replicas over to the HPA (_hand_over_replicas);
                # a dry run cannot, so it keeps the live value instead of showing a reset to 1.
                manifest = {
                    **manifest,
                    "spec": {**manifest["spec"], "replicas": _dig(live, "spec", "replicas")},
                }
            candidate = await self._dry_apply_one(manifest, target=target, force=live is not None)
            if live is None:
                result.create.append(where)
            else:
                result.changes.extend(
                    diff_mod.diff_object(kind=target.kind, name=target.name, live=live, candidate=candidate)
                )
        for target, obj in zip(absent, gone, strict=True):
            if obj is not None and target.problem(obj) is None:
                result.delete.append(f"{target.kind}/{target.name}")
        return result

    async def _dry_apply_one(
        self, manifest: dict[str, Any], *, target: _Target, force: bool
    ) -> dict[str, Any]:
        query = [("fieldManager", FIELD_MANAGER), ("fieldValidation", "Strict"), ("dryRun", "All")]
        if force:
            query.append(("force", "true"))
        return await self._request(
            "PATCH",
            _path(target.kind, namespace=target.namespace, name=target.name),
            what=f"dry-run apply {_where(target.kind, target.namespace, target.name)}",
            query=query,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )


class _SharedClientWatch(k8s_watch.Watch):
    """A Watch on our own ApiClient.

    The stock Watch builds a fresh default ApiClient (and SSL context) per stream, about 60 ms of CPU
    each, two per rollout; it only uses it to deserialize typed objects, and we read `raw_object`.
    """

    def __init__(self, api_client: Any) -> None:
        self._raw_return_type = None
        self._stop = False
        self._api_client = api_client
        self.resource_version = None
        self.resp = None

    async def close(self) -> None:
        # The ApiClient is the Kube's, closed with it; only the response is ours.
        if self.resp is not None:
            self.resp.release()
            self.resp = None


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


def _release_failure(pods: Mapping[str, dict[str, Any]]) -> _Failure | None:
    """The first container of a release pod that ended with a non-zero exit code."""
    for pod_name in sorted(pods):
        for cs in _list(_dig(pods[pod_name], "status", "containerStatuses")):
            terminated = _dig(cs, "state", "terminated")
            code = _dig(terminated, "exitCode")
            if isinstance(code, int) and code != 0:
                container = _str(_dig(cs, "name"))
                reason = _str(_dig(terminated, "reason")) or "Error"
                message = f"pod {pod_name} container {container}: {reason} (exit code {code})"
                detail = _str(_dig(terminated, "message"))
                if detail:
                    message += f": {_truncate(detail)}"
                return _Failure(reason, message, pod_name, container)
    return None


def _waiting_reasons(pods: Mapping[str, dict[str, Any]]) -> list[str]:
    return sorted(
        {
            reason
            for pod in pods.values()
            for cs in _list(_dig(pod, "status", "containerStatuses"))
            if (reason := _str(_dig(cs, "state", "waiting", "reason")))
        }
    )


def evaluate_release(job: dict[str, Any], pods: Mapping[str, dict[str, Any]]) -> ReleaseResult | None:
    """The verdict on a release Job (backoffLimit 0) from it and its pods; None while it runs.

    A pod that failed decides at once (with backoffLimit 0 the Job cannot succeed any more), with
    its container's reason and exit code; kwok, like many clusters, serves no logs to say more.
    """
    name = _str(_dig(job, "metadata", "name"))
    conditions = _conditions(job)
    complete = conditions.get("Complete")
    if complete is not None and complete.status == "True":
        return ReleaseResult(ok=True, reason="Complete", message=f"release job {name} completed", job=name)
    failure = _release_failure(pods)
    if failure is not None:
        return ReleaseResult(
            ok=False, reason=failure.reason, message=f"release command failed: {failure.message}", job=name
        )
    failed = conditions.get("Failed")
    if failed is not None and failed.status == "True":
        message = f"release job {name} failed: {failed.reason or 'Failed'}"
        if failed.message:
            message += f": {_truncate(failed.message)}"
        waiting = _waiting_reasons(pods)
        if waiting:
            message += f" (its pod was waiting: {', '.join(waiting)})"
        return ReleaseResult(ok=False, reason=failed.reason or "Failed", message=message, job=name)
    return None


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
