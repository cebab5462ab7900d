"""service marks: from when Art. 14 mails are recorded as evidence

Revision ID: 0007
Revises: 0006
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    marks = op.create_table(
        "service_marks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_marks")),
    )
    # The code before this revision sent the Art. 14 mail but recorded no evidence of it:
    # from now on it does. Contacts imported earlier cannot be called uninformed for lack
    # of evidence. On a fresh database this is its creation time, and nothing is earlier.
    now = datetime.now(UTC).replace(tzinfo=None)
    op.bulk_insert(marks, [{"name": "art14_evidence_since", "at": now}])


def downgrade():
    op.drop_table("service_marks")
