"""usage_samples: what each app's pods used, sampled periodically (core.usage_history)

One row per app and sampling slot: the totals over its pods (pod count, CPU millicores, memory bytes)
at the slot's start.  Unique (app_id, sampled_at): replicas sampling the same slot store one row, and
the same index answers "this app's samples since T".  Deleted with the app; pruned by retention.
A new table only: nothing existing is touched.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 03:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_samples",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("sampled_at", _TS, nullable=False),
        sa.Column("pods", sa.Integer(), nullable=False),
        sa.Column("cpu_millicores", sa.Float(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_usage_samples_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_samples")),
        sa.UniqueConstraint("app_id", "sampled_at", name=op.f("uq_usage_samples_app_id")),
    )
    # Retention deletes by age across apps.
    op.create_index(op.f("ix_usage_samples_sampled_at"), "usage_samples", ["sampled_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_samples_sampled_at"), table_name="usage_samples")
    op.drop_table("usage_samples")
