"""Retention at the boundary, on a real TimescaleDB: whole old chunks go, nothing inside a window is
touched, the straddling chunk keeps its few older rows, a dry run drops nothing, 0 keeps forever.

Time is pinned (``now``) so chunk boundaries are known: trades chunks are 1 UTC day, quotes 6 hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.jobs.retention import INGEST_BATCHES_KEEP, purge_retention

pytestmark = pytest.mark.db

NOW = datetime(2025, 6, 18, 12, 0, tzinfo=UTC)
TRADES_DAYS = 30
QUOTES_DAYS = 7
TRADES_CUTOFF = NOW - timedelta(days=TRADES_DAYS)  # 2025-05-19 12:00, inside the 05-19 day chunk
QUOTES_CUTOFF = NOW - timedelta(days=QUOTES_DAYS)  # 2025-06-11 12:00: a 6 h chunk starts exactly here

# (time, inside the window?)  — old whole chunks, the straddling chunk on both sides, the cutoff itself.
TRADE_TIMES = [
    (datetime(2025, 5, 10, 15, 0, tzinfo=UTC), False),
    (datetime(2025, 5, 15, 15, 0, tzinfo=UTC), False),
    (datetime(2025, 5, 15, 16, 0, tzinfo=UTC), False),
    (datetime(2025, 5, 19, 6, 0, tzinfo=UTC), False),  # straddling chunk, older than the cutoff
    (TRADES_CUTOFF - timedelta(microseconds=1), False),  # straddling chunk, 1 µs too old
    (TRADES_CUTOFF, True),  # exactly the cutoff: not older than it
    (datetime(2025, 5, 19, 18, 0, tzinfo=UTC), True),
    (datetime(2025, 5, 25, 9, 30, tzinfo=UTC), True),
    (NOW - timedelta(minutes=1), True),
]
QUOTE_TIMES = [
    (QUOTES_CUTOFF - timedelta(hours=13), False),
    (QUOTES_CUTOFF - timedelta(microseconds=1), False),  # last µs of the last droppable chunk
    (QUOTES_CUTOFF, True),
    (NOW, True),
]


@pytest.fixture
def db(fresh_database) -> str:
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        for i, (when, _) in enumerate(TRADE_TIMES):
            conn.execute(
                "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) "
                "VALUES (%s, 'AAPL', %s, 'V', 100.5, 10, 0)",
                (when, i),
            )
        for when, _ in QUOTE_TIMES:
            conn.execute(
                "INSERT INTO quotes (time, symbol, bid_price, ask_price, time_ns) "
                "VALUES (%s, 'AAPL', 1, 2, 0)",
                (when,),
            )
        # Old rows in tables that must survive: bars under a 0-day window, and trade history.
        conn.execute(
            "INSERT INTO bars (time, symbol, open, high, low, close, volume) "
            "VALUES ('2019-01-07', 'AAPL', 1, 1, 1, 1, 1)"
        )
        conn.execute(
            "INSERT INTO fills (order_id, cum_qty, symbol, side, qty, price, transaction_time) "
            "VALUES (gen_random_uuid(), 1, 'AAPL', 'buy', 1, 1, '2019-01-07')"
        )
        conn.execute("INSERT INTO position_snapshots (time, symbol, qty) VALUES ('2019-01-07', 'AAPL', 1)")
        conn.execute(
            "INSERT INTO ingest_stats (time, worker, interval_s) VALUES (%s, 'w', 10), (%s, 'w', 10)",
            (NOW - timedelta(days=90), NOW - timedelta(days=1)),
        )
        conn.execute(
            "INSERT INTO ingest_batches (batch_id, committed_at, rows) VALUES "
            "(gen_random_uuid(), %s, 1), (gen_random_uuid(), %s, 1)",
            (NOW - INGEST_BATCHES_KEEP - timedelta(seconds=1), NOW - timedelta(days=1)),
        )
    return url


def _settings(url: str, **overrides):
    values = {
        "database_url": url,
        "retention_trades_days": TRADES_DAYS,
        "retention_quotes_days": QUOTES_DAYS,
        "retention_bars_days": 0,
        "retention_ingest_stats_days": 30,
    }
    values.update(overrides)
    return load_settings(**values)


def _times(conn: psycopg.Connection, table: str) -> list[datetime]:
    return [r[0] for r in conn.execute(f"SELECT time FROM {table} ORDER BY time").fetchall()]


def _chunk_count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute("SELECT count(*) FROM show_chunks(%s)", (table,)).fetchone()[0]


async def test_purge_drops_whole_old_chunks_and_never_a_row_inside_the_window(db: str):
    with psycopg.connect(db) as conn:
        trade_chunks = _chunk_count(conn, "trades")
    assert trade_chunks == 5  # days 05-10, 05-15, 05-19 (straddles the cutoff), 05-25, 06-18
    report = await purge_retention(_settings(db), db_url=db, now=NOW)

    with psycopg.connect(db) as conn:
        trades_left = _times(conn, "trades")
        quotes_left = _times(conn, "quotes")
        # Every row inside the window is still there, exactly.
        assert [t for t in trades_left if t >= TRADES_CUTOFF] == [t for t, inside in TRADE_TIMES if inside]
        assert [t for t in quotes_left if t >= QUOTES_CUTOFF] == [t for t, inside in QUOTE_TIMES if inside]
        # The whole old chunks are gone; the straddling trades chunk keeps its two older rows.
        assert [t for t in trades_left if t < TRADES_CUTOFF] == [t for t, _ in TRADE_TIMES[3:5]]
        assert [t for t in quotes_left if t < QUOTES_CUTOFF] == []  # the cutoff falls on a chunk boundary
        assert _chunk_count(conn, "trades") == trade_chunks - 2
        # 0-day window and trade history: untouched.
        assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM fills").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM position_snapshots").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM ingest_stats").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM ingest_batches").fetchone()[0] == 1

    trades = report.table("trades")
    assert trades.chunks_dropped == 2 and trades.cutoff == TRADES_CUTOFF
    assert trades.rows_older_remaining == 2
    assert trades.bytes_before > trades.bytes_after and trades.bytes_freed > 0
    assert trades.bytes_freed == trades.bytes_before - trades.bytes_after
    quotes = report.table("quotes")
    assert quotes.chunks_dropped == 2 and quotes.rows_older_remaining == 0 and quotes.bytes_freed > 0
    assert report.table("ingest_stats").chunks_dropped == 1
    assert report.table("bars").skipped and report.table("bars").chunks_dropped == 0
    assert report.table("ohlcv_1m").relation is None  # kept forever too (bars window)
    assert report.ingest_batches_deleted == 1
    assert report.chunks_dropped == 5 and report.bytes_freed > 0 and report.ok
    assert not any(t.table in ("orders", "fills", "position_snapshots") for t in report.tables)

    md = report.to_markdown()
    assert "| trades | 30 d |" in md and "| bars | forever |" in md
    assert "straddles" in md and "dry run" not in md

    # A second purge finds nothing more to drop.
    again = await purge_retention(_settings(db), db_url=db, now=NOW)
    assert again.chunks_dropped == 0 and again.table("trades").rows_older_remaining == 2


async def test_dry_run_lists_the_chunks_and_drops_nothing(db: str):
    with psycopg.connect(db) as conn:
        before = {t: (_times(conn, t), _chunk_count(conn, t)) for t in ("trades", "quotes", "ingest_stats")}
        batches = conn.execute("SELECT count(*) FROM ingest_batches").fetchone()[0]

    report = await purge_retention(_settings(db), db_url=db, now=NOW, dry_run=True)

    with psycopg.connect(db) as conn:
        assert {t: (_times(conn, t), _chunk_count(conn, t)) for t in before} == before
        assert conn.execute("SELECT count(*) FROM ingest_batches").fetchone()[0] == batches
        old_chunks = [
            r[0]
            for r in conn.execute(
                "SELECT show_chunks('trades', older_than => %s::timestamptz)::text", (TRADES_CUTOFF,)
            ).fetchall()
        ]
    trades = report.table("trades")
    assert trades.chunks == old_chunks and len(old_chunks) == 2
    assert trades.bytes_after == trades.bytes_before and trades.chunk_bytes > 0
    assert trades.rows_older_remaining == 2
    assert report.dry_run and report.chunks_dropped == 5 and report.bytes_freed > 0
    assert report.ingest_batches_deleted == 1
    assert "dry run" in report.to_markdown() and "would drop" in report.to_markdown()


async def test_zero_day_windows_keep_everything(db: str):
    from tickvault.jobs.retention import retention_plan

    zero = {setting: 0 for _table, setting, _days in retention_plan(_settings(db))}  # every window, new ones too
    with psycopg.connect(db) as conn:
        before = {t: _times(conn, t) for t in ("trades", "quotes", "bars", "ingest_stats")}

    report = await purge_retention(_settings(db, **zero), db_url=db, now=NOW)

    with psycopg.connect(db) as conn:
        assert {t: _times(conn, t) for t in before} == before
    assert report.chunks_dropped == 0 and all(t.skipped for t in report.tables)
    assert "forever" in report.table("trades").skipped
