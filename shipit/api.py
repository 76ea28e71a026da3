"""The REST API (/api/v1): a thin channel.  Each route authenticates, opens ONE transaction,
calls one core service and renders the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.convertors import Convertor, register_url_convertor

from core import (
    apps,
    audit,
    autoscaling,
    claims,
    clusters,
    deploys,
    dryrun,
    environment_admin,
    events,
    identity,
    previews,
    projects,
    promotion,
    protection,
    registries,
    revisions,
    secrets,
    status,
    tokens,
)
from core.apps import AppChanges
from core.errors import NotFound, ShipitError, Unauthenticated
from core.identity import Actor
from shipit import schemas
from shipit.runtime import Runtime
from storage import models

log = logging.getLogger(__name__)


def _error(description: str) -> dict[str, Any]:
    return {"model": schemas.ErrorOut, "description": description}


# What any route may answer besides its success, all with the one error body (shipit.app's handlers).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The request body could not be read."),
    401: _error("No valid bearer token."),
    403: _error("The token's subject lacks the role this needs."),
    404: _error("No such project, app, deploy or token (or none the caller may see)."),
    409: _error("Conflicts with the current state: exists already, locked, running."),
    413: _error("The request body is larger than the configured cap."),
    422: _error("Invalid input; `field` names it."),
    429: _error("Too many failed authentications from this address, or over the token's request budget."),
}
# Routes that talk to a cluster also answer 502 when it fails or cannot be reached.
CLUSTER_ERRORS: dict[int | str, dict[str, Any]] = {502: _error("The cluster failed or could not be reached.")}

# Declares the scheme in /openapi.json; current_actor still does the checking (auto_error off).
bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer shp_...`")
router = APIRouter(prefix="/api/v1", responses=ERRORS, dependencies=[Depends(bearer)])


class _AppFlag(Convertor[str]):
    # The route's own words only, so /apps/{name}/status is not taken for a flag (wrong 404/405 and Allow).
    regex: ClassVar[str] = "lock|unlock|pause|resume"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _DeployAction(_AppFlag):
    regex: ClassVar[str] = "approve|reject|cancel"


register_url_convertor("app_flag", _AppFlag())
register_url_convertor("deploy_action", _DeployAction())


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@contextlib.asynccontextmanager
async def tx(rt: Runtime) -> AsyncIterator[AsyncSession]:
    async with rt.sessionmaker.begin() as session:
        yield session


async def current_actor(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Actor:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    channel = "cli" if request.headers.get("user-agent", "").startswith("shipit-cli") else "api"
    async with tx(runtime(request)) as session:
        return await tokens.authenticate(session, token=authorization[7:].strip(), channel=channel)


ActorDep = Annotated[Actor, Depends(current_actor)]
RtDep = Annotated[Runtime, Depends(runtime)]


@router.get("/me", response_model=schemas.MeOut)
async def me(actor: ActorDep) -> dict[str, object]:
    return {"subject": actor.subject, "admin": actor.is_admin, "channel": actor.channel}


# ------------------------------------------------------------------ projects


@router.get("/projects")
async def list_projects(rt: RtDep, actor: ActorDep) -> list[schemas.ProjectOut]:
    async with tx(rt) as session:
        return [schemas.ProjectOut.of(p) for p in await projects.list_visible(session, actor=actor)]


@router.post("/projects", status_code=201)
async def create_project(body: schemas.ProjectIn, rt: RtDep, actor: ActorDep) -> schemas.ProjectOut:
    async with tx(rt) as session:
        p = await projects.create(
            session,
            ctx=rt.core,
            actor=actor,
            name=body.name,
            slack_channel=body.slack_channel,
            webhook_url=body.webhook_url,
            webhook_secret=body.webhook_secret,
        )
        return schemas.ProjectOut.of(p)


@router.patch("/projects/{name}")
async def update_project(
    name: schemas.NamePath, body: schemas.ProjectPatch, rt: RtDep, actor: ActorDep
) -> schemas.ProjectOut:
    async with tx(rt) as session:
        p = await projects.update(
            session,
            ctx=rt.core,
            actor=actor,
            name=name,
            slack_channel=body.slack_channel,
            webhook_url=body.webhook_url,
            webhook_secret=body.webhook_secret,
        )
        return schemas.ProjectOut.of(p)


@router.delete("/projects/{name}", status_code=204)
async def delete_project(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> None:
    async with tx(rt) as session:
        await projects.delete(session, actor=actor, name=name)


@router.get("/projects/{name}/grants")
async def list_project_grants(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.GrantOut]:
    async with tx(rt) as session:
        rows = await projects.grants(session, actor=actor, project_name=name)
        return [_grant_out(g) for g in rows]


@router.get("/projects/{name}/members")
async def list_members(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.MemberOut]:
    async with tx(rt) as session:
        rows = await projects.members(session, actor=actor, project_name=name)
        return [schemas.MemberOut(subject=m.subject, role=m.role) for m in rows]


@router.put("/projects/{name}/members/{subject}")
async def set_member(
    name: schemas.NamePath, subject: schemas.SubjectPath, body: schemas.MemberIn, rt: RtDep, actor: ActorDep
) -> schemas.MemberOut:
    async with tx(rt) as session:
        m = await projects.set_access(
            session, actor=actor, project_name=name, subject=subject, role=body.role
        )
        assert m is not None
        return schemas.MemberOut(subject=m.subject, role=m.role)


@router.delete("/projects/{name}/members/{subject}", status_code=204)
async def remove_member(
    name: schemas.NamePath, subject: schemas.SubjectPath, rt: RtDep, actor: ActorDep
) -> None:
    async with tx(rt) as session:
        await projects.set_access(session, actor=actor, project_name=name, subject=subject, role=None)


# ------------------------------------------------------------------ clusters


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


def _grant_out(g: claims.ProjectGrant) -> schemas.GrantOut:
    return schemas.GrantOut(
        cluster=g.cluster, project=g.project, namespaces=g.namespaces, granted_by=g.granted_by
    )


@router.get("/clusters/{name}/grants")
async def list_grants(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.GrantOut]:
    async with tx(rt) as session:
        return [_grant_out(g) for g in await clusters.grants(session, actor=actor, cluster=name)]


@router.post("/clusters/{name}/grants", status_code=201)
async def grant_cluster(
    name: schemas.NamePath, body: schemas.GrantIn, rt: RtDep, actor: ActorDep
) -> schemas.GrantOut:
    async with tx(rt) as session:
        g = await clusters.grant(
            session, actor=actor, cluster=name, project=body.project, namespace=body.namespace
        )
        return _grant_out(g)


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


# ------------------------------------------------------------------ apps


def _changes(body: schemas.AppFields) -> AppChanges:
    return AppChanges(
        **body.model_dump(
            exclude_unset=True, exclude={"name", "project", "cluster", "namespace", "deploy", "environment"}
        )
    )


async def _app_out(session: AsyncSession, app: models.App) -> schemas.AppOut:
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


@router.get("/apps")
async def list_apps(rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None) -> list[schemas.AppOut]:
    async with tx(rt) as session:
        return [
            await _app_out(session, a) for a in await apps.list_visible(session, actor=actor, project=project)
        ]


@router.post("/apps", status_code=201, response_model=schemas.AppCreated)
async def create_app(body: schemas.AppIn, rt: RtDep, actor: ActorDep) -> dict[str, object]:
    async with tx(rt) as session:
        app = await apps.create(
            session,
            actor=actor,
            project=body.project,
            cluster=body.cluster or "",
            name=body.name,
            namespace=body.namespace,
            changes=_changes(body),
            env=body.environment,
        )
        deployment = None
        if body.deploy and app.image:
            deployment = (
                await deploys.request(
                    session,
                    ctx=rt.core,
                    actor=actor,
                    app_name=app.name,
                    trigger=actor.channel,
                    env=await apps.env_name(session, app=app),
                )
            ).deployment
        return {
            "app": await _app_out(session, app),
            "deployment": schemas.DeploymentOut.of(deployment, app=app.name) if deployment else None,
        }


@router.get("/apps/{name}")
async def show_app(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.AppOut:
    async with tx(rt) as session:
        return await _app_out(session, await apps.get(session, actor=actor, name=name, env=env))


@router.patch("/apps/{name}")
async def update_app(
    name: schemas.NamePath, body: schemas.AppFields, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.AppOut:
    async with tx(rt) as session:
        return await _app_out(
            session,
            await apps.update(session, ctx=rt.core, actor=actor, name=name, changes=_changes(body), env=env),
        )


@router.delete("/apps/{name}", response_model=schemas.AppDeleted)
async def delete_app(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> dict[str, object]:
    async with tx(rt) as session:
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)
        await apps.delete(session, actor=actor, name=name, env=env)
    # The app is gone from the database now; an unreachable cluster must not make that look like a
    # failure, so say what was left behind instead of answering with an error.
    try:
        kept = await status.remove_workload(ctx=rt.core, target=target)
    except ShipitError as e:
        log.warning("app %s deleted, but its workload in %s stays: %s", name, target.namespace, e)
        return {
            "deleted": name,
            "workload_removed": False,
            "warning": f"{name} is deleted, but its objects in namespace {target.namespace} could not be "
            f"removed from the cluster ({e}); they carry the label app.kubernetes.io/name={name}",
        }
    if kept:
        return {
            "deleted": name,
            "workload_removed": True,
            "warning": f"{name} is deleted; objects shipit did not create for it were left alone: "
            + "; ".join(kept),
        }
    return {"deleted": name, "workload_removed": True, "warning": None}


# ------------------------------------------------------------------ deploys


@router.post(
    "/apps/{name}/deploys",
    status_code=202,
    response_model=schemas.DeploymentOut,
    # A dry run answers 200 with the difference, after asking the cluster (hence 502).
    responses={
        200: {"model": schemas.DryRunOut, "description": "Dry run: what would change."},
        **CLUSTER_ERRORS,
    },
)
async def deploy(
    name: schemas.NamePath,
    body: schemas.DeployIn,
    rt: RtDep,
    actor: ActorDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    dry_run: bool = False,
    env: schemas.EnvQuery = None,
) -> schemas.DeploymentOut | JSONResponse:
    if body.dry_run or dry_run:
        return await _dry_run(name=name, image=body.image, rt=rt, actor=actor, env=env)
    key = body.dedupe_key or idempotency_key
    async with tx(rt) as session:
        result = await deploys.request(
            session,
            ctx=rt.core,
            actor=actor,
            app_name=name,
            image=body.image,
            trigger=actor.channel,
            dedupe_key=f"api:{actor.subject}:{key}" if key else None,
            override_window=body.override_window,
            env=env,
        )
        return await _deployment_out(session, result.deployment, revision=result.revision)


async def _dry_run(
    *, name: str, image: str | None, rt: Runtime, actor: Actor, env: str | None = None
) -> JSONResponse:
    """200 with the difference (a dry run is answered, not accepted for later); nothing is stored."""
    async with tx(rt) as session:
        plan = await dryrun.plan(session, ctx=rt.core, actor=actor, app_name=name, image=image, env=env)
    result = await dryrun.run(ctx=rt.core, plan=plan)
    return JSONResponse(jsonable_encoder(schemas.DryRunOut.of(result)), status_code=200)


@router.get("/apps/{name}/deploys")
async def list_deploys(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    limit: int = Query(20, ge=1, le=200),
    env: schemas.EnvQuery = None,
) -> list[schemas.DeploymentOut]:
    async with tx(rt) as session:
        rows = await deploys.history(session, actor=actor, app_name=name, limit=limit, env=env)
        ids = [d.revision_id for d in rows if d.revision_id is not None]
        revisions = {
            r.id: r for r in await session.scalars(select(models.Revision).where(models.Revision.id.in_(ids)))
        }
        return [
            schemas.DeploymentOut.of(d, app=name, revision=revisions.get(d.revision_id or 0)) for d in rows
        ]


async def _deployment_out(
    session: AsyncSession, d: models.Deployment, *, revision: models.Revision | None = None
) -> schemas.DeploymentOut:
    app = await session.get(models.App, d.app_id)
    if revision is None or revision.id != d.revision_id:  # the one just written is not read again
        revision = await session.get(models.Revision, d.revision_id) if d.revision_id else None
    out = schemas.DeploymentOut.of(d, app=app.name if app else "", revision=revision)
    tally = await protection.tally(session, deployment=d)
    return (
        out.model_copy(update={"approvals": tally.approvals, "approvals_needed": tally.needed})
        if tally
        else out
    )


@router.get("/deploys/{deployment_id}")
async def get_deploy(deployment_id: schemas.IdPath, rt: RtDep, actor: ActorDep) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        return await _deployment_out(
            session, await deploys.get(session, actor=actor, deployment_id=deployment_id)
        )


@router.post("/deploys/{deployment_id}/{action:deploy_action}")
async def act_on_deploy(
    deployment_id: schemas.IdPath, action: Literal["approve", "reject", "cancel"], rt: RtDep, actor: ActorDep
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        if action in ("approve", "reject"):
            d = await deploys.approve(
                session, ctx=rt.core, actor=actor, deployment_id=deployment_id, approve=action == "approve"
            )
        elif action == "cancel":
            d = await deploys.cancel(session, ctx=rt.core, actor=actor, deployment_id=deployment_id)
        else:
            raise NotFound(f"unknown action {action!r}: use approve, reject or cancel")
        return await _deployment_out(session, d)


@router.post("/apps/{name}/rollback", status_code=202)
async def rollback(
    name: schemas.NamePath, body: schemas.RollbackIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        result = await deploys.rollback(
            session, ctx=rt.core, actor=actor, app_name=name, revision=body.revision, env=env
        )
        return schemas.DeploymentOut.of(result.deployment, app=name)


@router.get("/apps/{name}/revisions")
async def list_revisions(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.RevisionOut]:
    async with tx(rt) as session:
        return [
            schemas.RevisionOut(
                number=r.number,
                image=r.image,
                source=r.source,
                rollback_of=r.rollback_of,
                created_by=r.created_by,
                created_at=r.created_at,
                # Every stored format, shown in today's (schema_version included).
                snapshot=revisions.of_revision(r).to_json(),
            )
            for r in await deploys.revisions(session, actor=actor, app_name=name, env=env)
        ]


@router.post("/apps/{name}/scale", status_code=202)
async def scale(
    name: schemas.NamePath, body: schemas.ScaleIn, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> schemas.DeploymentOut:
    async with tx(rt) as session:
        result = await autoscaling.scale(
            session,
            ctx=rt.core,
            actor=actor,
            app_name=name,
            replicas=body.replicas,
            min_replicas=body.min_replicas,
            max_replicas=body.max_replicas,
            cpu_target=body.cpu_target,
            autoscaling_off=body.autoscaling is False,
            env=env,
        )
        return schemas.DeploymentOut.of(result.deployment, app=name)


@router.post("/apps/{name}/promote", status_code=202)
async def promote(
    name: schemas.NamePath, body: schemas.PromoteIn, rt: RtDep, actor: ActorDep
) -> schemas.DeploymentOut:
    """Deploy to `to` exactly what runs in `from` (image by digest, release command), with `to`'s settings."""
    async with tx(rt) as session:
        result = await promotion.promote(
            session, ctx=rt.core, actor=actor, app_name=name, source=body.from_, target=body.to
        )
        return schemas.DeploymentOut.of(result.deployment, app=name)


