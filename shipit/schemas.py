"""Request and response bodies of the REST API.  Responses never carry secret values.

Every string a request carries has a length (its column's, via core.validation.limit) and, where the
server insists on a shape, the pattern core checks with; every integer has its range.  So /openapi.json
tells clients the real rules, and no value reaches the database that it cannot store.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from core import claims, dryrun
from core import secrets as core_secrets
from core import validation as v
from core.notices import AppView, DeploymentView
from core.notices import targets as notice_targets
from storage import models


def _no_null_default(schema: dict[str, Any]) -> None:
    # A field that is not nullable has no default to publish: absent means "leave as it is".
    if "default" in schema and schema["default"] is None and "anyOf" not in schema:
        del schema["default"]


def _unset(**constraints: Any) -> Any:
    """Not required, and absent is not null: unset fields are left as they are (exclude_unset)."""
    return Field(default=None, json_schema_extra=_no_null_default, **constraints)


def _text(length: int, pattern: str = v.LINE) -> Any:
    """A string field of at most `length` characters matching `pattern`."""
    return _unset(max_length=length, pattern=pattern)


def _int(low: int, high: int) -> Any:
    return _unset(ge=low, le=high)


def _app_int(name: str) -> Any:
    return _int(*v.RANGES[name])


def _app_text(column: str, pattern: str = v.LINE) -> Any:
    return _text(v.limit(models.App, column), pattern)


# Kept short of what a database could hold: a kubeconfig or a secret value is read whole into memory.
KUBECONFIG_MAX = 1024 * 1024
WEBHOOK_SECRET_MAX = 1024
REGISTRY_PASSWORD_MAX = 4096

DnsLabel = Annotated[str, Field(max_length=63, pattern=v.DNS_LABEL)]
EnvKey = Annotated[str, Field(max_length=v.limit(models.Secret, "key"), pattern=v.ENV_KEY)]
Env = dict[EnvKey, Annotated[str, Field(max_length=v.ENV_VALUE_MAX, pattern=v.TEXT)]]

# Path and query parameters.
NamePath = Annotated[str, Path(max_length=63, pattern=v.DNS_LABEL, examples=["web"])]
SubjectPath = Annotated[
    str, Path(max_length=v.limit(models.Member, "subject"), pattern=v.SUBJECT, examples=["user:alice"])
]
SecretKeyPath = Annotated[str, Path(max_length=v.limit(models.Secret, "key"), pattern=v.ENV_KEY)]
IdPath = Annotated[int, Path(ge=1, le=v.ID_MAX)]
AfterIdQuery = Annotated[int | None, Query(ge=0, le=v.ID_MAX)]
ProjectQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL)]
NamespaceQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL)]
# The environment an app route addresses; needed only when the app runs in several.
EnvQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL, examples=["staging"])]
PrNumberPath = Annotated[int, Path(ge=1, le=v.INT32_MAX)]
RegistryHostPath = Annotated[
    str, Path(max_length=v.limit(models.Registry, "host"), pattern=v.LINE, examples=["ghcr.io"])
]
AuditTargetQuery = Annotated[
    str | None, Query(max_length=v.limit(models.AuditEvent, "target"), pattern=v.LINE)
]
AuditActionQuery = Annotated[
    str | None, Query(max_length=v.limit(models.AuditEvent, "action"), pattern=v.LINE)
]


class ErrorDetail(BaseModel):
    type: str = Field(description="InvalidInput, NotFound, PermissionDenied, Unauthenticated, Conflict, ...")
    message: str = Field(description="Safe to show as written.")
    field: str | None = Field(default=None, description="The input that is wrong (422).")
    retry_after: int | None = Field(default=None, description="Seconds to wait before trying again (429).")
    reference: str | None = Field(default=None, description="Quote it when reporting a server-side failure.")


class ErrorOut(BaseModel):
    """Every error the API answers with, whatever its status."""

    error: ErrorDetail


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectPatch(Strict):
    slack_channel: str | None = _text(v.limit(models.Project, "slack_channel"))
    webhook_url: str | None = _text(v.limit(models.Project, "webhook_url"))
    webhook_secret: str | None = Field(default=None, max_length=WEBHOOK_SECRET_MAX, repr=False)


class ProjectIn(ProjectPatch):
    name: DnsLabel


class ProjectOut(BaseModel):
    name: str
    slack_channel: str | None
    webhook_url: str | None
    webhook_signed: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, p: models.Project, *, defaults: notice_targets.Defaults) -> ProjectOut:
        """Where notices go comes from the project's targets (core.notices.targets), not its old columns."""
        return cls(
            name=p.name,
            slack_channel=defaults.slack_channel,
            webhook_url=defaults.webhook_url,
            webhook_signed=defaults.webhook_signed,
            created_at=p.created_at,
        )


