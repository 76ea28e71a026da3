"""The revision snapshot: one typed, immutable value that says everything that shapes a workload.

A revision is the unit of truth: a deploy renders its snapshot and nothing else, the app points at
the revision that last rolled out well (`apps.current_revision_id`), and every later change (scale,
config, secrets) starts from that revision, never from a failed candidate.  This module is the only
home of app defaults.

Snapshots are stored as JSON in `revisions.snapshot`.  `load` reads every format ever written:
rows from before `schema_version` existed (the plain dict of `deploys.snapshot_of`) are version 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core import images
from core.errors import InvalidInput
from storage import models

SCHEMA_VERSION = 2

# The app defaults (DESIGN.md section 4), here and nowhere else.
DEFAULT_REPLICAS = 1
DEFAULT_PORT = 8080
DEFAULT_CPU_REQUEST = "100m"
DEFAULT_CPU_LIMIT = "500m"
DEFAULT_MEMORY_REQUEST = "128Mi"
DEFAULT_MEMORY_LIMIT = "256Mi"
DEFAULT_HEALTH_PERIOD = 10
DEFAULT_CPU_TARGET = 80
DEFAULT_PROGRESS_DEADLINE = 600


@dataclass(frozen=True, kw_only=True)
class Resources:
    cpu_request: str = DEFAULT_CPU_REQUEST
    cpu_limit: str = DEFAULT_CPU_LIMIT
    memory_request: str = DEFAULT_MEMORY_REQUEST
    memory_limit: str = DEFAULT_MEMORY_LIMIT


@dataclass(frozen=True, kw_only=True)
class Health:
    path: str
    port: int | None = None
    initial_delay_seconds: int = 0
    period_seconds: int = DEFAULT_HEALTH_PERIOD


@dataclass(frozen=True, kw_only=True)
class Scaling:
    min_replicas: int
    max_replicas: int
    cpu_target_percent: int = DEFAULT_CPU_TARGET
    scale_down_window_seconds: int | None = None  # None: Kubernetes' default, no `behavior` rendered


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    image: str
    digest: str | None = None  # the registry digest the image resolved to, when known
    replicas: int = DEFAULT_REPLICAS
    port: int = DEFAULT_PORT
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    health: Health | None = None
    autoscaling: Scaling | None = None
    domain: str | None = None
    ingress_class: str | None = None
    tls_issuer: str | None = None
    release_command: str | None = None
    progress_deadline_seconds: int = DEFAULT_PROGRESS_DEADLINE
    # 0: no secrets; None: a revision from before secrets were versioned (renders the latest secrets).
    secrets_version: int | None = 0
    schema_version: int = SCHEMA_VERSION

    def replace(self, **changes: Any) -> Snapshot:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = _plain(self)
        out["schema_version"] = SCHEMA_VERSION
        return out

    @property
    def image_ref(self) -> str:
        """What the pods pull: pinned by digest when one was resolved (`name@sha256:…`, the tag dropped:
        it no longer decides anything, and a moved tag beside an old digest would only mislead)."""
        if self.digest and "@" not in self.image:
            try:
                return f"{images.parse(self.image).name}@{self.digest}"
            except InvalidInput:
                return f"{self.image}@{self.digest}"
        return self.image


def _plain(obj: Any) -> dict[str, Any]:
    """`dataclasses.asdict` for a snapshot, whose fields hold only scalars, a dict of strings and
    dataclasses of scalars: asdict deep-copies every value, at a cost seen on every deploy request."""
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    return out


def load(data: dict[str, Any]) -> Snapshot:
    """A snapshot from a stored row, any schema version; unknown keys are ignored, missing take defaults."""
    version = int(data.get("schema_version") or 1)
    resources = dict(data.get("resources") or {})
    health = data.get("health")
    scaling = data.get("autoscaling")
    return Snapshot(
        image=str(data.get("image") or ""),
        digest=data.get("digest") if version >= 2 else None,
        replicas=int(data.get("replicas", DEFAULT_REPLICAS)),
        port=int(data.get("port", DEFAULT_PORT)),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        resources=Resources(
            **{k: str(v) for k, v in resources.items() if k in Resources.__dataclass_fields__ and v}
        ),
        health=Health(
            path=str(health["path"]),
            port=health.get("port"),
            initial_delay_seconds=int(health.get("initial_delay_seconds") or 0),
            period_seconds=int(health.get("period_seconds") or DEFAULT_HEALTH_PERIOD),
        )
        if health and health.get("path")
        else None,
        autoscaling=Scaling(
            min_replicas=int(scaling["min_replicas"]),
            max_replicas=int(scaling["max_replicas"]),
            cpu_target_percent=int(scaling.get("cpu_target_percent") or DEFAULT_CPU_TARGET),
            scale_down_window_seconds=_int_or_none(scaling.get("scale_down_window_seconds")),
        )
        if scaling
        else None,
        domain=data.get("domain"),
        ingress_class=data.get("ingress_class"),
        tls_issuer=data.get("tls_issuer"),
        release_command=data.get("release_command"),
        progress_deadline_seconds=int(data.get("progress_deadline_seconds") or DEFAULT_PROGRESS_DEADLINE),
        secrets_version=int(data["secrets_version"]) if data.get("secrets_version") is not None else None,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def of_revision(revision: models.Revision) -> Snapshot:
    snap = load(dict(revision.snapshot or {}))
    # Version-1 rows did not carry the secrets version; the column (when set) is authoritative.
    if revision.secrets_version is not None and snap.secrets_version != revision.secrets_version:
        snap = snap.replace(secrets_version=revision.secrets_version)
    return snap


def from_app(app: models.App) -> Snapshot:
    """The app's settings as a snapshot (image may be empty when the app has none yet)."""
    return Snapshot(
        image=app.image or "",
        replicas=app.replicas if app.replicas is not None else DEFAULT_REPLICAS,
        port=app.port or DEFAULT_PORT,
        env={str(k): str(v) for k, v in (app.env or {}).items()},
        resources=Resources(
            cpu_request=app.cpu_request or DEFAULT_CPU_REQUEST,
            cpu_limit=app.cpu_limit or DEFAULT_CPU_LIMIT,
            memory_request=app.memory_request or DEFAULT_MEMORY_REQUEST,
            memory_limit=app.memory_limit or DEFAULT_MEMORY_LIMIT,
        ),
        health=Health(
            path=app.health_path,
            port=app.health_port,
            initial_delay_seconds=app.health_initial_delay or 0,
            period_seconds=app.health_period or DEFAULT_HEALTH_PERIOD,
        )
        if app.health_path
        else None,
        autoscaling=Scaling(
            min_replicas=app.min_replicas,
            max_replicas=app.max_replicas,
            cpu_target_percent=app.cpu_target or DEFAULT_CPU_TARGET,
            scale_down_window_seconds=app.scale_down_window,
        )
        if app.min_replicas is not None and app.max_replicas is not None
        else None,
        domain=app.domain,
        ingress_class=app.ingress_class,
        tls_issuer=app.tls_issuer,
        release_command=app.release_command,
        progress_deadline_seconds=app.progress_deadline_seconds or DEFAULT_PROGRESS_DEADLINE,
        secrets_version=app.secrets_version or 0,
    )


