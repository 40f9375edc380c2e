"""Refresh the OHLCV aggregates on either TimescaleDB edition, never below the raw horizon.

Two families of aggregates (:data:`AGGREGATES`), each computed from one raw table: the stocks'
``ohlcv_1m`` … ``ohlcv_1d`` from ``trades`` and the crypto pairs' ``crypto_ohlcv_1m`` …
``crypto_ohlcv_1d`` from ``crypto_trades`` (migration 014; volume numeric, summed exactly).

The invariant (both editions, each family): **no refresh — manual, flow or policy — ever covers time
below the raw horizon**, the oldest time from which the family's raw table is complete
(``tickvault_raw_horizon(relation)``, migrations 006 and 013: the newest end of any chunk retention
dropped, or the oldest chunk's start if later). Refreshing a bucket whose trades were dropped
recomputes it from what is left, so on both editions it would delete or shrink an aggregate row that
retention meant to keep. How it holds:

* every window goes through ``tickvault_aggregate_window(family, timeframe, start, end)``, which clamps
  the start to the horizon (rounded up to a bucket) and the end to the still-open bucket (never
  materialized: on ``timescale`` that would push the watermark into the future and hide new trades);
* a refresh holds the retention lock shared (:data:`tickvault.jobs.retention.PURGE_LOCK_KEY`) and a purge
  holds it exclusively, so a horizon read here cannot move under a running refresh;
* the ``timescale`` edition's background refresh policies start at most ``retention_trades_days - 1
  day`` (crypto: ``retention_crypto_trades_days - 1 day``) back (:mod:`tickvault.db.policies`), so
  they stay inside the raw window without any lock.

``timescale``: ``refresh_continuous_aggregate`` per timeframe, outside a transaction, with typed
window parameters. Without a window it covers [horizon, open bucket): Timescale's invalidation log
decides what is really recomputed there, so the cost is what is pending, never "everything".
``apache``: ``tickvault_refresh_aggregate(family)`` (migrations 004, 007, 014: watermark +
invalidations, idempotent, clamped the same way). Callers never need to know which one ran; both
record the refreshed range in the family's state table (``ohlcv_state``, ``crypto_ohlcv_state``:
``watermark``, ``refreshed_at``).

What this module must never do: refresh a window it did not clamp, or materialize the open bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from tickvault.db.migrate import server_edition

TIMEFRAMES = ("1m", "5m", "1h", "1d")
# Shared with tickvault.jobs.retention (a purge takes it exclusively): "tick" "purg".
RETENTION_LOCK_KEY = 0x7469636B_70757267
# The raw horizon of a raw table when it has rows (no row: none at all, 'infinity' in SQL).
RAW_HORIZON_SQL = "SELECT h FROM tickvault_raw_horizon(%s::text) h WHERE isfinite(h)"


@dataclass(frozen=True)
class Aggregate:
    """One family of OHLCV relations, ``<name>_1m`` … ``<name>_1d``, computed from one raw table.

    The migrations name it in ``ohlcv_aggregates``; its state is ``<name>_state``. ``retention``
    is the setting that keeps the raw table: the refresh policies' start offsets stay inside it.
    """

    name: str
    raw_table: str
    retention: str

    def relation(self, timeframe: str) -> str:
        return f"{self.name}_{timeframe}"


STOCKS = Aggregate("ohlcv", "trades", "retention_trades_days")
CRYPTO = Aggregate("crypto_ohlcv", "crypto_trades", "retention_crypto_trades_days")
AGGREGATES = (STOCKS, CRYPTO)


@dataclass(frozen=True)
class RefreshResult:
    timeframe: str
    lo: datetime | None
    hi: datetime | None
    rows: int | None  # None where the server does not report it (continuous aggregates)
    aggregate: str = STOCKS.name  # the family: its relation is f"{aggregate}_{timeframe}"


@dataclass(frozen=True)
class AggregateStatus:
    """How far one OHLCV timeframe is materialized, on either edition (``ohlcv_state``).

    Every bucket before ``materialized_to`` is stored; a query of ``ohlcv_{timeframe}`` computes
    the buckets after it from ``trades`` when it reads them (tickvault's views on ``apache``,
    real-time aggregation on ``timescale``), so the relation is always current to the newest trade
    and the watermark says how much of that is precomputed. On ``timescale`` the value is what
    tickvault's own refreshes covered; a refresh policy may have gone further.
    """

    timeframe: str
    materialized_to: datetime | None  # None: nothing materialized yet
    refreshed_at: datetime | None  # the last refresh by tickvault (None: never)


def aggregate_status(conn: psycopg.Connection, aggregate: Aggregate = STOCKS) -> list[AggregateStatus]:
    """One :class:`AggregateStatus` per timeframe of ``aggregate``, finest first."""
    rows = conn.execute(sql.SQL(
        "SELECT timeframe, CASE WHEN isfinite(watermark) THEN watermark END, refreshed_at "
        "FROM {} ORDER BY bucket_width"
    ).format(sql.Identifier(f"{aggregate.name}_state"))).fetchall()
    return [AggregateStatus(tf, lo, at) for tf, lo, at in rows]


def raw_horizon(conn: psycopg.Connection, aggregate: Aggregate = STOCKS) -> datetime | None:
    """The oldest time from which ``aggregate``'s raw trades are complete (None: no raw trades at all)."""
    row = conn.execute(RAW_HORIZON_SQL, (aggregate.raw_table,)).fetchone()
    return None if row is None else row[0]