class MemberIn(Strict):
    role: Literal["viewer", "developer", "admin", "owner"]


class MemberOut(BaseModel):
    subject: str
    role: str


class ClusterIn(Strict):
    name: DnsLabel
    kubeconfig: str = Field(max_length=KUBECONFIG_MAX, repr=False)
    namespace: DnsLabel | None = None


class ClusterUpdateIn(Strict):
    kubeconfig: str = Field(max_length=KUBECONFIG_MAX, repr=False)


class ClusterOut(BaseModel):
    """A cluster; where it is and how it answered are for global admins only (None for everyone else)."""

    name: str
    default_namespace: str
    server: str | None = None
    server_version: str | None = None
    last_check_at: dt.datetime | None = None
    last_check_error: str | None = None

    @classmethod
    def of(cls, c: models.Cluster, *, admin: bool) -> ClusterOut:
        if not admin:
            return cls(name=c.name, default_namespace=c.default_namespace)
        return cls(
            name=c.name,
            default_namespace=c.default_namespace,
            server=c.server,
            server_version=c.server_version,
            last_check_at=c.last_check_at,
            last_check_error=c.last_check_error,
        )


class GrantIn(Strict):
    project: DnsLabel
    namespace: DnsLabel | None = None


class GrantOut(BaseModel):
    cluster: str
    project: str
    namespaces: dict[
        str, str
    ]  # namespace -> origin: granted (vouched for by an admin) or created (by shipit)
    granted_by: str

    @classmethod
    def of(cls, g: claims.ProjectGrant) -> GrantOut:
        return cls(cluster=g.cluster, project=g.project, namespaces=g.namespaces, granted_by=g.granted_by)


class AppFields(Strict):
    # Unset fields keep their value; null clears the optional ones (the others are not nullable).
    image: str | None = _app_text("image")
    replicas: int = _app_int("replicas")
    port: int = _app_int("port")
    env: Env = _unset()
    cpu_request: str = _app_text("cpu_request", v.CPU)
    cpu_limit: str = _app_text("cpu_limit", v.CPU)
    memory_request: str = _app_text("memory_request", v.MEMORY)
    memory_limit: str = _app_text("memory_limit", v.MEMORY)
    health_path: str | None = _app_text("health_path", v.HTTP_PATH)
    health_port: int | None = _app_int("health_port")
    health_initial_delay: int = _app_int("health_initial_delay")
    health_period: int = _app_int("health_period")
    min_replicas: int | None = _app_int("min_replicas")
    max_replicas: int | None = _app_int("max_replicas")
    cpu_target: int | None = _app_int("cpu_target")
    domain: str | None = _app_text("domain")
    ingress_class: str | None = _app_text("ingress_class", v.DNS_LABEL)
    tls_issuer: str | None = _app_text("tls_issuer")
    progress_deadline_seconds: int = _app_int("progress_deadline_seconds")
    protected: bool = _unset()
    git_repo: str | None = _app_text("git_repo", v.GIT_REPO)
    git_branch: str | None = _app_text("git_branch")
    git_ref_type: Literal["branch", "tag"] = _unset()
    image_template: str | None = _app_text("image_template")
    deploy_on: Literal["push", "ci"] = _unset()
    github_environment: str | None = _app_text("github_environment")
    previews_enabled: bool = _unset()
    preview_domain: str | None = _app_text("preview_domain")
    preview_ttl_hours: int = _app_int("preview_ttl_hours")
    preview_max_open: int = _app_int("preview_max_open")
    preview_env: Env = _unset()
    # Pull requests from forks: no preview, one after a project developer approves it, or always
    # (admins only; the only setting that gives a fork's preview the app's secrets).
    previews_from_forks: Literal["never", "approved", "always"] = _unset()
    # Run as a Job with the new image before each rollout (`/bin/sh -c`); "" removes it.
    release_command: str | None = _app_text("release_command")
    # Roll back to the current revision by itself when a rollout fails (default on).
    auto_rollback: bool = _unset()