@router.get("/projects/{name}/environments")
async def list_environments(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep
) -> list[schemas.EnvironmentOut]:
    async with tx(rt) as session:
        views = await environment_admin.list_views(session, actor=actor, project=name)
        return [schemas.EnvironmentOut(**dataclasses.asdict(v)) for v in views]


@router.post("/projects/{name}/environments", status_code=201)
async def create_environment(
    name: schemas.NamePath, body: schemas.EnvironmentIn, rt: RtDep, actor: ActorDep
) -> schemas.EnvironmentOut:
    async with tx(rt) as session:
        view = await environment_admin.create(
            session,
            actor=actor,
            project=name,
            name=body.name,
            cluster=body.cluster,
            namespace=body.namespace,
            after=body.after,
            before=body.before,
        )
        return schemas.EnvironmentOut(**dataclasses.asdict(view))


@router.patch("/projects/{name}/environments/{env}")
async def update_environment(
    name: schemas.NamePath, env: schemas.NamePath, body: schemas.EnvironmentPatch, rt: RtDep, actor: ActorDep
) -> schemas.EnvironmentOut:
    async with tx(rt) as session:
        view = await environment_admin.update(
            session, actor=actor, project=name, name=env, cluster=body.cluster, namespace=body.namespace
        )
        return schemas.EnvironmentOut(**dataclasses.asdict(view))


