"""Clusters: where apps run.  The kubeconfig is stored encrypted and checked on add.

Global admins add clusters and grant projects their use (see core.claims); everyone else sees only
the clusters their projects hold a grant on, and never the server address.
"""

from __future__ import annotations

import logging

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, claims, identity, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, TransientError
from core.identity import Actor
from core.kube.client import Kube
from storage import models

log = logging.getLogger(__name__)
PURPOSE = "kubeconfig"


def parse_kubeconfig(text: str) -> tuple[str, str]:
    """Return (server, default namespace) or raise InvalidInput naming the kubeconfig."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInput(
            f"kubeconfig is not valid YAML: {e.__class__.__name__}", field="kubeconfig"
        ) from None
    if not isinstance(doc, dict) or not doc.get("clusters") or not doc.get("contexts"):
        raise InvalidInput("kubeconfig has no clusters or contexts", field="kubeconfig")
    current = doc.get("current-context") or doc["contexts"][0].get("name")
    ctx_entry = next((c for c in doc["contexts"] if c.get("name") == current), None)
    if not ctx_entry or not isinstance(ctx_entry.get("context"), dict):
        raise InvalidInput(f"kubeconfig: current context {current!r} is not defined", field="kubeconfig")
    cluster_name = ctx_entry["context"].get("cluster")
    cluster = next((c for c in doc["clusters"] if c.get("name") == cluster_name), None)
    if not cluster or not cluster.get("cluster", {}).get("server"):
        raise InvalidInput(f"kubeconfig: cluster {cluster_name!r} has no server", field="kubeconfig")
    return str(cluster["cluster"]["server"]), str(ctx_entry["context"].get("namespace") or "default")


async def get(session: AsyncSession, *, name: str) -> models.Cluster:
    cluster = await session.scalar(select(models.Cluster).where(models.Cluster.name == name))
    if cluster is None:
        raise NotFound(f"no cluster named {name!r}")
    return cluster


def kubeconfig(cluster: models.Cluster, *, ctx: Core) -> str:
    return ctx.cipher.decrypt_text(cluster.kubeconfig_enc, purpose=PURPOSE)


async def client(cluster: models.Cluster, *, ctx: Core) -> Kube:
    return await ctx.kube.get(key=str(cluster.id), kubeconfig=kubeconfig(cluster, ctx=ctx))


async def check(*, ctx: Core, kubeconfig_text: str, key: str) -> str:
    """Connect and return the server version; raises a UserError when it cannot."""
    kube = await ctx.kube.get(key=key, kubeconfig=kubeconfig_text)
    try:
        return await kube.check()
    except TransientError as e:
        raise InvalidInput(f"kubeconfig: cannot reach the cluster: {e}", field="kubeconfig") from None


async def add(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    name: str,
    kubeconfig_text: str,
    default_namespace: str | None = None,
    version: str,
) -> models.Cluster:
    """Store a cluster.  `version` comes from `check()`, run by the caller before the transaction."""
    identity.require_admin(actor, action="adding a cluster")
    name = validation.dns_label(name, field="name")
    server, ns = parse_kubeconfig(kubeconfig_text)
    if await session.scalar(select(models.Cluster.id).where(models.Cluster.name == name)):
        raise Conflict(f"cluster {name!r} already exists")
    cluster = models.Cluster(
        name=name,
        kubeconfig_enc=ctx.cipher.encrypt_text(kubeconfig_text, purpose=PURPOSE),
        default_namespace=validation.dns_label(default_namespace or ns, field="namespace"),
        server=server,
        server_version=version,
        last_check_at=models.utcnow(),
    )
    session.add(cluster)
    await session.flush()
    await audit.record(
        session, actor=actor, action="cluster.add", target=f"cluster/{name}", details={"server": server}
    )
    return cluster


async def list_all(session: AsyncSession) -> list[models.Cluster]:
    return list(await session.scalars(select(models.Cluster).order_by(models.Cluster.name)))


async def list_visible(session: AsyncSession, *, actor: Actor) -> list[models.Cluster]:
    """All clusters for a global admin; otherwise those the caller's projects hold a grant on."""
    projects = await identity.visible_project_ids(session, actor=actor)
    if projects is None:
        return await list_all(session)
    ids = await claims.granted_cluster_ids(session, project_ids=projects)
    if not ids:
        return []
    return list(
        await session.scalars(
            select(models.Cluster).where(models.Cluster.id.in_(ids)).order_by(models.Cluster.name)
        )
    )


async def _project(session: AsyncSession, *, name: str) -> models.Project:
    project = await session.scalar(select(models.Project).where(models.Project.name == name))
    if project is None:
        raise identity.project_not_found(name)
    return project


async def grant(
    session: AsyncSession, *, actor: Actor, cluster: str, project: str, namespace: str | None = None
) -> claims.ProjectGrant:
    """Let `project` use `cluster`; with `namespace`, also hand it that (possibly existing) namespace."""
    identity.require_admin(actor, action="granting a cluster")
    clu = await get(session, name=cluster)
    proj = await _project(session, name=project)
    await claims.ensure_grant(session, cluster_id=clu.id, project_id=proj.id, actor=actor)
    if namespace is not None:
        namespace = validation.dns_label(namespace, field="namespace")
        held = await claims.claim_of(session, cluster_id=clu.id, namespace=namespace)
        if held is not None and held.project_id != proj.id:
            other = await session.get(models.Project, held.project_id)
            owner = other.name if other else "another project"
            # Only global admins get here, so naming the holder tells nobody anything new.
            raise Conflict(
                f"namespace {namespace} on cluster {clu.name} belongs to project {owner}; "
                f"revoke it first with `shipit clusters revoke {clu.name} {owner} --namespace {namespace}`"
            )
        if held is None:
            await claims.claim(
                session,
                cluster_id=clu.id,
                namespace=namespace,
                project_id=proj.id,
                origin=claims.GRANTED,
                actor=actor,
            )
        else:
            held.origin = claims.GRANTED  # an admin now vouches for it as it is
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="cluster.grant",
        target=f"cluster/{clu.name}",
        project_id=proj.id,
        details={"project": proj.name, "namespace": namespace},
    )
    return (await claims.grants(session, cluster_id=clu.id, project_id=proj.id))[0]


