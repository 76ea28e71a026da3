"""Dashboard sessions: server-side rows, so signing out (or an admin revoking) ends them at once.

The browser holds a random token; the row's id is its SHA-256, so a database leak gives no cookies.
Each session has its own CSRF secret that every state-changing form sends back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets as pysecrets

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.errors import InvalidInput
from core.identity import Actor
from storage import models

PROVIDERS = ("oidc", "github")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def actor_of(row: models.WebSession) -> Actor:
    """A signed-in person acts as their subject: the roles it holds, nothing more (never a global admin)."""
    return Actor(subject=row.subject, channel="web", display=row.display or row.subject.split(":", 1)[-1])


async def create(
    session: AsyncSession, *, subject: str, display: str, provider: str, lifetime: dt.timedelta
) -> tuple[models.WebSession, str]:
    """A new session for `subject`; returns the row and the token for the cookie (shown only here)."""
    if provider not in PROVIDERS or ":" not in subject:
        raise InvalidInput(
            "a web session needs a provider and a subject like user:alice@example.com", field="subject"
        )
    token = pysecrets.token_urlsafe(32)
    now = models.utcnow()
    row = models.WebSession(
        id=_hash(token),
        subject=subject,
        display=display[:200],
        provider=provider,
        csrf_secret=pysecrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session, actor=actor_of(row), action="web.signin", target=f"session/{row.id[:12]}",
        details={"provider": provider},
    )  # fmt: skip
    return row, token


async def lookup(session: AsyncSession, *, token: str) -> models.WebSession | None:
    """The live session for a cookie token; None when unknown, revoked or expired."""
    if not token or len(token) > 200:
        return None
    row = await session.get(models.WebSession, _hash(token))
    if row is None or row.revoked_at is not None or row.expires_at <= models.utcnow():
        return None
    return row


def csrf_ok(*, secret: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(secret.encode(), (sent or "").encode())


async def revoke(session: AsyncSession, *, row: models.WebSession) -> None:
    if row.revoked_at is None:
        row.revoked_at = models.utcnow()
        await audit.record(
            session, actor=actor_of(row), action="web.signout", target=f"session/{row.id[:12]}", details={}
        )


async def forget_ended(session: AsyncSession, *, older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Delete sessions that ended (expired or signed out) more than `older_than` ago."""
    cutoff = models.utcnow() - older_than
    result = await session.execute(
        delete(models.WebSession).where(
            (models.WebSession.expires_at < cutoff) | (models.WebSession.revoked_at < cutoff)
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
