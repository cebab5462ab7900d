"""Logging: to stderr (commands keep stdout for their data), as text or one JSON object a line."""

from __future__ import annotations

import logging
import sys

from flask import Flask


def configure(app: Flask) -> None:
    """Send the root logger to stderr once per process, at INFO."""
    root = logging.getLogger()
    if not any(getattr(h, "_consent_service", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._consent_service = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)


