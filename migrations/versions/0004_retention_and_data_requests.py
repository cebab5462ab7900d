"""retention facts on subscriptions, self-service data requests, the version index

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(
            sa.Column("relationship", sa.String(length=16), nullable=False, server_default="subscriber")
        )
        batch.add_column(sa.Column("last_contact_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_subscriptions_notice_version_id", "subscriptions", ["notice", "notice_version", "id"]
    )
    op.create_table(
        "data_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_requests")),
    )
    op.create_index("ix_data_requests_email_hash_created_at", "data_requests", ["email_hash", "created_at"])


def downgrade():
    op.drop_index("ix_data_requests_email_hash_created_at", table_name="data_requests")
    op.drop_table("data_requests")
    op.drop_index("ix_subscriptions_notice_version_id", table_name="subscriptions")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("reviewed_at")
        batch.drop_column("last_contact_at")
        batch.drop_column("relationship")
