"""Projects group apps and carry who may do what (members with roles) and where to notify.

Who may create a project is a global setting (CoreConfig.project_creators): global admins only by
default, or everyone.  A project you hold no role in answers exactly like a missing one.
"""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, claims, environments, identity, readcache, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, PermissionDenied
from core.identity import Actor, Role
from core.notices import targets as notice_targets
from storage import models

_PURPOSE_WEBHOOK = "project-webhook-secret"


async def get(session: AsyncSession, *, name: str) -> models.Project:
    """By name, with no permission check: callers go through `identity.require` before answering."""

    def q() -> Select[models.Project]:  # built only when the copies do not answer
        return select(models.Project).where(models.Project.name == name)

    rows = await readcache.rows(session, ("projects.named", name), q)
    if not rows:
        raise identity.project_not_found(name)
    return rows[0]


async def get_for(
    session: AsyncSession, *, actor: Actor, name: str, role: Role, action: str
) -> models.Project:
    """The project, if the caller holds at least `role` in it; missing and invisible look the same."""
    project = await get(session, name=name)
    await identity.require(session, actor=actor, project=project, role=role, action=action)
    return project


def may_create(actor: Actor, *, ctx: Core) -> bool:
    return actor.is_admin or ctx.config.project_creators == "everyone"


async def create(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    name: str,
    slack_channel: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> models.Project:
    if not may_create(actor, ctx=ctx):
        raise PermissionDenied("creating a project needs a global admin token on this server")
    name = validation.dns_label(name, field="name")
    slack_channel = _slack_channel(slack_channel)
    existing = await session.scalar(select(models.Project.id).where(models.Project.name == name))
    if existing:
        # Names are global, so the insert must fail either way; only someone who can see the project
        # hears that it exists.
        if await identity.role_of(session, actor=actor, project_id=existing) is not None:
            raise Conflict(f"project {name!r} already exists")
        raise Conflict(f"project name {name!r} is not available; choose another")
    project = models.Project(name=name, slack_channel=slack_channel)
    _set_webhook(project, ctx=ctx, url=webhook_url, secret=webhook_secret)
    session.add(project)
    await session.flush()
    await environments.add(session, project_id=project.id, name=environments.DEFAULT)
    await _set_targets(session, ctx=ctx, actor=actor, project=project, slack_channel=slack_channel,
                       webhook_url=webhook_url, webhook_secret=webhook_secret)  # fmt: skip
    if actor.subject != "system":
        session.add(models.Member(project_id=project.id, subject=actor.subject, role=Role.OWNER.label))
    await audit.record(
        session,
        actor=actor,
        action="project.create",
        target=f"project/{name}",
        project_id=project.id,
        details={"slack_channel": slack_channel, "webhook_url": webhook_url},
    )
    return project


def _slack_channel(value: str | None) -> str | None:
    if value is None:
        return None
    return validation.text(
        value.strip(), field="slack_channel", max_length=validation.limit(models.Project, "slack_channel")
    )


def _set_webhook(project: models.Project, *, ctx: Core, url: str | None, secret: str | None) -> None:
    if url is not None:
        url = validation.text(
            url.strip(), field="webhook_url", max_length=validation.limit(models.Project, "webhook_url")
        )
        if url and not url.startswith(("http://", "https://")):
            raise InvalidInput(
                f"webhook_url must start with http:// or https://, got {url!r}", field="webhook_url"
            )
        project.webhook_url = url or None
    if secret is not None:
        project.webhook_secret_enc = (
            ctx.cipher.encrypt_text(secret, purpose=_PURPOSE_WEBHOOK) if secret else None
        )


async def _set_targets(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    project: models.Project,
    slack_channel: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
) -> None:
    """The project's Slack channel and webhook are notification targets (for every environment).

    The old columns are still written, for `projects list`, but notifiers read only the targets.
    """
    await notice_targets.set_default(
        session, ctx=ctx, project=project, kind="slack", address=slack_channel, actor=actor
    )
    await notice_targets.set_default(
        session, ctx=ctx, project=project, kind="webhook",
        address=webhook_url.strip() if webhook_url is not None else None, secret=webhook_secret, actor=actor,
    )  # fmt: skip


def webhook_secret(project: models.Project, *, ctx: Core) -> str | None:
    if project.webhook_secret_enc is None:
        return None
    return ctx.cipher.decrypt_text(project.webhook_secret_enc, purpose=_PURPOSE_WEBHOOK)


async def update(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    name: str,
    slack_channel: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> models.Project:
    project = await get_for(session, actor=actor, name=name, role=Role.ADMIN, action="changing settings")
    slack_channel = _slack_channel(slack_channel)
    if slack_channel is not None:
        project.slack_channel = slack_channel or None
    _set_webhook(project, ctx=ctx, url=webhook_url, secret=webhook_secret)
    await _set_targets(session, ctx=ctx, actor=actor, project=project, slack_channel=slack_channel,
                       webhook_url=webhook_url, webhook_secret=webhook_secret)  # fmt: skip
    await audit.record(
        session,
        actor=actor,
        action="project.update",
        target=f"project/{name}",
        project_id=project.id,
        details={
            "slack_channel": slack_channel,
            "webhook_url": webhook_url,
            "webhook_secret_changed": webhook_secret is not None,
        },
    )
    return project


async def list_visible(session: AsyncSession, *, actor: Actor) -> list[models.Project]:
    ids = await identity.visible_project_ids(session, actor=actor)
    q = select(models.Project).order_by(models.Project.name)
    if ids is not None:
        q = q.where(models.Project.id.in_(ids))
    return list(await session.scalars(q))


async def set_access(
    session: AsyncSession, *, actor: Actor, project_name: str, subject: str, role: str | None
) -> models.Member | None:
    """Grant a role (or remove it with role=None).  Owners manage access."""
    project = await get_for(
        session, actor=actor, name=project_name, role=Role.OWNER, action="managing access"
    )
    validation.subject(subject, field="subject")
    member = await session.scalar(
        select(models.Member).where(models.Member.project_id == project.id, models.Member.subject == subject)
    )
    if role is None:
        if member is not None:
            await session.delete(member)
        result = None
    else:
        parsed = Role.parse(role)
        if member is None:
            member = models.Member(project_id=project.id, subject=subject, role=parsed.label)
            session.add(member)
        else:
            member.role = parsed.label
        result = member
    await audit.record(
        session,
        actor=actor,
        action="access.grant" if role else "access.revoke",
        target=f"project/{project.name}",
        project_id=project.id,
        details={"subject": subject, "role": role},
    )
    await session.flush()
    return result


async def members(session: AsyncSession, *, actor: Actor, project_name: str) -> list[models.Member]:
    project = await get_for(
        session, actor=actor, name=project_name, role=Role.VIEWER, action="listing members"
    )
    return list(
        await session.scalars(
            select(models.Member)
            .where(models.Member.project_id == project.id)
            .order_by(models.Member.subject)
        )
    )


async def grants(session: AsyncSession, *, actor: Actor, project_name: str) -> list[claims.ProjectGrant]:
    """Where the project may deploy: its cluster grants and the namespaces it claims."""
    project = await get_for(
        session, actor=actor, name=project_name, role=Role.VIEWER, action="listing grants"
    )
    return await claims.grants(session, project_id=project.id)


async def delete(session: AsyncSession, *, actor: Actor, name: str) -> None:
    """Delete a project (owner only); refused while it still has apps, so nothing runs unowned."""
    project = await get_for(session, actor=actor, name=name, role=Role.OWNER, action="deleting the project")
    apps = sorted(await session.scalars(select(models.App.name).where(models.App.project_id == project.id)))
    if apps:
        raise Conflict(f"project {name} still has apps ({', '.join(apps)}); delete them first")
    # Explicit, not left to ON DELETE CASCADE: SQLite enforces foreign keys only when asked to.
    for model in (models.NamespaceClaim, models.ClusterGrant, models.Member, models.Registry):
        for row in await session.scalars(select(model).where(model.project_id == project.id)):
            await session.delete(row)
    await session.flush()  # children first: the ORM knows no relationship to order them by
    project_id = project.id
    await session.delete(project)
    await session.flush()
    await audit.record(
        session, actor=actor, action="project.delete", target=f"project/{name}", project_id=project_id
    )
