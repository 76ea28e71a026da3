"""build from source: the app's build settings and a builds table

An app may build its images from the pushed commit instead of deploying an image CI built
(`build_enabled`, `build_context`, `build_image`).  Each build of a commit is a row of `builds`
(one per app and commit: a redelivered or repeated push never builds twice), kept for its status,
the detected pack, the pushed digest, a bounded tail of its log and the error.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch "recreate" (see 0002): a server default, no table rewrite.
    op.add_column("apps", sa.Column("build_enabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("apps", sa.Column("build_context", sa.String(length=255), nullable=True))
    op.add_column("apps", sa.Column("build_image", sa.String(length=512), nullable=True))
    op.create_table(
        "builds",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("app_id", _ID, sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pack", sa.String(length=16), nullable=True),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=True),
        sa.Column("deployment_id", _ID, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False, server_default="0"),
        sa.UniqueConstraint("app_id", "sha", name=op.f("uq_builds_app_id")),
    )
    op.create_index("ix_builds_app_status", "builds", ["app_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_builds_app_status", table_name="builds")
    op.drop_table("builds")
    op.drop_column("apps", "build_image")
    op.drop_column("apps", "build_context")
    op.drop_column("apps", "build_enabled")
