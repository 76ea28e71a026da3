"""A deploy request's look-ups of its app's deployments search an index on what they filter by, on
SQLite: with only (app_id) indexed they read every deployment the app ever had, a cost per request
that grew with the app's history (migration 0013).  Pruning revisions also sets their deployments'
revision_id NULL, which without an index scanned the whole table."""

from __future__ import annotations

import importlib
import re
from typing import Any

from sqlalchemy import Connection

from shipit.settings import Settings
from storage import db, migrate

request = importlib.import_module("core.deploys.request")  # the module, not core.deploys.request()


def _plan(connection: Connection, statement: Any) -> list[str]:
    # An IN list's parameters are expanded at execution: one value will do for the plan.
    sql = re.sub(r"\(?__\[POSTCOMPILE_\w+\]\)?", "(?)", str(statement.compile(dialect=connection.dialect)))
    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (1,) * sql.count("?")).all()
    return [str(row[-1]) for row in rows]


async def test_the_deploy_requests_look_ups_search_the_composite_indexes(settings: Settings) -> None:
    assert settings.database_url.startswith("sqlite")
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            plans = {
                name: await conn.run_sync(_plan, getattr(request, name))
                for name in ("_INSERT_REVISION", "_INSERT_DEPLOYMENT", "_SUPERSEDE", "_PRUNE")
            }
    finally:
        await engine.dispose()
    searches = {name: [step for step in plan if "deployments" in step] for name, plan in plans.items()}
    assert any("ix_deployments_app_number" in s for s in searches["_INSERT_REVISION"]), plans
    for name in ("_INSERT_DEPLOYMENT", "_SUPERSEDE", "_PRUNE"):
        assert any("ix_deployments_app_status" in s for s in searches[name]), (name, plans[name])
    # Pruning sets the pruned revisions' deployments' revision_id NULL (the foreign key's action).
    assert any("ix_deployments_revision_id" in s for s in searches["_PRUNE"]), plans["_PRUNE"]
    for name, steps in searches.items():
        assert not any(s.startswith("SCAN") for s in steps), (name, plans[name])