@router.delete("/projects/{name}/environments/{env}", status_code=204)
async def delete_environment(
    name: schemas.NamePath, env: schemas.NamePath, rt: RtDep, actor: ActorDep
) -> None:
    async with tx(rt) as session:
        await environment_admin.delete(session, actor=actor, project=name, name=env)


@router.get("/apps/{name}/previews")
async def list_previews(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.PreviewOut]:
    async with tx(rt) as session:
        app = await apps.get(session, actor=actor, name=name, env=env)
        await apps.authorize(
            session, actor=actor, app=app, role=identity.Role.VIEWER, action="listing previews"
        )
        return [
            schemas.PreviewOut.of(p, app=app.name) for p in await previews.list_open(session, app_id=app.id)
        ]


@router.post("/apps/{name}/previews/{number}/approve", status_code=202)
async def approve_preview(
    name: schemas.NamePath,
    number: schemas.PrNumberPath,
    rt: RtDep,
    actor: ActorDep,
    env: schemas.EnvQuery = None,
) -> schemas.PreviewOut:
    """Deploy the waiting preview of a pull request from a fork: its current head commit, no secrets."""
    async with tx(rt) as session:
        approval = await previews.approve(
            session, ctx=rt.core, actor=actor, app_name=name, number=number, env=env
        )
        return schemas.PreviewOut.of(approval.preview, app=name, deployment=approval.decision.deployment_id)


