"""Apps, their environments, previews, flags and secrets."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core import secrets as core_secrets
from core import validation as v
from core.notices import AppView, DeploymentView
from shipit.schemas.common import DnsLabel, Env, SecretKey, Strict, app_int, app_text, unset
from shipit.schemas.deploys import DeploymentOut
from storage import models


class AppFields(Strict):
    # Unset fields keep their value; null clears the optional ones (the others are not nullable).
    image: str | None = app_text("image")
    replicas: int = app_int("replicas")
    port: int = app_int("port")
    env: Env = unset()
    cpu_request: str = app_text("cpu_request", v.CPU)
    cpu_limit: str = app_text("cpu_limit", v.CPU)
    memory_request: str = app_text("memory_request", v.MEMORY)
    memory_limit: str = app_text("memory_limit", v.MEMORY)
    health_path: str | None = app_text("health_path", v.HTTP_PATH)
    health_port: int | None = app_int("health_port")
    health_initial_delay: int = app_int("health_initial_delay")
    health_period: int = app_int("health_period")
    min_replicas: int | None = app_int("min_replicas")
    max_replicas: int | None = app_int("max_replicas")
    cpu_target: int | None = app_int("cpu_target")
    # Seconds the HPA waits before scaling down (autoscaling only); null: Kubernetes' default, 300.
    scale_down_window: int | None = app_int("scale_down_window")
    domain: str | None = app_text("domain")
    ingress_class: str | None = app_text("ingress_class", v.DNS_LABEL)
    tls_issuer: str | None = app_text("tls_issuer")
    progress_deadline_seconds: int = app_int("progress_deadline_seconds")
    protected: bool = unset()
    git_repo: str | None = app_text("git_repo", v.GIT_REPO)
    git_branch: str | None = app_text("git_branch")
    git_ref_type: Literal["branch", "tag"] = unset()
    image_template: str | None = app_text("image_template")
    deploy_on: Literal["push", "ci"] = unset()
    github_environment: str | None = app_text("github_environment")
    previews_enabled: bool = unset()
    preview_domain: str | None = app_text("preview_domain")
    preview_ttl_hours: int = app_int("preview_ttl_hours")
    preview_max_open: int = app_int("preview_max_open")
    preview_env: Env = unset()
    # Pull requests from forks: no preview, one after a project developer approves it, or always
    # (admins only; the only setting that gives a fork's preview the app's secrets).
    previews_from_forks: Literal["never", "approved", "always"] = unset()
    # Run as a Job with the new image before each rollout (`/bin/sh -c`); "" removes it.
    release_command: str | None = app_text("release_command")
    # Roll back to the current revision by itself when a rollout fails (default on).
    auto_rollback: bool = unset()
    # Build from source: a push builds the commit (buildpacks or its Dockerfile) into build_image
    # (a repository; each build is tagged with its sha) and deploys the pushed digest.
    build_enabled: bool = unset()
    build_context: str | None = app_text("build_context")
    build_image: str | None = app_text("build_image")


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
                "scale_down_window": a.scale_down_window,
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
                "build": {"context": a.build_context or ".", "image": a.build_image}
                if a.build_enabled
                else None,
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


class SecretsIn(Strict):
    # Values are encrypted before they are stored, so any character will do; keys become env names,
    # checked in core (validation.secret_key), which does not echo a refused one as the schema would.
    values: dict[SecretKey, Annotated[str, Field(max_length=core_secrets.MAX_VALUE_BYTES)]] = Field(
        repr=False
    )


class ReasonIn(Strict):
    reason: str | None = app_text("locked_reason")


class SecretKeyOut(BaseModel):
    key: str
    updated_at: dt.datetime


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


class BuildOut(BaseModel):
    """A build from source (core.builds); `log` (a bounded tail) only when one build is asked for."""

    id: int
    app: str
    sha: str
    ref: str
    actor: str
    status: str
    pack: str | None
    image: str
    digest: str | None
    deployment: int | None
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    runs: int = 1  # 1, and one more for each `builds retry`
    pr: int | None = None  # the pull request whose preview it was queued for; None: a push to the branch
    log: str | None = None

    @classmethod
    def of(cls, b: models.Build, *, app: str, with_log: bool = False) -> BuildOut:
        return cls(
            id=b.id,
            app=app,
            sha=b.sha,
            ref=b.ref,
            actor=b.actor,
            status=b.status,
            pack=b.pack,
            image=b.image,
            digest=b.digest,
            deployment=b.deployment_id,
            error=b.error,
            created_at=b.created_at,
            started_at=b.started_at,
            finished_at=b.finished_at,
            runs=(b.runs or 0) + 1,
            pr=b.pr_number,
            log=b.log if with_log else None,
        )


class RunIn(Strict):
    """A one-off command (core.runs): argv as given, no shell; `["sh", "-c", "..."]` is the caller's choice."""

    command: list[Annotated[str, Field(max_length=16384)]] = Field(
        min_length=1, max_length=64, examples=[["rake", "db:seed"]]
    )
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400, examples=[1800])


class RunOut(BaseModel):
    """A one-off run, from its Job while that exists and from the history after: its program, never its
    arguments (they may hold credentials)."""

    name: str
    app: str
    namespace: str
    revision: int | None
    image: str
    program: str
    # unknown: its Job is gone (the TTL deletes it) and shipit never saw how it ended.
    state: Literal["running", "succeeded", "failed", "cancelled", "unknown"]
    reason: str | None
    message: str | None
    exit_code: int | None
    pod: str | None
    started_at: str | None
    finished_at: str | None
    actor: str | None  # who started it; None for a run from before shipit kept a history
    args: int | None  # how many arguments followed the program (never the arguments)
    timeout_seconds: int | None
