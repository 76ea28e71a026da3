"""Apps: what to run, where, and how.  Changing an app does not touch the cluster until a deploy.

An app lives in a namespace its project claims on a cluster its project is granted (core.claims).
An app in a project you hold no role in answers exactly like a missing app.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, claims, environments, events, identity, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, UserError
from core.identity import Actor, Role
from storage import models

UNSET: Any = object()

# previews_from_forks: may a pull request from a fork get a preview, which runs its (unreviewed) code?
FORKS_NEVER = "never"  # no preview
FORKS_APPROVED = "approved"  # after a project developer approves the commit; never with the app's secrets
FORKS_ALWAYS = "always"  # like any pull request, secrets included: admins only
FORK_POLICIES = (FORKS_NEVER, FORKS_APPROVED, FORKS_ALWAYS)


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
    previews_from_forks: str = UNSET
    release_command: str | None = UNSET
    auto_rollback: bool = UNSET

    def items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


def _validated(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None and key in ("previews_from_forks", "auto_rollback"):
            if key == "auto_rollback":
                raise InvalidInput("auto_rollback must be on or off", field=key)
            raise InvalidInput(f"previews_from_forks must be one of {', '.join(FORK_POLICIES)}", field=key)
        if value is None:
            if not models.App.__table__.c[key].nullable:
                raise InvalidInput(f"{key} cannot be cleared (null); give a value", field=key)
            out[key] = None
            continue
        match key:
            case "release_command":
                value = _release_command(value)
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
            case "preview_ttl_hours":
                value = validation.int_range(value, field=key, low=1, high=24 * 90)
            case "preview_max_open":
                value = validation.int_range(value, field=key, low=1, high=500)
            case "auto_rollback":
                if not isinstance(value, bool):
                    raise InvalidInput("auto_rollback must be on or off (true or false)", field=key)
            case "previews_from_forks":
                if value not in FORK_POLICIES:
                    raise InvalidInput(
                        f"previews_from_forks must be one of {', '.join(FORK_POLICIES)}, got {str(value)[:40]!r}",
                        field=key,
                    )
            case "git_branch" | "github_environment" | "tls_issuer":
                value = validation.text(value, field=key, max_length=validation.limit(models.App, key))
        out[key] = value
    return out


RELEASE_COMMAND_MAX = 1000


def _release_command(value: str) -> str | None:
    """ "" clears it; anything else must say something, and fit the column."""
    if value == "":
        return None
    if not value.strip():
        raise InvalidInput('release_command must not be blank; give "" to remove it', field="release_command")
    if len(value) > RELEASE_COMMAND_MAX:
        raise InvalidInput(
            f"release_command is longer than {RELEASE_COMMAND_MAX} characters", field="release_command"
        )
    if "\x00" in value:
        raise InvalidInput("release_command must not contain NUL characters", field="release_command")
    return value.strip()


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


async def not_found(session: AsyncSession, *, actor: Actor, name: str) -> NotFound:
    """The one answer for an app that is missing or in a project the caller holds no role in."""
    names = [a.name for a in await list_visible(session, actor=actor)]
    hint = f"; your apps: {', '.join(names)}" if names else "; you can see no apps yet"
    return NotFound(f"no app named {name!r}{hint}")


async def get(session: AsyncSession, *, actor: Actor, name: str) -> models.App:
    """Find an app by name; an unknown name lists the apps the caller can see."""
    app = await session.scalar(select(models.App).where(models.App.name == name))
    visible = await identity.visible_project_ids(session, actor=actor)
    if app is None or (visible is not None and app.project_id not in visible):
        raise await not_found(session, actor=actor, name=name)
    return app


async def project_of(session: AsyncSession, *, app: models.App) -> models.Project:
    project = await session.get(models.Project, app.project_id)
    assert project is not None
    return project


async def authorize(
    session: AsyncSession,
    *,
    actor: Actor,
    app: models.App,
    role: Role,
    action: str,
    missing: UserError | None = None,
) -> None:
    """At least `role` in the app's project; no role at all answers `missing` (default: no such app)."""
    project = await project_of(session, app=app)
    if missing is None and await identity.role_of(session, actor=actor, project_id=project.id) is None:
        missing = await not_found(session, actor=actor, name=app.name)
    await identity.require(session, actor=actor, project=project, role=role, action=action, missing=missing)


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
    no_project = InvalidInput(f"no project named {project!r}", field="project")
    if proj is None:
        raise no_project
    await identity.require(
        session, actor=actor, project=proj, role=Role.ADMIN, action="creating an app", missing=no_project
    )
    clu = await session.scalar(select(models.Cluster).where(models.Cluster.name == cluster))
    if actor.is_admin:
        if clu is None:
            raise InvalidInput(f"no cluster named {cluster!r}", field="cluster")
    elif clu is None or await claims.grant_of(session, cluster_id=clu.id, project_id=proj.id) is None:
        # A cluster the project may not use looks the same whether or not it exists.
        raise claims.not_granted(cluster=cluster, project=proj.name)
    existing = await session.scalar(select(models.App).where(models.App.name == name))
    if existing is not None:
        # App names are global, so the insert must fail either way; only someone who can see the app
        # hears that it exists, anyone else that the name is not available (without saying why).
        if await identity.role_of(session, actor=actor, project_id=existing.project_id) is not None:
            raise Conflict(f"an app named {name!r} already exists")
        raise Conflict(f"app name {name!r} is not available; choose another")
    ns = validation.dns_label(namespace or clu.default_namespace, field="namespace")
    if actor.is_admin:
        # A global admin vouches for the namespace and, with it, the project's use of the cluster.
        await claims.claim(
            session, cluster_id=clu.id, namespace=ns, project_id=proj.id, origin=claims.GRANTED, actor=actor
        )
        await claims.ensure_grant(session, cluster_id=clu.id, project_id=proj.id, actor=actor)
    else:
        await claims.claim_created(session, cluster_id=clu.id, namespace=ns, project_id=proj.id, actor=actor)
    env = await environments.default_for(session, project_id=proj.id)
    app = models.App(
        name=name,
        project_id=proj.id,
        environment_id=env.id,
        cluster_id=clu.id,
        namespace=ns,
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
    await _allow_fork_policy(session, actor=actor, project=proj, values=values)
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
    await _audit_fork_policy(session, actor=actor, app=app, before=FORKS_NEVER)
    return app


async def _allow_fork_policy(
    session: AsyncSession, *, actor: Actor, project: models.Project, values: dict[str, Any]
) -> None:
    # Checked on its own, not only through "changing an app needs admin": `always` hands the app's
    # secrets to code from outside the team, and must stay admin-only whatever else changes.
    if values.get("previews_from_forks") == FORKS_ALWAYS:
        await identity.require(
            session,
            actor=actor,
            project=project,
            role=Role.ADMIN,
            action="giving previews of pull requests from forks the app's secrets (previews_from_forks=always)",
        )


async def _audit_fork_policy(session: AsyncSession, *, actor: Actor, app: models.App, before: str) -> None:
    """Its own audit line: who let code from forks run (and with which secrets) is asked after incidents."""
    if app.previews_from_forks == before:
        return
    await audit.record(
        session,
        actor=actor,
        action="app.previews_from_forks",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"from": before, "to": app.previews_from_forks},
    )


