"""OHLCV aggregates equal a direct GROUP BY over trades, late data included, and a retention purge
followed by any refresh keeps every aggregate row whose raw trades it dropped.

Every test runs unchanged on both TimescaleDB editions (tickvault's rollups on ``apache``, continuous
aggregates on ``timescale``); the only edition-specific lines check tickvault's own late-data log,
which the ``timescale`` edition replaces with Timescale's.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.db.aggregates import TIMEFRAMES, raw_horizon, refresh_ohlcv, refresh_window
from tickvault.jobs.retention import purge_retention
from tests.support.ohlcv import WIDTH, assert_same_bars, day as _day, dsn as _dsn, edition as _edition, view

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
        assert_same_bars(view, conn.execute(DIRECT.format(w=WIDTH[tf])).fetchall(), tf)


@pytest.fixture
def ohlcv_conn(fresh_database):
    with psycopg.connect(fresh_database(), autocommit=True) as c:
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
    apache = _edition(conn) == "apache"  # tickvault's own late-data log (Timescale keeps its own)
    if apache:
        assert conn.execute("SELECT count(*) FROM ohlcv_invalidations").fetchone()[0] == 1
    conn.execute("UPDATE trades SET canceled = true WHERE trade_id = 5")
    conn.execute("SELECT tickvault_ohlcv_invalidate(time, time) FROM trades WHERE trade_id = 5")
    # Stale until refreshed: the materialized 1-minute buckets (all of them below the watermark checked
    # above, at any time of day) do not see the late trades yet.
    assert conn.execute(
        "SELECT sum(trade_count) FROM ohlcv_1m"
    ).fetchone()[0] < conn.execute("SELECT count(*) FROM trades WHERE NOT canceled").fetchone()[0]
    refresh_ohlcv(_dsn(conn))
    if apache:
        assert conn.execute("SELECT count(*) FROM ohlcv_invalidations").fetchone()[0] == 0
    _assert_views_equal_direct(conn)

    # idempotent: refreshing again changes nothing
    before = {tf: _view(conn, tf) for tf in TIMEFRAMES}
    refresh_ohlcv(_dsn(conn))
    assert {tf: _view(conn, tf) for tf in TIMEFRAMES} == before


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


def _view(conn: psycopg.Connection, tf: str, where: str = "true", params=()) -> list[tuple]:
    return view(conn, f"ohlcv_{tf}", where, params)


def test_purge_then_any_refresh_keeps_every_aggregate_row_and_reflects_late_trades(fresh_database):
    """Raw trades kept 30 days, aggregates 730: after the purge, neither a routine refresh nor a
    refresh over all time (the data loss of issue 7) touches a bucket whose trades were dropped;
    a late trade inside the raw window is reflected; one below the horizon is stored, not aggregated."""
    url = fresh_database()
    now = datetime.now(timezone.utc)
    rng = random.Random(23)
    symbols = ["AAA", "BBB"]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = []
        for days_ago in range(45, -1, -1):  # 45 days of history, a few trades an hour in the session
            start = _day(now) - timedelta(days=days_ago) + timedelta(hours=14)
            end = min(start + timedelta(hours=7), now - timedelta(minutes=2))
            if end > start:
                rows += _trades(rng, symbols, start, end, 40, first_id=len(rows) * 10 + 1)
        _insert(conn, rows)
        refresh_ohlcv(url)
        _assert_views_equal_direct(conn)
        before = {tf: _view(conn, tf) for tf in TIMEFRAMES}

        report = asyncio.run(purge_retention(
            load_settings(retention_trades_days=30, retention_bars_days=730), db_url=url, now=now
        ))
        horizon = _day(now - timedelta(days=30))  # the straddling day chunk stays whole
        assert report.table("trades").chunks_dropped == 15 and report.raw_horizon == horizon
        assert conn.execute("SELECT min(time) FROM trades").fetchone()[0] >= horizon
        kept_below = {tf: sum(1 for r in before[tf] if r[0] < horizon) for tf in TIMEFRAMES}
        assert kept_below["1d"] == 15 * len(symbols) and all(n > 0 for n in kept_below.values())

        def below(tf: str, rows: list[tuple]) -> list[tuple]:
            return [r for r in rows if r[0] < horizon]

        refresh_ohlcv(url)  # the flow's routine refresh
        for tf in TIMEFRAMES:  # every kept row below the horizon, bit for bit
            assert _view(conn, tf, "bucket < %s", (horizon,)) == below(tf, before[tf]), tf
        _assert_raw_part_equals_direct(conn, horizon)
        refresh_ohlcv(url, datetime(2000, 1, 1, tzinfo=timezone.utc), now)  # a refresh over all time
        for tf in TIMEFRAMES:
            kept = _view(conn, tf, "bucket < %s", (horizon,))
            assert kept == below(tf, before[tf]) and len(kept) == kept_below[tf], tf
        _assert_raw_part_equals_direct(conn, horizon)

        # a late trade inside the raw window, and one into purged history (below the horizon)
        late_in = now - timedelta(days=10)
        late_in = late_in.replace(hour=15, minute=30, second=0, microsecond=0)
        purged = horizon - timedelta(days=5) + timedelta(hours=15)
        _insert(conn, [
            (late_in, "AAA", 9_000_001, "V", 1.0, 7, int(late_in.timestamp()) * 10**9),
        ])
        _insert(conn, [
            (purged, "AAA", 9_000_002, "V", 0.5, 9, int(purged.timestamp()) * 10**9),
        ])
        refresh_ohlcv(url)
        for tf in TIMEFRAMES:  # below the horizon: exactly what was kept
            assert _view(conn, tf, "bucket < %s", (horizon,)) == below(tf, before[tf]), tf
        _assert_raw_part_equals_direct(conn, horizon)  # from the horizon on: the late trade included
        low = conn.execute(
            "SELECT low FROM ohlcv_1d WHERE symbol = 'AAA' AND bucket = %s", (_day(late_in),)
        ).fetchone()[0]
        assert low == 1.0
        assert conn.execute("SELECT count(*) FROM trades WHERE trade_id = 9000002").fetchone()[0] == 1


def _assert_raw_part_equals_direct(conn: psycopg.Connection, horizon: datetime) -> None:
    for tf in TIMEFRAMES:
        view = _view(conn, tf, "bucket >= %s", (horizon,))
        direct = conn.execute(
            DIRECT.replace("WHERE NOT canceled", "WHERE NOT canceled AND time >= %s").format(w=WIDTH[tf]), (horizon,)
        ).fetchall()
        assert_same_bars(view, direct, tf)


def test_refresh_window_never_reaches_below_the_raw_horizon_or_into_the_open_bucket(ohlcv_conn):
    conn = ohlcv_conn
    now = datetime.now(timezone.utc)
    assert refresh_window(conn, "1m") is None  # no raw trades at all: nothing may be refreshed
    assert raw_horizon(conn) is None
    t = now - timedelta(days=3)
    _insert(conn, [(t, "WIN", 1, "V", 10.0, 1, int(t.timestamp()) * 10**9)])
    horizon = raw_horizon(conn)
    assert horizon == _day(t)  # the oldest trades chunk's start (1-day chunks)
    conn.execute("INSERT INTO raw_horizons (relation, dropped_before) VALUES ('trades', %s)",
                 (_day(t) + timedelta(hours=13, minutes=7),))
    assert raw_horizon(conn) == _day(t) + timedelta(hours=13, minutes=7)
    lo, hi = refresh_window(conn, "1h", datetime(2000, 1, 1, tzinfo=timezone.utc), now + timedelta(days=1))
    after = datetime.now(timezone.utc)  # the server's now() lies between `now` and this
    assert lo == _day(t) + timedelta(hours=14)  # rounded up to a whole bucket
    hours = {w.replace(minute=0, second=0, microsecond=0) for w in (now, after)}
    assert hi in hours  # the open hour is never materialized
    lo, hi = refresh_window(conn, "1d")
    after = datetime.now(timezone.utc)
    assert lo == _day(t) + timedelta(days=1) and hi in {_day(now), _day(after)}
    assert refresh_window(conn, "1m", None, _day(t)) is None  # a window entirely below the horizon
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown OHLCV timeframe"):
        refresh_window(conn, "2m")
