"""Projects, members, clusters and their grants, registries, tokens, the caller and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from core import claims
from core import validation as v
from core.notices import targets as notice_targets
from shipit.schemas.common import (
    KUBECONFIG_MAX,
    REGISTRY_PASSWORD_MAX,
    WEBHOOK_SECRET_MAX,
    DnsLabel,
    Strict,
    bounded_text,
)
from storage import models


class ProjectPatch(Strict):
    slack_channel: str | None = bounded_text(v.limit(models.Project, "slack_channel"))
    webhook_url: str | None = bounded_text(v.limit(models.Project, "webhook_url"))
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


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=v.limit(models.ApiToken, "name"), pattern=v.LINE)
    subject: str | None = bounded_text(v.limit(models.Member, "subject"), v.SUBJECT)
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
