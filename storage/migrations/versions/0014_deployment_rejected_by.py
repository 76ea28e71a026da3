"""who rejected a deploy, a column of its own

A rejection was recorded only in the deployment's error text ("rejected by bob"), which
core.deploys.rejected_by parsed back: a name with the separator in it, a reworded or translated
message broke it, and no query could ask for the deploys someone rejected.  deployments.rejected_by
holds the rejecter's subject, as approved_by holds the approver's.

Existing rejections are filled in from the audit log, not from the error text: the text holds the
rejecter's display name (a Slack user name, say), not the subject the column holds, and cannot be
turned into one.  Every rejection since the first schema wrote a `deploy.reject` audit row with the
subject and {"deployment": id} in the same transaction, and the audit log is never pruned; where a
deployment's id was used again (SQLite reuses the highest rowid once its row is deleted), the newest
row for that id is the current deployment's own rejection.  A rejected row with no audit row keeps the
column NULL and core.deploys.rejected_by still reads its error text.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# How a rejection reads in the error text (core.protection.REJECTED_BY).
_REJECTED_BY = "rejected by "


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch "recreate" (see 0002): nullable, no default, no table rewrite.
    op.add_column("deployments", sa.Column("rejected_by", sa.String(length=200), nullable=True))
    _backfill()


def _backfill() -> None:
    bind = op.get_bind()
    audit = sa.table(
        "audit_events",
        sa.column("id", _ID),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("details", sa.JSON),
    )
    # One read of the rejections' audit rows (JSON decoded by SQLAlchemy on both databases), oldest
    # first, so a later row for the same deployment id wins.
    rejecters: dict[int, str] = {}
    for actor, details in bind.execute(
        sa.select(audit.c.actor, audit.c.details)
        .where(audit.c.action == "deploy.reject")
        .order_by(audit.c.id)
    ):
        deployment = details.get("deployment") if isinstance(details, dict) else None
        if isinstance(deployment, int) and not isinstance(deployment, bool):
            rejecters[deployment] = actor
    if not rejecters:
        return
    deployments = sa.table(
        "deployments",
        sa.column("id", _ID),
        sa.column("status", sa.String),
        sa.column("error", sa.Text),
        sa.column("rejected_by", sa.String),
    )
    # Only rows that read as rejected today: cancelled, with the rejection's words.
    bind.execute(
        deployments.update()
        .where(
            deployments.c.id == sa.bindparam("deployment"),
            deployments.c.status == "cancelled",
            deployments.c.rejected_by.is_(None),
            sa.func.substr(deployments.c.error, 1, len(_REJECTED_BY)) == _REJECTED_BY,
        )
        .values(rejected_by=sa.bindparam("actor")),
        [{"deployment": deployment, "actor": actor[:200]} for deployment, actor in rejecters.items()],
    )


def downgrade() -> None:
    # DROP COLUMN in place (SQLite 3.35+); the error text still says who rejected each deploy.
    op.drop_column("deployments", "rejected_by")