def _audit_safe(values: dict[str, Any]) -> dict[str, Any]:
    # env values are configuration, not secrets, but keep audit rows small: record keys only.
    out = dict(values)
    for key in ("env", "preview_env"):
        if key in out and out[key] is not None:
            out[key] = sorted(out[key])
    return out


async def update(
    session: AsyncSession, *, ctx: Core, actor: Actor, name: str, changes: AppChanges
) -> models.App:
    app = await get(session, actor=actor, name=name)
    fields_set = set(changes.items())
    scaling_only = fields_set <= {"replicas", "min_replicas", "max_replicas", "cpu_target"}
    await authorize(
        session,
        actor=actor,
        app=app,
        role=Role.ADMIN,
        action="scaling" if scaling_only else "changing an app",
    )
    values = _validated(changes.items())
    protection = values.get("protected", app.protected)
    protection_changed = "protected" in values and bool(protection) != bool(app.protected)
    if protection_changed and not protection:
        # Protection is what stands between one person and production: only an owner lifts it.
        await authorize(session, actor=actor, app=app, role=Role.OWNER, action="turning protection off")
    await _allow_fork_policy(session, actor=actor, project=await project_of(session, app=app), values=values)
    fork_policy_before = app.previews_from_forks
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
    await _audit_fork_policy(session, actor=actor, app=app, before=fork_policy_before)
    if protection_changed:
        await _announce_protection(session, ctx=ctx, actor=actor, app=app)
    return app


async def _announce_protection(session: AsyncSession, *, ctx: Core, actor: Actor, app: models.App) -> None:
    """Protection going on or off is announced like a deploy: an audit row and an event for notifiers."""
    row = await audit.record(
        session,
        actor=actor,
        action="app.protect" if app.protected else "app.unprotect",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"protected": app.protected},
    )
    await events.emit(
        session,
        ctx=ctx,
        kind=events.APP_PROTECTION_CHANGED,
        dedupe_key=f"app:{app.id}:protection:{row.id}",
        project_id=app.project_id,
        app_id=app.id,
        payload={
            "protected": app.protected,
            "by": actor.subject,
            "by_name": actor.name,
            "channel": actor.channel,
        },
    )


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
