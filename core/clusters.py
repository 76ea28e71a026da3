"""Clusters: where apps run.  The kubeconfig is stored encrypted and checked on add."""

from __future__ import annotations

import logging

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TransientError
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
    if not actor.is_admin:
        raise PermissionDenied("adding a cluster needs a global admin token")
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
