"""API tokens: shown once, stored as a SHA-256 hash (they are long random strings, so no slow KDF needed)."""

from __future__ import annotations

import hashlib
import secrets as pysecrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, validation
from core.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from core.identity import Actor
from storage import models

PREFIX = "shp_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create(
    session: AsyncSession, *, actor: Actor, name: str, subject: str | None = None, is_admin: bool = False
) -> tuple[models.ApiToken, str]:
    if not actor.is_admin:
        if is_admin:
            raise PermissionDenied("only a global admin can create admin tokens")
        if subject and subject != actor.subject:
            raise PermissionDenied("you can only create tokens for yourself")
    name = name.strip()
    longest = validation.limit(models.ApiToken, "name")
    if not name or len(name) > longest:
        raise InvalidInput(f"name must be 1 to {longest} characters", field="name")
    validation.text(name, field="name", max_length=longest)
    subject = validation.subject(subject or (actor.subject if actor.subject != "system" else f"user:{name}"))
    plaintext = PREFIX + pysecrets.token_urlsafe(32)
    row = models.ApiToken(
        name=name, token_hash=_hash(plaintext), prefix=plaintext[:10], subject=subject, is_admin=is_admin
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="token.create",
        target=f"token/{row.id}",
        details={"name": name, "subject": subject, "admin": is_admin},
    )
    return row, plaintext


async def authenticate(session: AsyncSession, *, token: str, channel: str = "api") -> Actor:
    if not token.startswith(PREFIX):
        raise Unauthenticated("invalid token")
    row = await session.scalar(select(models.ApiToken).where(models.ApiToken.token_hash == _hash(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("invalid or revoked token")
    now = models.utcnow()
    # Only write when it moves by a minute, so reads stay reads.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return Actor(
        subject=row.subject, channel=channel, display=row.subject.split(":", 1)[-1], is_admin=row.is_admin
    )


async def list_tokens(session: AsyncSession, *, actor: Actor) -> list[models.ApiToken]:
    q = select(models.ApiToken).order_by(models.ApiToken.id)
    if not actor.is_admin:
        q = q.where(models.ApiToken.subject == actor.subject)
    return list(await session.scalars(q))


async def revoke(session: AsyncSession, *, actor: Actor, token_id: int) -> models.ApiToken:
    row = await session.get(models.ApiToken, token_id) if validation.is_id(token_id) else None
    if row is None or (not actor.is_admin and row.subject != actor.subject):
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = models.utcnow()
        await audit.record(session, actor=actor, action="token.revoke", target=f"token/{row.id}", details={})
    return row


async def has_any(session: AsyncSession) -> bool:
    return (await session.scalar(select(models.ApiToken.id).limit(1))) is not None
