"""Sessions for indicators: VWAP anchored at the US equity session open from ``/v2/calendar``
(fetched from the simulator over real HTTP), the UTC day for crypto, each bar's own ``vw``; the
worker's processor (live, incremental, restarted mid-session) and the refresh flow (batch, over
stored bars) give equal rows, and VWAP equals a direct SQL ``sum(vwap * volume) / sum(volume)``
over the session's bars, on both sides of a DST switch."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tickvault.alpaca.columnar import decode_columnar
from tickvault.alpaca.protocol import encode_frame
from tickvault.alpaca.rest import AlpacaREST, RetryPolicy
from tickvault.config import Settings
from tickvault.http import build_http_client
from tickvault.indicators import COLUMNS
from tickvault.indicators.sessions import (
    CalendarError,
    SessionCalendar,
    fetch_session_calendar,
    trading_day_from_alpaca,
)
from tickvault.jobs.indicators import refresh_indicators
from tickvault.sim import Simulator
from tickvault.stream.cache import PriceCache
from tickvault.stream.processor import Processor
from tickvault.stream.reader import QueuedFrame
from tests.support.net import free_port
from tests.support.pipeline import writer_pipeline

SESSIONS_LOG = "tickvault.indicators.sessions"
NO_RETRY = RetryPolicy(max_retries=0, backoff_base_s=0.01, backoff_cap_s=0.01)


def _z(text: str) -> int:
    """ns of a UTC time written ``2026-03-06T09:00``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def _rest(url: str) -> tuple[AlpacaREST, Any]:
    settings = Settings(alpaca_key_id="sim-key", alpaca_secret_key="sim-secret", alpaca_trading_url=url,
                        alpaca_data_url=url, http_timeout_s=2.0, http_max_retries=0)
    client = build_http_client(settings)
    return AlpacaREST(settings, client, retry=NO_RETRY), client


async def _sim_calendar(start: date, end: date) -> SessionCalendar:
    async with Simulator(key="sim-key", secret="sim-secret", symbols=1, rate=1.0, seed=1) as sim:
        rest, client = _rest(sim.rest_url)
        try:
            return await fetch_session_calendar(rest, start, end)
        finally:
            await client.aclose()


# ------------------------------------------------------------------------------- the calendar
async def test_sessions_from_the_simulators_calendar_follow_new_york_time_across_both_dst_switches(caplog):
    caplog.set_level(logging.WARNING, logger=SESSIONS_LOG)
    calendar = await _sim_calendar(date(2026, 3, 1), date(2026, 11, 30))
    assert calendar.source == "alpaca" and not caplog.records

    # March: Friday the 6th is EST (04:00 = 09:00Z, 20:00 = 01:00Z next day), Monday the 9th EDT (08:00Z, 00:00Z).
    assert calendar.window("AAA", _z("2026-03-06T08:59")) is None
    assert calendar.window("AAA", _z("2026-03-06T09:00")) == (_z("2026-03-06T09:00"), _z("2026-03-07T01:00"))
    assert calendar.window("AAA", _z("2026-03-07T00:59")) == (_z("2026-03-06T09:00"), _z("2026-03-07T01:00"))
    assert calendar.window("AAA", _z("2026-03-07T01:00")) is None  # 20:00 EST: the session has ended
    assert calendar.window("AAA", _z("2026-03-07T15:00")) is None  # Saturday
    assert calendar.window("AAA", _z("2026-03-09T07:59")) is None
    assert calendar.window("AAA", _z("2026-03-09T08:00")) == (_z("2026-03-09T08:00"), _z("2026-03-10T00:00"))
    # November: Friday Oct 30 is EDT, Monday Nov 2 EST.
    assert calendar.window("AAA", _z("2026-10-30T08:00"))[0] == _z("2026-10-30T08:00")
    assert calendar.window("AAA", _z("2026-11-02T08:59")) is None
    assert calendar.window("AAA", _z("2026-11-02T09:00"))[0] == _z("2026-11-02T09:00")
    # Good Friday is a holiday; the day after Thanksgiving closes at 13:00 and its after-hours at 17:00 EST.
    assert calendar.window("AAA", _z("2026-04-03T14:00")) is None
    day = calendar.trading_day(date(2026, 11, 27))
    assert (day.open_ns, day.close_ns) == (_z("2026-11-27T14:30"), _z("2026-11-27T18:00"))
    assert calendar.window("AAA", _z("2026-11-27T21:59")) == (_z("2026-11-27T09:00"), _z("2026-11-27T22:00"))
    assert calendar.window("AAA", _z("2026-11-27T22:00")) is None
    # Crypto: the UTC day, weekends and holidays included.
    assert calendar.window("BTC/USD", _z("2026-04-03T23:59")) == (_z("2026-04-03T00:00"), _z("2026-04-04T00:00"))
    assert not caplog.records

    # A date beyond the fetched range: the default rule, said once however often it is used.
    assert calendar.window("AAA", _z("2026-12-07T09:00")) == (_z("2026-12-07T09:00"), _z("2026-12-08T01:00"))
    assert calendar.window("AAA", _z("2026-12-08T09:00")) is not None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "outside the fetched calendar (2026-03-01 to 2026-11-30)" in warnings[0]