async def revoke(
    session: AsyncSession, *, actor: Actor, cluster: str, project: str, namespace: str | None = None
) -> None:
    """Take back a namespace (with `namespace`) or the whole cluster; refused while apps still use it."""
    identity.require_admin(actor, action="revoking a cluster grant")
    clu = await get(session, name=cluster)
    proj = await _project(session, name=project)
    in_use = select(models.App.name).where(models.App.cluster_id == clu.id, models.App.project_id == proj.id)
    previews = (
        select(models.Preview.namespace)
        .join(models.App, models.App.id == models.Preview.app_id)
        .where(models.App.cluster_id == clu.id, models.Preview.closed_at.is_(None))
    )
    if namespace is not None:
        claim = await claims.claim_of(session, cluster_id=clu.id, namespace=namespace)
        if claim is None or claim.project_id != proj.id:
            raise NotFound(f"project {proj.name} holds no namespace {namespace} on cluster {clu.name}")
        users = list(await session.scalars(in_use.where(models.App.namespace == namespace)))
        if await session.scalar(previews.where(models.Preview.namespace == namespace)):
            users.append(f"the preview {namespace}")
        if users:
            raise Conflict(
                f"namespace {namespace} on cluster {clu.name} is still used by {', '.join(sorted(users))}; "
                "delete or close those first"
            )
        await session.delete(claim)
    else:
        if await claims.grant_of(session, cluster_id=clu.id, project_id=proj.id) is None:
            raise NotFound(f"project {proj.name} holds no grant on cluster {clu.name}")
        users = sorted(await session.scalars(in_use))
        if users:
            raise Conflict(
                f"project {proj.name} still has apps on cluster {clu.name} ({', '.join(users)}); delete them first"
            )
        for claim in await session.scalars(
            select(models.NamespaceClaim).where(
                models.NamespaceClaim.cluster_id == clu.id, models.NamespaceClaim.project_id == proj.id
            )
        ):
            await session.delete(claim)
        grant_row = await claims.grant_of(session, cluster_id=clu.id, project_id=proj.id)
        await session.delete(grant_row)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="cluster.revoke",
        target=f"cluster/{clu.name}",
        project_id=proj.id,
        details={"project": proj.name, "namespace": namespace},
    )


async def grants(session: AsyncSession, *, actor: Actor, cluster: str) -> list[claims.ProjectGrant]:
    identity.require_admin(actor, action="listing a cluster's grants")
    clu = await get(session, name=cluster)
    return await claims.grants(session, cluster_id=clu.id)


async def update(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    name: str,
    kubeconfig_text: str,
    version: str,
) -> models.Cluster:
    """Replace a cluster's kubeconfig (a rotated token, a moved API server).  `version` comes from
    `check()` on the new kubeconfig, run by the caller before the transaction; the caller drops the
    cached client after commit so the next deploy connects with the new credentials."""
    identity.require_admin(actor, action="updating a cluster")
    cluster = await get(session, name=name)
    server, _ = parse_kubeconfig(kubeconfig_text)
    previous = cluster.server
    cluster.kubeconfig_enc = ctx.cipher.encrypt_text(kubeconfig_text, purpose=PURPOSE)
    cluster.server = server
    cluster.server_version = version
    cluster.last_check_at = models.utcnow()
    cluster.last_check_error = None
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="cluster.update",
        target=f"cluster/{cluster.name}",
        details={"server": server, "previous_server": previous},
    )
    return cluster


async def delete(session: AsyncSession, *, actor: Actor, name: str) -> int:
    """Forget a cluster (nothing on the cluster is touched); refused while any app still uses it.
    Returns its id so the caller can drop the cached client after commit."""
    identity.require_admin(actor, action="deleting a cluster")
    cluster = await get(session, name=name)
    rows = (
        await session.execute(
            select(models.Project.name, models.App.name)
            .join(models.Project, models.Project.id == models.App.project_id)
            .where(models.App.cluster_id == cluster.id)
            .order_by(models.Project.name, models.App.name)
        )
    ).all()
    if rows:
        apps = ", ".join(f"{project}/{app}" for project, app in rows)
        raise Conflict(f"cluster {name} is still used by apps {apps}; delete or move them first")
    # Explicit, not left to ON DELETE CASCADE: SQLite enforces foreign keys only when asked to.
    for model in (models.NamespaceClaim, models.ClusterGrant):
        for row in await session.scalars(select(model).where(model.cluster_id == cluster.id)):
            await session.delete(row)
    await session.flush()  # children first: the ORM knows no relationship to order them by
    cluster_id = cluster.id
    await session.delete(cluster)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="cluster.delete",
        target=f"cluster/{name}",
        details={"server": cluster.server},
    )
    return cluster_id


def kubeconfig_for_service_account(
    *, server: str, name: str, namespace: str, service_account: str, token: str, ca_data: str
) -> str:
    """A kubeconfig with the service account's token and the cluster's CA inline, as `clusters add`
    wants them (no files, no exec plugins).  `ca_data` is base64, as the token Secret holds it."""
    user = f"{service_account}@{name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user, "namespace": namespace}}],
        "current-context": name,
    }
    return yaml.safe_dump(doc, sort_keys=False)
