"""Dry run of a deploy: what `deploy web 1.6` would change on the cluster, changing nothing.

Two steps, like core.status, so no transaction stays open while the cluster answers: `plan` reads
the app in the caller's transaction (the role check is the deploy's own: developer) and renders the
candidate, the image change applied to the app's current settings; `run` asks the cluster for a
server-side apply with dryRun=All of every object and compares the answers with what is live.

Nothing is stored: no revision, deployment, job or event, and no audit row either (a dry run reads;
a log line records who asked).  The plan holds decrypted secret values for the dry-run Secret: it
is never logged, and the result names Secret keys only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, claims, clusters, deploys, logctx, revisions, secrets, validation
from core.context import Core
from core.errors import InvalidInput, TransientError
from core.identity import Actor, Role
from core.kube.diff import WorkloadDiff
from core.kube.spec import WorkloadSpec
from storage import models

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Plan:
    app: str
    actor: str
    cluster_id: int
    kubeconfig: str = field(repr=False)
    spec: WorkloadSpec = field(repr=False)
    current_image: str | None


@dataclass(frozen=True, kw_only=True)
class DryRun:
    app: str
    namespace: str
    image: str
    current_image: str | None
    revision: int  # the number the deploy would get
    release_command: str | None
    diff: WorkloadDiff

    def lines(self) -> list[str]:
        lines = self.diff.lines()
        if self.release_command:
            lines.insert(0, f"release command runs first: {self.release_command}")
        return lines


async def plan(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    image: str | None = None,
    env: str | None = None,
) -> Plan:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="deploying")
    await claims.check_owned(
        session, cluster_id=app.cluster_id, namespace=app.namespace, project_id=app.project_id
    )
    new_image = validation.requested_image(image, current=app.image) if image is not None else app.image
    if not new_image:
        raise InvalidInput(f"{app.name} has no image yet: give one, like ghcr.io/acme/web:1.4", field="image")
    cluster = await session.get(models.Cluster, app.cluster_id)
    assert cluster is not None
    project = await apps.project_of(session, app=app)
    top = await session.scalar(
        select(func.max(models.Deployment.revision_number)).where(models.Deployment.app_id == app.id)
    )
    spec = deploys.workload_spec(
        ctx=ctx,
        app_name=app.name,
        project=project.name,
        namespace=app.namespace,
        revision=int(top or 0) + 1,
        snapshot=revisions.from_app(app).replace(image=new_image),
        secret_data=await secrets.values_for_deploy(session, ctx=ctx, app_id=app.id),
        secret_checksum=await secrets.checksum(session, app_id=app.id),
    )
    return Plan(
        app=app.name,
        actor=actor.subject,
        cluster_id=cluster.id,
        kubeconfig=clusters.kubeconfig(cluster, ctx=ctx),
        spec=spec,
        current_image=app.image,
    )


async def run(*, ctx: Core, plan: Plan) -> DryRun:
    """Ask the cluster; within ctx.config.dry_run_timeout_seconds, since someone is waiting."""
    timeout = ctx.config.dry_run_timeout_seconds
    kube = await ctx.kube.get(key=str(plan.cluster_id), kubeconfig=plan.kubeconfig)
    try:
        async with asyncio.timeout(timeout):
            diff = await kube.dry_run_workload(spec=plan.spec)
    except TimeoutError:
        raise TransientError(
            f"dry run of {plan.app}: the cluster did not answer within {timeout:g}s; nothing was changed"
        ) from None
    logctx.deploy_logger(log, app=plan.app, namespace=plan.spec.namespace).info(
        "dry run of %s by %s: %d changes, %d to create, %d to delete",
        plan.spec.image, plan.actor, len(diff.changes), len(diff.create), len(diff.delete),
    )  # fmt: skip
    return DryRun(
        app=plan.app,
        namespace=plan.spec.namespace,
        image=plan.spec.image,
        current_image=plan.current_image,
        revision=plan.spec.revision,
        release_command=plan.spec.release_command,
        diff=diff,
    )