def columns(snapshot: Snapshot) -> dict[str, Any]:
    """The app's settings columns that say what `snapshot` runs."""
    h, sc, r = snapshot.health, snapshot.autoscaling, snapshot.resources
    out: dict[str, Any] = {
        "replicas": snapshot.replicas,
        "port": snapshot.port,
        "env": dict(snapshot.env),
        "cpu_request": r.cpu_request,
        "cpu_limit": r.cpu_limit,
        "memory_request": r.memory_request,
        "memory_limit": r.memory_limit,
        "health_path": h.path if h else None,
        "health_port": h.port if h else None,
        "min_replicas": sc.min_replicas if sc else None,
        "max_replicas": sc.max_replicas if sc else None,
        "cpu_target": sc.cpu_target_percent if sc else None,
        "scale_down_window": sc.scale_down_window_seconds if sc else None,
        "domain": snapshot.domain,
        "ingress_class": snapshot.ingress_class,
        "tls_issuer": snapshot.tls_issuer,
        "release_command": snapshot.release_command,
        "progress_deadline_seconds": snapshot.progress_deadline_seconds,
    }
    if h:
        out["health_initial_delay"], out["health_period"] = h.initial_delay_seconds, h.period_seconds
    if snapshot.image:
        out["image"] = snapshot.image
    return out


def apply_to_app(snapshot: Snapshot, *, app: models.App) -> None:
    """Make the app's settings say what `snapshot` runs (after a rollback rolled out)."""
    for key, value in columns(snapshot).items():
        setattr(app, key, value)


def revert_on_app(*, failed: Snapshot, current: Snapshot, app: models.App) -> list[str]:
    """Undo on the app what a failed candidate changed, leaving later, unrelated edits alone.

    A setting goes back to the current revision's value when the app still holds the failed value.
    Returns the settings reverted.
    """
    bad, good = columns(failed), columns(current)
    reverted = []
    for key, value in bad.items():
        if key in good and value != good[key] and getattr(app, key) == value:
            setattr(app, key, good[key])
            reverted.append(key)
    return reverted
