"""app names unique per environment, not globally

An app defined in staging and production has one row in each, so `web` may now appear once per
environment.  Every app row belongs to an environment (0011 gave each one), so environment_id
becomes NOT NULL.  That all rows of one name share a project is kept by core (apps.create).

On SQLite this rebuilds the apps table; storage.migrate runs it with foreign keys off so the old
table's children (secrets, revisions, deployments) are not cascade-deleted, then checks them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    bind = op.get_bind()
    # Any app row still without an environment (written between 0011 and now by old code) joins
    # its project's first environment.
    bind.execute(
        sa.text(
            "UPDATE apps SET environment_id = (SELECT e.id FROM environments e WHERE e.project_id = apps.project_id "
            "ORDER BY e.position, e.id LIMIT 1) WHERE environment_id IS NULL"
        )
    )
    with op.batch_alter_table(
        "apps", recreate="always" if bind.dialect.name == "sqlite" else "auto"
    ) as batch:
        batch.drop_constraint("uq_apps_name", type_="unique")
        batch.alter_column("environment_id", existing_type=_ID, nullable=False)
        batch.create_unique_constraint("uq_apps_environment_id", ["environment_id", "name"])


def downgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table(
        "apps", recreate="always" if bind.dialect.name == "sqlite" else "auto"
    ) as batch:
        batch.drop_constraint("uq_apps_environment_id", type_="unique")
        batch.alter_column("environment_id", existing_type=_ID, nullable=True)
        batch.create_unique_constraint("uq_apps_name", ["name"])