# After every other POST /apps/{name}/<word> route: Starlette matches routes in order, and this one
# would otherwise swallow /deploys, /rollback and /scale.
@router.post("/apps/{name}/{flag:app_flag}", status_code=200)
async def set_flag(
    name: schemas.NamePath,
    flag: Literal["lock", "unlock", "pause", "resume"],
    rt: RtDep,
    actor: ActorDep,
    body: schemas.ReasonIn | None = None,
    env: schemas.EnvQuery = None,
) -> schemas.AppOut:
    flags = {
        "lock": ("lock", True),
        "unlock": ("lock", False),
        "pause": ("pause", True),
        "resume": ("pause", False),
    }
    if flag not in flags:
        raise NotFound(f"unknown action {flag!r}: use lock, unlock, pause or resume")
    which, on = flags[flag]
    async with tx(rt) as session:
        app = await apps.set_flag(
            session, actor=actor, name=name, flag=which, on=on, reason=body.reason if body else None, env=env
        )
        return await _app_out(session, app)


@router.get("/apps/{name}/status", responses=CLUSTER_ERRORS)
async def app_status(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, live: bool = True, env: schemas.EnvQuery = None
) -> dict[str, object]:
    async with tx(rt) as session:
        observed = await status.read(session, actor=actor, app_name=name, env=env)
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)
    if live:
        observed = await status.with_live(ctx=rt.core, status=observed, target=target)
    return _jsonable(observed)


