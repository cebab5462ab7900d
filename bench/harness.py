"""What every benchmark shares: the settings of a throwaway service, and the results table."""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEPPER = "bench-pepper-" + "p" * 32
HEADER = ["| benchmark | measured | goal | notes |", "|---|---|---|---|"]


def service_env(instance: Path, database: str, **extra: str) -> dict[str, str]:
    """The environment of a service on a throwaway database (a temporary SQLite file or ``database``)."""
    url = f"sqlite:///{instance / 'bench.sqlite3'}" if database == "sqlite" else database
    return {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        "APP_ENV": "testing",
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret-" + "s" * 32,
        "SUPPRESSION_PEPPER": PEPPER,
        "PUBLIC_URL": "https://news.example.org",
        **extra,
    }


def label(database: str) -> str:
    return "SQLite" if database == "sqlite" else "PostgreSQL"


def percentile(ordered: list[float], share: float) -> float:
    """The value below which ``share`` of the sorted samples lie (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def report(title: str, rows: list[str]) -> None:
    """Print the table and append it to bench/results.md."""
    text = f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\n" + "\n".join([*HEADER, *rows]) + "\n"
    print(text)
    with open(REPO / "bench" / "results.md", "a") as fh:
        fh.write(text)
