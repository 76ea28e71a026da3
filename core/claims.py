"""Who owns what on a cluster: cluster grants and namespace claims (tables in storage.models).

A project may use a cluster only with a grant from a global admin; on each cluster a namespace
belongs to at most one project.  A claim's origin says how it came to be: "granted" (an admin
vouched for the namespace, which may already exist) or "created" (shipit creates it and must
refuse one that already exists without its labels).

Refusals never name the project holding a namespace: to anyone else it is just "not available".
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import readcache
from core.errors import Conflict, PermissionDenied
from core.identity import Actor
from storage import models

GRANTED = "granted"
CREATED = "created"


@dataclass(frozen=True, kw_only=True)
class ProjectGrant:
    """One project's grant on one cluster and the namespaces it claims there."""

    cluster: str
    project: str
    namespaces: dict[str, str]  # namespace -> origin
    granted_by: str


def not_available(*, namespace: str, cluster: str, project: str) -> Conflict:
    return Conflict(f"namespace {namespace} on cluster {cluster} is not available to project {project}")


def not_granted(*, cluster: str, project: str) -> PermissionDenied:
    return PermissionDenied(
        f"project {project} may not use cluster {cluster}; "
        f"a global admin can grant it with `shipit clusters grant {cluster} {project}`"
    )


async def grant_of(session: AsyncSession, *, cluster_id: int, project_id: int) -> models.ClusterGrant | None:
    return await session.scalar(
        select(models.ClusterGrant).where(
            models.ClusterGrant.cluster_id == cluster_id, models.ClusterGrant.project_id == project_id
        )
    )


async def ensure_grant(
    session: AsyncSession, *, cluster_id: int, project_id: int, actor: Actor
) -> models.ClusterGrant:
    grant = await grant_of(session, cluster_id=cluster_id, project_id=project_id)
    if grant is None:
        grant = models.ClusterGrant(cluster_id=cluster_id, project_id=project_id, created_by=actor.subject)
        session.add(grant)
        await session.flush()
    return grant


async def claim_of(session: AsyncSession, *, cluster_id: int, namespace: str) -> models.NamespaceClaim | None:
    def q() -> Select[models.NamespaceClaim]:  # built only when the copies do not answer
        return select(models.NamespaceClaim).where(
            models.NamespaceClaim.cluster_id == cluster_id, models.NamespaceClaim.namespace == namespace
        )

    rows = await readcache.rows(session, ("claim", cluster_id, namespace), q)
    return rows[0] if rows else None


async def _names(session: AsyncSession, *, cluster_id: int, project_id: int) -> tuple[str, str]:
    cluster = await session.get(models.Cluster, cluster_id)
    project = await session.get(models.Project, project_id)
    return (cluster.name if cluster else str(cluster_id)), (project.name if project else str(project_id))


async def claim(
    session: AsyncSession, *, cluster_id: int, namespace: str, project_id: int, origin: str, actor: Actor
) -> models.NamespaceClaim:
    """Claim `namespace` for the project, or keep its claim; refused when another project holds it."""
    existing = await claim_of(session, cluster_id=cluster_id, namespace=namespace)
    if existing is not None:
        if existing.project_id != project_id:
            cluster, project = await _names(session, cluster_id=cluster_id, project_id=project_id)
            raise not_available(namespace=namespace, cluster=cluster, project=project)
        return existing
    row = models.NamespaceClaim(
        cluster_id=cluster_id,
        namespace=namespace,
        project_id=project_id,
        origin=origin,
        created_by=actor.subject,
    )
    # A savepoint, so that a concurrent claim of the same namespace (the unique constraint) is refused
    # like any other instead of breaking the caller's transaction.
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        cluster, project = await _names(session, cluster_id=cluster_id, project_id=project_id)
        raise not_available(namespace=namespace, cluster=cluster, project=project) from None
    return row


async def claim_created(
    session: AsyncSession, *, cluster_id: int, namespace: str, project_id: int, actor: Actor
) -> models.NamespaceClaim:
    """A namespace shipit creates for the project (an app's own or a preview's)."""
    return await claim(
        session,
        cluster_id=cluster_id,
        namespace=namespace,
        project_id=project_id,
        origin=CREATED,
        actor=actor,
    )


async def check_owned(session: AsyncSession, *, cluster_id: int, namespace: str, project_id: int) -> None:
    """Refuse to touch a namespace the project does not claim (checked again at every deploy)."""

    async def load() -> int | None:
        claim = await claim_of(session, cluster_id=cluster_id, namespace=namespace)
        return None if claim is None else claim.project_id

    # The owner alone, a plain value from the read cache: no ORM row attached to the session for a
    # check (issue 13: a monorepo push checks each of its apps' namespaces).
    owner = await readcache.value(session, ("claim.owner", cluster_id, namespace), load)
    if owner != project_id:
        cluster, project = await _names(session, cluster_id=cluster_id, project_id=project_id)
        raise not_available(namespace=namespace, cluster=cluster, project=project)


async def granted_cluster_ids(session: AsyncSession, *, project_ids: set[int]) -> set[int]:
    if not project_ids:
        return set()
    rows = await session.scalars(
        select(models.ClusterGrant.cluster_id).where(models.ClusterGrant.project_id.in_(project_ids))
    )
    return set(rows)


async def grants(
    session: AsyncSession, *, cluster_id: int | None = None, project_id: int | None = None
) -> list[ProjectGrant]:
    """Grants with their claims, filtered by cluster and/or project, ordered by cluster then project."""
    q = (
        select(models.ClusterGrant, models.Cluster.name, models.Project.name)
        .join(models.Cluster, models.Cluster.id == models.ClusterGrant.cluster_id)
        .join(models.Project, models.Project.id == models.ClusterGrant.project_id)
        .order_by(models.Cluster.name, models.Project.name)
    )
    cq = select(models.NamespaceClaim).order_by(models.NamespaceClaim.namespace)
    if cluster_id is not None:
        q = q.where(models.ClusterGrant.cluster_id == cluster_id)
        cq = cq.where(models.NamespaceClaim.cluster_id == cluster_id)
    if project_id is not None:
        q = q.where(models.ClusterGrant.project_id == project_id)
        cq = cq.where(models.NamespaceClaim.project_id == project_id)
    claimed: dict[tuple[int, int], dict[str, str]] = {}
    for c in await session.scalars(cq):
        claimed.setdefault((c.cluster_id, c.project_id), {})[c.namespace] = c.origin
    return [
        ProjectGrant(
            cluster=cluster_name,
            project=project_name,
            namespaces=claimed.get((g.cluster_id, g.project_id), {}),
            granted_by=g.created_by,
        )
        for g, cluster_name, project_name in (await session.execute(q)).all()
    ]
