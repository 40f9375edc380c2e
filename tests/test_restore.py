"""The worker's start-up restore of indicators, batched (every symbol of a table in two statements,
the bars streamed in pages), against the per-symbol algorithm it replaced
(``bench.bench_restore.restore_per_symbol``, kept verbatim), on the real TimescaleDB: the same bars
replayed and the same state, bit for bit, for every symbol: stocks whose session reaches past the
warm-up, stocks whose newest bar has no session, a symbol whose warm-up reaches past the 30-day
horizon, crypto across UTC midnight with fractional volumes, symbols with no 1-minute bar, a
wildcard; page boundaries inside a symbol's bars; and the loop gets control between pages."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from bench.bench_restore import restore_per_symbol, restored_state
from tickvault.config import load_settings
from tickvault.db.pool import open_pool
from tickvault.indicators.sessions import SessionCalendar
from tickvault.stream.processor import RESTORE_PAGE_ROWS, Processor
from tests.support.waiting import loop_turns

# The default session rule (weekdays 04:00-20:00 New York time); March 2026 before the DST switch: EST.
CALENDAR = SessionCalendar(reason="test: the default rule", warned=True)
WED_OPEN = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)  # Wednesday 04:00 EST, a session start
STOCKS = ["LONG", "OFF", "GAP", *(f"M{i:02d}" for i in range(25)), "NONE", "DAY"]
CRYPTO = ["BTC/USD", "ETH/USD"]


def _walk(rng: random.Random, symbol: str, times: list[datetime], crypto: bool = False) -> list[tuple]:
    """1-minute bar rows at ``times``: a random walk, a NULL vwap now and then, crypto volumes fractional."""
    rows, price = [], 100.0 + rng.random() * 50
    for t in times:
        price = max(1.0, price * (1 + rng.gauss(0, 0.002)))
        spread = abs(rng.gauss(0, 0.001)) * price
        volume = Decimal(f"{rng.random() * 3:.9f}") if crypto else rng.randint(1, 9000)
        vwap = None if rng.random() < 0.05 else price - spread / 3
        rows.append((t, symbol, "1Min", price, price + spread, price - spread, price, volume, rng.randint(1, 50), vwap))
    return rows


def _minutes(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(minutes=m) for m in range(count)]


def _insert(url: str, stocks: list[tuple], crypto: list[tuple]) -> None:
    columns = "time, symbol, timeframe, open, high, low, close, volume, trade_count, vwap"
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, rows in (("bars", stocks), ("crypto_bars", crypto)):
            cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * 10)})", rows)


def _store(url: str) -> None:
    rng = random.Random(20260304)
    stocks: list[tuple] = []
    # LONG: Tuesday 14:00-20:00 EST and Wednesday's session from its 04:00 start to 15:00 (661 bars):
    # a 50-bar warm-up restores from the session start, a 1000-bar one from Tuesday.
    stocks += _walk(rng, "LONG", _minutes(WED_OPEN - timedelta(hours=13), 360) + _minutes(WED_OPEN, 661))
    # OFF: Friday's session end and Saturday bars: the newest bar has no session.
    stocks += _walk(rng, "OFF", _minutes(datetime(2026, 3, 7, 0, 0, tzinfo=UTC), 60)
                    + _minutes(datetime(2026, 3, 7, 15, 0, tzinfo=UTC), 30))
    # GAP: 10 bars 43 days before its 10 newest: beyond the 30-day horizon, so never replayed.
    stocks += _walk(rng, "GAP", _minutes(WED_OPEN - timedelta(days=43), 10) + _minutes(WED_OPEN + timedelta(hours=2), 10))
    for i in range(25):  # many symbols of a few dozen bars each: pages end inside them
        start = WED_OPEN + timedelta(minutes=rng.randrange(600))
        stocks += _walk(rng, f"M{i:02d}", sorted(rng.sample(_minutes(start, 90), rng.randint(1, 60))))
    # DAY: a daily bar only, which no restore reads; NONE has nothing at all.
    stocks.append((WED_OPEN, "DAY", "1Day", 10.0, 11.0, 9.0, 10.5, 100, 3, 10.2))
    # A daily bar beside LONG's minutes changes nothing either.
    stocks.append((WED_OPEN + timedelta(hours=7), "LONG", "1Day", 10.0, 11.0, 9.0, 10.5, 100, 3, 10.2))
    # BTC/USD: 23:00Z to 01:00Z, across the UTC day (its session).
    crypto = _walk(rng, "BTC/USD", _minutes(datetime(2026, 3, 4, 23, 0, tzinfo=UTC), 120), crypto=True)
    _insert(url, stocks, crypto)


@pytest.fixture(scope="module")
def bars_url(fresh_database) -> str:
    url = fresh_database()
    _store(url)
    return url


async def _restored(url: str, batched: bool, *, stocks=(), crypto=(), **kwargs) -> tuple[int, Processor]:
    """A fresh processor (holding a stale state for LONG, which the restore must drop, and one for
    KEEP, which it must leave alone) restored by either algorithm."""
    pool = await open_pool(load_settings(database_url=url), min_size=1, max_size=1, name="restore-test")
    try:
        processor = Processor(asyncio.Queue(), None, None, None, calendar=CALENDAR)
        for symbol in ("LONG", "KEEP"):
            processor._indicators_after(symbol, int(WED_OPEN.timestamp()) * 10**9, 9e9, 1.0, 5e5, 1e6, None)
        if batched:
            replayed = await processor.restore(pool, stocks=stocks, crypto=crypto, **kwargs)
        else:
            replayed = await restore_per_symbol(processor, pool, stocks=stocks, crypto=crypto, **kwargs)
        return replayed, processor
    finally:
        await pool.close()


@pytest.mark.parametrize("warmup_bars", [50, 1000, 0])
@pytest.mark.parametrize("page_rows", [7, RESTORE_PAGE_ROWS])
async def test_batched_restore_replays_what_the_per_symbol_restore_did_bit_for_bit(bars_url, warmup_bars, page_rows):
    old_count, old = await _restored(bars_url, False, stocks=STOCKS, crypto=CRYPTO, warmup_bars=warmup_bars)
    new_count, new = await _restored(bars_url, True, stocks=STOCKS, crypto=CRYPTO, warmup_bars=warmup_bars,
                                     page_rows=page_rows)
    assert new_count == old_count > 0
    # Every symbol's whole state (indicator slots, NaNs included, and session window), in the same order.
    assert list(restored_state(new).items()) == list(restored_state(old).items())
    assert list(new.indicators) == ["KEEP", "LONG", "OFF", "GAP", *(f"M{i:02d}" for i in range(25)), "BTC/USD"]
    assert "NONE" not in new.indicators and "DAY" not in new.indicators and "ETH/USD" not in new.indicators
    # Warmed up; the stale bar is gone as in the reference, which starts a restored symbol afresh.
    assert not any(math.isnan(v) for v in new.indicators["LONG"].values().values())


async def test_batched_restore_reads_each_symbols_session_and_horizon_as_before(bars_url):
    """What each case replays: LONG its session (661 bars) when the warm-up is shorter, its last 1000
    bars otherwise; OFF (no session at its newest bar) its warm-up; GAP only its 10 bars inside the
    30-day horizon; BTC/USD its UTC day (60 bars) when the warm-up is shorter."""
    for symbols, crypto, warmup, expected in ((["LONG"], [], 50, 661), (["LONG"], [], 1000, 1000),
                                              (["OFF"], [], 40, 40), (["GAP"], [], 1000, 10),
                                              ([], ["BTC/USD"], 5, 60), (["NONE", "DAY"], ["ETH/USD"], 1000, 0)):
        count, _ = await _restored(bars_url, True, stocks=symbols, crypto=crypto, warmup_bars=warmup)
        assert count == expected, (symbols, crypto, warmup)


async def test_a_symbol_named_twice_is_restored_once(bars_url):
    count, twice = await _restored(bars_url, True, stocks=["GAP", "GAP"], warmup_bars=1000)
    _, once = await _restored(bars_url, True, stocks=["GAP"], warmup_bars=1000)
    assert count == 10 and restored_state(twice) == restored_state(once)


async def test_batched_restore_of_a_wildcard_equals_the_per_symbol_restore(fresh_database):
    """``*`` for stocks and crypto: the symbols with a 1-minute bar in the last 4 days, each restored
    as the per-symbol algorithm did; an older one is not."""
    url = fresh_database()
    rng = random.Random(7)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    stocks = _walk(rng, "AAA", _minutes(now - timedelta(hours=30), 1500)) + _walk(rng, "BBB", _minutes(now - timedelta(hours=2), 90))
    stocks += _walk(rng, "OLD", _minutes(now - timedelta(days=5), 20))
    crypto = _walk(rng, "BTC/USD", _minutes(now - timedelta(hours=20), 1100), crypto=True)
    _insert(url, stocks, crypto)
    old_count, old = await _restored(url, False, stocks=["*"], crypto=["*"])
    new_count, new = await _restored(url, True, stocks=["*"], crypto=["*"], page_rows=100)
    assert new_count == old_count >= 1000 + 90 + 1000
    assert list(restored_state(new).items()) == list(restored_state(old).items())
    assert sorted(new.indicators) == ["AAA", "BBB", "BTC/USD", "KEEP", "LONG"]  # LONG, KEEP: set before


async def test_restore_gives_the_loop_control_after_every_page(bars_url):
    """The restore runs before the feed opens, but not alone on its loop (the worker's writer runs
    already): another task runs between any two pages of a long restore."""
    async with loop_turns() as turns:
        count, _ = await _restored(bars_url, True, stocks=STOCKS, crypto=CRYPTO, page_rows=10)
    assert turns.count >= count // 10  # at least once per page, besides the network waits


async def test_a_database_lost_mid_restore_raises_instead_of_restoring_part(bars_url):
    """The server ends the restore's connection after its first page: the restore raises psycopg's
    error, saying what it was doing (the worker does not open the feed on half-restored
    indicators); it does not hang."""
    pool = await open_pool(load_settings(database_url=bars_url), min_size=1, max_size=1, name="restore-lost")
    processor = Processor(asyncio.Queue(), None, None, None, calendar=CALENDAR)

    async def end_its_connection_once_replaying() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not processor.indicators:  # the first page is being replayed (polled every loop turn)
            assert loop.time() < deadline, "the restore replayed no page within 60 s"
            await asyncio.sleep(0)
        with psycopg.connect(bars_url, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'restore-lost'").fetchall()
        assert ended == [(True,)]

    killer = asyncio.create_task(end_its_connection_once_replaying())
    try:
        with pytest.raises(psycopg.OperationalError) as lost:
            await asyncio.wait_for(processor.restore(pool, stocks=STOCKS, page_rows=1), timeout=60)
        assert f"while restoring the indicators of {len(STOCKS)} symbols from bars:" in "".join(lost.value.__notes__)
        await asyncio.wait_for(killer, timeout=30)
    finally:
        killer.cancel()
        await pool.close()


async def test_a_restore_cancelled_mid_way_leaves_its_pooled_connection_usable(bars_url):
    """Cancelled between two pages (a stop during start-up), the restore ends at once: the FETCH in
    flight is cancelled, and the pool's one connection restores everything afterwards."""
    pool = await open_pool(load_settings(database_url=bars_url), min_size=1, max_size=1, name="restore-cancel")
    try:
        processor = Processor(asyncio.Queue(), None, None, None, calendar=CALENDAR)
        restore = asyncio.create_task(processor.restore(pool, stocks=STOCKS, page_rows=5))
        deadline = asyncio.get_running_loop().time() + 60
        while len(processor.indicators) < 3 and not restore.done():  # three symbols into the replay
            assert asyncio.get_running_loop().time() < deadline, "three symbols not replayed within 60 s"
            await asyncio.sleep(0)  # every loop turn: the cancel must land between two pages
        assert not restore.done(), "the restore ended before it could be cancelled mid-way"
        restore.cancel()
        with pytest.raises(asyncio.CancelledError):
            await restore
        expected, _ = await _restored(bars_url, False, stocks=STOCKS)
        again = Processor(asyncio.Queue(), None, None, None, calendar=CALENDAR)
        assert await asyncio.wait_for(again.restore(pool, stocks=STOCKS), timeout=60) == expected
    finally:
        await pool.close()
