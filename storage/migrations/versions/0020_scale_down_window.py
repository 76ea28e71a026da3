"""apps.scale_down_window: the HPA's downscale stabilization window, in seconds

NULL (every existing app) renders no `behavior` on the HorizontalPodAutoscaler, so Kubernetes' own
default (5 minutes) applies and the rendered HPA is what it was.  Revisions carry the value in their
JSON snapshot, which needs no migration.  One nullable column, no table rewrite.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 05:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("apps", sa.Column("scale_down_window", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("apps", "scale_down_window")
