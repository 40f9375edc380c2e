"""Refresh the OHLCV aggregates on either TimescaleDB edition.

``timescale``: ``refresh_continuous_aggregate`` per timeframe (it must run outside a transaction).
``apache``: ``tickvault_refresh_ohlcv()`` from migration 004 (watermark + invalidations, idempotent).
Callers never need to know which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from tickvault.db.migrate import server_edition

TIMEFRAMES = ("1m", "5m", "1h", "1d")


@dataclass(frozen=True)
class RefreshResult:
    timeframe: str
    lo: datetime | None
    hi: datetime | None
    rows: int | None  # None where the server does not report it (continuous aggregates)


def refresh_ohlcv(url: str, start: datetime | None = None, end: datetime | None = None) -> list[RefreshResult]:
    with psycopg.connect(url, autocommit=True) as conn:
        if server_edition(conn) == "timescale":
            results = []
            for tf in TIMEFRAMES:
                conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (f"ohlcv_{tf}", start, end))
                conn.execute("UPDATE ohlcv_state SET refreshed_at = now() WHERE timeframe = %s", (tf,))
                results.append(RefreshResult(tf, start, end, None))
            return results
        rows = conn.execute("SELECT * FROM tickvault_refresh_ohlcv(%s, %s)", (start, end)).fetchall()
        return [RefreshResult(tf, lo, hi, n) for tf, lo, hi, n in rows]
