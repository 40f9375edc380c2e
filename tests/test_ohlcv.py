"""OHLCV rollups on the Apache edition equal a direct GROUP BY over trades, late data included."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tickvault.db.aggregates import TIMEFRAMES, refresh_ohlcv

WIDTH = {"1m": "1 minute", "5m": "5 minutes", "1h": "1 hour", "1d": "1 day"}
DIRECT = """
SELECT time_bucket(INTERVAL '{w}', time) AS bucket, symbol, first(price, time_ns), max(price), min(price),
       last(price, time_ns), sum(size)::bigint, count(*)::bigint, sum(price * size) / nullif(sum(size), 0)
  FROM trades WHERE NOT canceled GROUP BY 1, 2 ORDER BY 2, 1"""


def _trades(rng: random.Random, symbols, start: datetime, end: datetime, n: int, first_id: int):
    span_ns = int((end - start).total_seconds() * 1e9)
    base_ns = int(start.timestamp() * 1e9)
    rows = []
    for i in range(n):
        ns = base_ns + rng.randrange(span_ns)
        sym = rng.choice(symbols)
        rows.append((datetime.fromtimestamp(ns // 1000 / 1e6, tz=timezone.utc), sym, first_id + i, "V",
                     round(rng.uniform(50, 150), 2), rng.randint(1, 500), ns))
    return rows


def _insert(conn: psycopg.Connection, rows) -> None:
    """How every writer inserts trades: rows plus the late-data note, in one transaction."""
    with conn.transaction():
        lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
        conn.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (lo, hi))
        with conn.cursor().copy(
            "COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["timestamptz", "text", "int8", "text", "float8", "int8", "int8"])
            for r in rows:
                copy.write_row(r)


def _assert_views_equal_direct(conn: psycopg.Connection) -> None:
    for tf in TIMEFRAMES:
        view = conn.execute(
            f"SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap FROM ohlcv_{tf} ORDER BY 2, 1"
        ).fetchall()
        direct = conn.execute(DIRECT.format(w=WIDTH[tf])).fetchall()
        assert len(view) == len(direct), tf
        for got, want in zip(view, direct):
            assert got[:8] == want[:8], (tf, got, want)
            assert got[8] == pytest.approx(want[8], rel=1e-12), (tf, got, want)


@pytest.fixture
def ohlcv_conn(fresh_database):
    with psycopg.connect(fresh_database(), autocommit=True) as c:
        if c.execute("SELECT current_setting('timescaledb.license')").fetchone()[0] != "apache":
            pytest.skip("the tickvault rollup routine runs on the apache edition")
        yield c


def test_rollups_equal_direct_group_by_with_late_trades(ohlcv_conn):
    conn = ohlcv_conn
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    symbols = ["AAPL", "MSFT", "SPY"]
    _insert(conn, _trades(rng, symbols, now - timedelta(hours=30), now - timedelta(minutes=2), 6000, 1))
    _assert_views_equal_direct(conn)  # real-time part alone

    first = refresh_ohlcv(_dsn(conn))
    assert {r.timeframe for r in first} == set(TIMEFRAMES)
    watermark = conn.execute("SELECT watermark FROM ohlcv_state WHERE timeframe = '1m'").fetchone()[0]
    assert watermark > now - timedelta(minutes=3)
    _assert_views_equal_direct(conn)

    # late trades into already-materialized buckets, plus a canceled trade, plus fresh ones
    late = _trades(rng, symbols, now - timedelta(hours=20), now - timedelta(hours=1), 300, 100_000)
    _insert(conn, late)
    assert conn.execute("SELECT count(*) FROM ohlcv_invalidations").fetchone()[0] == 1
    conn.execute("UPDATE trades SET canceled = true WHERE trade_id = 5")
    conn.execute("SELECT tickvault_ohlcv_invalidate(time, time) FROM trades WHERE trade_id = 5")
    refresh_ohlcv(_dsn(conn))
    assert conn.execute("SELECT count(*) FROM ohlcv_invalidations").fetchone()[0] == 0
    _assert_views_equal_direct(conn)

    # idempotent: refreshing again changes nothing
    before = conn.execute("SELECT * FROM ohlcv_5m_rollup ORDER BY symbol, bucket").fetchall()
    refresh_ohlcv(_dsn(conn))
    assert conn.execute("SELECT * FROM ohlcv_5m_rollup ORDER BY symbol, bucket").fetchall() == before


def test_explicit_window_recomputes_without_invalidation(ohlcv_conn):
    conn = ohlcv_conn
    rng = random.Random(11)
    now = datetime.now(timezone.utc)
    rows = _trades(rng, ["QQQ"], now - timedelta(hours=3), now - timedelta(minutes=5), 2000, 1)
    _insert(conn, rows)
    refresh_ohlcv(_dsn(conn))
    # a write that bypassed the invalidation note (e.g. a manual INSERT) ...
    conn.execute(
        "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) VALUES (%s,'QQQ',999999,'V',1.0,1,%s)",
        (now - timedelta(hours=2), int((now - timedelta(hours=2)).timestamp() * 1e9)),
    )
    assert conn.execute("SELECT min(low) FROM ohlcv_1m").fetchone()[0] > 1.0  # not yet visible
    # ... is repaired by an explicit window refresh
    refresh_ohlcv(_dsn(conn), now - timedelta(hours=2, minutes=1), now - timedelta(hours=1, minutes=59))
    _assert_views_equal_direct(conn)


def _dsn(conn: psycopg.Connection) -> str:
    info = conn.info
    return f"postgresql://{info.user}:{info.password}@{info.host}:{info.port}/{info.dbname}"