def refresh_window(
    conn: psycopg.Connection,
    timeframe: str,
    start: datetime | None = None,
    end: datetime | None = None,
    aggregate: Aggregate = STOCKS,
) -> tuple[datetime, datetime] | None:
    """``[lo, hi)`` a refresh of ``timeframe`` may cover (see the module docstring); None if empty."""
    row = conn.execute(
        "SELECT lo, hi FROM tickvault_aggregate_window(%s, %s, %s::timestamptz, %s::timestamptz) "
        "WHERE isfinite(lo) AND lo < hi",
        (aggregate.name, timeframe, start, end),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def refresh_ohlcv(
    url: str,
    start: datetime | None = None,
    end: datetime | None = None,
    aggregates: tuple[Aggregate, ...] = AGGREGATES,
) -> list[RefreshResult]:
    """Refresh every timeframe of every family; with ``start``/``end``, recompute that range too (clamped).

    Returns one result per range actually refreshed; an empty list means nothing was refreshable
    (no raw trades, or a window entirely below the raw horizon).
    """
    results: list[RefreshResult] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (RETENTION_LOCK_KEY,))
        try:
            timescale = server_edition(conn) == "timescale"
            for aggregate in aggregates:
                if timescale:
                    results += _refresh_continuous_aggregates(conn, aggregate, start, end)
                    continue
                rows = conn.execute(
                    "SELECT * FROM tickvault_refresh_aggregate(%s, %s::timestamptz, %s::timestamptz)",
                    (aggregate.name, start, end),
                ).fetchall()
                results += [RefreshResult(tf, lo, hi, n, aggregate.name) for tf, lo, hi, n in rows]
        finally:
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (RETENTION_LOCK_KEY,))
    return results


def _refresh_continuous_aggregates(
    conn: psycopg.Connection, aggregate: Aggregate, start: datetime | None, end: datetime | None
) -> list[RefreshResult]:
    results = []
    state = sql.Identifier(f"{aggregate.name}_state")
    for tf in TIMEFRAMES:
        window = refresh_window(conn, tf, start, end, aggregate)
        if window is not None:
            lo, hi = window
            conn.execute(
                "CALL refresh_continuous_aggregate(%s, %s::timestamptz, %s::timestamptz)",
                (aggregate.relation(tf), lo, hi),
            )
            results.append(RefreshResult(tf, lo, hi, None, aggregate.name))
        # The watermark records how far a refresh has covered (Timescale keeps its own inside).
        conn.execute(
            sql.SQL("UPDATE {} SET refreshed_at = now(), watermark = greatest(watermark, %s::timestamptz) "
                    "WHERE timeframe = %s").format(state),
            (window[1] if window else None, tf),
        )
    return results
