"""Apps: what to run, where, and how.  Changing an app does not touch the cluster until a deploy.

An app lives in a namespace its project claims on a cluster its project is granted (core.claims).
An app in a project you hold no role in answers exactly like a missing app.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, claims, environments, events, identity, images, readcache, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, SeveralEnvironments, UserError
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
    scale_down_window: int | None = UNSET  # seconds; None: Kubernetes' default (5 minutes)
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
    # Build from source (core.builds): pushes build the commit into build_image instead of deploying
    # image_template; build_context is the repository's directory to build ("" or None: its root).
    build_enabled: bool = UNSET
    build_context: str | None = UNSET
    build_image: str | None = UNSET

    def items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


def _validated(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None and key == "build_enabled":
            raise InvalidInput("build_enabled must be true or false", field=key)
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
            case "build_enabled":
                if not isinstance(value, bool):
                    raise InvalidInput("build_enabled must be true or false", field=key)
            case "build_context":
                value = _build_context(value)
            case "build_image":
                value = _build_image(value)
            case "git_branch" | "github_environment" | "tls_issuer":
                value = validation.text(value, field=key, max_length=validation.limit(models.App, key))
        out[key] = value
    return out


RELEASE_COMMAND_MAX = 1000


def _build_context(value: str) -> str | None:
    """A directory of the repository, relative ("" or "." is its root): never absolute, never `..`."""
    validation.text(value, field="build_context", max_length=validation.limit(models.App, "build_context"))
    parts = [p for p in value.strip().split("/") if p not in ("", ".")]
    if value.strip().startswith("/") or ".." in parts or "\\" in value:
        raise InvalidInput(
            f"build_context must be a directory of the repository such as services/web, "
            f"got {validation.shown(value)}",
            field="build_context",
        )
    return "/".join(parts) or None


def _build_image(value: str) -> str | None:
    """The repository built images are pushed to (tagged with the commit's sha): no tag, no digest."""
    if value == "":
        return None
    value = validation.image(value, field="build_image")
    ref = images.parse(value, field="build_image")
    if ref.tag is not None or ref.digest is not None:
        raise InvalidInput(
            f"build_image is a repository such as registry.acme.dev/acme/web, without a tag or digest "
            f"(each build is tagged with its commit's sha), got {validation.shown(value)}",
            field="build_image",
        )
    if len(value) + 41 > validation.limit(models.App, "build_image"):
        raise InvalidInput("build_image is too long to take a sha tag", field="build_image")
    return value


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
            min_replicas=app.min_replicas,
            max_replicas=app.max_replicas,
            cpu_target=app.cpu_target or 80,
            scale_down_window=app.scale_down_window,
        )
    else:
        validation.no_scale_down_window_without_autoscaling(app.scale_down_window)
    if app.previews_enabled and not app.preview_domain:
        raise InvalidInput("previews need a preview_domain", field="preview_domain")
    if app.build_enabled:
        if not app.build_image:
            raise InvalidInput(
                "building from source needs a build_image, the repository to push to, such as "
                "registry.acme.dev/acme/web",
                field="build_image",
            )
        if not app.git_repo:
            raise InvalidInput("building from source needs a git_repo to build from", field="git_repo")
    elif app.git_repo and not app.image_template:
        raise InvalidInput(
            "a git_repo needs an image_template such as ghcr.io/acme/web:{sha}", field="image_template"
        )


async def not_found(session: AsyncSession, *, actor: Actor, name: str) -> NotFound:
    """The one answer for an app that is missing or in a project the caller holds no role in."""
    names = list(dict.fromkeys(a.name for a in await list_visible(session, actor=actor)))
    hint = f"; your apps: {', '.join(names)}" if names else "; you can see no apps yet"
    return NotFound(f"no app named {name!r}{hint}")


async def get(session: AsyncSession, *, actor: Actor, name: str, env: str | None = None) -> models.App:
    """Find an app's row by name and environment; an unknown name lists the apps the caller can see.

    Without `env`, an app in exactly one environment is that row (single-environment use needs no
    flag); an app in several is refused, naming them, rather than guessed.
    """

    def q() -> Select[models.App]:  # built only when the copies do not answer
        return select(models.App).where(models.App.name == name).order_by(models.App.id)

    rows = await readcache.rows(session, ("apps.named", name), q, pin=actor.pin)
    visible = await identity.visible_project_ids(session, actor=actor)
    if not rows or (visible is not None and rows[0].project_id not in visible):
        raise await not_found(session, actor=actor, name=name)
    named = await _environment_names(session, rows=rows)
    if env is not None:
        for row in rows:
            if named[row.id] == env:
                return row
        raise NotFound(
            f"{name} does not run in an environment named {env!r}; it runs in: {', '.join(named.values())}"
        )
    if len(rows) == 1:
        return rows[0]
    raise SeveralEnvironments(app=name, environments=list(named.values()))


