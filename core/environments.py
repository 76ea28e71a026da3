"""Environments: the ordered stages of a project's pipeline (staging -> production).

Every project has at least one; a project created before environments existed got "production",
which holds all its apps.  An app defined in several environments has one app row in each, carrying
that environment's overrides (replicas, env, resources, autoscaling, domain, secrets).
"""

from __future__ import annotations

from sqlalchemy import Select, event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from core import readcache
from core.errors import NotFound
from storage import models

DEFAULT = "production"


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop("shipit.held", None)  # held for one transaction, not a long-lived session


async def list_for(session: AsyncSession, *, project_id: int) -> list[models.Environment]:
    def q() -> Select[models.Environment]:  # built only when the copies do not answer
        return (
            select(models.Environment)
            .where(models.Environment.project_id == project_id)
            .order_by(models.Environment.position, models.Environment.id)
        )

    rows = await readcache.rows(session, ("environments.of", project_id), q)
    # Held for the session: the identity map is weak, and `of_app` (a session.get) asks again for the
    # row of this list a moment later in the same request (issue 13: statements per request).
    session.info.setdefault("shipit.held", []).extend(rows)
    return rows


async def default_for(session: AsyncSession, *, project_id: int) -> models.Environment:
    """The project's first environment, made on the spot for a project that has none yet."""
    envs = await list_for(session, project_id=project_id)
    if envs:
        return envs[0]
    return await add(session, project_id=project_id, name=DEFAULT)


async def add(
    session: AsyncSession,
    *,
    project_id: int,
    name: str,
    cluster_id: int | None = None,
    namespace: str | None = None,
) -> models.Environment:
    """A new environment after the project's last one (callers check role and name first)."""
    last = await session.scalar(
        select(func.max(models.Environment.position)).where(models.Environment.project_id == project_id)
    )
    env = models.Environment(
        project_id=project_id,
        name=name,
        position=0 if last is None else last + 1,
        cluster_id=cluster_id,
        namespace=namespace,
        windows=[],
        freezes=[],
    )
    session.add(env)
    await session.flush()
    return env


async def get(session: AsyncSession, *, project_id: int, name: str) -> models.Environment:
    env = await session.scalar(
        select(models.Environment).where(
            models.Environment.project_id == project_id, models.Environment.name == name
        )
    )
    if env is None:
        names = [e.name for e in await list_for(session, project_id=project_id)]
        raise NotFound(f"no environment named {name!r} in this project; it has: {', '.join(names) or 'none'}")
    return env


async def of_app(session: AsyncSession, *, app: models.App) -> models.Environment:
    """The environment an app row runs in (an app from before environments: the project's first)."""
    if app.environment_id is not None:
        env = await readcache.get(session, models.Environment, app.environment_id)
        if env is not None:
            return env
    return await default_for(session, project_id=app.project_id)
