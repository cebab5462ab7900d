"""the dashboard's customers and legitimate-interest contacts each get a small index

The overview counts the customers whose review is due and the contacts held on legitimate
interest (apart from consenting subscribers, and those not yet informed under Art. 14). Neither
``relationship`` nor ``lawful_basis`` was in an index, so each of those figures walked the whole
subscriptions table: about a fifth of a second each at a million rows on SQLite. Each index is
partial: it holds only the rows its condition admits (``app/models.py``), so a consenting
subscriber, nearly every row, is in neither and costs them nothing to write.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CUSTOMER = sa.text("relationship = 'customer'")
HELD_ON_INTEREST = sa.text("lawful_basis = 'legitimate_interest' AND status = 'subscribed'")


def upgrade():
    op.create_index(
        "ix_subscriptions_customer_review",
        "subscriptions",
        ["notice", "reviewed_at", "created_at"],
        sqlite_where=CUSTOMER,
        postgresql_where=CUSTOMER,
    )
    op.create_index(
        "ix_subscriptions_interest_held",
        "subscriptions",
        ["notice", "status", "confirmed_at"],
        sqlite_where=HELD_ON_INTEREST,
        postgresql_where=HELD_ON_INTEREST,
    )


def downgrade():
    op.drop_index("ix_subscriptions_interest_held", table_name="subscriptions")
    op.drop_index("ix_subscriptions_customer_review", table_name="subscriptions")