async def test_an_unreachable_calendar_falls_back_to_the_default_rule_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger=SESSIONS_LOG)
    rest, client = _rest(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    try:
        calendar = await fetch_session_calendar(rest, date(2026, 3, 1), date(2026, 3, 31))
    finally:
        await client.aclose()
    assert calendar.source == "default"
    # Weekdays 04:00-20:00 New York time, DST included; Good Friday is not known to the rule.
    assert calendar.window("AAA", _z("2026-03-06T09:00")) == (_z("2026-03-06T09:00"), _z("2026-03-07T01:00"))
    assert calendar.window("AAA", _z("2026-03-09T08:00")) == (_z("2026-03-09T08:00"), _z("2026-03-10T00:00"))
    assert calendar.window("AAA", _z("2026-03-08T12:00")) is None  # Sunday
    assert calendar.window("AAA", _z("2026-04-03T14:00")) is not None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "GET /v2/calendar failed (TransportError" in warnings[0]
    assert "default rule (weekdays 04:00-20:00 America/New_York" in warnings[0]


def test_an_unreadable_calendar_item_is_refused_with_the_item_named():
    good = {"date": "2026-03-06", "open": "09:30", "close": "16:00",
            "session_open": "0400", "session_close": "2000"}
    assert trading_day_from_alpaca(good).session_open_ns == _z("2026-03-06T09:00")
    with pytest.raises(CalendarError, match=r"unreadable /v2/calendar item .*'open': '9h30'"):
        trading_day_from_alpaca({**good, "open": "9h30"})
    with pytest.raises(CalendarError, match="regular session is not inside the extended one"):
        trading_day_from_alpaca({**good, "session_open": "1000"})
    with pytest.raises(CalendarError, match="not a list of days"):
        SessionCalendar.from_alpaca({"message": "forbidden"}, date(2026, 3, 1), date(2026, 3, 31))


# ------------------------------------------------------------------------------- worker = flow
SYMBOL = "AAA"
# Minutes of trades (UTC), chosen around the edges that matter: Friday 6 March (EST) across the
# session open (09:00Z) and the session close (01:00Z Saturday); Saturday (no session); Monday 9
# March (EDT, after the switch) across the session open (08:00Z) and the regular open (13:30Z).
WINDOWS = (("2026-03-06T08:40", 40), ("2026-03-07T00:40", 40), ("2026-03-07T15:00", 10),
           ("2026-03-09T07:40", 40), ("2026-03-09T13:00", 60))
RESTART_AT = _z("2026-03-09T13:40")  # mid-session: the worker stops before this bar and restarts


def _trades() -> list[tuple]:
    rng = random.Random(9)
    rows, price, trade_id = [], 100.0, 0
    for start, minutes in WINDOWS:
        base = datetime.fromisoformat(start).replace(tzinfo=UTC)
        for m in range(minutes):
            for k in range(rng.randint(1, 4)):
                price = round(max(1.0, price * (1 + rng.gauss(0, 0.003))), 2)
                t = base + timedelta(minutes=m, seconds=k * 13, microseconds=rng.randrange(1_000_000))
                trade_id += 1
                ns = int(t.timestamp()) * 10**9 + t.microsecond * 1000
                rows.append((t, SYMBOL, trade_id, "V", price, rng.randint(1, 900), ns))
    return rows


def _bar_messages(url: str) -> list[dict]:
    """ohlcv_1m's bars as Alpaca's 'b' messages (what the worker would have been sent)."""
    with psycopg.connect(url) as conn:
        bars = conn.execute(
            "SELECT bucket, open, high, low, close, volume, trade_count, vwap FROM ohlcv_1m "
            "WHERE symbol = %s ORDER BY bucket", (SYMBOL,)).fetchall()
    return [{"T": "b", "S": SYMBOL, "t": int(b[0].timestamp()) * 10**9, "o": b[1], "h": b[2], "l": b[3],
             "c": b[4], "v": int(b[5]), "n": b[6], "vw": b[7]} for b in bars]


def _indicator_rows(url: str) -> dict[datetime, dict[str, float | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT time, close, {', '.join(COLUMNS)} FROM indicators "
                            "WHERE symbol = %s AND timeframe = '1m' ORDER BY time", (SYMBOL,)).fetchall()
    return {r[0]: dict(zip(("close", *COLUMNS), r[1:], strict=True)) for r in rows}


def _session_vwap_by_sql(url: str) -> dict[datetime, float | None]:
    """VWAP computed straight from the stored bars: a New York date's bars from 04:00 to before
    20:00 (weekdays) are its session; every other bar has none."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            WITH b AS (
                SELECT bucket, volume, vwap, (bucket AT TIME ZONE 'America/New_York') AS local
                  FROM ohlcv_1m WHERE symbol = %s)
            SELECT bucket,
                   CASE WHEN extract(isodow FROM local) < 6 AND local::time >= '04:00' AND local::time < '20:00'
                        THEN sum(vwap * volume) OVER w / sum(volume) OVER w END
              FROM b
            WINDOW w AS (PARTITION BY local::date, extract(isodow FROM local) < 6
                                      AND local::time >= '04:00' AND local::time < '20:00' ORDER BY bucket)
             ORDER BY bucket
            """, (SYMBOL,)).fetchall()
    return dict(rows)


async def _run_worker(url: str, calendar: SessionCalendar, messages: list[dict]) -> int:
    """The real processor and writer over the bars: up to RESTART_AT, then a new processor that
    restores from the stored bars and takes the rest. Returns the bars the restore replayed."""
    async with writer_pipeline(url, "sessions-test") as (pool, writer, metrics):
        before = [m for m in messages if m["t"] < RESTART_AT]
        after = [m for m in messages if m["t"] >= RESTART_AT]
        first = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics, calendar=calendar)
        for i in range(0, len(before), 25):  # frames of 25 bars, as a feed sends them
            await first.handle(_queued(before[i:i + 25]))
        await writer.drain()
        restarted = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics, calendar=calendar)
        replayed = await restarted.restore(pool, stocks=[SYMBOL])
        await restarted.handle(_queued(after))
        await writer.drain()
    return replayed


