"""queued jobs of one kind are found by their kind and state

An erasure cancels the person's sign-ups still waiting in the outbox. They were found as
"every pending job", and SQLite, which keeps no statistics, walked them through
``ix_outbox_jobs_due``: after an import, hundreds of thousands of sync jobs, while the
erasure held the write lock. ``(kind, state)`` reaches the few waiting sign-ups directly.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_outbox_jobs_kind_state", "outbox_jobs", ["kind", "state"])


def downgrade():
    op.drop_index("ix_outbox_jobs_kind_state", table_name="outbox_jobs")
