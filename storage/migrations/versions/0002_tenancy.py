"""tenancy: cluster grants, namespace claims, fork previews

Existing apps keep working: each (cluster, namespace) already used by an app is claimed by that app's
project (the first app's, where two projects shared one) and the project is granted the cluster.
Preview namespaces are claimed as created by shipit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cluster_grants",
        sa.Column("id", _ID, nullable=False),
        sa.Column("cluster_id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["clusters.id"],
            name=op.f("fk_cluster_grants_cluster_id_clusters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_cluster_grants_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_grants")),
        sa.UniqueConstraint("cluster_id", "project_id", name=op.f("uq_cluster_grants_cluster_id")),
    )
    with op.batch_alter_table("cluster_grants") as batch_op:
        batch_op.create_index(batch_op.f("ix_cluster_grants_cluster_id"), ["cluster_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cluster_grants_project_id"), ["project_id"], unique=False)

    op.create_table(
        "namespace_claims",
        sa.Column("id", _ID, nullable=False),
        sa.Column("cluster_id", _ID, nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["clusters.id"],
            name=op.f("fk_namespace_claims_cluster_id_clusters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_namespace_claims_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_namespace_claims")),
        sa.UniqueConstraint("cluster_id", "namespace", name=op.f("uq_namespace_claims_cluster_id")),
    )
    with op.batch_alter_table("namespace_claims") as batch_op:
        batch_op.create_index(batch_op.f("ix_namespace_claims_cluster_id"), ["cluster_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_namespace_claims_project_id"), ["project_id"], unique=False)

    # Plain ADD COLUMN, never a batch "recreate": on SQLite (foreign keys on) recreating a table drops
    # the old one, and ON DELETE CASCADE / SET NULL would reach every row that points at it.
    op.add_column(
        "apps", sa.Column("previews_from_forks", sa.String(length=8), server_default="never", nullable=False)
    )
    op.add_column("previews", sa.Column("head_repo", sa.String(length=200), nullable=True))
    op.add_column("previews", sa.Column("is_fork", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("previews", sa.Column("approved_by", sa.String(length=200), nullable=True))

    # Keep today's apps where they are: their project claims the namespaces it already uses.
    op.execute(
        """
        INSERT INTO namespace_claims (cluster_id, namespace, project_id, origin, created_by, created_at)
        SELECT a.cluster_id, a.namespace, a.project_id, 'granted', 'migration', CURRENT_TIMESTAMP
        FROM apps a
        WHERE a.id = (SELECT MIN(b.id) FROM apps b
                      WHERE b.cluster_id = a.cluster_id AND b.namespace = a.namespace)
        """
    )
    op.execute(
        """
        INSERT INTO namespace_claims (cluster_id, namespace, project_id, origin, created_by, created_at)
        SELECT DISTINCT a.cluster_id, p.namespace, a.project_id, 'created', 'migration', CURRENT_TIMESTAMP
        FROM previews p JOIN apps a ON a.id = p.app_id
        WHERE p.closed_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM namespace_claims c
                          WHERE c.cluster_id = a.cluster_id AND c.namespace = p.namespace)
        """
    )
    op.execute(
        """
        INSERT INTO cluster_grants (cluster_id, project_id, created_by, created_at)
        SELECT DISTINCT cluster_id, project_id, 'migration', CURRENT_TIMESTAMP FROM apps
        """
    )


def downgrade() -> None:
    # DROP COLUMN in place (SQLite 3.35+), for the same reason as above.
    op.drop_column("previews", "approved_by")
    op.drop_column("previews", "is_fork")
    op.drop_column("previews", "head_repo")
    op.drop_column("apps", "previews_from_forks")
    op.drop_table("namespace_claims")
    op.drop_table("cluster_grants")