async def _environment_names(session: AsyncSession, *, rows: list[models.App]) -> dict[int, str]:
    """App row id -> its environment's name, in the project's environment order."""
    envs = {e.id: e for e in await environments.list_for(session, project_id=rows[0].project_id)}
    ordered = sorted(
        rows,
        key=lambda r: (
            (envs[r.environment_id].position, r.environment_id) if r.environment_id in envs else (0, 0)
        ),
    )
    return {
        r.id: envs[r.environment_id].name if r.environment_id in envs else environments.DEFAULT
        for r in ordered
    }


async def env_name(session: AsyncSession, *, app: models.App) -> str:
    """The name of the environment an app row runs in: what selects this very row in `get`."""
    return (await environments.of_app(session, app=app)).name


async def rows_of(session: AsyncSession, *, name: str) -> list[models.App]:
    """Every environment's row of an app (no permission check: callers hold one row already)."""
    return list(
        await session.scalars(select(models.App).where(models.App.name == name).order_by(models.App.id))
    )


async def project_of(session: AsyncSession, *, app: models.App) -> models.Project:
    project = await readcache.get(session, models.Project, app.project_id)
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
    # One role look-up serves both answers (issue 13: statements per request).
    have = await identity.role_of(session, actor=actor, project_id=project.id)
    if have is None:
        raise missing if missing is not None else await not_found(session, actor=actor, name=app.name)
    if have < role:
        raise PermissionDenied(
            f"{action} in project {project.name} needs the {role.label} role; you have {have.label}"
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
    env: str | None = None,
) -> models.App:
    """A new app, or (with `env`) the app's row in another environment of its project.

    A row in a further environment copies the existing row's definition, then takes `changes` as
    that environment's overrides; secrets are never copied (each environment holds its own).
    """
    name = validation.dns_label(name, field="name")
    proj = await session.scalar(select(models.Project).where(models.Project.name == project))
    no_project = InvalidInput(f"no project named {project!r}", field="project")
    if proj is None:
        raise no_project
    await identity.require(
        session, actor=actor, project=proj, role=Role.ADMIN, action="creating an app", missing=no_project
    )
    target_env = (
        await environments.get(session, project_id=proj.id, name=env)
        if env is not None
        else await environments.default_for(session, project_id=proj.id)
    )
    siblings = list(await session.scalars(select(models.App).where(models.App.name == name)))
    template = await _copy_source(
        session, actor=actor, proj=proj, name=name, siblings=siblings, env=target_env
    )
    if not cluster:
        cluster_id = target_env.cluster_id or (template.cluster_id if template else None)
        default_cluster = await session.get(models.Cluster, cluster_id) if cluster_id else None
        if default_cluster is None:
            raise InvalidInput("give a cluster (the environment has none)", field="cluster")
        cluster = default_cluster.name
    if namespace is None:
        namespace = target_env.namespace or (template.namespace if template else None)
    clu = await session.scalar(select(models.Cluster).where(models.Cluster.name == cluster))
    if actor.is_admin:
        if clu is None:
            raise InvalidInput(f"no cluster named {cluster!r}", field="cluster")
    elif clu is None or await claims.grant_of(session, cluster_id=clu.id, project_id=proj.id) is None:
        # A cluster the project may not use looks the same whether or not it exists.
        raise claims.not_granted(cluster=cluster, project=proj.name)
    ns = validation.dns_label(namespace or clu.default_namespace, field="namespace")
    if any(s.cluster_id == clu.id and s.namespace == ns for s in siblings):
        # Same objects (Deployment `name`) in the same place: the environments would overwrite each other.
        raise Conflict(f"{name} already runs in {cluster}/{ns}; give this environment its own namespace")
    if actor.is_admin:
        # A global admin vouches for the namespace and, with it, the project's use of the cluster.
        await claims.claim(
            session, cluster_id=clu.id, namespace=ns, project_id=proj.id, origin=claims.GRANTED, actor=actor
        )
        await claims.ensure_grant(session, cluster_id=clu.id, project_id=proj.id, actor=actor)
    else:
        await claims.claim_created(session, cluster_id=clu.id, namespace=ns, project_id=proj.id, actor=actor)
    app = models.App(
        name=name,
        project_id=proj.id,
        environment_id=target_env.id,
        cluster_id=clu.id,
        namespace=ns,
        env={},
        preview_env={},
    )
    if template is not None:
        for key in _COPIED:
            setattr(app, key, getattr(template, key))
        if template.github_environment:
            # The source's GitHub environment names the source's environment: a staging row must not
            # report to GitHub's "production".  This row reports under its own environment's name.
            app.github_environment = target_env.name
    values = _validated(changes.items())
    if template is not None and "replicas" in values and not values.keys() & _AUTOSCALING:
        # A fixed count given for this environment is what it runs, as with `scale --replicas N`: a copied
        # HPA (min 2, say) would otherwise overrule the `--replicas 1` asked for here.
        for key in _AUTOSCALING:
            setattr(app, key, None)
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
        details={
            "cluster": cluster,
            "namespace": app.namespace,
            "environment": target_env.name,
            **_audit_safe(values),
        },
    )
    await _audit_fork_policy(session, actor=actor, app=app, before=FORKS_NEVER)
    return app


