"""What every benchmark shares: where results go.

Each bench writes one JSON file under ``bench/results/`` (not committed), so two runs compare
with a diff. This module must never import a bench (the benches import it).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict) -> Path:
    """Write ``data`` as ``bench/results/<name>.json`` (pretty, keys in insertion order); return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, migrated database on the configured server (tests/conftest.py's pattern); dropped after."""
    import psycopg

    from tickvault.config import load_settings
    from tickvault.db import database_url, url_for_database
    from tickvault.db.local import ensure_database
    from tickvault.db.migrate import migrate

    admin = url_for_database(database_url(load_settings()), "postgres")
    name = f"{prefix}_{secrets.token_hex(4)}"
    ensure_database(admin, name)
    url = url_for_database(admin, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
