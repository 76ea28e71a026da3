"""Managing a project's environments: create (at a place in the order), list, update, delete.

The lookups every deploy needs live in core.environments; this module is what people change.  An
environment's cluster and namespace are the defaults for app rows created in it: setting them
checks the project may use the cluster, but claims nothing until an app is created there (that is
when apps.create claims the namespace, as for any app).  Protection, windows and locks are set by
core.protection's own commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, claims, environments, projects, validation
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import Actor, Role
from storage import models


@dataclass(frozen=True, kw_only=True)
class EnvironmentView:
    project: str
    name: str
    position: int
    cluster: str | None
    namespace: str | None
    apps: list[str]


async def _view(
    session: AsyncSession, *, project: models.Project, env: models.Environment
) -> EnvironmentView:
    cluster = await session.get(models.Cluster, env.cluster_id) if env.cluster_id else None
    names = await session.scalars(
        select(models.App.name).where(models.App.environment_id == env.id).order_by(models.App.name)
    )
    return EnvironmentView(
        project=project.name,
        name=env.name,
        position=env.position,
        cluster=cluster.name if cluster else None,
        namespace=env.namespace,
        apps=list(names),
    )


async def list_views(session: AsyncSession, *, actor: Actor, project: str) -> list[EnvironmentView]:
    proj = await projects.get_for(
        session, actor=actor, name=project, role=Role.VIEWER, action="listing environments"
    )
    return [
        await _view(session, project=proj, env=e)
        for e in await environments.list_for(session, project_id=proj.id)
    ]


async def _cluster_id(
    session: AsyncSession, *, actor: Actor, project: models.Project, cluster: str
) -> int | None:
    """ "" clears; otherwise a cluster the project may use (one it may not looks like a missing one)."""
    if cluster == "":
        return None
    clu = await session.scalar(select(models.Cluster).where(models.Cluster.name == cluster))
    if actor.is_admin:
        if clu is None:
            raise InvalidInput(f"no cluster named {cluster!r}", field="cluster")
        return clu.id
    if clu is None or await claims.grant_of(session, cluster_id=clu.id, project_id=project.id) is None:
        raise claims.not_granted(cluster=cluster, project=project.name)
    return clu.id


def _namespace(namespace: str) -> str | None:
    return validation.dns_label(namespace, field="namespace") if namespace else None


async def create(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    name: str,
    cluster: str | None = None,
    namespace: str | None = None,
    after: str | None = None,
    before: str | None = None,
) -> EnvironmentView:
    """A new environment, last in the order, or right after `after` / right before `before`."""
    proj = await projects.get_for(
        session, actor=actor, name=project, role=Role.ADMIN, action="adding environments"
    )
    name = validation.dns_label(name, field="name")
    if after is not None and before is not None:
        raise InvalidInput("give either after or before, not both", field="after")
    existing = await environments.list_for(session, project_id=proj.id)
    if any(e.name == name for e in existing):
        raise Conflict(f"project {proj.name} already has an environment named {name!r}")
    cluster_id = await _cluster_id(session, actor=actor, project=proj, cluster=cluster) if cluster else None
    env = await environments.add(
        session, project_id=proj.id, name=name, cluster_id=cluster_id, namespace=_namespace(namespace or "")
    )
    anchor = after if after is not None else before
    if anchor is not None:
        ref = await environments.get(session, project_id=proj.id, name=anchor)
        order = [e for e in existing]
        order.insert(order.index(ref) + (1 if after is not None else 0), env)
        for position, e in enumerate(order):
            e.position = position
        await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="environment.create",
        target=f"project/{proj.name}/environment/{name}",
        project_id=proj.id,
        details={"cluster": cluster, "namespace": env.namespace, "after": after, "before": before},
    )
    return await _view(session, project=proj, env=env)


async def update(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    name: str,
    cluster: str | None = None,
    namespace: str | None = None,
) -> EnvironmentView:
    """Change the defaults for app rows created later ("" clears); rows already there keep their place."""
    proj = await projects.get_for(
        session, actor=actor, name=project, role=Role.ADMIN, action="changing environments"
    )
    env = await environments.get(session, project_id=proj.id, name=name)
    if cluster is not None:
        env.cluster_id = await _cluster_id(session, actor=actor, project=proj, cluster=cluster)
    if namespace is not None:
        env.namespace = _namespace(namespace)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="environment.update",
        target=f"project/{proj.name}/environment/{name}",
        project_id=proj.id,
        details={"cluster": cluster, "namespace": namespace},
    )
    return await _view(session, project=proj, env=env)


async def delete(session: AsyncSession, *, actor: Actor, project: str, name: str) -> EnvironmentView:
    """Only an empty environment, and never the project's last one."""
    proj = await projects.get_for(
        session, actor=actor, name=project, role=Role.ADMIN, action="deleting environments"
    )
    env = await environments.get(session, project_id=proj.id, name=name)
    view = await _view(session, project=proj, env=env)
    if view.apps:
        raise Conflict(
            f"environment {name} still has apps ({', '.join(view.apps)}); delete them from it first"
        )
    count = await session.scalar(
        select(func.count()).select_from(models.Environment).where(models.Environment.project_id == proj.id)
    )
    if (count or 0) <= 1:
        raise Conflict(f"{name} is the only environment of {proj.name}; a project keeps at least one")
    await audit.record(
        session,
        actor=actor,
        action="environment.delete",
        target=f"project/{proj.name}/environment/{name}",
        project_id=proj.id,
        details={},
    )
    await session.delete(env)
    await session.flush()
    return view


async def next_after(session: AsyncSession, *, app: models.App) -> models.Environment | None:
    """The environment after this row's in the project's order, if the app has a row there."""
    order = await environments.list_for(session, project_id=app.project_id)
    ids = [e.id for e in order]
    if app.environment_id not in ids or ids.index(app.environment_id) + 1 >= len(ids):
        return None
    following = order[ids.index(app.environment_id) + 1]
    has_row = await session.scalar(
        select(models.App.id).where(models.App.name == app.name, models.App.environment_id == following.id)
    )
    return following if has_row is not None else None


async def promotion_of_card(session: AsyncSession, *, deployment_id: int, app_name: str) -> tuple[str, str]:
    """(from, to) for a deploy card's Promote button: the deploy's environment and the next one."""
    deployment = (
        await session.get(models.Deployment, deployment_id) if validation.is_id(deployment_id) else None
    )
    app = await session.get(models.App, deployment.app_id) if deployment is not None else None
    if app is None or app.name != app_name:
        raise NotFound(f"no deploy #{deployment_id} of {app_name}")
    following = await next_after(session, app=app)
    source = await environments.of_app(session, app=app)
    if following is None:
        raise Conflict(f"{app_name} runs in no environment after {source.name}: nothing to promote to")
    return source.name, following.name
