"""the database keeps the dashboard's counts of subscriptions as the rows change

The overview counted a million subscriptions by notice, status and version at every visit,
reading a million index entries twice (about a second). ``subscription_tallies`` holds rows of
changes instead, written by triggers on ``subscriptions``: every insert, delete, and change of
the notice, its version, the status or the lawful basis, whatever statement made it. A count
is the sum of its rows; ``app/tallies.py`` folds them to one row a key now and then.

- PostgreSQL: inserts and deletes are counted once a statement, from its transition table
  (a COPY of 100,000 contacts adds a row or two, not 100,000); a change is counted once a row,
  and only when one of the four columns really changed. Every trigger appends and never
  updates, so concurrent opt-outs never wait on one counter row. TRUNCATE empties the tallies.
- SQLite: one row of change a row (it has no statement triggers); one writer at a time anyway.

The triggers are created first and the tallies filled from the table after, in the same
transaction: on PostgreSQL the trigger's lock on ``subscriptions`` keeps writers out until
the commit, on SQLite the migration holds the only write lock, so no change is counted twice
or missed. A later migration that rebuilds ``subscriptions`` on SQLite (a batch ALTER) drops
these triggers with the old table and must create them again (``tests/test_tallies.py``
checks the counts at the head).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

KEY = "notice, notice_version, status, lawful_basis"
CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in KEY.split(", "))
WATCHED = f"AFTER UPDATE OF {KEY} ON subscriptions"


def _values(row: str, n: int) -> str:
    return f"({row}.notice, {row}.notice_version, {row}.status, {row}.lawful_basis, {n})"


POSTGRESQL = [
    f"""CREATE FUNCTION subscription_tallies_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) SELECT {KEY}, count(*) FROM added GROUP BY {KEY};
        RETURN NULL;
    END $$""",
    f"""CREATE FUNCTION subscription_tallies_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) SELECT {KEY}, -count(*) FROM removed GROUP BY {KEY};
        RETURN NULL;
    END $$""",
    f"""CREATE FUNCTION subscription_tallies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) VALUES {_values("OLD", -1)}, {_values("NEW", 1)};
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION subscription_tallies_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM subscription_tallies;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER subscriptions_tally_insert AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION subscription_tallies_added()""",
    """CREATE TRIGGER subscriptions_tally_delete AFTER DELETE ON subscriptions
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION subscription_tallies_removed()""",
    f"""CREATE TRIGGER subscriptions_tally_update {WATCHED}
    FOR EACH ROW WHEN ({CHANGED}) EXECUTE FUNCTION subscription_tallies_changed()""",
    """CREATE TRIGGER subscriptions_tally_truncate AFTER TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_tallies_emptied()""",
]
SQLITE = [
    f"""CREATE TRIGGER subscriptions_tally_insert AFTER INSERT ON subscriptions BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) VALUES {_values("NEW", 1)};
    END""",
    f"""CREATE TRIGGER subscriptions_tally_delete AFTER DELETE ON subscriptions BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) VALUES {_values("OLD", -1)};
    END""",
    # IS NOT is SQLite's IS DISTINCT FROM.
    f"""CREATE TRIGGER subscriptions_tally_update {WATCHED}
    WHEN {CHANGED.replace("IS DISTINCT FROM", "IS NOT")} BEGIN
        INSERT INTO subscription_tallies ({KEY}, n) VALUES {_values("OLD", -1)}, {_values("NEW", 1)};
    END""",
]
TRIGGERS = ("insert", "delete", "update", "truncate")
FUNCTIONS = ("added", "removed", "changed", "emptied")


def upgrade():
    op.create_table(
        "subscription_tallies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("notice", sa.String(length=32), nullable=False),
        sa.Column("notice_version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lawful_basis", sa.String(length=32), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_tallies")),
    )
    for statement in POSTGRESQL if op.get_bind().dialect.name == "postgresql" else SQLITE:
        op.execute(statement)
    op.execute(
        f"INSERT INTO subscription_tallies ({KEY}, n) SELECT {KEY}, count(*) FROM subscriptions GROUP BY {KEY}"
    )


def downgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    for what in TRIGGERS if postgresql else TRIGGERS[:3]:
        op.execute(f"DROP TRIGGER subscriptions_tally_{what}" + (" ON subscriptions" if postgresql else ""))
    if postgresql:
        for what in FUNCTIONS:
            op.execute(f"DROP FUNCTION subscription_tallies_{what}()")
    op.drop_table("subscription_tallies")
