"""Deploys and what shapes them: requests, dry runs, rollbacks, scaling, revisions, image policies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from core import dryrun
from core import validation as v
from core.notices import DeploymentView
from shipit.schemas.common import DnsLabel, Strict, app_int, app_text, bounded_int, bounded_text
from storage import models


class DeployIn(Strict):
    image: str | None = app_text("image")
    dedupe_key: str | None = bounded_text(v.limit(models.Deployment, "dedupe_key"))
    # Show what the deploy would change on the cluster; nothing is stored or applied.
    dry_run: bool = False
    # A project admin deploys outside the environment's windows or during a freeze (audited).
    override_window: bool = False


class FieldChangeOut(BaseModel):
    kind: str
    name: str
    path: str
    old: str | None  # None: not set; for Secret data always None or "" (values are never shown)
    new: str | None
    hidden: bool


class DryRunOut(BaseModel):
    dry_run: Literal[True] = True
    app: str
    namespace: str
    image: str
    current_image: str | None
    revision: int
    release_command: str | None
    changes: list[FieldChangeOut]
    create: list[str]
    delete: list[str]
    lines: list[str]  # the same, as people read it

    @classmethod
    def of(cls, d: dryrun.DryRun) -> DryRunOut:
        return cls(
            app=d.app,
            namespace=d.namespace,
            image=d.image,
            current_image=d.current_image,
            revision=d.revision,
            release_command=d.release_command,
            changes=[
                FieldChangeOut(kind=c.kind, name=c.name, path=c.path, old=c.old, new=c.new, hidden=c.hidden)
                for c in d.diff.changes
            ],
            create=list(d.diff.create),
            delete=list(d.diff.delete),
            lines=d.lines(),
        )


class RollbackIn(Strict):
    revision: int | None = bounded_int(1, v.INT32_MAX)


class ScaleIn(Strict):
    replicas: int | None = app_int("replicas")
    min_replicas: int | None = app_int("min_replicas")
    max_replicas: int | None = app_int("max_replicas")
    cpu_target: int | None = app_int("cpu_target")
    # Seconds the HPA waits before scaling down; null sets Kubernetes' default (300) back, absent keeps it.
    scale_down_window: int | None = app_int("scale_down_window")
    autoscaling: bool | None = None


class DeploymentOut(BaseModel):
    rolled_back_by: int | None = None
    id: int
    app: str
    status: str
    trigger: str
    actor: str
    image: str
    revision: int
    namespace: str
    error: str | None
    logs: list[str]
    ready: int
    desired: int
    approved_by: str | None
    # Who rejected it: a subject as approved_by (a rejection older than migration 0014 may only have
    # the name its error text recorded); None when it was not rejected.
    rejected_by: str | None = None
    git_sha: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # The digest the image tag was pinned to at deploy time, or why it went by tag (digest_note).
    digest: str | None = None
    digest_note: str | None = None
    # A deploy that needs approval: approvals so far and needed (None where the route does not count).
    approvals: int | None = None
    approvals_needed: int | None = None
    # A queued deploy's place in its app's queue (1: it runs next); None where the route does not count.
    queue_position: int | None = None

    @classmethod
    def of(cls, view: DeploymentView, *, app: str) -> DeploymentOut:
        """From core's read model (core.events.deployment_view / deployment_view_of), field for field."""
        fields = {name: getattr(view, name) for name in cls.model_fields if name != "app"}
        return cls(app=app, **fields)


class RevisionOut(BaseModel):
    number: int
    image: str
    source: str
    rollback_of: int | None
    created_by: str
    created_at: dt.datetime
    snapshot: dict[str, Any]


# The image policy's first spelling of `?env=`, still read; every other route takes only `env`.
EnvironmentQuery = Annotated[
    str | None,
    Query(max_length=63, pattern=v.DNS_LABEL, deprecated=True, description="The same as `env`."),
]


POLICY_PATTERN_MAX = v.limit(models.ImagePolicy, "pattern")


class ImagePolicyIn(Strict):
    """Exactly one of semver, glob and regex."""

    semver: str | None = bounded_text(POLICY_PATTERN_MAX)
    glob: str | None = bounded_text(POLICY_PATTERN_MAX)
    regex: str | None = bounded_text(POLICY_PATTERN_MAX)
    sort: Literal["numeric", "alpha"] | None = None  # regex only: how the group `key` orders tags
    repository: str | None = bounded_text(
        v.limit(models.ImagePolicy, "repository")
    )  # default: the app's image
    poll_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)  # None: notifications only
    promote_to: DnsLabel | None = None


class ImagePolicyOut(BaseModel):
    app: str
    environment: str
    repository: str
    kind: str
    pattern: str
    sort: str
    poll_seconds: int | None
    next_poll_at: dt.datetime | None
    last_polled_at: dt.datetime | None
    failures: int
    last_error: str | None
    last_tag: str | None
    promote_to: str | None
    created_by: str
    updated_at: dt.datetime