def _jsonable(value: object) -> dict[str, object]:
    out: dict[str, object] = json.loads(json.dumps(jsonable_encoder(dataclasses.asdict(value))))  # type: ignore[call-overload]
    return out


@router.get(
    "/apps/{name}/logs",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The pods' log lines.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **CLUSTER_ERRORS,
    },
)
async def app_logs(
    name: schemas.NamePath,
    rt: RtDep,
    actor: ActorDep,
    tail: int = Query(100, ge=1, le=5000),
    follow: bool = False,
    env: schemas.EnvQuery = None,
) -> StreamingResponse:
    async with tx(rt) as session:
        target = await status.target(session, ctx=rt.core, actor=actor, app_name=name, env=env)

    stream = status.logs(ctx=rt.core, target=target, tail_lines=tail, follow=follow)
    # Once a streamed 200 has started, an error can only cut the connection.  So wait (briefly, since
    # a followed quiet pod may say nothing for long) for the first line: "no pods" and cluster errors
    # raised before it become a JSON error with its status code.
    first = asyncio.ensure_future(_first_line(stream))
    await asyncio.wait({first}, timeout=5)
    if first.done():
        first.result()

    async def lines() -> AsyncIterator[bytes]:
        line = await first
        if line is None:
            return
        yield (line.rstrip("\n") + "\n").encode()
        async for line in stream:
            yield (line.rstrip("\n") + "\n").encode()

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")


async def _first_line(stream: AsyncIterator[str]) -> str | None:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


# ------------------------------------------------------------------ registries


def _registry_out(r: registries.Listed) -> schemas.RegistryOut:
    return schemas.RegistryOut(
        host=r.host, project=r.project, username=r.username, created_by=r.created_by, updated_at=r.updated_at
    )


@router.get("/registries")
async def list_registries(
    rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None
) -> list[schemas.RegistryOut]:
    async with tx(rt) as session:
        return [
            _registry_out(r) for r in await registries.list_visible(session, actor=actor, project=project)
        ]


