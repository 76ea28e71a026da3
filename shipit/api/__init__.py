"""The REST API (/api/v1): a thin channel.  Each route authenticates, opens ONE transaction, calls one
core service and renders the result.

One module per resource, each with its own router (shipit.api.base.new_router: the same prefix,
bearer scheme and error bodies); `router` below is the one place that includes them all.
"""

from __future__ import annotations

from fastapi import APIRouter

from shipit.api import (
    addons,
    apps,
    audit,
    builds,
    clusters,
    deploys,
    environments,
    identities,
    live,
    notify,
    policies,
    previews,
    projects,
    protection,
    registries,
    runs,
    secrets,
    tokens,
)
from shipit.api.base import CLUSTER_ERRORS, ERRORS, ActorDep, RtDep, bearer, current_actor, error_schemas, tx

router = APIRouter()
for _resource in (
    tokens,
    projects,
    clusters,
    apps,
    builds,
    deploys,
    environments,
    previews,
    live,
    runs,
    registries,
    secrets,
    audit,
    policies,
    identities,
    protection,
    notify,
    addons,
):
    router.include_router(_resource.router)

__all__ = [
    "CLUSTER_ERRORS",
    "ERRORS",
    "ActorDep",
    "RtDep",
    "bearer",
    "current_actor",
    "error_schemas",
    "router",
    "tx",
]
