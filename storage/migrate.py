"""Alembic, driven from code: applied at start and by `shipit db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

_HERE = Path(__file__).resolve().parent
_LOCK_KEY = 0x5A1B17  # any fixed bigint: the advisory lock that serialises migrations


def alembic_config(*, url: str = "") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine, *, revision: str = "head") -> None:
    def _run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Replicas (and their `shipit db upgrade` init containers) start together: one migrates,
            # the others wait here and then find the schema at head.  Released at commit.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def current(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _get(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_get)
