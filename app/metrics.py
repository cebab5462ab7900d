"""Prometheus metrics at ``/metrics``."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the request instruments and the ``/metrics`` route."""


def record_progress(task: str, done: int, total: int | None) -> None:
    """How far a long command (``import``, ``purge``, ``verify``, ``backup``) has come."""
