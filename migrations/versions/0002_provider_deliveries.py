"""provider deliveries and report cursors

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "provider_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("notice", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_deliveries")),
        sa.UniqueConstraint("key", name=op.f("uq_provider_deliveries_key")),
    )
    op.create_index(op.f("ix_provider_deliveries_received_at"), "provider_deliveries", ["received_at"])
    op.create_table(
        "provider_cursors",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("cursor", sa.String(length=500), nullable=True),
        sa.Column("last_called_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_provider_cursors")),
    )


def downgrade():
    op.drop_table("provider_cursors")
    op.drop_index(op.f("ix_provider_deliveries_received_at"), table_name="provider_deliveries")
    op.drop_table("provider_deliveries")
