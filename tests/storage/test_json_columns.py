"""JSON columns are written by orjson (storage.models.Json, issue 13) and read back as they were
written, on both databases; what orjson does not take is written as the standard library wrote it, and
what the standard library refused is still refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import StatementError

from shipit.settings import Settings
from storage import db, migrate, models

VALUES: list[Any] = [
    {},
    {"deployment": 12, "image": "ghcr.io/acme/web:1.4", "nested": {"list": [1, 2.5, None, True, "x"]}},
    {"unicode": "déploiement 🚀", "quote": 'a "b" \\ c', "control": "\x00\n\t"},
    {"big": 2**70, "negative": -(2**65)},  # beyond 64 bits: orjson refuses, the standard library writes
    {"1": "a string key", "nested": [{"k": [[]]}]},
]


@pytest.mark.both_databases
async def test_json_values_read_back_as_written(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(models.AuditEvent),
                [
                    {"actor": "user:a", "channel": "api", "action": "test", "target": f"t/{i}", "details": v}
                    for i, v in enumerate(VALUES)
                ],
            )
        # And one the ORM writes, keys that are not strings included (the standard library's way).
        sessions = db.create_sessionmaker(engine)
        async with sessions.begin() as session:
            session.add(
                models.AuditEvent(
                    actor="user:a", channel="api", action="test", target="orm", details={1: "one", "two": 2}
                )
            )
        async with engine.connect() as conn:
            read = dict(
                (await conn.execute(select(models.AuditEvent.target, models.AuditEvent.details))).all()
            )
            stored = (
                await conn.execute(text("SELECT details FROM audit_events WHERE target = 't/2'"))
            ).scalar_one()
    finally:
        await engine.dispose()
    assert [read[f"t/{i}"] for i in range(len(VALUES))] == VALUES
    assert read["orm"] == {"1": "one", "two": 2}  # as json.dumps writes an int key
    # The database holds valid JSON of the same value (PostgreSQL may hand it back parsed).
    assert (json.loads(stored) if isinstance(stored, str) else stored) == VALUES[2]


@dataclasses.dataclass
class _Thing:
    name: str


@pytest.mark.parametrize("value", [{"at": dt.datetime.now(dt.UTC)}, {"thing": _Thing(name="x")}, {"s": {1}}])
async def test_what_json_refused_is_still_refused(settings: Settings, value: dict[str, Any]) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        with pytest.raises(StatementError, match="not JSON serializable"):
            async with engine.begin() as conn:
                await conn.execute(
                    insert(models.AuditEvent),
                    {"actor": "user:a", "channel": "api", "action": "test", "target": "t", "details": value},
                )
    finally:
        await engine.dispose()
