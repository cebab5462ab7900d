"""users and API tokens belong to notices' controllers; data requests remember their link;
the ledger head carries a keyed signature

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # Existing accounts and tokens belong to no notice until an admin says which: they
    # see nothing rather than everything (there is no implicit "all").
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("notices", sa.String(length=200), nullable=False, server_default=""))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("notices", sa.String(length=200), nullable=False, server_default=""))
    with op.batch_alter_table("data_requests") as batch:
        batch.add_column(sa.Column("link", sa.String(length=64), nullable=True))
    op.create_index("ix_data_requests_link_created_at", "data_requests", ["link", "created_at"])
    with op.batch_alter_table("ledger_head") as batch:
        batch.add_column(sa.Column("signature", sa.String(length=64), nullable=True))
    # Reasons stored before the service reduced them to its own words may quote a provider's
    # answer naming the member ("x@y was permanently deleted"): keep only the error's kind.
    bind = op.get_bind()
    jobs = sa.table("outbox_jobs", sa.column("id", sa.Integer), sa.column("last_error", sa.String))
    quoted = bind.execute(sa.select(jobs.c.id, jobs.c.last_error).where(jobs.c.last_error.like("%@%"))).all()
    for job_id, reason in quoted:
        kind = reason.split(":", 1)[0][:60]
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(last_error=kind))


def downgrade():
    with op.batch_alter_table("ledger_head") as batch:
        batch.drop_column("signature")
    op.drop_index("ix_data_requests_link_created_at", table_name="data_requests")
    with op.batch_alter_table("data_requests") as batch:
        batch.drop_column("link")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("notices")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("notices")
