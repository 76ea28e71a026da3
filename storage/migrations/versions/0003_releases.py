"""releases: current revision, versioned secrets, registries, auto-rollback, release command

Existing apps: the current revision becomes the newest revision that a succeeded deploy ran (none
when nothing succeeded yet), and apps.image follows it (a failed deploy used to overwrite it).  Secret versions start at 0 here: encrypting today's values into a first
version needs the master key, so core does it the first time it needs a version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "secret_versions",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data_enc", sa.LargeBinary(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_secret_versions_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_versions")),
        sa.UniqueConstraint("app_id", "version", name=op.f("uq_secret_versions_app_id")),
    )
    with op.batch_alter_table("secret_versions") as batch_op:
        batch_op.create_index(batch_op.f("ix_secret_versions_app_id"), ["app_id"], unique=False)

    op.create_table(
        "registries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("project_id", _ID, nullable=True),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("password_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_registries_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registries")),
        sa.UniqueConstraint("host", "project_id", name=op.f("uq_registries_host")),
    )
    with op.batch_alter_table("registries") as batch_op:
        batch_op.create_index(batch_op.f("ix_registries_project_id"), ["project_id"], unique=False)

    # Plain ADD COLUMN, never a batch "recreate": on SQLite (foreign keys on) recreating `apps` drops
    # the old table, and ON DELETE CASCADE would empty deployments, revisions, secrets and previews.
    op.add_column("apps", sa.Column("current_revision_id", _ID, nullable=True))
    op.add_column("apps", sa.Column("auto_rollback", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column("apps", sa.Column("release_command", sa.String(length=1000), nullable=True))
    op.add_column("apps", sa.Column("secrets_version", sa.Integer(), server_default="0", nullable=False))
    op.add_column("revisions", sa.Column("secrets_version", sa.Integer(), nullable=True))
    op.add_column("deployments", sa.Column("rolled_back_by_id", _ID, nullable=True))

    # What runs today is the newest revision a succeeded (non-preview) deploy ran.
    op.execute(
        """
        UPDATE apps SET current_revision_id = (
            SELECT d.revision_id FROM deployments d
            WHERE d.app_id = apps.id AND d.status = 'succeeded' AND d.preview_id IS NULL
              AND d.revision_id IS NOT NULL
            ORDER BY d.finished_at DESC, d.id DESC LIMIT 1
        )
        """
    )
    # apps.image now follows the current revision; before, a failed deploy had already written its image.
    op.execute(
        """
        UPDATE apps SET image = (SELECT r.image FROM revisions r WHERE r.id = apps.current_revision_id)
        WHERE current_revision_id IS NOT NULL
        """
    )


def downgrade() -> None:
    # DROP COLUMN in place (SQLite 3.35+), for the same reason as above.
    op.drop_column("deployments", "rolled_back_by_id")
    op.drop_column("revisions", "secrets_version")
    op.drop_column("apps", "secrets_version")
    op.drop_column("apps", "release_command")
    op.drop_column("apps", "auto_rollback")
    op.drop_column("apps", "current_revision_id")
    op.drop_table("registries")
    op.drop_table("secret_versions")
