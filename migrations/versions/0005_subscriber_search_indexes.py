"""subscriber search in address order, byte-wise on PostgreSQL; a notice-only list index

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        # A locale collation (en_US, sv_SE) orders "anna.b" among "annab...", so a prefix
        # range would miss addresses; "C" compares bytes, as SQLite does.
        op.alter_column(
            "subscriptions", "email", type_=sa.String(length=254, collation="C"), existing_nullable=False
        )
    op.drop_index("ix_subscriptions_email", table_name="subscriptions")
    op.create_index("ix_subscriptions_email_id", "subscriptions", ["email", "id"])
    op.create_index("ix_subscriptions_notice_id", "subscriptions", ["notice", "id"])


def downgrade():
    op.drop_index("ix_subscriptions_notice_id", table_name="subscriptions")
    op.drop_index("ix_subscriptions_email_id", table_name="subscriptions")
    op.create_index("ix_subscriptions_email", "subscriptions", ["email"])
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("subscriptions", "email", type_=sa.String(length=254), existing_nullable=False)
