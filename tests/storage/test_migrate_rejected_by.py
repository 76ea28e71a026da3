"""Migration 0014 on a database written by 0013: deployments get a rejected_by column, filled in for
earlier rejections from the audit row each one wrote (the rejecter's subject), never from the error
text (a display name); a rejection with no audit row keeps NULL and is still read from its text."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, deploys
from core.identity import Actor
from shipit.settings import Settings
from storage import db, migrate, models
from tests.storage.old_rows import web_in_production

pytestmark = pytest.mark.both_databases

BOB = Actor(subject="slack:U0BOB0001", channel="slack", display="bob")
ERIN = Actor(subject="github:erin", channel="github", display="erin")
DAVE = Actor(subject="user:dave", channel="api", display="dave")
GONE = Actor(subject="user:gone", channel="api", display="gone")

# id -> (status, error): what 0013's code left behind.
ROWS: dict[int, tuple[str, str | None]] = {
    1: (
        "cancelled",
        "rejected by bob",
    ),  # rejected from Slack: the text has the name, the audit row the subject
    2: ("cancelled", "rejected by carol"),  # rejected, but no audit row for it
    3: ("cancelled", "approval expired"),  # expiry is no rejection
    4: ("cancelled", "cancelled by dave"),  # nor is a cancel
    5: ("cancelled", "rejected by erin"),  # its id was used before, by a deploy someone else rejected
    6: ("succeeded", None),  # its id too: the audit row is the earlier deploy's, not this one's
}


def _audit(actor: Actor, action: str, details: dict[str, Any]) -> dict[str, Any]:
    # The row exactly as core.audit writes it (core.deploys.approve: details={"deployment": id}).
    return audit.row(actor=actor, action=action, target="app/web", project_id=1, details=details)


async def test_upgrade_fills_in_rejected_by_from_the_audit_log(settings: Settings) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, revision="0013")
        async with engine.begin() as conn:
            await web_in_production(conn, settings=settings)
            web = (await conn.execute(text("SELECT id FROM apps WHERE name = 'web'"))).scalar_one()
            for deployment_id, (status, error) in ROWS.items():
                await conn.execute(
                    text(
                        "INSERT INTO deployments (id, app_id, revision_number, image, namespace, trigger, actor, "
                        "status, error, logs, ready, desired, notify_refs, created_at) VALUES (:id, :a, 1, "
                        "'img', 'acme-web', 'slack', 'slack:U0ALICE01', :s, :e, '[]', 0, 0, '{}', "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"id": deployment_id, "a": web, "s": status, "e": error},
                )
            await conn.execute(
                insert(cast(Table, models.AuditEvent.__table__)),
                [
                    _audit(GONE, "deploy.reject", {"deployment": 5}),  # the earlier deploy #5
                    _audit(GONE, "deploy.reject", {"deployment": 6}),  # the earlier deploy #6
                    _audit(BOB, "deploy.reject", {"deployment": 1}),
                    _audit(DAVE, "deploy.cancel", {"deployment": 4}),
                    _audit(ERIN, "deploy.reject", {"deployment": 5}),  # the newest for #5: this #5's
                    _audit(DAVE, "deploy.reject", {}),  # nothing to go by: ignored
                    _audit(DAVE, "deploy.reject", {"deployment": "3"}),  # not an id: ignored
                ],
            )
        await migrate.upgrade(engine, revision="0014")  # this migration's own work, whatever follows it
        assert await migrate.current(engine) == "0014"
        async with engine.connect() as conn:
            filled = dict(
                (await conn.execute(text("SELECT id, rejected_by FROM deployments ORDER BY id"))).all()
            )
            errors = dict((await conn.execute(text("SELECT id, error FROM deployments ORDER BY id"))).all())
        async with AsyncSession(engine) as session:
            rows = await session.scalars(select(models.Deployment).order_by(models.Deployment.id))
            answered = {d.id: deploys.rejected_by(d) for d in rows}
    finally:
        await engine.dispose()
    assert filled == {1: BOB.subject, 2: None, 3: None, 4: None, 5: ERIN.subject, 6: None}
    assert errors == {i: error for i, (_, error) in ROWS.items()}, "the error text is left as it was"
    # What core answers: the column, else (no audit row to fill it from) the name in the error text.
    assert answered == {1: BOB.subject, 2: "carol", 3: None, 4: None, 5: ERIN.subject, 6: None}
