"""Which database a session talks to, for the few statements written differently per dialect."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession


def is_postgres(session: AsyncSession) -> bool:
    """PostgreSQL, else SQLite.  The session's own bind when it has one (every sessionmaker of shipit
    gives one): `get_bind()` resolves it anew at each call, on the path of every request (issue 13)."""
    bind = session.bind
    return (bind if bind is not None else session.get_bind()).dialect.name == "postgresql"