def _queued(messages: list[dict]) -> QueuedFrame:
    return QueuedFrame(decode_columnar(encode_frame(messages)), time.time_ns(), time.monotonic_ns())


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == pytest.approx(b, rel=1e-9, abs=1e-9)


async def test_worker_restarted_mid_session_and_refresh_flow_give_equal_rows_and_sql_session_vwap(fresh_database):
    url = fresh_database()
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
                "COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN") as copy:
            for row in _trades():
                copy.write_row(row)
        conn.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (datetime(2026, 3, 6, tzinfo=UTC),
                                                                  datetime(2026, 3, 10, tzinfo=UTC)))
        conn.commit()
    calendar = await _sim_calendar(date(2026, 2, 1), date(2026, 3, 31))
    since = datetime(2026, 3, 6, tzinfo=UTC)
    refresh_indicators(url, since=since, calendar=calendar)  # materializes ohlcv_1m (rows replaced below)
    messages = _bar_messages(url)
    assert len(messages) == sum(m for _, m in WINDOWS)
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM indicators")
        conn.commit()

    replayed = await _run_worker(url, calendar, messages)
    worker = _indicator_rows(url)
    # The restore replayed every stored bar before the restart (fewer than the 1000-bar warm-up).
    assert replayed == sum(1 for m in messages if m["t"] < RESTART_AT)
    refresh_indicators(url, since=since, calendar=calendar)
    flow = _indicator_rows(url)
    assert list(worker) == list(flow) and len(flow) == len(messages)
    for when, row in flow.items():
        for col, value in row.items():
            assert _same(worker[when][col], value), (when, col, worker[when][col], value)

    by_sql = _session_vwap_by_sql(url)
    assert list(by_sql) == list(flow)
    for when, vwap in by_sql.items():
        assert _same(flow[when]["vwap"], vwap), (when, flow[when]["vwap"], vwap)

    own = {datetime.fromtimestamp(m["t"] / 1e9, UTC): m["vw"] for m in messages}
    at = lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC)  # noqa: E731
    # Each session's first bar is its own vw: nothing carried over from the evening before or the weekend;
    # the bars just before 04:00 New York time (EST on the 6th, EDT on the 9th) have no session.
    for first_bar, before in (("2026-03-06T09:00", "2026-03-06T08:59"), ("2026-03-09T08:00", "2026-03-09T07:59")):
        assert flow[at(first_bar)]["vwap"] == pytest.approx(own[at(first_bar)], rel=1e-12)
        assert flow[at(before)]["vwap"] is None
    assert flow[at("2026-03-07T00:59")]["vwap"] is not None and flow[at("2026-03-07T01:00")]["vwap"] is None
    assert all(flow[at("2026-03-07T15:00") + timedelta(minutes=m)]["vwap"] is None for m in range(10))
    # The regular open (09:30 EDT) does not restart it: the pre-market bars stay in the session's VWAP.
    assert flow[at("2026-03-09T13:30")]["vwap"] != pytest.approx(own[at("2026-03-09T13:30")], rel=1e-9)
    assert flow[at("2026-03-09T13:59")]["rsi_14"] is not None


