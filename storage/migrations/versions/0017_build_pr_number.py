"""builds of pull requests: the pull request a build was queued for

A pull request of an app that builds from source queues the build of its head commit for its
preview (core.previews).  `pr_number` names that pull request (NULL: a push to the tracked branch,
whose success deploys the app itself); one nullable column, no table rewrite.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("pr_number", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("builds", "pr_number")
