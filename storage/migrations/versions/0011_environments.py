"""environments, persons and identities, multi-approval, image policies, notification targets

Every project gets one environment, "production", and each existing app moves into it; its cluster
and namespace are those of the project's first app.  The project's Slack channel, outgoing webhook
and (where an app has a repository) GitHub become notification target rows; the webhook secret is
copied encrypted as it is (same purpose string, so no key is needed here).  The old project columns
stay readable for a downgrade but are no longer the source of truth once targets are read.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    for column in (
        sa.Column("locked_reason", sa.String(length=500), nullable=True),
        sa.Column("locked_by", sa.String(length=200), nullable=True),
        sa.Column("locked_at", _TS, nullable=True),
        sa.Column("locked_until", _TS, nullable=True),
    ):
        op.add_column("projects", column)

    op.create_table(
        "environments",
        sa.Column("id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("cluster_id", _ID, nullable=True),
        sa.Column("namespace", sa.String(length=63), nullable=True),
        sa.Column("protected", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("required_approvals", sa.Integer(), server_default="1", nullable=False),
        sa.Column("approver_role", sa.String(length=16), server_default="deployer", nullable=False),
        sa.Column("approval_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("freezes", sa.JSON(), nullable=False),
        sa.Column("locked_reason", sa.String(length=500), nullable=True),
        sa.Column("locked_by", sa.String(length=200), nullable=True),
        sa.Column("locked_at", _TS, nullable=True),
        sa.Column("locked_until", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_environments_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_environments_cluster_id_clusters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environments")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_environments_project_id")),
    )
    op.create_index(op.f("ix_environments_project_id"), "environments", ["project_id"], unique=False)

    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot add a constraint to a table, but a column added with REFERENCES carries one
        # (and a batch rebuild of apps would cascade-delete its children with foreign keys on).
        op.execute("ALTER TABLE apps ADD COLUMN environment_id INTEGER REFERENCES environments (id)")
    else:
        op.add_column("apps", sa.Column("environment_id", _ID, nullable=True))
        op.create_foreign_key(
            op.f("fk_apps_environment_id_environments"), "apps", "environments", ["environment_id"], ["id"]
        )
    op.create_index(op.f("ix_apps_environment_id"), "apps", ["environment_id"], unique=False)

    op.create_table(
        "persons",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persons")),
    )
    op.create_table(
        "identities",
        sa.Column("id", _ID, nullable=False),
        sa.Column("person_id", _ID, nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("verified_by", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name=op.f("fk_identities_person_id_persons"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("subject", name=op.f("uq_identities_subject")),
    )
    op.create_index(op.f("ix_identities_person_id"), "identities", ["person_id"], unique=False)
    op.create_table(
        "identity_link_codes",
        sa.Column("id", _ID, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_link_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_identity_link_codes_code_hash")),
    )

    op.create_table(
        "deploy_approvals",
        sa.Column("id", _ID, nullable=False),
        sa.Column("deployment_id", _ID, nullable=False),
        sa.Column("person_key", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deploy_approvals_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deploy_approvals")),
        sa.UniqueConstraint("deployment_id", "person_key", name=op.f("uq_deploy_approvals_deployment_id")),
    )
    op.create_index(
        op.f("ix_deploy_approvals_deployment_id"), "deploy_approvals", ["deployment_id"], unique=False
    )

    op.create_table(
        "image_policies",
        sa.Column("id", _ID, nullable=False),
        sa.Column("app_id", _ID, nullable=False),
        sa.Column("repository", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("pattern", sa.String(length=300), nullable=False),
        sa.Column("sort", sa.String(length=16), nullable=False),
        sa.Column("poll_interval_seconds", sa.Integer(), nullable=True),
        sa.Column("next_poll_at", _TS, nullable=True),
        sa.Column("last_polled_at", _TS, nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_tag", sa.String(length=128), nullable=True),
        sa.Column("promote_to", sa.String(length=63), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_image_policies_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_policies")),
        sa.UniqueConstraint("app_id", name=op.f("uq_image_policies_app_id")),
    )
    op.create_index(op.f("ix_image_policies_repository"), "image_policies", ["repository"], unique=False)
    op.create_index(op.f("ix_image_policies_next_poll_at"), "image_policies", ["next_poll_at"], unique=False)

    op.create_table(
        "notification_targets",
        sa.Column("id", _ID, nullable=False),
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("format", sa.String(length=16), server_default="", nullable=False),
        sa.Column("events", sa.String(length=200), server_default="*", nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_success_at", _TS, nullable=True),
        sa.Column("last_failure_at", _TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_notification_targets_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_targets")),
    )
    op.create_index(
        op.f("ix_notification_targets_project_id"), "notification_targets", ["project_id"], unique=False
    )

    _move_data()


def _move_data() -> None:
    bind = op.get_bind()
    now = storage.models.utcnow()
    projects = bind.execute(
        sa.text("SELECT id, slack_channel, webhook_url, webhook_secret_enc FROM projects ORDER BY id")
    ).all()
    environments = sa.table(
        "environments",
        sa.column("project_id", _ID),
        sa.column("name", sa.String),
        sa.column("position", sa.Integer),
        sa.column("cluster_id", _ID),
        sa.column("namespace", sa.String),
        sa.column("windows", sa.JSON),
        sa.column("freezes", sa.JSON),
        sa.column("created_at", _TS),
    )
    targets = sa.table(
        "notification_targets",
        sa.column("project_id", _ID),
        sa.column("kind", sa.String),
        sa.column("address", sa.String),
        sa.column("secret_enc", sa.LargeBinary),
        sa.column("events", sa.String),
        sa.column("created_by", sa.String),
        sa.column("created_at", _TS),
    )
    for project_id, slack_channel, webhook_url, webhook_secret_enc in projects:
        first = bind.execute(
            sa.text("SELECT cluster_id, namespace FROM apps WHERE project_id = :p ORDER BY id LIMIT 1"),
            {"p": project_id},
        ).first()
        bind.execute(
            environments.insert().values(
                project_id=project_id,
                name="production",
                position=0,
                cluster_id=first[0] if first else None,
                namespace=first[1] if first else None,
                windows=[],
                freezes=[],
                created_at=now,
            )
        )
        env_id = bind.execute(
            sa.text("SELECT id FROM environments WHERE project_id = :p AND name = 'production'"),
            {"p": project_id},
        ).scalar_one()
        bind.execute(
            sa.text("UPDATE apps SET environment_id = :e WHERE project_id = :p"),
            {"e": env_id, "p": project_id},
        )
        rows = []
        if slack_channel:
            rows.append({"kind": "slack", "address": slack_channel, "secret_enc": None})
        if webhook_url:
            rows.append({"kind": "webhook", "address": webhook_url, "secret_enc": webhook_secret_enc})
        has_repo = bind.execute(
            sa.text("SELECT 1 FROM apps WHERE project_id = :p AND git_repo IS NOT NULL LIMIT 1"),
            {"p": project_id},
        ).first()
        if has_repo:
            # GitHub reports to each app's own repository: the address is not a place but "the app's repo".
            rows.append({"kind": "github", "address": "", "secret_enc": None})
        for row in rows:
            bind.execute(
                targets.insert().values(
                    project_id=project_id, events="*", created_by="migration", created_at=now, **row
                )
            )


def downgrade() -> None:
    op.drop_table("notification_targets")
    op.drop_table("image_policies")
    op.drop_table("deploy_approvals")
    op.drop_table("identity_link_codes")
    op.drop_table("identities")
    op.drop_table("persons")
    op.drop_index(op.f("ix_apps_environment_id"), table_name="apps")
    op.drop_column("apps", "environment_id")
    op.drop_table("environments")
    for name in ("locked_until", "locked_at", "locked_by", "locked_reason"):
        op.drop_column("projects", name)
