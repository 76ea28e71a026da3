"""API tokens: shown once, stored as a SHA-256 hash (they are long random strings, so no slow KDF needed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets as pysecrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, readcache, validation
from core.context import Core
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


@dataclass(frozen=True, kw_only=True)
class _Token:
    """What the read cache keeps of a token: never its hash's row object."""

    id: int
    subject: str
    is_admin: bool
    revoked: bool
    last_used_at: dt.datetime | None


def _actor(token: _Token, *, channel: str, pin: readcache.Pin | None = None) -> Actor:
    return Actor(
        subject=token.subject,
        channel=channel,
        display=token.subject.split(":", 1)[-1],
        is_admin=token.is_admin,
        pin=pin,
    )


def _stale_use(last_used_at: dt.datetime | None, now: dt.datetime) -> bool:
    # Only write when it moves by a minute, so reads stay reads.
    return last_used_at is None or (now - last_used_at).total_seconds() > 60


async def _mark_used(session: AsyncSession, *, token_id: int, now: dt.datetime) -> None:
    # No cached copy answers with last_used_at, so this write does not change the read cache's stamp
    # (else every token in use would empty every replica's cache once a minute).
    await session.execute(
        update(models.ApiToken)
        .where(models.ApiToken.id == token_id)
        .values(last_used_at=now)
        .execution_options(readcache_bump=False)
    )


async def _load(session: AsyncSession, *, token_hash: str) -> _Token | None:
    row = await session.scalar(select(models.ApiToken).where(models.ApiToken.token_hash == token_hash))
    if row is None:
        return None
    return _Token(
        id=row.id,
        subject=row.subject,
        is_admin=row.is_admin,
        revoked=row.revoked_at is not None,
        last_used_at=row.last_used_at,
    )


async def authenticate(session: AsyncSession, *, token: str, channel: str = "api") -> Actor:
    if not token.startswith(PREFIX):
        raise Unauthenticated("invalid token")
    found = await _load(session, token_hash=_hash(token))
    if found is None or found.revoked:
        raise Unauthenticated("invalid or revoked token")
    now = models.utcnow()
    if _stale_use(found.last_used_at, now):
        await _mark_used(session, token_id=found.id, now=now)
    return _actor(found, channel=channel)


async def authenticate_cached(*, ctx: Core, token: str, channel: str = "api") -> Actor:
    """`authenticate` for a request: one statement (the read cache's stamp) while nothing changed.

    The stamp read here is handed on with the Actor (`pin`) and stands for the request's transaction
    (core.readcache: why that is sound), so the request reads it only once.
    """
    if not token.startswith(PREFIX):
        raise Unauthenticated("invalid token")
    cache = ctx.readcache
    engine = ctx.sessionmaker.kw["bind"]
    version = await readcache.read_version_outside(engine)
    entries = cache.at(version)
    key = ("token", _hash(token))
    found: _Token | None = entries.get(key)
    now = models.utcnow()
    if found is None:
        async with ctx.sessionmaker.begin() as session:
            found = await _load(session, token_hash=key[1])
            if found is not None and not found.revoked and _stale_use(found.last_used_at, now):
                await _mark_used(session, token_id=found.id, now=now)
                found = dataclasses.replace(found, last_used_at=now)
        if found is None:
            raise Unauthenticated("invalid or revoked token")
        entries[key] = found
    elif not found.revoked and _stale_use(found.last_used_at, now):
        async with ctx.sessionmaker.begin() as session:
            await _mark_used(session, token_id=found.id, now=now)
        entries[key] = found = dataclasses.replace(found, last_used_at=now)
    if found.revoked:
        raise Unauthenticated("invalid or revoked token")
    return _actor(found, channel=channel, pin=readcache.Pin(version))


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
