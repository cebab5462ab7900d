"""The schema comes from migrations alone, with one head, matching the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app.extensions import db
from app.models import ServiceMark, utcnow


def test_migrations_have_a_single_head(app):
    with app.app_context():
        config = app.extensions["migrate"].migrate.get_config()
        assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def test_migrated_schema_matches_the_models(app):
    with app.app_context(), db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
    assert diff == []


def test_the_upgrade_marks_when_art14_mails_began_to_be_recorded_and_the_downgrade_undoes_it(app):
    # Contacts imported before this mark were mailed by code that kept no evidence: the
    # dashboard counts them apart instead of calling them uninformed (app/importer.py).
    with app.app_context():
        downgrade(revision="0006")
        db.engine.dispose()
        assert not inspect(db.engine).has_table("service_marks")
        before = utcnow()
        upgrade()
        db.engine.dispose()
        after = utcnow()
        mark = db.session.get(ServiceMark, "art14_evidence_since")
        assert mark is not None and before <= mark.at <= after
        db.session.remove()


def test_0008_keeps_every_event_its_place_and_its_details_down_to_0007_and_back(app, client, mailbox, monkeypatch):
    from sqlalchemy import select

    from app import ledger
    from app.database import unit_of_work
    from app.ledger import Evidence
    from app.models import ConsentEvent, EventDetail
    from app.notices import get_notice

    from .support import subscribe_and_confirm

    subscribe_and_confirm(client, mailbox, "munkeby", "kept@example.com", "Kept")
    with app.app_context():
        notice = get_notice("munkeby")
        # An event left pending while a bulk write chains a hundred: its id comes before theirs,
        # its place in the chain after them, so its details must follow its seq down and back.
        monkeypatch.setattr(ledger, "_request_sequencing", lambda: None)
        with unit_of_work() as uow:
            ledger.append(uow, [Evidence.under("opted_out", notice, None, "api", {}, {"ip": "192.0.2.7"})], chain=False)
        with unit_of_work() as uow:
            ledger.append(uow, [Evidence.under("imported", notice, None, "import", {"n": n}) for n in range(100)])
        assert ledger.sequence() == 1

        def by_place() -> dict[int, tuple[str | None, str | None]]:
            query = (
                select(ConsentEvent.seq, ConsentEvent.hash, EventDetail.details)
                .outerjoin(EventDetail, EventDetail.event_id == ConsentEvent.id)
            )
            return {seq: (digest, details) for seq, digest, details in db.session.execute(query)}

        before = by_place()
        moved = db.session.execute(select(ConsentEvent.seq).where(ConsentEvent.id != ConsentEvent.seq)).scalars()
        assert len(list(moved)) > 100
        assert before[max(before)][1] == '{"ip":"192.0.2.7"}'
        db.session.remove()
        downgrade(revision="0007")
        db.engine.dispose()
        upgrade()
        db.engine.dispose()
        assert by_place() == before
        assert ledger.check(db.session).ok
        db.session.remove()