class AppIn(AppFields):
    name: DnsLabel
    project: DnsLabel
    # Optional for a row in a further environment: the environment's cluster, else the app's.
    cluster: DnsLabel | None = None
    namespace: DnsLabel | None = None
    deploy: bool = True
    # The environment to create the app in (default: the project's first); an app already in another
    # environment of the project is copied there, `AppFields` given being this environment's overrides.
    environment: DnsLabel | None = None


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: DnsLabel = Field(alias="from", examples=["staging"])
    to: DnsLabel = Field(examples=["production"])


class EnvironmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DnsLabel
    cluster: DnsLabel | None = None
    namespace: DnsLabel | None = None
    after: DnsLabel | None = None
    before: DnsLabel | None = None


class EnvironmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # "" clears the default.
    cluster: Annotated[str, Field(max_length=63, pattern=r"^$|" + v.DNS_LABEL)] | None = None
    namespace: Annotated[str, Field(max_length=63, pattern=r"^$|" + v.DNS_LABEL)] | None = None


class EnvironmentOut(BaseModel):
    project: str
    name: str
    position: int
    cluster: str | None
    namespace: str | None
    apps: list[str]


class AppOut(BaseModel):
    name: str
    project: str
    environment: str = ""
    cluster: str
    namespace: str
    image: str | None
    replicas: int
    port: int
    env: dict[str, Any]
    resources: dict[str, str]
    health: dict[str, Any] | None
    autoscaling: dict[str, Any] | None
    domain: str | None
    protected: bool
    locked: str | None
    auto_deploy_paused: bool
    paused_reason: str | None
    git: dict[str, Any] | None
    previews: dict[str, Any] | None
    release_command: str | None = None
    auto_rollback: bool = True
    # What runs (the settings above follow it) and the last attempt to change it, kept apart.
    current_revision: int | None = None
    last_attempt: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        a: models.App,
        *,
        view: AppView,
        project: str,
        current_revision: int | None = None,
        last_attempt: DeploymentView | None = None,
    ) -> AppOut:
        """What core's AppView carries comes from it; the settings it does not carry, from the row."""
        return cls(
            name=view.name,
            project=project,
            environment=view.environment or "",
            cluster=view.cluster,
            namespace=view.namespace,
            image=view.image,
            replicas=a.replicas,
            port=a.port,
            env=dict(a.env or {}),
            resources={
                "cpu_request": a.cpu_request,
                "cpu_limit": a.cpu_limit,
                "memory_request": a.memory_request,
                "memory_limit": a.memory_limit,
            },
            health={
                "path": a.health_path,
                "port": a.health_port,
                "initial_delay": a.health_initial_delay,
                "period": a.health_period,
            }
            if a.health_path
            else None,
            autoscaling={
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "cpu_target": a.cpu_target,
            }
            if a.min_replicas is not None
            else None,
            domain=view.domain,
            protected=view.protected,
            locked=a.locked_reason,
            auto_deploy_paused=view.auto_deploy_paused,
            paused_reason=view.paused_reason,
            git={
                "repo": view.git_repo,
                "branch": a.git_branch,
                "ref_type": a.git_ref_type,
                "image_template": a.image_template,
                "deploy_on": a.deploy_on,
            }
            if view.git_repo
            else None,
            previews={
                "domain": a.preview_domain,
                "ttl_hours": a.preview_ttl_hours,
                "max_open": a.preview_max_open,
                "from_forks": a.previews_from_forks,
            }
            if a.previews_enabled
            else None,
            release_command=a.release_command,
            auto_rollback=bool(a.auto_rollback),
            current_revision=current_revision,
            last_attempt={
                "deployment": last_attempt.id,
                "revision": last_attempt.revision,
                "image": last_attempt.image,
                "status": last_attempt.status,
                "outcome": last_attempt.outcome,
                "error": last_attempt.error,
                "finished_at": last_attempt.finished_at.isoformat() if last_attempt.finished_at else None,
            }
            if last_attempt
            else None,
        )


