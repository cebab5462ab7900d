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
