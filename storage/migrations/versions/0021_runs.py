"""runs: the history of one-off runs (`shipit run`, core.runs), kept after their Jobs are gone

One row per run: who started it, the program (argv[0] only: the arguments may carry credentials, so
only their count is kept), the revision and image, its deadline, and how it ended (status, exit code,
the cluster's short reason).  Unique (app_id, name): a Job name is unique per app, and the same index
answers "this app's runs".  Deleted with the app; created_at is indexed for retention.
A new table only: nothing existing is touched.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 10:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("environment_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("program", sa.Text(), nullable=False),
        sa.Column("arg_count", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_runs_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_runs_environment_id_environments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("app_id", "name", name=op.f("uq_runs_app_id")),
    )
    # Retention deletes by age across apps.
    op.create_index(op.f("ix_runs_created_at"), "runs", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_created_at"), table_name="runs")
    op.drop_table("runs")
