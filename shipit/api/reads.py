"""The App and Deployment read models of the API's answers, loaded in the caller's transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, deploys, events, protection
from shipit import schemas
from storage import models


async def app_out(session: AsyncSession, app: models.App) -> schemas.AppOut:
    project = await session.get(models.Project, app.project_id)
    cluster = await session.get(models.Cluster, app.cluster_id)
    current = await deploys.current_revision(session, app=app)
    attempt = await deploys.last_attempt(session, app=app)
    view = await events.deployment_view(session, deployment=attempt) if attempt else None
    return schemas.AppOut.of(
        app,
        environment=await apps.env_name(session, app=app),
        project=project.name if project else "",
        cluster=cluster.name if cluster else "",
        current_revision=current.number if current else None,
        last_attempt={
            "deployment": view.id,
            "revision": view.revision,
            "image": view.image,
            "status": view.status,
            "outcome": view.outcome,
            "error": view.error,
            "finished_at": view.finished_at.isoformat() if view.finished_at else None,
        }
        if view
        else None,
    )


async def deployment_out(session: AsyncSession, d: models.Deployment) -> schemas.DeploymentOut:
    app = await session.get(models.App, d.app_id)
    revision = await session.get(models.Revision, d.revision_id) if d.revision_id else None
    out = schemas.DeploymentOut.of(d, app=app.name if app else "", revision=revision)
    tally = await protection.tally(session, deployment=d)
    return (
        out.model_copy(update={"approvals": tally.approvals, "approvals_needed": tally.needed})
        if tally
        else out
    )