# What a row in a further environment copies from the app's existing row (not its place, state or secrets;
# nor previews_enabled: two rows making previews of one pull request would share `<app>-pr-<n>`; nor
# github_environment, which names the source row's environment on GitHub: see create).  Nor `domain`:
# two Ingresses would claim one host, and the new environment's would take the other's traffic; nor
# `protected`: whether deploys wait for approval is the environment's decision (its own `protected`)
# or set on the row explicitly, never inherited from, say, staging's unprotected row into production.
_COPIED = (
    "image", "replicas", "port", "env", "cpu_request", "cpu_limit", "memory_request", "memory_limit",
    "health_path", "health_port", "health_initial_delay", "health_period", "min_replicas", "max_replicas",
    "cpu_target", "scale_down_window", "ingress_class", "tls_issuer", "progress_deadline_seconds",
    "git_repo", "git_branch", "git_ref_type", "image_template", "deploy_on",
    "preview_domain", "preview_ttl_hours", "preview_max_open", "preview_env",
    "previews_from_forks", "auto_rollback", "release_command", "build_enabled", "build_context", "build_image",
)  # fmt: skip
_AUTOSCALING = frozenset({"min_replicas", "max_replicas", "cpu_target", "scale_down_window"})


async def _copy_source(
    session: AsyncSession,
    *,
    actor: Actor,
    proj: models.Project,
    name: str,
    siblings: list[models.App],
    env: models.Environment,
) -> models.App | None:
    """The row a new environment's row copies, or None for a new app; refuses what cannot be."""
    if not siblings:
        return None
    owner = siblings[0].project_id
    if owner != proj.id:
        # All rows of a name belong to one project, so /apps/{name} stays unambiguous; only someone
        # who can see the app hears that it exists, anyone else that the name is not available.
        if await identity.role_of(session, actor=actor, project_id=owner) is not None:
            raise Conflict(f"an app named {name!r} already exists")
        raise Conflict(f"app name {name!r} is not available; choose another")
    if any(s.environment_id == env.id for s in siblings):
        # Worded as before environments when the project has just one, so nothing changes for it.
        envs = await environments.list_for(session, project_id=proj.id)
        raise Conflict(f"an app named {name!r} already exists" + (f" in {env.name}" if len(envs) > 1 else ""))
    return siblings[0]


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
    session: AsyncSession, *, ctx: Core, actor: Actor, name: str, changes: AppChanges, env: str | None = None
) -> models.App:
    app = await get(session, actor=actor, name=name, env=env)
    fields_set = set(changes.items())
    scaling_only = fields_set <= {"replicas", *_AUTOSCALING}
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
    if app.min_replicas is None and app.max_replicas is None and "scale_down_window" not in values:
        # Autoscaling turned off takes its downscale window with it (the window means nothing alone).
        app.scale_down_window = None
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
    session: AsyncSession,
    *,
    actor: Actor,
    name: str,
    flag: str,
    on: bool,
    reason: str | None = None,
    env: str | None = None,
) -> models.App:
    """lock/unlock (no deploys at all) and pause/resume (no automatic deploys)."""
    app = await get(session, actor=actor, name=name, env=env)
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


async def delete(session: AsyncSession, *, actor: Actor, name: str, env: str | None = None) -> models.App:
    """Forget the app (its row in one environment); the caller then removes its objects from the cluster."""
    app = await get(session, actor=actor, name=name, env=env)
    await authorize(session, actor=actor, app=app, role=Role.ADMIN, action="deleting an app")
    active = await session.scalar(
        select(models.Deployment.id).where(
            models.Deployment.app_id == app.id, models.Deployment.status.in_(["running"])
        )
    )
    if active:
        raise Conflict(f"{name} has a deploy running (#{active}); wait for it or cancel it first")
    # Its databases would outlive it unseen (the rows go with the app): they are destroyed on purpose.
    addon = await session.scalar(select(models.Addon.kind).where(models.Addon.app_id == app.id).limit(1))
    if addon:
        raise Conflict(f"{name} has a {addon} add-on; destroy it first (addons destroy {name} {addon})")
    await audit.record(
        session, actor=actor, action="app.delete", target=f"app/{name}", project_id=app.project_id, details={}
    )
    await session.delete(app)
    await session.flush()
    return app