async def test_restore_with_a_wildcard_takes_every_symbol_with_recent_bars(fresh_database):
    """``TICKVAULT_SYMBOLS=*``: the symbols with a stored bar in the last 4 days are restored; one
    whose newest bar is older is not (the feed will start it afresh)."""
    url = fresh_database()
    now = time.time_ns() // 60_000_000_000 * 60_000_000_000
    recent = [{"T": "b", "S": sym, "t": now - (30 - i) * 60 * 10**9, "o": 10.0, "h": 11.0, "l": 9.0, "c": 10.5,
               "v": 100 + i, "n": 3, "vw": 10.2} for sym in ("AAA", "BBB") for i in range(30)]
    stale = [{**recent[0], "S": "OLD", "t": now - 5 * 86_400 * 10**9}]
    async with writer_pipeline(url, "sessions-wildcard-test") as (pool, writer, metrics):
        live = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics)
        await live.handle(_queued(recent + stale))
        await writer.drain()
        restarted = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics)
        assert await restarted.restore(pool, stocks=["*"]) == 60
    assert sorted(restarted.indicators) == ["AAA", "BBB"]
    for sym in ("AAA", "BBB"):
        assert restarted.indicators[sym].values() == pytest.approx(live.indicators[sym].values(), nan_ok=True)


def test_the_default_empty_symbol_list_restores_like_a_wildcard():
    """No TICKVAULT_SYMBOLS subscribes to every symbol, as "*" does: the restore must take every symbol
    with recent bars then too (it took none: only a literal "*" was understood)."""
    from tickvault.stream.worker import restore_symbols

    assert restore_symbols((), True) == ["*"] and restore_symbols(["*"], True) == ["*"]
    assert restore_symbols(["AAPL", "MSFT"], True) == ["AAPL", "MSFT"]
    assert restore_symbols((), False) == () and restore_symbols(["AAPL"], False) == ()
