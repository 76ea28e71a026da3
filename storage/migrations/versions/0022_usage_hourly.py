"""usage_hourly: hourly rollups of usage_samples (core.usage_history), for the 30-day window

One row per app and completed hour: the sample count, the sums (so a window's average is its sums over
its samples, exactly) and the peaks of the per-sample totals and per-pod figures.  Unique
(app_id, hour): replicas rolling up the same hour store one row, and the same index answers "this
app's hours since T".  Deleted with the app; hour is indexed for retention.
A new table only: nothing existing is touched.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 13:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("hour", _TS, nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_sum_millicores", sa.Float(), nullable=False),
        sa.Column("cpu_peak_millicores", sa.Float(), nullable=False),
        sa.Column("memory_sum_bytes", sa.Float(), nullable=False),
        sa.Column("memory_peak_bytes", sa.BigInteger(), nullable=False),
        sa.Column("max_pods", sa.Integer(), nullable=False),
        sa.Column("cpu_peak_per_pod", sa.Float(), nullable=False),
        sa.Column("memory_peak_per_pod", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_usage_hourly_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_hourly")),
        sa.UniqueConstraint("app_id", "hour", name=op.f("uq_usage_hourly_app_id")),
    )
    # Retention deletes by age across apps.
    op.create_index(op.f("ix_usage_hourly_hour"), "usage_hourly", ["hour"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_hourly_hour"), table_name="usage_hourly")
    op.drop_table("usage_hourly")
