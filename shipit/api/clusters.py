"""/api/v1/clusters: the clusters apps run on and which projects may use them (core.clusters).

Adding or updating one checks the kubeconfig against the cluster first, outside the transaction."""

from __future__ import annotations

from core import clusters, identity
from shipit import schemas
from shipit.api.base import CLUSTER_ERRORS, ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/clusters")
async def list_clusters(rt: RtDep, actor: ActorDep) -> list[schemas.ClusterOut]:
    async with tx(rt) as session:
        rows = await clusters.list_visible(session, actor=actor)
        return [schemas.ClusterOut.of(c, admin=actor.is_admin) for c in rows]


@router.post("/clusters", status_code=201, responses=CLUSTER_ERRORS)
async def add_cluster(body: schemas.ClusterIn, rt: RtDep, actor: ActorDep) -> schemas.ClusterOut:
    identity.require_admin(actor, action="adding a cluster")
    clusters.parse_kubeconfig(body.kubeconfig)
    # The connectivity check talks to the cluster, so it runs before the transaction opens.
    version = await clusters.check(ctx=rt.core, kubeconfig_text=body.kubeconfig, key=f"check:{body.name}")
    await rt.core.kube.forget(key=f"check:{body.name}")
    async with tx(rt) as session:
        c = await clusters.add(
            session,
            ctx=rt.core,
            actor=actor,
            name=body.name,
            kubeconfig_text=body.kubeconfig,
            default_namespace=body.namespace,
            version=version,
        )
        return schemas.ClusterOut.of(c, admin=True)


@router.put("/clusters/{name}")
async def update_cluster(
    name: schemas.NamePath, body: schemas.ClusterUpdateIn, rt: RtDep, actor: ActorDep
) -> schemas.ClusterOut:
    identity.require_admin(actor, action="updating a cluster")
    clusters.parse_kubeconfig(body.kubeconfig)
    # Check the new kubeconfig before storing it, outside the transaction, as `add` does.
    version = await clusters.check(ctx=rt.core, kubeconfig_text=body.kubeconfig, key=f"check:{name}")
    await rt.core.kube.forget(key=f"check:{name}")
    async with tx(rt) as session:
        c = await clusters.update(
            session, ctx=rt.core, actor=actor, name=name, kubeconfig_text=body.kubeconfig, version=version
        )
        out = schemas.ClusterOut.of(c, admin=True)
        cluster_id = c.id
    # The cached client holds the old credentials: the next use builds one from the new kubeconfig.
    await rt.core.kube.forget(key=str(cluster_id))
    return out


@router.delete("/clusters/{name}", status_code=204)
async def delete_cluster(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> None:
    async with tx(rt) as session:
        cluster_id = await clusters.delete(session, actor=actor, name=name)
    await rt.core.kube.forget(key=str(cluster_id))


@router.get("/clusters/{name}/grants")
async def list_grants(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.GrantOut]:
    async with tx(rt) as session:
        return [schemas.GrantOut.of(g) for g in await clusters.grants(session, actor=actor, cluster=name)]


@router.post("/clusters/{name}/grants", status_code=201)
async def grant_cluster(
    name: schemas.NamePath, body: schemas.GrantIn, rt: RtDep, actor: ActorDep
) -> schemas.GrantOut:
    async with tx(rt) as session:
        g = await clusters.grant(
            session, actor=actor, cluster=name, project=body.project, namespace=body.namespace
        )
        return schemas.GrantOut.of(g)


@router.delete("/clusters/{name}/grants/{project}", status_code=204)
async def revoke_cluster(
    name: schemas.NamePath,
    project: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    namespace: schemas.NamespaceQuery = None,
) -> None:
    """Without `namespace`: the whole grant and every claim; with it: that one namespace."""
    async with tx(rt) as session:
        await clusters.revoke(session, actor=actor, cluster=name, project=project, namespace=namespace)
