"""The read models of the API's answers: core's views and rows, loaded in the caller's transaction,
each turned into its response model in one place (AppOut.of, DeploymentOut.of, ProjectOut.of)."""

from __future__ import annotations

import dataclasses

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, deploys, events
from core.notices import targets as notice_targets
from shipit import schemas
from storage import models


async def app_out(session: AsyncSession, app: models.App) -> schemas.AppOut:
    project = await session.get(models.Project, app.project_id)
    cluster = await session.get(models.Cluster, app.cluster_id)
    current = await deploys.current_revision(session, app=app)
    attempt = await deploys.last_attempt(session, app=app)
    view = events.app_view(app, cluster_name=cluster.name if cluster else "")
    return schemas.AppOut.of(
        app,
        view=dataclasses.replace(view, environment=await apps.env_name(session, app=app)),
        project=project.name if project else "",
        current_revision=current.number if current else None,
        last_attempt=await events.deployment_view(session, deployment=attempt) if attempt else None,
    )


async def deployment_out(
    session: AsyncSession,
    d: models.Deployment,
    *,
    revision: models.Revision | None = None,
    position: int | None = None,
) -> schemas.DeploymentOut:
    """One deploy, approvals counted (`revision`, `position`: already in hand, as after a request)."""
    app = await session.get(models.App, d.app_id)
    view = await events.deployment_view(session, deployment=d, revision=revision, position=position)
    return schemas.DeploymentOut.of(view, app=app.name if app else "")


def deployment_listed(
    d: models.Deployment, *, app: str, revision: models.Revision | None = None
) -> schemas.DeploymentOut:
    """A deploy in a list or just requested: what the row and its revision say, approvals not counted."""
    return schemas.DeploymentOut.of(events.deployment_view_of(d, revision=revision), app=app)


async def projects_out(session: AsyncSession, rows: list[models.Project]) -> list[schemas.ProjectOut]:
    defaults = await notice_targets.defaults(session, project_ids=[p.id for p in rows])
    return [schemas.ProjectOut.of(p, defaults=defaults[p.id]) for p in rows]
