"""What every benchmark shares: where results go.

Each bench writes one JSON file under ``bench/results/`` (not committed), so two runs compare
with a diff. This module must never import a bench (the benches import it).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict) -> Path:
    """Write ``data`` as ``bench/results/<name>.json`` (pretty, keys in insertion order); return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