class PreviewOut(BaseModel):
    app: str
    pr: int
    repo: str
    head_sha: str
    head_repo: str | None
    is_fork: bool
    status: str
    namespace: str
    url: str | None
    approved_by: str | None
    expires_at: dt.datetime | None
    deployment: int | None = None

    @classmethod
    def of(cls, p: models.Preview, *, app: str, deployment: int | None = None) -> PreviewOut:
        return cls(
            app=app,
            pr=p.pr_number,
            repo=p.repo,
            head_sha=p.head_sha,
            head_repo=p.head_repo,
            is_fork=bool(p.is_fork),
            status=p.status,
            namespace=p.namespace,
            url=p.url,
            approved_by=p.approved_by,
            expires_at=p.expires_at,
            deployment=deployment,
        )


class DeployIn(Strict):
    image: str | None = _app_text("image")
    dedupe_key: str | None = _text(v.limit(models.Deployment, "dedupe_key"))
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
    revision: int | None = _int(1, v.INT32_MAX)


class ScaleIn(Strict):
    replicas: int | None = _app_int("replicas")
    min_replicas: int | None = _app_int("min_replicas")
    max_replicas: int | None = _app_int("max_replicas")
    cpu_target: int | None = _app_int("cpu_target")
    autoscaling: bool | None = None


class SecretsIn(Strict):
    # Values are encrypted before they are stored, so any character will do; keys become env names.
    values: dict[EnvKey, Annotated[str, Field(max_length=core_secrets.MAX_VALUE_BYTES)]] = Field(repr=False)


class ReasonIn(Strict):
    reason: str | None = _app_text("locked_reason")


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


class RegistryIn(Strict):
    host: str = Field(max_length=v.limit(models.Registry, "host"), pattern=v.LINE)
    username: str = Field(max_length=v.limit(models.Registry, "username"), pattern=v.LINE)
    password: str = Field(repr=False, min_length=1, max_length=REGISTRY_PASSWORD_MAX)
    project: DnsLabel | None = None  # None: global credentials, for every project (global admins only)


class RegistryOut(BaseModel):
    """Never the password."""

    host: str
    project: str | None
    username: str
    created_by: str
    updated_at: dt.datetime


class SecretKeyOut(BaseModel):
    key: str
    updated_at: dt.datetime


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    channel: str
    action: str
    target: str
    details: dict[str, Any]


class MeOut(BaseModel):
    subject: str
    admin: bool
    channel: str


class AppCreated(BaseModel):
    app: AppOut
    deployment: DeploymentOut | None


class AppDeleted(BaseModel):
    deleted: str
    workload_removed: bool
    warning: str | None


class SecretsChanged(BaseModel):
    keys: list[str]
    deployment: DeploymentOut | None


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=v.limit(models.ApiToken, "name"), pattern=v.LINE)
    subject: str | None = _text(v.limit(models.Member, "subject"), v.SUBJECT)
    admin: bool = False


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    subject: str
    admin: bool
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, t: models.ApiToken) -> TokenOut:
        return cls(
            id=t.id,
            name=t.name,
            prefix=t.prefix,
            subject=t.subject,
            admin=t.is_admin,
            created_at=t.created_at,
            last_used_at=t.last_used_at,
            revoked_at=t.revoked_at,
        )


class TokenCreated(TokenOut):
    token: str


# ------------------------------------------------------------------ image policies (deploys from the registry)

EnvironmentQuery = Annotated[str | None, Query(max_length=63, pattern=v.DNS_LABEL)]
POLICY_PATTERN_MAX = v.limit(models.ImagePolicy, "pattern")


class ImagePolicyIn(Strict):
    """Exactly one of semver, glob and regex."""

    semver: str | None = _text(POLICY_PATTERN_MAX)
    glob: str | None = _text(POLICY_PATTERN_MAX)
    regex: str | None = _text(POLICY_PATTERN_MAX)
    sort: Literal["numeric", "alpha"] | None = None  # regex only: how the group `key` orders tags
    repository: str | None = _text(v.limit(models.ImagePolicy, "repository"))  # default: the app's image
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
