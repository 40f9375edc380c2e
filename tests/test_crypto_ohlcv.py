"""Crypto OHLCV aggregates (``crypto_ohlcv_1m`` … ``crypto_ohlcv_1d``, migration 014) equal a direct
GROUP BY over ``crypto_trades`` with the volume summed exactly (numeric: the printed fractional sizes
add up to the last digit), late trades included, through the worker's writer too; and a retention
purge of raw crypto trades followed by any refresh keeps every aggregate row whose trades it dropped.

Every test runs unchanged on both TimescaleDB editions (tickvault's rollups on ``apache``, continuous
aggregates on ``timescale``); the only edition-specific lines check tickvault's own late-data log,
which the ``timescale`` edition replaces with Timescale's.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.db.aggregates import CRYPTO, STOCKS, TIMEFRAMES, raw_horizon, refresh_ohlcv, refresh_window
from tickvault.db.tables import CRYPTO_TRADES
from tickvault.jobs.retention import purge_retention
from tests.support.ohlcv import WIDTH, assert_same_bars, day, dsn, edition, view
from tests.support.pipeline import writer_pipeline

pytestmark = pytest.mark.db

DIRECT = """
SELECT time_bucket(INTERVAL '{w}', time) AS bucket, symbol, first(price, time_ns), max(price), min(price),
       last(price, time_ns), sum(size), count(*)::bigint, sum(price * size) / nullif(sum(size), 0)
  FROM crypto_trades WHERE time >= %s GROUP BY 1, 2 ORDER BY 2, 1"""
PAIRS = ["BTC/USD", "ETH/USD", "SOL/USD"]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _trades(rng: random.Random, pairs, start: datetime, end: datetime, n: int, first_id: int) -> list[tuple]:
    """CRYPTO_TRADES rows: fractional sizes with up to 8 decimals, as venues print them."""
    span_ns = int((end - start).total_seconds() * 1e9)
    base_ns = int(start.timestamp() * 1e9)
    rows = []
    for i in range(n):
        ns = base_ns + rng.randrange(span_ns)
        size = Decimal(rng.randint(1, 250_000_000)).scaleb(-8)  # 0.00000001 .. 2.5
        rows.append((datetime.fromtimestamp(ns // 1000 / 1e6, tz=timezone.utc), rng.choice(pairs), first_id + i,
                     round(rng.uniform(90_000, 91_000), 2), size, rng.choice("BS"), ns))
    return rows


def _insert(conn: psycopg.Connection, rows: list[tuple]) -> None:
    """How a writer inserts crypto trades: rows plus the late-data note, in one transaction."""
    with conn.transaction():
        lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
        conn.execute("SELECT tickvault_aggregate_invalidate('crypto_ohlcv', %s, %s)", (lo, hi))
        with conn.cursor().copy(CRYPTO_TRADES.copy_statement()) as copy:
            copy.set_types(list(CRYPTO_TRADES.types))
            for r in rows:
                copy.write_row(r)


def _view(conn: psycopg.Connection, tf: str, where: str = "true", params=()) -> list[tuple]:
    return view(conn, CRYPTO.relation(tf), where, params)


def _assert_equal_direct(conn: psycopg.Connection, since: datetime = EPOCH) -> None:
    for tf in TIMEFRAMES:
        # volume is numeric: equal to the last digit
        assert_same_bars(_view(conn, tf, "bucket >= %s", (since,)),
                         conn.execute(DIRECT.format(w=WIDTH[tf]), (since,)).fetchall(), tf)


@pytest.fixture
def conn(fresh_database):
    with psycopg.connect(fresh_database(), autocommit=True) as c:
        yield c


def test_crypto_aggregates_equal_direct_group_by_with_exact_volume_and_late_trades(conn):
    rng = random.Random(5)
    now = datetime.now(timezone.utc)
    rows = _trades(rng, PAIRS, now - timedelta(hours=30), now - timedelta(minutes=2), 6000, 1)
    _insert(conn, rows)
    _assert_equal_direct(conn)  # the real-time part alone

    first = refresh_ohlcv(dsn(conn))
    assert {r.timeframe for r in first if r.aggregate == CRYPTO.name} == set(TIMEFRAMES)
    assert not [r for r in first if r.aggregate == STOCKS.name]  # no stock trades: nothing to refresh there
    watermark = conn.execute("SELECT watermark FROM crypto_ohlcv_state WHERE timeframe = '1m'").fetchone()[0]
    assert watermark > now - timedelta(minutes=3)
    _assert_equal_direct(conn)
    # Exact: each pair's volume is the sum of the printed sizes, every digit (a float8 sum would drift).
    for pair in PAIRS:
        stored = conn.execute("SELECT sum(volume) FROM crypto_ohlcv_1d WHERE symbol = %s", (pair,)).fetchone()[0]
        assert stored == sum(r[4] for r in rows if r[1] == pair)
        assert stored.as_tuple().exponent == -8

    late = _trades(rng, PAIRS, now - timedelta(hours=20), now - timedelta(hours=1), 300, 100_000)
    _insert(conn, late)
    if edition(conn) == "apache":  # tickvault's own late-data log (Timescale keeps its own)
        assert conn.execute("SELECT count(*) FROM crypto_ohlcv_invalidations").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM ohlcv_invalidations").fetchone()[0] == 0  # stocks untouched
    # Stale until refreshed: the materialized minutes do not see the late trades yet.
    assert conn.execute("SELECT sum(trade_count) FROM crypto_ohlcv_1m").fetchone()[0] == len(rows)
    refresh_ohlcv(dsn(conn))
    _assert_equal_direct(conn)
    assert conn.execute("SELECT sum(trade_count) FROM crypto_ohlcv_1m").fetchone()[0] == len(rows) + len(late)

    before = {tf: _view(conn, tf) for tf in TIMEFRAMES}
    refresh_ohlcv(dsn(conn))  # idempotent
    assert {tf: _view(conn, tf) for tf in TIMEFRAMES} == before


async def test_writer_notes_late_crypto_trades_for_the_next_refresh(fresh_database):
    url = fresh_database()
    now = datetime.now(timezone.utc)
    rng = random.Random(9)
    with psycopg.connect(url, autocommit=True) as conn:
        _insert(conn, _trades(rng, PAIRS, now - timedelta(hours=5), now - timedelta(minutes=2), 500, 1))
    await asyncio.to_thread(refresh_ohlcv, url)
    async with writer_pipeline(url, "crypto-ohlcv-test") as (_pool, writer, _metrics):
        # a late trade and a backfilled one, both below the watermark, as the worker writes them
        late_ns = int((now - timedelta(hours=3)).timestamp()) * 10**9 + 123_456_789
        await writer.submit(time.monotonic_ns(), crypto_trades=[(late_ns, "BTC/USD", 10**9, 1.5, 0.0001, "B")],
                            backfill_crypto_trades=[(late_ns + 1, "ETH/USD", 10**9 + 1, 2.5, 3.0000007, "S")])
        await writer.drain()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT min(low) FROM crypto_ohlcv_1m").fetchone()[0] > 2.5  # stale until refreshed
        await asyncio.to_thread(refresh_ohlcv, url)
        _assert_equal_direct(conn)
        got = conn.execute("SELECT symbol, low FROM crypto_ohlcv_1m WHERE low < 3 ORDER BY 1").fetchall()
        assert got == [("BTC/USD", 1.5), ("ETH/USD", 2.5)]


def test_purge_then_any_refresh_keeps_every_crypto_aggregate_row(fresh_database):
    """Raw crypto trades kept 30 days, aggregates 730: after the purge neither a routine refresh nor a
    refresh over all time touches a bucket whose trades were dropped; a late trade inside the raw
    window is reflected; one below the horizon is stored, not aggregated."""
    url = fresh_database()
    now = datetime.now(timezone.utc)
    rng = random.Random(29)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = []
        for days_ago in range(45, -1, -1):  # 45 days around the clock, a few trades an hour
            start = day(now) - timedelta(days=days_ago)
            end = min(start + timedelta(days=1), now - timedelta(minutes=2))
            if end > start:  # today's day has not begun 2 minutes ago between 00:00 and 00:02 UTC
                rows += _trades(rng, PAIRS[:2], start, end, 60, first_id=len(rows) + 1)
        _insert(conn, rows)
        refresh_ohlcv(url)
        _assert_equal_direct(conn)
        before = {tf: _view(conn, tf) for tf in TIMEFRAMES}

        report = asyncio.run(purge_retention(
            load_settings(retention_crypto_trades_days=30, retention_bars_days=730), db_url=url, now=now
        ))
        horizon = day(now - timedelta(days=30))  # the straddling day chunk stays whole
        assert report.table("crypto_trades").chunks_dropped == 15
        assert report.raw_horizons == {"trades": None, "crypto_trades": horizon}
        assert raw_horizon(conn, CRYPTO) == horizon and raw_horizon(conn, STOCKS) is None
        assert "raw horizon of crypto_trades" in report.to_markdown()
        assert conn.execute("SELECT min(time) FROM crypto_trades").fetchone()[0] >= horizon
        kept_below = {tf: sum(1 for r in before[tf] if r[0] < horizon) for tf in TIMEFRAMES}
        assert kept_below["1d"] == 15 * 2 and all(n > 0 for n in kept_below.values())

        def below(tf: str) -> list[tuple]:
            return [r for r in before[tf] if r[0] < horizon]

        refresh_ohlcv(url)  # the flow's routine refresh
        for tf in TIMEFRAMES:  # every kept row below the horizon, bit for bit
            assert _view(conn, tf, "bucket < %s", (horizon,)) == below(tf), tf
        _assert_equal_direct(conn, horizon)
        refresh_ohlcv(url, datetime(2000, 1, 1, tzinfo=timezone.utc), now)  # a refresh over all time
        for tf in TIMEFRAMES:
            assert _view(conn, tf, "bucket < %s", (horizon,)) == below(tf), tf
        _assert_equal_direct(conn, horizon)

        late_in = (now - timedelta(days=10)).replace(hour=15, minute=30, second=0, microsecond=0)
        purged = horizon - timedelta(days=5) + timedelta(hours=15)
        _insert(conn, [(late_in, "BTC/USD", 9_000_001, 1.0, Decimal("0.7"), "B", int(late_in.timestamp()) * 10**9)])
        _insert(conn, [(purged, "BTC/USD", 9_000_002, 0.5, Decimal("0.9"), "S", int(purged.timestamp()) * 10**9)])
        refresh_ohlcv(url)
        for tf in TIMEFRAMES:  # below the horizon: exactly what was kept
            assert _view(conn, tf, "bucket < %s", (horizon,)) == below(tf), tf
        _assert_equal_direct(conn, horizon)  # from the horizon on: the late trade included
        assert conn.execute("SELECT low FROM crypto_ohlcv_1d WHERE symbol = 'BTC/USD' AND bucket = %s",
                            (day(late_in),)).fetchone()[0] == 1.0
        assert conn.execute("SELECT count(*) FROM crypto_trades WHERE trade_id = 9000002").fetchone()[0] == 1


def test_crypto_refresh_window_follows_the_crypto_raw_horizon_only(conn):
    now = datetime.now(timezone.utc)
    assert refresh_window(conn, "1m", aggregate=CRYPTO) is None  # no raw crypto trades: nothing to refresh
    t = now - timedelta(days=3)
    _insert(conn, [(t, "BTC/USD", 1, 10.0, Decimal("0.5"), "B", int(t.timestamp()) * 10**9)])
    assert raw_horizon(conn, CRYPTO) == day(t) and raw_horizon(conn, STOCKS) is None
    assert refresh_window(conn, "1m") is None  # the stocks' window: still nothing
    conn.execute("INSERT INTO raw_horizons (relation, dropped_before) VALUES ('crypto_trades', %s)",
                 (day(t) + timedelta(hours=13, minutes=7),))
    lo, hi = refresh_window(conn, "1h", datetime(2000, 1, 1, tzinfo=timezone.utc), now + timedelta(days=1),
                            aggregate=CRYPTO)
    assert lo == day(t) + timedelta(hours=14)  # rounded up to a whole bucket
    assert hi <= now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)  # never the open hour
    assert hi > now - timedelta(hours=1)
    assert refresh_window(conn, "1m", None, day(t), aggregate=CRYPTO) is None  # entirely below the horizon
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown OHLCV aggregate"):
        conn.execute("SELECT * FROM tickvault_aggregate_window('nope', '1m')")
