"""The tables.  Every row that holds a secret holds it encrypted (see storage.crypto).

Timestamps are stored as UTC; the UTCDateTime type puts the timezone back on
read because SQLite forgets it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import Null


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        generic = super().bind_processor(dialect)
        impl = self.impl_instance.dialect_impl(dialect)
        if dialect.name != "sqlite" or getattr(impl, "_storage_format", None) != _SQLITE_DATETIME:
            return generic
        utc = dt.UTC

        # SQLite: `process_bind_param` and the dialect's DATETIME text in one call, the same text
        # (issue 13: a deploying push binds twelve datetimes, each through three Python calls and a
        # dict built for the format).
        def process(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is not dt.datetime:
                return generic(value) if generic is not None else value  # as before, whatever it is
            tz = value.tzinfo
            if tz is None:
                raise ValueError("naive datetime given to a UTC column")
            if tz is not utc:
                value = value.astimezone(utc)
            return _SQLITE_DATETIME_TUPLE % (
                value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
            )  # fmt: skip

        return process

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# SQLAlchemy's SQLite DATETIME storage format (its default), and the same text from a tuple.
_SQLITE_DATETIME = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
_SQLITE_DATETIME_TUPLE = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


# What orjson would write but the standard library refuses: refused still (see `_json_text`).
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_ORJSON).decode()
    except TypeError:
        # What orjson does not take (integers beyond 64 bits, keys that are not strings, lone
        # surrogates; also a datetime or a dataclass, which the standard library then refuses as before).
        return json.dumps(value)


class Json(TypeDecorator[Any]):
    """JSON, written by orjson instead of the standard library's `json.dumps` (issue 13: a push that
    deploys writes seven JSON values, its revision's snapshot among them; orjson takes 0.19 us a value
    where `json.dumps` took 1.82, about 11 us a push).  The same values: compact, and UTF-8 where
    `json.dumps` escapes non-ASCII characters.  Read back as before (the JSON type's own result
    processing)."""

    impl = JSON
    cache_ok = True
    hashable = False  # as JSON: a dict or list value
    should_evaluate_none = True  # as JSON: Python None is JSON's null, not SQL's NULL

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], str | None]:
        def process(value: Any) -> str | None:
            # JSON's own rules: JSON.NULL is JSON's null, null() is SQL's NULL.
            if value is JSON.NULL:
                value = None
            elif isinstance(value, Null):
                return None
            return _json_text(value)

        return process


ID = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json, dt.datetime: UTCDateTime}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    slack_channel: Mapped[str | None] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    # A lock on the whole project (every environment): nothing deploys until unlocked or locked_until.
    locked_reason: Mapped[str | None] = mapped_column(String(500))
    locked_by: Mapped[str | None] = mapped_column(String(200))
    locked_at: Mapped[dt.datetime | None] = mapped_column()
    locked_until: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Environment(Base):
    """A stage of a project's pipeline (staging -> production), ordered by position.

    Its cluster and namespace are the defaults for apps created in it; protection, deploy windows,
    freezes and the lock apply to every app of the environment.
    """

    __tablename__ = "environments"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    position: Mapped[int] = mapped_column(default=0)
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id"))
    namespace: Mapped[str | None] = mapped_column(String(63))
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    required_approvals: Mapped[int] = mapped_column(default=1, server_default="1")
    approver_role: Mapped[str] = mapped_column(String(16), default="deployer", server_default="deployer")
    approval_ttl_seconds: Mapped[int | None] = mapped_column()
    # Deploy windows: [{"days": ["mon", ...], "start": "09:00", "end": "17:00"}] in `timezone`; [] = always.
    windows: Mapped[list[Any]] = mapped_column(default=list)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Freezes: [{"start": iso, "end": iso, "reason": str}]; no deploy while one is on.
    freezes: Mapped[list[Any]] = mapped_column(default=list)
    locked_reason: Mapped[str | None] = mapped_column(String(500))
    locked_by: Mapped[str | None] = mapped_column(String(200))
    locked_at: Mapped[dt.datetime | None] = mapped_column()
    locked_until: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Person(Base):
    """One human behind several identities (slack:U1, github:octocat, user:alice@acme.io)."""

    __tablename__ = "persons"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Identity(Base):
    """A subject that belongs to a person; a subject belongs to at most one person."""

    __tablename__ = "identities"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(200), unique=True)
    verified_by: Mapped[str] = mapped_column(String(32))  # admin, code, oauth
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IdentityLinkCode(Base):
    """A one-time code proving that `requested_by` also controls `subject` (only its SHA-256 is kept)."""

    __tablename__ = "identity_link_codes"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Member(Base):
    """A subject ("slack:U123", "github:octocat", "user:alice") with a role in a project."""

    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "subject"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Cluster(Base):
    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kubeconfig_enc: Mapped[bytes] = mapped_column(LargeBinary)
    default_namespace: Mapped[str] = mapped_column(String(63), default="default")
    server: Mapped[str] = mapped_column(String(2048), default="")
    server_version: Mapped[str] = mapped_column(String(64), default="")
    last_check_at: Mapped[dt.datetime | None] = mapped_column()
    last_check_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ClusterGrant(Base):
    """A project may use a cluster: deploy into namespaces it claims there, and have shipit create new ones."""

    __tablename__ = "cluster_grants"
    __table_args__ = (UniqueConstraint("cluster_id", "project_id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NamespaceClaim(Base):
    """On each cluster a namespace belongs to at most one project.

    origin "granted": a global admin handed an existing (or future) namespace to the project, so shipit
    may deploy into it as it is.  origin "created": shipit creates the namespace itself and refuses one
    that already exists without its ownership labels.
    """

    __tablename__ = "namespace_claims"
    __table_args__ = (UniqueConstraint("cluster_id", "namespace"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    namespace: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    origin: Mapped[str] = mapped_column(String(8), default="granted")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class App(Base):
    __tablename__ = "apps"
    # A name is unique per environment; all rows of one name belong to one project (kept by core).
    __table_args__ = (UniqueConstraint("environment_id", "name"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    # The environment this app row runs in: an app defined in several environments has one row in each.
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"), index=True)
    namespace: Mapped[str] = mapped_column(String(63))
    image: Mapped[str | None] = mapped_column(String(512))
    replicas: Mapped[int] = mapped_column(default=1)
    port: Mapped[int] = mapped_column(default=8080)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cpu_request: Mapped[str] = mapped_column(String(32), default="100m")
    cpu_limit: Mapped[str] = mapped_column(String(32), default="500m")
    memory_request: Mapped[str] = mapped_column(String(32), default="128Mi")
    memory_limit: Mapped[str] = mapped_column(String(32), default="256Mi")
    health_path: Mapped[str | None] = mapped_column(String(512))
    health_port: Mapped[int | None] = mapped_column()
    health_initial_delay: Mapped[int] = mapped_column(default=0)
    health_period: Mapped[int] = mapped_column(default=10)
    min_replicas: Mapped[int | None] = mapped_column()
    max_replicas: Mapped[int | None] = mapped_column()
    cpu_target: Mapped[int | None] = mapped_column()
    # The HPA's downscale stabilization window in seconds; None: Kubernetes' default (no `behavior`).
    scale_down_window: Mapped[int | None] = mapped_column()
    domain: Mapped[str | None] = mapped_column(String(253))
    ingress_class: Mapped[str | None] = mapped_column(String(63))
    tls_issuer: Mapped[str | None] = mapped_column(String(253))
    progress_deadline_seconds: Mapped[int] = mapped_column(default=600)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_reason: Mapped[str | None] = mapped_column(String(500))
    locked_by: Mapped[str | None] = mapped_column(String(200))
    auto_deploy_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_reason: Mapped[str | None] = mapped_column(String(500))
    # git source: push to git_branch (or a tag when git_ref_type == "tag") deploys image_template
    git_repo: Mapped[str | None] = mapped_column(String(200), index=True)
    git_branch: Mapped[str | None] = mapped_column(String(255))
    git_ref_type: Mapped[str] = mapped_column(String(8), default="branch")
    image_template: Mapped[str | None] = mapped_column(String(512))
    deploy_on: Mapped[str] = mapped_column(String(8), default="push")
    github_environment: Mapped[str | None] = mapped_column(String(100))
    previews_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    preview_domain: Mapped[str | None] = mapped_column(String(253))
    preview_ttl_hours: Mapped[int] = mapped_column(default=72)
    preview_max_open: Mapped[int] = mapped_column(default=10)
    preview_env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Pull requests from forks: "never" (default), "approved" (after a maintainer approves), "always".
    previews_from_forks: Mapped[str] = mapped_column(String(8), default="never", server_default="never")
    # The last revision whose rollout succeeded: what runs, and what later changes build on.
    # No foreign key (revisions already point at apps); pruning never removes the current revision.
    current_revision_id: Mapped[int | None] = mapped_column(ID)
    auto_rollback: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Build from source (migration 0015): a push builds the commit (core.builds) into build_image
    # (a repository, tagged with the sha) from build_context (a directory of the repository).
    build_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    build_context: Mapped[str | None] = mapped_column(String(255))
    build_image: Mapped[str | None] = mapped_column(String(512))
    release_command: Mapped[str | None] = mapped_column(String(1000))
    # The secrets version new revisions take (secret_versions.version); 0 = no secrets ever set.
    secrets_version: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    project: Mapped[Project] = relationship(lazy="raise")
    cluster: Mapped[Cluster] = relationship(lazy="raise")


class Secret(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("app_id", "key"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(253))
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SecretVersion(Base):
    """Every change of an app's secrets makes a version: the whole map, encrypted; revisions point at one."""

    __tablename__ = "secret_versions"
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column()
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)
    checksum: Mapped[str] = mapped_column(String(64))
    keys: Mapped[list[Any]] = mapped_column(default=list)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Addon(Base):
    """A managed database (PostgreSQL, Redis) of one app row (one environment), at most one per kind.

    The password is stored only encrypted; the app gets it inside its connection string, as an app
    secret (`secret_key`), once the add-on is ready.  The row goes when a destroy has finished.
    """

    __tablename__ = "addons"
    __table_args__ = (UniqueConstraint("app_id", "kind"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    plan: Mapped[str] = mapped_column(String(16))
    # provisioning | ready | failed | deleting (what was last decided; `list` asks the cluster too)
    state: Mapped[str] = mapped_column(String(16))
    namespace: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(63))  # of its StatefulSet, Service and Secret
    image: Mapped[str] = mapped_column(String(500))
    secret_key: Mapped[str] = mapped_column(String(253))  # DATABASE_URL / REDIS_URL
    password_enc: Mapped[bytes] = mapped_column(LargeBinary)
    delete_data: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Registry(Base):
    """Credentials for a private registry host; project_id None = usable by every project (global admins)."""

    __tablename__ = "registries"
    __table_args__ = (UniqueConstraint("host", "project_id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    host: Mapped[str] = mapped_column(String(253))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(200))
    password_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Revision(Base):
    """Immutable snapshot of everything that shapes the workload; secrets only by checksum."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("app_id", "number"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column()
    image: Mapped[str] = mapped_column(String(512))
    snapshot: Mapped[dict[str, Any]] = mapped_column()
    secret_checksum: Mapped[str] = mapped_column(String(64))
    secrets_version: Mapped[int | None] = mapped_column()
    source: Mapped[str] = mapped_column(String(16), default="deploy")
    rollback_of: Mapped[int | None] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ImagePolicy(Base):
    """Which new tags of `repository` deploy this app (row = app in one environment) by themselves."""

    __tablename__ = "image_policies"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), unique=True)
    repository: Mapped[str] = mapped_column(String(512), index=True)  # registry/path, no tag
    kind: Mapped[str] = mapped_column(String(8))  # semver, glob, regex
    pattern: Mapped[str] = mapped_column(String(300))
    sort: Mapped[str] = mapped_column(String(16), default="")  # regex: numeric or alpha on group "key"
    poll_interval_seconds: Mapped[int | None] = mapped_column()  # None: registry notifications only
    next_poll_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    last_polled_at: Mapped[dt.datetime | None] = mapped_column()
    failures: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_tag: Mapped[str | None] = mapped_column(String(128))
    promote_to: Mapped[str | None] = mapped_column(String(63))  # environment to promote to after success
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Preview(Base):
    __tablename__ = "previews"
    __table_args__ = (UniqueConstraint("app_id", "pr_number"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    pr_number: Mapped[int] = mapped_column()
    repo: Mapped[str] = mapped_column(String(200))
    head_sha: Mapped[str] = mapped_column(String(64))
    namespace: Mapped[str] = mapped_column(String(63))
    url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default="creating")
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    # The repository the PR's head lives in; a fork's differs from `repo`.
    head_repo: Mapped[str | None] = mapped_column(String(200))
    is_fork: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    approved_by: Mapped[str | None] = mapped_column(String(200))
    last_activity_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column()


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # A deploy request's look-ups of its app's deployments (migration 0013): its next number, the
        # running and queued deploys of its target, the revisions pending ones use.
        Index("ix_deployments_app_number", "app_id", "revision_number"),
        Index("ix_deployments_app_status", "app_id", "status", "namespace"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    # Old revisions are pruned (last N kept); the deployment keeps its number and image for history.
    # Indexed: pruning a revision sets its deployments' revision_id NULL, which would otherwise scan.
    revision_id: Mapped[int | None] = mapped_column(
        ForeignKey("revisions.id", ondelete="SET NULL"), index=True
    )
    revision_number: Mapped[int] = mapped_column()
    image: Mapped[str] = mapped_column(String(512))
    preview_id: Mapped[int | None] = mapped_column(ForeignKey("previews.id", ondelete="SET NULL"))
    namespace: Mapped[str] = mapped_column(String(63))
    trigger: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), index=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    git_sha: Mapped[str | None] = mapped_column(String(64))
    git_ref: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    logs: Mapped[list[Any]] = mapped_column(default=list)
    ready: Mapped[int] = mapped_column(default=0)
    desired: Mapped[int] = mapped_column(default=0)
    approved_by: Mapped[str | None] = mapped_column(String(200))
    # Who rejected it (a subject, as approved_by), since migration 0014; older rejections say it only in
    # their error text: core.deploys.rejected_by reads both.
    rejected_by: Mapped[str | None] = mapped_column(String(200))
    approval_expires_at: Mapped[dt.datetime | None] = mapped_column()
    # A failed deploy that shipit rolled back points at the rollback deploy (trigger "auto-rollback").
    rolled_back_by_id: Mapped[int | None] = mapped_column(ID)
    notify_refs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    applied_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class Build(Base):
    """One build of an app's commit from source (core.builds): one per app and commit."""

    __tablename__ = "builds"
    __table_args__ = (
        UniqueConstraint("app_id", "sha"),
        Index("ix_builds_app_status", "app_id", "status"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    sha: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # queued, building, succeeded, failed, superseded
    pack: Mapped[str | None] = mapped_column(String(16))
    image: Mapped[str] = mapped_column(String(512))  # the repository it is pushed to
    digest: Mapped[str | None] = mapped_column(String(100))
    deployment_id: Mapped[int | None] = mapped_column(ID)
    error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str | None] = mapped_column(Text)  # a bounded tail, credentials scrubbed
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    # Retries of a failed build (core.builds.retry): each run's events are its own.
    runs: Mapped[int] = mapped_column(default=0, server_default="0")
    # The pull request whose preview queued it (migration 0017); NULL: a push to the tracked branch,
    # whose success deploys the app itself.  A PR build deploys only its previews.
    pr_number: Mapped[int | None] = mapped_column()
    # `.deploy to ENV` comments waiting for this build (core.pr_commands, migration 0018); NULL: none.
    waiting: Mapped[list[Any] | None] = mapped_column()


class DeployApproval(Base):
    """One person's approval of a deploy; a deploy may need several from different persons."""

    __tablename__ = "deploy_approvals"
    __table_args__ = (UniqueConstraint("deployment_id", "person_key"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    # "person:<id>" when the subject is linked to a person, else the subject itself.
    person_key: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NotificationTarget(Base):
    """Where a project's notices go: a Slack channel, GitHub, an email address, a Teams/Discord/webhook URL."""

    __tablename__ = "notification_targets"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    environment: Mapped[str | None] = mapped_column(String(63))  # None: every environment
    kind: Mapped[str] = mapped_column(String(16))  # slack, github, email, teams, discord, webhook
    address: Mapped[str] = mapped_column(String(2048))
    # Encrypted with purpose "project-webhook-secret", as projects.webhook_secret_enc was (rows migrate as is).
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    format: Mapped[str] = mapped_column(
        String(16), default="", server_default=""
    )  # webhook: "" or cloudevents
    events: Mapped[str] = mapped_column(String(200), default="*", server_default="*")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_success_at: Mapped[dt.datetime | None] = mapped_column()
    last_failure_at: Mapped[dt.datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(default=0, server_default="0")  # consecutive


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    project_id: Mapped[int | None] = mapped_column(index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", "run_at"),
        # At most one running job per concurrency key (one active deploy per app),
        # enforced by the database so racing replicas cannot both win.
        Index(
            "uq_jobs_running_key",
            "concurrency_key",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    concurrency_key: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=8)
    run_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[dt.datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class Event(Base):
    """A domain event (the outbox): written in the transaction that caused it."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(48))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    project_id: Mapped[int | None] = mapped_column(index=True)
    app_id: Mapped[int | None] = mapped_column()
    deployment_id: Mapped[int | None] = mapped_column(index=True)
    preview_id: Mapped[int | None] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class UsageSample(Base):
    """What an app's pods used at one sampling slot (core.usage_history): totals over its pods.

    `sampled_at` is the slot's start, not the read's instant: unique per app, so replicas sampling the
    same slot store one row (the later INSERT does nothing), and the same index answers "this app's
    samples since T"."""

    __tablename__ = "usage_samples"
    __table_args__ = (UniqueConstraint("app_id", "sampled_at"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    sampled_at: Mapped[dt.datetime] = mapped_column(index=True)  # retention deletes by age alone
    pods: Mapped[int] = mapped_column()
    cpu_millicores: Mapped[float] = mapped_column(Float)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)


class UsageHourly(Base):
    """One completed hour of an app's usage samples, rolled up (core.usage_history.roll_up) for the
    30-day window: sums, not averages, so a window's average is its sums over its samples exactly.

    `hour` is the hour's start (UTC); unique per app, so replicas rolling up the same hour store one
    row (the later INSERT does nothing)."""

    __tablename__ = "usage_hourly"
    __table_args__ = (UniqueConstraint("app_id", "hour"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    hour: Mapped[dt.datetime] = mapped_column(index=True)  # retention deletes by age alone
    samples: Mapped[int] = mapped_column()
    cpu_sum_millicores: Mapped[float] = mapped_column(Float)
    cpu_peak_millicores: Mapped[float] = mapped_column(Float)
    memory_sum_bytes: Mapped[float] = mapped_column(Float)
    memory_peak_bytes: Mapped[int] = mapped_column(BigInteger)
    max_pods: Mapped[int] = mapped_column()
    cpu_peak_per_pod: Mapped[float] = mapped_column(Float)  # millicores: the highest sample's total / pods
    memory_peak_per_pod: Mapped[float] = mapped_column(Float)  # bytes, likewise


class Run(Base):
    """A one-off run (`shipit run`, core.runs): its history outlives its Job (the Job TTL deletes that).

    Only the program (argv[0]) and the number of arguments are kept: the arguments may carry
    credentials.  `status` is running until shipit reads the finished Job (or cancels it); a row whose
    Job is gone while still running is shown as "unknown"."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("app_id", "name"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))  # the Job's name
    actor: Mapped[str] = mapped_column(String(200))  # the subject, as the audit log has it
    program: Mapped[str] = mapped_column(Text)
    arg_count: Mapped[int] = mapped_column()
    revision: Mapped[int] = mapped_column()
    image: Mapped[str] = mapped_column(String(512))
    timeout_seconds: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed, cancelled
    exit_code: Mapped[int | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(100))  # the cluster's, e.g. DeadlineExceeded
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)  # retention by age
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class Meta(Base):
    """Small facts about the database itself, e.g. the master key check value."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class WebSession(Base):
    """A dashboard sign-in.  The cookie holds a random token; only its SHA-256 is stored here."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie token
    subject: Mapped[str] = mapped_column(String(200), index=True)
    display: Mapped[str] = mapped_column(String(200), default="")
    provider: Mapped[str] = mapped_column(String(16))  # oidc, github
    csrf_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()
