"""the dashboard's queue figures read one index range each

The overview counted a notice's jobs by state, found its oldest waiting opt-out and its jobs
waiting for a setting by walking the queue: after a million-row import, 850,000 sync jobs,
about 0.4 s of every visit on SQLite. ``(notice, state, last_error, kind)`` gives each count a
range of its own (the dashboard stops counting at 10,000) and starts the waiting jobs' range at
their reason; ``(kind, state, notice)`` replaces ``(kind, state)``, which it still serves, and
gives a notice's oldest opt-out as the first entry of its range.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_outbox_jobs_notice_state", "outbox_jobs", ["notice", "state", "last_error", "kind"])
    op.create_index("ix_outbox_jobs_kind_state_notice", "outbox_jobs", ["kind", "state", "notice"])
    op.drop_index("ix_outbox_jobs_kind_state", table_name="outbox_jobs")


def downgrade():
    op.create_index("ix_outbox_jobs_kind_state", "outbox_jobs", ["kind", "state"])
    op.drop_index("ix_outbox_jobs_kind_state_notice", table_name="outbox_jobs")
    op.drop_index("ix_outbox_jobs_notice_state", table_name="outbox_jobs")
