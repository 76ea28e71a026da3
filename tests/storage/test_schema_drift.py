"""The migrations build exactly the schema the models describe (on SQLite and PostgreSQL): a column
added to a model without a migration, or the other way round, fails here rather than in production."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from shipit.settings import Settings
from storage import db, migrate, models

pytestmark = pytest.mark.both_databases


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    diffs = compare_metadata(context, models.Base.metadata)
    # SQLite cannot name a foreign key added by ALTER TABLE ADD COLUMN; the constraint itself is there.
    return [d for d in diffs if not (connection.dialect.name == "sqlite" and _is_fk_name_only(d))]


def _is_fk_name_only(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] in ("add_fk", "remove_fk")


async def test_migrations_build_the_models_schema(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            diffs = await conn.run_sync(_differences)
    finally:
        await engine.dispose()
    assert diffs == []
