"""a subscription's unique key leads with the address hash; its single-column index goes

``(email_hash, notice)`` answers the lookups of an address under one notice and across
all of them, which ``ix_subscriptions_email_hash`` answered before: one index fewer to
write at a random place for each new subscription.

SQLite cannot drop a constraint of its table: the table is rebuilt (a few seconds for a
million subscriptions). PostgreSQL builds the new key before it drops the old one.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint("uq_subscriptions_email_hash_notice", "subscriptions", ["email_hash", "notice"])
        op.drop_constraint("uq_subscriptions_notice_email_hash", "subscriptions", type_="unique")
        op.drop_index("ix_subscriptions_email_hash", table_name="subscriptions")
        return
    op.drop_index("ix_subscriptions_email_hash", table_name="subscriptions")
    with op.batch_alter_table("subscriptions", recreate="always") as batch:
        batch.drop_constraint("uq_subscriptions_notice_email_hash", type_="unique")
        batch.create_unique_constraint("uq_subscriptions_email_hash_notice", ["email_hash", "notice"])


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint("uq_subscriptions_notice_email_hash", "subscriptions", ["notice", "email_hash"])
        op.drop_constraint("uq_subscriptions_email_hash_notice", "subscriptions", type_="unique")
    else:
        with op.batch_alter_table("subscriptions", recreate="always") as batch:
            batch.drop_constraint("uq_subscriptions_email_hash_notice", type_="unique")
            batch.create_unique_constraint("uq_subscriptions_notice_email_hash", ["notice", "email_hash"])
    op.create_index("ix_subscriptions_email_hash", "subscriptions", ["email_hash"])
