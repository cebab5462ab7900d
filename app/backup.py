"""``backup create PATH`` and ``backup restore PATH``."""

from __future__ import annotations

from flask.cli import AppGroup

backup_cli = AppGroup("backup", help="Backups of the database and the ledger checkpoint, and restoring them.")
