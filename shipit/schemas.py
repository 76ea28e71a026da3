"""Request and response bodies of the REST API.  Responses never carry secret values."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage import models


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectIn(Strict):
    name: str
    slack_channel: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = Field(default=None, repr=False)


class ProjectPatch(Strict):
    slack_channel: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = Field(default=None, repr=False)


class ProjectOut(BaseModel):
    name: str
    slack_channel: str | None
    webhook_url: str | None
    webhook_signed: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, p: models.Project) -> ProjectOut:
        return cls(
            name=p.name,
            slack_channel=p.slack_channel,
            webhook_url=p.webhook_url,
            webhook_signed=p.webhook_secret_enc is not None,
            created_at=p.created_at,
        )


class MemberIn(Strict):
    role: str


class MemberOut(BaseModel):
    subject: str
    role: str


class ClusterIn(Strict):
    name: str
    kubeconfig: str = Field(repr=False)
    namespace: str | None = None


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
    project: str
    namespace: str | None = None


class GrantOut(BaseModel):
    cluster: str
    project: str
    namespaces: dict[
        str, str
    ]  # namespace -> origin: granted (vouched for by an admin) or created (by shipit)
    granted_by: str


class AppFields(Strict):
    image: str | None = None
    replicas: int | None = None
    port: int | None = None
    env: dict[str, str] | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    health_path: str | None = None
    health_port: int | None = None
    health_initial_delay: int | None = None
    health_period: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_target: int | None = None
    domain: str | None = None
    ingress_class: str | None = None
    tls_issuer: str | None = None
    progress_deadline_seconds: int | None = None
    protected: bool | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    git_ref_type: str | None = None
    image_template: str | None = None
    deploy_on: str | None = None
    github_environment: str | None = None
    previews_enabled: bool | None = None
    preview_domain: str | None = None
    preview_ttl_hours: int | None = None
    preview_max_open: int | None = None
    preview_env: dict[str, str] | None = None
    # Pull requests from forks: no preview, one after a project developer approves it, or always
    # (admins only; the only setting that gives a fork's preview the app's secrets).
    previews_from_forks: Literal["never", "approved", "always"] | None = None
    # Roll back to the current revision by itself when a rollout fails (default on).
    auto_rollback: bool | None = None


class AppIn(AppFields):
    name: str
    project: str
    cluster: str
    namespace: str | None = None
    deploy: bool = True


class AppOut(BaseModel):
    name: str
    project: str
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
    auto_rollback: bool = True
    # What runs (the settings above follow it) and the last attempt to change it, kept apart.
    current_revision: int | None = None
    last_attempt: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        a: models.App,
        *,
        project: str,
        cluster: str,
        current_revision: int | None = None,
        last_attempt: dict[str, Any] | None = None,
    ) -> AppOut:
        return cls(
            auto_rollback=bool(a.auto_rollback),
            current_revision=current_revision,
            last_attempt=last_attempt,
            name=a.name,
            project=project,
            cluster=cluster,
            namespace=a.namespace,
            image=a.image,
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
            domain=a.domain,
            protected=a.protected,
            locked=a.locked_reason,
            auto_deploy_paused=a.auto_deploy_paused,
            paused_reason=a.paused_reason,
            git={
                "repo": a.git_repo,
                "branch": a.git_branch,
                "ref_type": a.git_ref_type,
                "image_template": a.image_template,
                "deploy_on": a.deploy_on,
            }
            if a.git_repo
            else None,
            previews={
                "domain": a.preview_domain,
                "ttl_hours": a.preview_ttl_hours,
                "max_open": a.preview_max_open,
                "from_forks": a.previews_from_forks,
            }
            if a.previews_enabled
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
    image: str | None = None
    dedupe_key: str | None = Field(default=None, max_length=200)


class RollbackIn(Strict):
    revision: int | None = None


class ScaleIn(Strict):
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_target: int | None = None
    autoscaling: bool | None = None


class SecretsIn(Strict):
    values: dict[str, str] = Field(repr=False)


class ReasonIn(Strict):
    reason: str | None = None


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

    @classmethod
    def of(cls, d: models.Deployment, *, app: str) -> DeploymentOut:
        return cls(
            id=d.id,
            app=app,
            status=d.status,
            trigger=d.trigger,
            actor=d.actor,
            image=d.image,
            revision=d.revision_number,
            namespace=d.namespace,
            error=d.error,
            logs=list(d.logs or []),
            ready=d.ready,
            desired=d.desired,
            approved_by=d.approved_by,
            git_sha=d.git_sha,
            created_at=d.created_at,
            started_at=d.started_at,
            finished_at=d.finished_at,
            rolled_back_by=d.rolled_back_by_id,
        )


class RevisionOut(BaseModel):
    number: int
    image: str
    source: str
    rollback_of: int | None
    created_by: str
    created_at: dt.datetime
    snapshot: dict[str, Any]


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


class TokenIn(Strict):
    name: str
    subject: str | None = None
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
