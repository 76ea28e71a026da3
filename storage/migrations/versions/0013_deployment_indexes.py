"""indexes for a deploy request's look-ups of its app's deployments

A deploy request numbers its revision (the app's highest deploy number), counts the running deploys
of its target, supersedes the queued ones, and pruning asks which revisions a pending or running deploy
still uses.  With only (app_id) indexed, each of these read every deployment the app ever had: a cost
per request that grew with the app's history (issue 13: a push that deploys went from 3.1 to 4.7 ms of
CPU between 768 and 5,248 deploys of one app).  And a pruned revision sets its deployments'
revision_id NULL (ON DELETE SET NULL): without an index on it, every prune scanned the whole table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 01:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_deployments_app_number", "deployments", ["app_id", "revision_number"])
    op.create_index("ix_deployments_app_status", "deployments", ["app_id", "status", "namespace"])
    op.create_index("ix_deployments_revision_id", "deployments", ["revision_id"])


def downgrade() -> None:
    op.drop_index("ix_deployments_revision_id", table_name="deployments")
    op.drop_index("ix_deployments_app_status", table_name="deployments")
    op.drop_index("ix_deployments_app_number", table_name="deployments")
