"""Apps: what to run, where, and how.  Changing an app does not touch the cluster until a deploy."""

from __future__ import annotations

import string
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, identity, validation
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import Actor, Role
from storage import models

UNSET: Any = object()


@dataclass(kw_only=True)
class AppChanges:
    """Fields to set; anything left UNSET keeps its value (None clears an optional field)."""

    image: str | None = UNSET
    replicas: int = UNSET
    port: int = UNSET
    env: dict[str, str] = UNSET
    cpu_request: str = UNSET
    cpu_limit: str = UNSET
    memory_request: str = UNSET
    memory_limit: str = UNSET
    health_path: str | None = UNSET
    health_port: int | None = UNSET
    health_initial_delay: int = UNSET
    health_period: int = UNSET
    min_replicas: int | None = UNSET
    max_replicas: int | None = UNSET
    cpu_target: int | None = UNSET
    domain: str | None = UNSET
    ingress_class: str | None = UNSET
    tls_issuer: str | None = UNSET
    progress_deadline_seconds: int = UNSET
    protected: bool = UNSET
    git_repo: str | None = UNSET
    git_branch: str | None = UNSET
    git_ref_type: str = UNSET
    image_template: str | None = UNSET
    deploy_on: str = UNSET
    github_environment: str | None = UNSET
    previews_enabled: bool = UNSET
    preview_domain: str | None = UNSET
    preview_ttl_hours: int = UNSET
    preview_max_open: int = UNSET
    preview_env: dict[str, str] = UNSET

    def items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


def _validated(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            if not models.App.__table__.c[key].nullable:
                raise InvalidInput(f"{key} cannot be cleared (null); give a value", field=key)
            out[key] = None
            continue
        match key:
            case "image":
                value = validation.image(value, field="image")
            case _ if key in validation.RANGES:
                low, high = validation.RANGES[key]
                value = validation.int_range(value, field=key, low=low, high=high)
            case "env" | "preview_env":
                value = validation.env(value, field=key)
            case "cpu_request" | "cpu_limit":
                value = validation.cpu(value, field=key)
            case "memory_request" | "memory_limit":
                value = validation.memory(value, field=key)
            case "health_path":
                value = validation.http_path(value, field=key)
            case "domain" | "preview_domain":
                value = validation.hostname(value, field=key) if value else None
            case "ingress_class":
                value = validation.dns_label(value, field=key)
            case "git_repo":
                value = validation.git_repo(value, field=key) or None
            case "git_ref_type":
                if value not in ("branch", "tag"):
                    raise InvalidInput("git_ref_type must be branch or tag", field=key)
            case "deploy_on":
                if value not in ("push", "ci"):
                    raise InvalidInput("deploy_on must be push or ci", field=key)
            case "image_template":
                validation.text(value, field=key, max_length=validation.limit(models.App, key))
                _check_template(value)
            case "git_branch" | "github_environment" | "tls_issuer":
                value = validation.text(value, field=key, max_length=validation.limit(models.App, key))
        out[key] = value
    return out


def _check_template(template: str) -> None:
    try:
        # Plain {name} fields only: a format spec such as {sha:>999999999} would render a gigabyte.
        if any(spec or conversion for _, _, spec, conversion in string.Formatter().parse(template)):
            raise ValueError("format specs and conversions are not allowed")
        rendered = template.format(sha="0" * 40, short_sha="0" * 7, branch="main", tag="v1")
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidInput(
            f"image_template may use {{sha}}, {{short_sha}}, {{branch}}, {{tag}}; "
            f"{template!r} does not render: {e}",
            field="image_template",
        ) from None
    validation.image(rendered, field="image_template")


def _check_consistent(app: models.App) -> None:
    scaling = (app.min_replicas, app.max_replicas, app.cpu_target)
    if any(v is not None for v in scaling):
        if app.min_replicas is None or app.max_replicas is None:
            raise InvalidInput("autoscaling needs both min_replicas and max_replicas", field="min_replicas")
        validation.autoscaling(
            min_replicas=app.min_replicas, max_replicas=app.max_replicas, cpu_target=app.cpu_target or 80
        )
    if app.previews_enabled and not app.preview_domain:
        raise InvalidInput("previews need a preview_domain", field="preview_domain")
    if app.git_repo and not app.image_template:
        raise InvalidInput(
            "a git_repo needs an image_template such as ghcr.io/acme/web:{sha}", field="image_template"
        )


async def get(session: AsyncSession, *, actor: Actor, name: str) -> models.App:
    """Find an app by name; an unknown name lists the apps the caller can see."""
    app = await session.scalar(select(models.App).where(models.App.name == name))
    visible = await identity.visible_project_ids(session, actor=actor)
    if app is None or (visible is not None and app.project_id not in visible):
        names = [a.name for a in await list_visible(session, actor=actor)]
        hint = f"; your apps: {', '.join(names)}" if names else "; you can see no apps yet"
        raise NotFound(f"no app named {name!r}{hint}")
    return app


async def project_of(session: AsyncSession, *, app: models.App) -> models.Project:
    project = await session.get(models.Project, app.project_id)
    assert project is not None
    return project


async def authorize(session: AsyncSession, *, actor: Actor, app: models.App, role: Role, action: str) -> None:
    await identity.require(
        session, actor=actor, project=await project_of(session, app=app), role=role, action=action
    )


async def list_visible(
    session: AsyncSession, *, actor: Actor, project: str | None = None
) -> list[models.App]:
    q = select(models.App).order_by(models.App.name)
    visible = await identity.visible_project_ids(session, actor=actor)
    if visible is not None:
        q = q.where(models.App.project_id.in_(visible))
    if project:
        q = q.join(models.Project, models.Project.id == models.App.project_id).where(
            models.Project.name == project
        )
    return list(await session.scalars(q))


async def create(
    session: AsyncSession,
    *,
    actor: Actor,
    project: str,
    cluster: str,
    name: str,
    namespace: str | None = None,
    changes: AppChanges,
) -> models.App:
    name = validation.dns_label(name, field="name")
    proj = await session.scalar(select(models.Project).where(models.Project.name == project))
    if proj is None:
        raise InvalidInput(f"no project named {project!r}", field="project")
    await identity.require(session, actor=actor, project=proj, role=Role.ADMIN, action="creating an app")
    clu = await session.scalar(select(models.Cluster).where(models.Cluster.name == cluster))
    if clu is None:
        raise InvalidInput(f"no cluster named {cluster!r}", field="cluster")
    if await session.scalar(select(models.App.id).where(models.App.name == name)):
        raise Conflict(f"an app named {name!r} already exists")
    app = models.App(
        name=name,
        project_id=proj.id,
        cluster_id=clu.id,
        namespace=validation.dns_label(namespace or clu.default_namespace, field="namespace"),
        env={},
        preview_env={},
    )
    values = _validated(changes.items())
    for key, value in values.items():
        setattr(app, key, value)
    # Column defaults only apply at INSERT; fill them now so the consistency check sees them.
    for column in models.App.__table__.columns:
        if getattr(app, column.key) is None and column.default is not None and column.default.is_scalar:
            setattr(app, column.key, column.default.arg)
    _check_consistent(app)
    session.add(app)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="app.create",
        target=f"app/{name}",
        project_id=proj.id,
        details={"cluster": cluster, "namespace": app.namespace, **_audit_safe(values)},
    )
    return app


