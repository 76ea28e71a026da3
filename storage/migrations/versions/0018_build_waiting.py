"""builds: the pull request comments whose `.deploy to ENV` waits for the build

`.deploy to ENV` on a pull request of an app that builds from source waits for the build of the head
commit when it is not built yet (core.pr_commands).  The comments waiting are kept on the build row
itself (a JSON list, NULL: none), so the builder that ends the build reads them under the lock it
already holds on that row; one nullable column, no table rewrite.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("waiting", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("builds", "waiting")
