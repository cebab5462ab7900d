"""evidence written pending, chained later by the sequencer

Consent events get an ``id`` of their own, allocated when they are written; ``seq``,
``prev_hash`` and ``hash`` stay empty until the sequencer chains the event, and a pending
event carries a keyed ``content_hash``. Event details hang off the event's ``id``. Every
event already written keeps its place: its ``id`` is its ``seq``. The hash is no longer
unique by constraint (``seq`` is, and the chain links each event to the one before).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

EVENT_COLUMNS = "at, type, notice, notice_version, subscription_ref, channel, facts, details_digest, prev_hash, hash"


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()
    op.create_index(
        "ix_consent_events_pending",
        "consent_events",
        ["id"],
        sqlite_where=sa.text("seq IS NULL"),
        postgresql_where=sa.text("seq IS NULL"),
    )


def _upgrade_postgresql():
    for statement in (
        "ALTER TABLE event_details DROP CONSTRAINT fk_event_details_seq_consent_events",
        "ALTER TABLE event_details RENAME COLUMN seq TO event_id",
        "ALTER TABLE consent_events ADD COLUMN id integer",
        "UPDATE consent_events SET id = seq",
        "ALTER TABLE consent_events ALTER COLUMN id SET NOT NULL",
        "ALTER TABLE consent_events DROP CONSTRAINT pk_consent_events",
        "ALTER TABLE consent_events ADD CONSTRAINT pk_consent_events PRIMARY KEY (id)",
        "ALTER TABLE consent_events ADD CONSTRAINT uq_consent_events_seq UNIQUE (seq)",
        "ALTER TABLE consent_events DROP CONSTRAINT uq_consent_events_hash",
        "ALTER TABLE consent_events ALTER COLUMN seq DROP NOT NULL",
        "ALTER TABLE consent_events ALTER COLUMN prev_hash DROP NOT NULL",
        "ALTER TABLE consent_events ALTER COLUMN hash DROP NOT NULL",
        "ALTER TABLE consent_events ADD COLUMN content_hash varchar(64)",
        "CREATE SEQUENCE consent_event_ids OWNED BY consent_events.id",
        "SELECT setval('consent_event_ids', (SELECT coalesce(max(id), 0) + 1 FROM consent_events), false)",
        "ALTER TABLE consent_events ALTER COLUMN id SET DEFAULT nextval('consent_event_ids')",
        "ALTER TABLE event_details ADD CONSTRAINT fk_event_details_event_id_consent_events "
        "FOREIGN KEY (event_id) REFERENCES consent_events (id)",
    ):
        op.execute(statement)


def _upgrade_sqlite():
    """SQLite cannot change a primary key or a NOT NULL in place: both tables are rebuilt."""
    op.drop_index("ix_consent_events_ref_type_at", table_name="consent_events")
    op.drop_index("ix_consent_events_notice_type_at", table_name="consent_events")
    op.drop_index("ix_event_details_subscription_ref", table_name="event_details")
    op.create_table(
        "consent_events_new",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("notice", sa.String(length=32), nullable=True),
        sa.Column("notice_version", sa.String(length=64), nullable=True),
        sa.Column("subscription_ref", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=24), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("details_digest", sa.String(length=64), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_consent_events"),
        sa.UniqueConstraint("seq", name="uq_consent_events_seq"),
    )
    op.execute(
        f"INSERT INTO consent_events_new (id, seq, {EVENT_COLUMNS}) SELECT seq, seq, {EVENT_COLUMNS} FROM consent_events"
    )
    op.create_table(
        "event_details_new",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("subscription_ref", sa.String(length=32), nullable=True),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["consent_events_new.id"], name="fk_event_details_event_id_consent_events"
        ),
        sa.PrimaryKeyConstraint("event_id", name="pk_event_details"),
    )
    op.execute(
        "INSERT INTO event_details_new (event_id, subscription_ref, salt, details) "
        "SELECT seq, subscription_ref, salt, details FROM event_details"
    )
    op.drop_table("event_details")
    op.drop_table("consent_events")
    # SQLite rewrites the reference in event_details_new as its parent is renamed.
    op.rename_table("consent_events_new", "consent_events")
    op.rename_table("event_details_new", "event_details")
    op.create_index("ix_consent_events_ref_type_at", "consent_events", ["subscription_ref", "type", "at"])
    op.create_index("ix_consent_events_notice_type_at", "consent_events", ["notice", "type", "at"])
    op.create_index("ix_event_details_subscription_ref", "event_details", ["subscription_ref"])


def downgrade():
    """Back to chained events only: refused while an event is still waiting for its place."""
    bind = op.get_bind()
    pending = bind.execute(sa.text("SELECT count(*) FROM consent_events WHERE seq IS NULL")).scalar()
    if pending:
        raise RuntimeError(f"{pending} evidence events are not chained yet: run `ledger sequence` first")
    renumbered = bind.execute(sa.text("SELECT count(*) FROM consent_events WHERE id <> seq")).scalar()
    op.drop_index("ix_consent_events_pending", table_name="consent_events")
    if bind.dialect.name == "postgresql":
        for statement in (
            "ALTER TABLE event_details DROP CONSTRAINT fk_event_details_event_id_consent_events",
            # Details follow their event to its seq, the key they had before.
            "UPDATE event_details AS d SET event_id = -e.seq FROM consent_events AS e WHERE e.id = d.event_id"
            if renumbered
            else "SELECT 1",
            "UPDATE event_details SET event_id = -event_id" if renumbered else "SELECT 1",
            "ALTER TABLE event_details RENAME COLUMN event_id TO seq",
            "ALTER TABLE consent_events DROP CONSTRAINT pk_consent_events",
            "ALTER TABLE consent_events DROP CONSTRAINT uq_consent_events_seq",
            "ALTER TABLE consent_events DROP COLUMN id",
            "DROP SEQUENCE IF EXISTS consent_event_ids",  # gone with its column where it was owned
            "ALTER TABLE consent_events DROP COLUMN content_hash",
            "ALTER TABLE consent_events ALTER COLUMN seq SET NOT NULL",
            "ALTER TABLE consent_events ALTER COLUMN prev_hash SET NOT NULL",
            "ALTER TABLE consent_events ALTER COLUMN hash SET NOT NULL",
            "ALTER TABLE consent_events ADD CONSTRAINT pk_consent_events PRIMARY KEY (seq)",
            "ALTER TABLE consent_events ADD CONSTRAINT uq_consent_events_hash UNIQUE (hash)",
            "ALTER TABLE event_details ADD CONSTRAINT fk_event_details_seq_consent_events "
            "FOREIGN KEY (seq) REFERENCES consent_events (seq)",
        ):
            op.execute(statement)
        return
    op.drop_index("ix_consent_events_ref_type_at", table_name="consent_events")
    op.drop_index("ix_consent_events_notice_type_at", table_name="consent_events")
    op.drop_index("ix_event_details_subscription_ref", table_name="event_details")
    op.create_table(
        "consent_events_old",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("notice", sa.String(length=32), nullable=True),
        sa.Column("notice_version", sa.String(length=64), nullable=True),
        sa.Column("subscription_ref", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=24), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("details_digest", sa.String(length=64), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_consent_events"),
        sa.UniqueConstraint("hash", name="uq_consent_events_hash"),
    )
    op.execute(f"INSERT INTO consent_events_old (seq, {EVENT_COLUMNS}) SELECT seq, {EVENT_COLUMNS} FROM consent_events")
    op.create_table(
        "event_details_old",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("subscription_ref", sa.String(length=32), nullable=True),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["seq"], ["consent_events_old.seq"], name="fk_event_details_seq_consent_events"),
        sa.PrimaryKeyConstraint("seq", name="pk_event_details"),
    )
    op.execute(
        "INSERT INTO event_details_old (seq, subscription_ref, salt, details) "
        "SELECT e.seq, d.subscription_ref, d.salt, d.details FROM event_details AS d "
        "JOIN consent_events AS e ON e.id = d.event_id"
    )
    op.drop_table("event_details")
    op.drop_table("consent_events")
    op.rename_table("consent_events_old", "consent_events")
    op.rename_table("event_details_old", "event_details")
    op.create_index("ix_consent_events_ref_type_at", "consent_events", ["subscription_ref", "type", "at"])
    op.create_index("ix_consent_events_notice_type_at", "consent_events", ["notice", "type", "at"])
    op.create_index("ix_event_details_subscription_ref", "event_details", ["subscription_ref"])