@router.post("/registries", status_code=201)
async def add_registry(body: schemas.RegistryIn, rt: RtDep, actor: ActorDep) -> dict[str, object]:
    async with tx(rt) as session:
        row, created = await registries.add(
            session,
            ctx=rt.core,
            actor=actor,
            host=body.host,
            username=body.username,
            password=body.password,
            project=body.project,
        )
        return {"host": row.host, "project": body.project, "username": row.username, "created": created}


@router.delete("/registries/{host}", status_code=204)
async def remove_registry(
    host: schemas.RegistryHostPath, rt: RtDep, actor: ActorDep, project: schemas.ProjectQuery = None
) -> None:
    async with tx(rt) as session:
        await registries.remove(session, actor=actor, host=host, project=project)


# ------------------------------------------------------------------ secrets


@router.get("/apps/{name}/secrets")
async def list_secrets(
    name: schemas.NamePath, rt: RtDep, actor: ActorDep, env: schemas.EnvQuery = None
) -> list[schemas.SecretKeyOut]:
    async with tx(rt) as session:
        rows = await secrets.list_keys(session, actor=actor, app_name=name, env=env)
        return [schemas.SecretKeyOut(key=r.key, updated_at=r.updated_at) for r in rows]


@router.put("/apps/{name}/secrets", response_model=schemas.SecretsChanged)
async def set_secrets(
    name: schemas.NamePath,
    body: schemas.SecretsIn,
    rt: RtDep,
    actor: ActorDep,
    deploy: bool = True,
    env: schemas.EnvQuery = None,
) -> dict[str, object]:
    async with tx(rt) as session:
        change = await deploys.set_secrets(
            session, ctx=rt.core, actor=actor, app_name=name, values=body.values, redeploy=deploy, env=env
        )
        return _secrets_changed(change)


@router.delete("/apps/{name}/secrets/{key}", response_model=schemas.SecretsChanged)
async def delete_secret(
    name: schemas.NamePath,
    key: schemas.SecretKeyPath,
    rt: RtDep,
    actor: ActorDep,
    deploy: bool = True,
    env: schemas.EnvQuery = None,
) -> dict[str, object]:
    async with tx(rt) as session:
        change = await deploys.unset_secrets(
            session, ctx=rt.core, actor=actor, app_name=name, keys=[key], redeploy=deploy, env=env
        )
        return _secrets_changed(change)


def _secrets_changed(change: deploys.SecretChange) -> dict[str, object]:
    r = change.redeploy
    d = schemas.DeploymentOut.of(r.deployment, app=change.app.name) if r else None
    return {"keys": change.keys, "deployment": d}


# ------------------------------------------------------------------ audit and tokens


@router.get("/audit")
async def read_audit(
    rt: RtDep,
    actor: ActorDep,
    target: schemas.AuditTargetQuery = None,
    action: schemas.AuditActionQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    since: dt.datetime | None = None,  # from this time on, oldest first (an export)
    after_id: schemas.AfterIdQuery = None,  # the next page of an export: ids above this
) -> list[schemas.AuditOut]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)  # a bare date or time is UTC
    async with tx(rt) as session:
        visible = await identity.visible_project_ids(session, actor=actor)
        rows = await audit.query(
            session,
            project_ids=visible,
            target=target,
            action=action,
            limit=limit,
            since=since,
            after_id=after_id,
        )
        return [
            schemas.AuditOut(
                id=r.id,
                at=r.at,
                actor=r.actor,
                channel=r.channel,
                action=r.action,
                target=r.target,
                details=r.details,
            )
            for r in rows
        ]


@router.get("/tokens")
async def list_tokens(rt: RtDep, actor: ActorDep) -> list[schemas.TokenOut]:
    async with tx(rt) as session:
        return [schemas.TokenOut.of(t) for t in await tokens.list_tokens(session, actor=actor)]


@router.post("/tokens", status_code=201)
async def create_token(body: schemas.TokenIn, rt: RtDep, actor: ActorDep) -> schemas.TokenCreated:
    async with tx(rt) as session:
        row, plaintext = await tokens.create(
            session, actor=actor, name=body.name, subject=body.subject, is_admin=body.admin
        )
        return schemas.TokenCreated(**schemas.TokenOut.of(row).model_dump(), token=plaintext)


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: schemas.IdPath, rt: RtDep, actor: ActorDep) -> schemas.TokenOut:
    async with tx(rt) as session:
        return schemas.TokenOut.of(await tokens.revoke(session, actor=actor, token_id=token_id))
