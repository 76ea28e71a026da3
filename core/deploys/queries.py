"""Reading deploys and revisions: what runs now, the history, one deploy by id after the role check."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    validation,
)
from core.deploys.states import (
    AUTO_ROLLBACK,
    FAILED,
    SUCCEEDED,
)
from core.errors import NotFound
from core.identity import Actor, Role
from storage import models

log = logging.getLogger(__name__)


async def current_deployment(session: AsyncSession, *, app: models.App) -> models.Deployment | None:
    """The last deploy that succeeded on the app's own namespace: what is running now."""
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status == SUCCEEDED,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def last_attempt(session: AsyncSession, *, app: models.App) -> models.Deployment | None:
    """The newest finished deploy on the app's own namespace, whatever its outcome.

    Automatic rollbacks are left out: they answer an attempt, which then says it was rolled back.
    """
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status.in_((SUCCEEDED, FAILED)),
            models.Deployment.trigger != AUTO_ROLLBACK,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def revisions(
    session: AsyncSession, *, actor: Actor, app_name: str, env: str | None = None
) -> list[models.Revision]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="listing revisions")
    return list(
        await session.scalars(
            select(models.Revision)
            .where(models.Revision.app_id == app.id)
            .order_by(models.Revision.number.desc())
        )
    )


async def _authorized(
    session: AsyncSession, *, actor: Actor, deployment_id: int, role: Role, action: str, lock: bool = False
) -> tuple[models.Deployment, models.App]:
    """A deploy by id, after the role check; one of a project the caller is not in is just missing."""
    missing = NotFound(f"no deploy #{deployment_id}")
    if not validation.is_id(deployment_id):
        raise missing
    app_id = await session.scalar(
        select(models.Deployment.app_id).where(models.Deployment.id == deployment_id)
    )
    app = await session.get(models.App, app_id) if app_id is not None else None
    if app is None:
        raise missing
    await apps.authorize(session, actor=actor, app=app, role=role, action=action, missing=missing)
    deployment = await session.get(models.Deployment, deployment_id, with_for_update=lock or None)
    if deployment is None:
        raise missing
    return deployment, app


async def get(session: AsyncSession, *, actor: Actor, deployment_id: int) -> models.Deployment:
    deployment, _ = await _authorized(
        session, actor=actor, deployment_id=deployment_id, role=Role.VIEWER, action="reading deploys"
    )
    return deployment


async def history(
    session: AsyncSession, *, actor: Actor, app_name: str, limit: int = 20, env: str | None = None
) -> list[models.Deployment]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading deploys")
    return list(
        await session.scalars(
            select(models.Deployment)
            .where(models.Deployment.app_id == app.id)
            .order_by(models.Deployment.id.desc())
            .limit(limit)
        )
    )


async def current_revision(session: AsyncSession, *, app: models.App) -> models.Revision | None:
    """The revision that last rolled out well on the app's own namespace: what runs."""
    if app.current_revision_id is None:
        return None
    return await session.get(models.Revision, app.current_revision_id)
