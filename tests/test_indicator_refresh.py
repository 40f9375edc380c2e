"""refresh_indicators against a real TimescaleDB: trades → ohlcv_1m → vectorized indicators that
equal the worker's incremental IndicatorSet fed the same bars, and re-running changes nothing."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tickvault.jobs.indicators import WARMUP_BARS, refresh_indicators
from tickvault.indicators import COLUMNS, IndicatorSet

pytestmark = pytest.mark.db

SYMBOLS = ("AAA", "BBB")
MINUTES = 1300  # more than WARMUP_BARS, so the second refresh really starts mid-history
SPLIT = 1200  # minutes in the first batch of trades
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def url(fresh_database) -> str:
    return fresh_database()


def _trades(base: datetime, minutes: range, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    trade_id = minutes.start * 100
    for sym_i, sym in enumerate(SYMBOLS):
        price = 100.0 + 50 * sym_i
        for m in minutes:
            for k in range(rng.randint(1, 5)):
                price = max(1.0, price * (1 + rng.gauss(0, 0.002)))
                t = base + timedelta(minutes=m, seconds=k * 11 + rng.random())
                ns = int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000
                trade_id += 1
                rows.append((t, sym, trade_id, "V", round(price, 4), rng.randint(1, 500), ns))
    return rows


def _insert(url: str, rows: list[tuple]) -> None:
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        # Writers note late trades (below a refreshed watermark) for the next aggregate refresh.
        conn.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (min(r[0] for r in rows), max(r[0] for r in rows)))
        conn.commit()


def _session(bucket: datetime) -> date | None:
    """The default session rule written out (no calendar is given to these refreshes): weekdays
    04:00-20:00 New York time, one session per New York date; None outside."""
    local = bucket.astimezone(NEW_YORK)
    return local.date() if local.weekday() < 5 and time(4) <= local.time() < time(20) else None


def _expected(url: str, symbol: str) -> dict[datetime, dict[str, float]]:
    """IndicatorSet fed every bar of ohlcv_1m one by one with its own vwap, VWAP reset at each
    session start and NaN outside sessions (as the worker does)."""
    with psycopg.connect(url) as conn:
        bars = conn.execute(
            "SELECT bucket, high, low, close, volume, vwap FROM ohlcv_1m WHERE symbol = %s ORDER BY bucket",
            (symbol,),
        ).fetchall()
    ind = IndicatorSet()
    session = None
    out = {}
    for bucket, high, low, close, volume, vwap in bars:
        if _session(bucket) != session:
            session = _session(bucket)
            ind.reset_session()
        ind.update(high, low, close, volume, vwap, in_session=session is not None)
        out[bucket] = {"close": close, **ind.values()}
    return out


def _stored(url: str, symbol: str) -> dict[datetime, dict[str, float | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT time, source, close, {', '.join(COLUMNS)} FROM indicators "
            "WHERE symbol = %s AND timeframe = '1m' ORDER BY time",
            (symbol,),
        ).fetchall()
    assert all(r[1] == "flow" for r in rows)
    return {r[0]: dict(zip(("close", *COLUMNS), r[2:], strict=True)) for r in rows}


def _assert_equal(stored: dict, expected: dict) -> None:
    assert list(stored) == list(expected)
    for when, exp in expected.items():
        got = stored[when]
        for col, value in exp.items():
            if math.isnan(value):
                assert got[col] is None, (when, col, got[col])
            else:
                assert got[col] == pytest.approx(value, rel=1e-9, abs=1e-9), (when, col)


def test_refresh_equals_incremental_indicators_and_is_idempotent(url: str) -> None:
    # ~22 hours of bars from Tuesday 2026-03-03 09:00 New York time: a session's end (20:00) and the
    # next one's start (04:00) fall inside them whenever this runs (the bars were once placed before
    # the day before yesterday: on a Tuesday all weekend, no session edge for VWAP to restart at).
    base = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
    now = base + timedelta(minutes=MINUTES + 5)
    sessions = [_session(base + timedelta(minutes=m)) for m in range(MINUTES)]
    assert None in sessions and len(set(sessions) - {None}) == 2

    _insert(url, _trades(base, range(0, SPLIT), seed=1))
    first = refresh_indicators(url, since=base)
    assert {s.symbol for s in first.symbols} == set(SYMBOLS)
    assert all(s.rows_upserted == SPLIT for s in first.symbols)

    # More trades arrive; the next refresh starts from each symbol's newest computed bar, with a
    # warm-up of WARMUP_BARS bars (not the whole history) before it.
    _insert(url, _trades(base, range(SPLIT, MINUTES), seed=2))
    second = refresh_indicators(url, now=now)
    for s in second.symbols:
        assert s.rows_upserted == MINUTES - SPLIT + 1  # the last bar of the first run is redone
        assert s.history_bars < MINUTES  # warm-up was bounded...
        assert s.history_bars >= WARMUP_BARS  # ...but long enough
    md = second.to_markdown()
    assert md.startswith("# Indicators refreshed at ") and f"{second.rows_upserted} rows for 2 symbols" in md
    assert "AAA" in md
    state = {t.timeframe: t for t in second.ohlcv.timeframes}
    assert set(state) == {"1m", "5m", "1h", "1d"} and state["1m"].materialized_to is not None
    assert "| 1m | " in md.split("## OHLCV aggregates: current up to when", 1)[1]

    for sym in SYMBOLS:
        expected = _expected(url, sym)
        assert len(expected) == MINUTES
        _assert_equal(_stored(url, sym), expected)

    # Idempotent: recomputing everything twice gives the same rows with the same values.
    again = refresh_indicators(url, since=base)
    assert again.rows_upserted == MINUTES * len(SYMBOLS)
    before = {sym: _stored(url, sym) for sym in SYMBOLS}
    refresh_indicators(url, since=base)
    for sym in SYMBOLS:
        assert _stored(url, sym) == before[sym]
        _assert_equal(before[sym], _expected(url, sym))
    # And with nothing new, only the newest bar per symbol is looked at again.
    idle = refresh_indicators(url, now=now)
    assert all(s.rows_upserted == 1 for s in idle.symbols)
    for sym in SYMBOLS:
        stored = _stored(url, sym)
        assert list(stored) == list(before[sym])
        _assert_equal(stored, _expected(url, sym))


def test_artifact_says_how_current_each_aggregate_is_and_why_an_indicator_is_empty():
    """Pure formatting: Timescale's refresh reports no row count (None), which must not read as
    "0 rows"; a symbol with 10 bars has no RSI 14 (it needs 15) and the artifact says so."""
    from zoneinfo import ZoneInfo

    from tickvault.db.aggregates import AggregateStatus, RefreshResult
    from tickvault.jobs.indicators import IndicatorRefreshSummary, OhlcvState, SymbolRefresh
    from tickvault.market_time import MarketClock

    at = datetime(2025, 3, 14, 14, 35, tzinfo=UTC)  # 10:35 in New York (EDT)
    summary = IndicatorRefreshSummary(
        started_at=at,
        aggregates=[RefreshResult("1m", at - timedelta(minutes=15), at - timedelta(minutes=1), None)],
        symbols=[SymbolRefresh("NEWCO", 10, 10, at - timedelta(minutes=10), at - timedelta(minutes=1), 10.5, None)],
        ohlcv=OhlcvState("timescale", [
            AggregateStatus("1m", at - timedelta(minutes=1), at),
            AggregateStatus("5m", None, None),
        ]),
    )
    md = summary.to_markdown(MarketClock(ZoneInfo("America/New_York")))
    assert md.startswith("# Indicators refreshed at 10:35 EDT: 10 rows for 1 symbol\n")
    assert "| 1m | 2025-03-14 10:34 EDT (14:34 UTC) | 10:35:00 EDT | refreshed" in md
    assert "Timescale reports no row count" in md and "| 0 |" not in md
    assert "| 5m | nothing yet | never | nothing pending |" in md
    assert "- (needs 15 bars)" in md  # the RSI cell of NEWCO
    assert "RSI 14 and ATR 14: 15 bars needed; empty for 1 symbol(s), which have at most 10" in md
    assert "too little history" in summary.log_line()
