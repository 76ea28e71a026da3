"""Projects group apps and carry who may do what (members with roles) and where to notify."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, identity, validation
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import Actor, Role
from storage import models

_PURPOSE_WEBHOOK = "project-webhook-secret"


async def get(session: AsyncSession, *, name: str) -> models.Project:
    project = await session.scalar(select(models.Project).where(models.Project.name == name))
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return project


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
    name = validation.dns_label(name, field="name")
    slack_channel = _slack_channel(slack_channel)
    if await session.scalar(select(models.Project.id).where(models.Project.name == name)):
        raise Conflict(f"project {name!r} already exists")
    project = models.Project(name=name, slack_channel=slack_channel)
    _set_webhook(project, ctx=ctx, url=webhook_url, secret=webhook_secret)
    session.add(project)
    await session.flush()
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
    project = await get(session, name=name)
    await identity.require(session, actor=actor, project=project, role=Role.ADMIN, action="changing settings")
    slack_channel = _slack_channel(slack_channel)
    if slack_channel is not None:
        project.slack_channel = slack_channel or None
    _set_webhook(project, ctx=ctx, url=webhook_url, secret=webhook_secret)
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
    project = await get(session, name=project_name)
    await identity.require(session, actor=actor, project=project, role=Role.OWNER, action="managing access")
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
    project = await get(session, name=project_name)
    await identity.require(session, actor=actor, project=project, role=Role.VIEWER, action="listing members")
    return list(
        await session.scalars(
            select(models.Member)
            .where(models.Member.project_id == project.id)
            .order_by(models.Member.subject)
        )
    )