def _audit_safe(values: dict[str, Any]) -> dict[str, Any]:
    # env values are configuration, not secrets, but keep audit rows small: record keys only.
    out = dict(values)
    for key in ("env", "preview_env"):
        if key in out and out[key] is not None:
            out[key] = sorted(out[key])
    return out


async def update(session: AsyncSession, *, actor: Actor, name: str, changes: AppChanges) -> models.App:
    app = await get(session, actor=actor, name=name)
    values = _validated(changes.items())
    scaling_only = set(values) <= {"replicas", "min_replicas", "max_replicas", "cpu_target"}
    await authorize(
        session,
        actor=actor,
        app=app,
        role=Role.ADMIN,
        action="scaling" if scaling_only else "changing an app",
    )
    for key, value in values.items():
        setattr(app, key, value)
    _check_consistent(app)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="app.update",
        target=f"app/{name}",
        project_id=app.project_id,
        details=_audit_safe(values),
    )
    return app


async def set_flag(
    session: AsyncSession, *, actor: Actor, name: str, flag: str, on: bool, reason: str | None = None
) -> models.App:
    """lock/unlock (no deploys at all) and pause/resume (no automatic deploys)."""
    app = await get(session, actor=actor, name=name)
    await authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action=f"{flag}ing {name}")
    if reason is not None:
        reason = validation.text(
            reason, field="reason", max_length=validation.limit(models.App, "locked_reason")
        )
    if flag == "lock":
        app.locked_reason = (reason or "locked") if on else None
        app.locked_by = actor.name if on else None
    elif flag == "pause":
        app.auto_deploy_paused = on
        app.paused_reason = (reason or f"paused by {actor.name}") if on else None
    else:
        raise InvalidInput(f"unknown flag {flag!r}", field="flag")
    action = {
        ("lock", True): "lock",
        ("lock", False): "unlock",
        ("pause", True): "pause",
        ("pause", False): "resume",
    }
    await audit.record(
        session,
        actor=actor,
        action=f"app.{action[(flag, on)]}",
        target=f"app/{name}",
        project_id=app.project_id,
        details={"reason": reason},
    )
    return app


async def delete(session: AsyncSession, *, actor: Actor, name: str) -> models.App:
    """Forget the app; the caller then removes its objects from the cluster (labelled managed-by shipit)."""
    app = await get(session, actor=actor, name=name)
    await authorize(session, actor=actor, app=app, role=Role.ADMIN, action="deleting an app")
    active = await session.scalar(
        select(models.Deployment.id).where(
            models.Deployment.app_id == app.id, models.Deployment.status.in_(["running"])
        )
    )
    if active:
        raise Conflict(f"{name} has a deploy running (#{active}); wait for it or cancel it first")
    await audit.record(
        session, actor=actor, action="app.delete", target=f"app/{name}", project_id=app.project_id, details={}
    )
    await session.delete(app)
    await session.flush()
    return app
