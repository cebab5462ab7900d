"""``/readyz``: can this process serve, and is the rest of the service keeping its promises."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register ``/readyz``."""
