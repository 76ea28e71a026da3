"""All configuration, from the environment (prefix SHIPIT_) or .env.  .env.example mirrors this class."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPIT_", env_file=".env", extra="ignore")

    # storage
    database_url: str = "sqlite+aiosqlite:///./var/shipit.db"
    data_dir: Path = Path("./var")
    master_key: SecretStr | None = None

    # serving
    host: str = "127.0.0.1"
    port: int = 8000
    url: str = "http://127.0.0.1:8000"  # where people and the CLI reach this service
    token: SecretStr | None = None  # the CLI's API token
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with request/deploy context
    max_body_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    run_worker: bool = True
    # First start: write the admin token to this file (created 0600, never overwritten), not the log.
    bootstrap_token_file: Path | None = None

    # abuse limits (in-process, so per replica)
    api_auth_failures_per_minute: int = Field(default=20, ge=0)  # per client address; 0 = off
    api_requests_per_minute: int = Field(default=600, ge=0)  # per API token; 0 = off
    max_connections: int = Field(default=1000, ge=1)  # beyond it, new requests get 503
    header_timeout_seconds: float = Field(default=10.0, gt=0)  # to send a request's headers
    body_timeout_seconds: float = Field(default=30.0, gt=0)  # longest pause inside a request body
    # Idle connection between requests: longer than what sits in front (ingress-nginx and cloud load
    # balancers keep upstream connections 60 s, httpx 5 s), or a request sent as we close is lost.
    keep_alive_seconds: float = Field(default=75.0, gt=0)

    # tenancy: who may create projects ("admins": global admins only; "everyone": any API token)
    project_creators: Literal["admins", "everyone"] = "admins"

    # the job queue
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    # A dead process's jobs wait this long for another replica; heartbeats renew it every third of it.
    job_lease_seconds: float = Field(default=8.0, gt=0)
    job_poll_seconds: float = Field(default=0.5, gt=0)
    approval_ttl_seconds: float = Field(default=3600.0, gt=0)

    # retention (days; 0 = keep for ever).  The audit log is always kept (`shipit audit --format jsonl`).
    retention_jobs_days: float = Field(default=14.0, ge=0)  # finished jobs
    retention_events_days: float = Field(default=30.0, ge=0)  # delivered events (the outbox)
    retention_deliveries_days: float = Field(default=30.0, ge=0)  # recorded webhook deliveries
    # finished builds (their logs) and their Slack card marks; each app's newest `keep` always stay
    retention_builds_days: float = Field(default=90.0, ge=0)
    retention_builds_keep: int = Field(default=20, ge=0)
    # one-off runs' history (core.runs); each app's newest `keep` always stay
    retention_runs_days: float = Field(default=90.0, ge=0)
    retention_runs_keep: int = Field(default=50, ge=0)
    retention_usage_days: float = Field(default=14.0, ge=0)  # usage samples (core.usage_history)
    retention_usage_hourly_days: float = Field(default=90.0, ge=0)  # their hourly rollups (30d window)

    # usage history: each deployed app's CPU and memory sampled this often (0: no sampling)
    usage_sample_seconds: float = Field(default=60.0, ge=0)

    # Kubernetes defaults
    ingress_class: str = "nginx"
    tls_issuer: str | None = None
    # The release phase (an app's release command, run as a Job before each rollout): the longest
    # it may run (unset: the app's progress deadline), and how long a finished Job is kept.
    release_deadline_seconds: int | None = Field(default=None, ge=1)
    release_ttl_seconds: int = Field(default=86400, ge=60)
    # `deploy --dry-run` and `/shipit diff` ask the cluster while the caller waits: at most this long.
    dry_run_timeout_seconds: float = Field(default=20.0, gt=0)
    # Add-ons (managed databases): the images, the StorageClass of their volumes (empty: the
    # cluster's default), and how often provisioning looks again until the database is ready.
    addon_postgres_image: str = "postgres:16"
    addon_redis_image: str = "redis:7"
    addon_storage_class: str = ""
    addon_ready_poll_seconds: float = Field(default=10.0, gt=0, le=600)

    # private registries: pin tags to digests at deploy time (off: deploy by tag, no registry lookups)
    registry_pin_digests: bool = True
    # the digest lookup at deploy time gives up after this, and deploys by tag
    registry_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # registry hosts reached over plain HTTP, comma-separated (e.g. registry.internal:5000)
    registry_insecure_hosts: str = ""
    # POST /registry/webhook: the token registries send (Authorization: Bearer, or ?token= for
    # Docker Hub); unset switches the route off (503)
    registry_webhook_token: SecretStr | None = None
    # how often the poller looks for image policies that are due (each has its own interval)
    registry_poll_tick_seconds: float = Field(default=5.0, gt=0, le=3600)
    # `shipit builder` (builds from source, core.builds): base images per pack, buildah and its store,
    # where sources are unpacked, the longest a build may run and the largest source it unpacks.
    build_python_image: str = "docker.io/library/python:3.12-slim"
    build_node_image: str = "docker.io/library/node:22-slim"
    build_go_image: str = "docker.io/library/golang:1.23"
    build_static_image: str = "docker.io/library/nginx:1.27-alpine"
    buildah: str = "buildah"
    build_root: str | None = None
    build_runroot: str | None = None
    build_isolation: Literal["chroot", "oci", "rootless"] = "chroot"
    build_dir: str | None = None
    build_timeout_seconds: float = Field(default=1800.0, gt=0)
    build_max_source_bytes: int = Field(default=500 * 1024 * 1024, ge=1024)
    # The layer cache (buildah --layers --cache-from/--cache-to): a repository per app, "{image}"
    # standing for its build_image; empty: no cache.  Registries without nested names (Docker Hub)
    # take "{image}-cache".
    build_cache_repo: str = "{image}/cache"

    # Slack (optional: unset signing secret switches the channel off)
    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_client_id: str | None = None
    slack_client_secret: SecretStr | None = None

    # GitHub (optional: unset webhook secret switches the channel off)
    github_webhook_secret: SecretStr | None = None
    github_token: SecretStr | None = None
    github_app_id: str | None = None
    github_private_key: SecretStr | None = None
    github_api_url: str = "https://api.github.com"
    # Pause between mutating GitHub API calls (GitHub's advice against secondary rate limits).
    github_write_interval_seconds: float = Field(default=1.0, ge=0)

    # Email notices (unset: email targets fail with a clear reason): smtp[s]://user:pass@host:port
    smtp_url: SecretStr | None = None
    smtp_from: str = "shipit@localhost"

    # Dashboard sign-in (web/): OpenID Connect and/or GitHub OAuth; neither set = the dashboard is off
    oidc_issuer: str | None = None  # discovery at <issuer>/.well-known/openid-configuration
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid email profile"
    github_oauth_client_id: str | None = None
    github_oauth_client_secret: SecretStr | None = None
    # Where people sign in to GitHub (GHE: https://ghe.example.com); empty: derived from github_api_url.
    github_oauth_url: str | None = None
    # Secure cookies need https; turn off only for http://localhost.
    web_cookie_secure: bool = True
    web_session_hours: float = Field(default=12.0, gt=0)
    # Comma-separated subjects (user:ops@acme.io,github:octocat) who act as global admins when signed in.
    web_admins: str = ""

    @property
    def web_admin_subjects(self) -> frozenset[str]:
        # Lower case: emails and GitHub logins are case-insensitive (sign-in lower-cases emails too).
        return frozenset(s.strip().lower() for s in self.web_admins.split(",") if s.strip())

    @field_validator("build_cache_repo")
    @classmethod
    def _cache_per_app(cls, value: str) -> str:
        # One repository shared by every app would let one project write layers another's builds reuse.
        if value and "{image}" not in value:
            raise ValueError('must name the app\'s image as "{image}" (e.g. {image}/cache), or be empty')
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # `SHIPIT_MASTER_KEY=` as copied from .env.example means "not set" (a key generated into the
        # data dir), not an empty key; so for every setting that may be unset (a path, not ".").
        if (
            value == ""
            and info.field_name
            and type(None) in get_args(cls.model_fields[info.field_name].annotation)
        ):
            return None
        return value
