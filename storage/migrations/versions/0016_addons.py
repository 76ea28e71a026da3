"""add-ons: managed databases (PostgreSQL, Redis) per app

One row per add-on of an app row (so per environment), at most one of each kind; the password only
encrypted (core.addons).  A new table only: nothing existing is touched.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "addons",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("image", sa.String(length=500), nullable=False),
        sa.Column("secret_key", sa.String(length=253), nullable=False),
        sa.Column("password_enc", sa.LargeBinary(), nullable=False),
        sa.Column("delete_data", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_addons_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_addons")),
        sa.UniqueConstraint("app_id", "kind", name=op.f("uq_addons_app_id")),
    )
    op.create_index(op.f("ix_addons_app_id"), "addons", ["app_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_addons_app_id"), table_name="addons")
    op.drop_table("addons")
