"""Restore benchmark: the worker's start-up rebuild of indicators from stored bars, batched (one
statement per table for every symbol's bounds, one server-side cursor for every symbol's bars)
against the per-symbol algorithm it replaced (two round trips per symbol, one after another).

Run from the repo root: ``python -m bench.bench_restore`` (~1-2 min). Writes
``bench/results/restore.json`` and prints a table.

Set-up: a scratch database (created, migrated and dropped here) with 1120 1-minute bars for each of
``max(SYMBOL_COUNTS)`` stock symbols, the New York session minutes up to a Wednesday 15:00 (so each
restore reads its 1000-bar warm-up across two sessions), vacuumed as a live table would be. For each symbol
count (the first N symbols), :data:`ROUNDS` interleaved rounds of each algorithm into a fresh
:class:`~tickvault.stream.processor.Processor` on one pooled connection; the best round of each
(interference only slows a round down). Both must leave every symbol's indicators equal, bit for bit
(``values_equal``), or the bench fails.

Keys: ``batched_ms`` and ``per_symbol_ms`` per symbol count, ``speedup`` (per-symbol ÷ batched),
``us_per_bar``, ``bars`` replayed, ``rounds`` (every round's ms). Goal: the batched restore faster
than the per-symbol one at every symbol count.

:func:`restore_per_symbol` is the old algorithm, kept verbatim as the peer here and as the reference
``tests/test_restore.py`` checks the batched restore against.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from bench.common import scratch_database, write_results
from tickvault.alpaca.protocol import datetime_to_ns
from tickvault.config import load_settings
from tickvault.db.pool import open_pool
from tickvault.db.tables import recent_symbols_sql
from tickvault.indicators.definitions import WARMUP_BARS
from tickvault.indicators.sessions import SessionCalendar
from tickvault.stream.cache import PriceCache
from tickvault.stream.metrics import Metrics
from tickvault.stream.processor import (
    _BARS_TABLE,
    RESTORE_HORIZON_S,
    RESTORE_MAX_SYMBOLS,
    RESTORE_PAGE_ROWS,
    RESTORE_RECENT_S,
    Processor,
)

SYMBOL_COUNTS = (200, 2000)
# Per symbol: the session minutes of the 1600 minutes up to NEWEST (Tuesday 12:21-20:00 and
# Wednesday 04:00-15:00 New York time: 1120 bars), of which a restore reads the warm-up's 1000.
SPAN_MINUTES = 1600
ROUNDS = {200: 3, 2000: 1}  # the 2000-symbol rounds take ~10-25 s each: one of each keeps the bench short
# The newest bar: a Wednesday 15:00 New York time (EST), so the warm-up reaches back past the
# session's 04:00 start into the session before; fixed, so every run reads the same bars.
NEWEST = datetime(2026, 3, 4, 20, 0, tzinfo=UTC)


async def restore_per_symbol(processor: Processor, pool, stocks: Sequence[str] = (), crypto: Sequence[str] = (),
                             *, warmup_bars: int = WARMUP_BARS) -> int:
    """``Processor.restore`` as it was before the batched restore: per symbol, one statement for its
    warm-up bounds and one for its bars, one symbol after another. The peer of this bench and the
    reference of the exactness tests; do not "improve" it."""
    replayed = 0
    async with pool.connection() as conn:
        for is_crypto_table, wanted in ((False, list(stocks)), (True, list(crypto))):
            table = _BARS_TABLE[is_crypto_table]
            if "*" in wanted:
                cur = await conn.execute(recent_symbols_sql(table, where="timeframe = '1Min'"),
                                         {"window": f"{RESTORE_RECENT_S} seconds", "limit": RESTORE_MAX_SYMBOLS})
                wanted = [r[0] for r in await cur.fetchall()]
            for symbol in wanted:
                cur = await conn.execute(
                    f"SELECT min(time), max(time) FROM (SELECT time FROM {table} "
                    "WHERE symbol = %s AND timeframe = '1Min' ORDER BY time DESC LIMIT %s) AS recent",
                    (symbol, max(warmup_bars, 1)))
                oldest, newest = await cur.fetchone()
                if newest is None:
                    continue
                newest_ns = datetime_to_ns(newest)
                window = processor.calendar.window(symbol, newest_ns)
                start_ns = min(datetime_to_ns(oldest), window[0] if window else newest_ns)
                start_ns = max(start_ns, newest_ns - RESTORE_HORIZON_S * 10**9)
                cur = await conn.execute(
                    f"SELECT time, high, low, close, volume::float8, vwap FROM {table} "
                    "WHERE symbol = %s AND timeframe = '1Min' AND time >= to_timestamp(%s::float8 / 1e9) "
                    "ORDER BY time",
                    (symbol, start_ns))
                rows = await cur.fetchall()
                processor.indicators.pop(symbol, None)
                for t, high, low, close, volume, vwap in rows:
                    processor._indicators_after(symbol, datetime_to_ns(t), high, low, close, volume, vwap)
                replayed += len(rows)
    return replayed


def symbol_name(i: int) -> str:
    return f"S{i:04d}"


def _load(url: str, symbols: int) -> int:
    """For each of ``symbols`` symbols, a bar for every New York session minute (04:00-20:00 on a
    weekday, as Alpaca's feed sends them) of the :data:`SPAN_MINUTES` up to :data:`NEWEST`: a seeded
    walk per symbol (high ≥ close ≥ low, a vwap inside the bar, volumes 100-5000). Returns the bars
    stored per symbol."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(
            """
            INSERT INTO bars (time, symbol, timeframe, open, high, low, close, volume, trade_count, vwap)
            SELECT m.t, 'S' || lpad(s::text, 4, '0'), '1Min', c, c + r, c - r, c, v, 10, c - r / 3
              FROM generate_series(0, %(span)s - 1) g
             CROSS JOIN LATERAL (SELECT %(newest)s - g * interval '1 minute' AS t) m
             CROSS JOIN generate_series(0, %(symbols)s - 1) s
             CROSS JOIN LATERAL (SELECT 50 + s %% 100 + sin(g / 37.0 + s) * 3 + random() AS c, random() * 0.2 AS r,
                                        100 + floor(random() * 4900)::bigint AS v) AS walk
             WHERE extract(isodow FROM m.t AT TIME ZONE 'America/New_York') < 6
               AND (m.t AT TIME ZONE 'America/New_York')::time >= '04:00'
               AND (m.t AT TIME ZONE 'America/New_York')::time < '20:00'
            """, {"newest": NEWEST, "symbols": symbols, "span": SPAN_MINUTES})
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE bars")  # a live table's visibility map: index-only scans stay index-only
        return conn.execute("SELECT count(*) FROM bars").fetchone()[0] // symbols


def indicator_state(ind) -> list:
    """Every indicator's slots, recursively: equal states give equal values for every later bar."""
    out = []
    for name in type(ind).__slots__:
        v = getattr(ind, name)
        if hasattr(type(v), "__slots__") and not isinstance(v, (int, float, str)):
            out.append((name, indicator_state(v)))
        elif isinstance(v, float) and v != v:
            out.append((name, "nan"))
        elif isinstance(v, (list, tuple)) or type(v).__name__ == "deque":
            out.append((name, ["nan" if isinstance(x, float) and x != x else x for x in v]))
        else:
            out.append((name, v))
    return out


def restored_state(processor: Processor) -> dict[str, tuple]:
    """Each restored symbol's whole state: its indicators' slots and its session tracker's window."""
    return {symbol: (indicator_state(ind), processor._sessions[symbol].start, processor._sessions[symbol].end)
            for symbol, ind in processor.indicators.items()}


async def _one(url: str, symbols: list[str], calendar: SessionCalendar, batched: bool) -> tuple[float, int, Processor]:
    pool = await open_pool(load_settings(database_url=url), min_size=1, max_size=1, name="bench-restore")
    try:
        async with pool.connection() as conn:  # the connection is open before the clock starts
            await conn.execute("SELECT 1")
        metrics = Metrics()
        processor = Processor(asyncio.Queue(), None, PriceCache(60, metrics), metrics, calendar=calendar)
        started = time.perf_counter()
        if batched:
            bars = await processor.restore(pool, stocks=symbols)
        else:
            bars = await restore_per_symbol(processor, pool, stocks=symbols)
        return time.perf_counter() - started, bars, processor
    finally:
        await pool.close()


def run() -> dict:
    """Run the benchmark, write ``bench/results/restore.json``, return the results."""
    from bench.bench_decode import machine_info

    machine = machine_info()  # before the bench: its load average is the host's, not ours
    wall = time.perf_counter()
    # The default session rule (weekdays 04:00-20:00 New York time), said here, not logged per round.
    calendar = SessionCalendar(reason="bench: the default rule", warned=True)
    results: dict[str, dict] = {}
    with scratch_database("tickvault_bench_restore") as url:
        loaded = time.perf_counter()
        stored = _load(url, max(SYMBOL_COUNTS))
        load_s = time.perf_counter() - loaded
        for n in SYMBOL_COUNTS:
            symbols = [symbol_name(i) for i in range(n)]
            rounds: dict[str, list[float]] = {"batched": [], "per_symbol": []}
            replayed: dict[str, int] = {}
            last: dict[str, Processor] = {}
            for r in range(ROUNDS[n]):
                # Alternate which side goes first, so a neighbour's burst does not always hit the same one.
                order = ("batched", "per_symbol") if r % 2 == 0 else ("per_symbol", "batched")
                for side in order:
                    seconds, bars, processor = asyncio.run(_one(url, symbols, calendar, side == "batched"))
                    rounds[side].append(seconds * 1000)
                    replayed[side] = bars
                    last[side] = processor
            equal = (replayed["batched"] == replayed["per_symbol"]
                     and list(restored_state(last["batched"]).items())
                     == list(restored_state(last["per_symbol"]).items()))
            if not equal:
                raise AssertionError(f"{n} symbols: the batched restore's indicators differ from the per-symbol one's")
            best = {side: min(ms) for side, ms in rounds.items()}
            results[str(n)] = {
                "batched_ms": round(best["batched"], 1),
                "per_symbol_ms": round(best["per_symbol"], 1),
                "speedup": round(best["per_symbol"] / best["batched"], 2),
                "us_per_bar": {side: round(best[side] * 1000 / replayed[side], 2) for side in best},
                "bars": replayed["batched"],
                "values_equal": equal,
                "rounds": {side: [round(ms, 1) for ms in v] for side, v in rounds.items()},
            }
    goals = {f"faster_at_{n}": results[str(n)]["speedup"] > 1.0 for n in SYMBOL_COUNTS}
    data = {
        "batched_ms": {n: r["batched_ms"] for n, r in results.items()},
        "per_symbol_ms": {n: r["per_symbol_ms"] for n, r in results.items()},
        "speedup": {n: r["speedup"] for n, r in results.items()},
        "by_symbols": results,
        "goal": "the batched restore faster than the per-symbol one at every symbol count, equal indicators",
        "goals_met": goals,
        "goal_met": all(goals.values()),
        "setup": {"symbol_counts": list(SYMBOL_COUNTS), "bars_stored_per_symbol": stored, "warmup_bars": WARMUP_BARS,
                  "newest_bar": NEWEST.isoformat(), "rounds": ROUNDS, "page_rows": RESTORE_PAGE_ROWS,
                  "load_s": round(load_s, 1)},
        **machine,
        "wall_s": None,
    }
    data["wall_s"] = round(time.perf_counter() - wall, 1)
    write_results("restore", data)
    return data


def _table(data: dict) -> str:
    lines = [f"{'symbols':>8} {'bars':>10} {'batched ms':>11} {'per-symbol ms':>14} {'speedup':>8} {'µs/bar':>14}"]
    for n, r in data["by_symbols"].items():
        lines.append(f"{n:>8} {r['bars']:>10,} {r['batched_ms']:>11,.0f} {r['per_symbol_ms']:>14,.0f} "
                     f"{r['speedup']:>7.2f}x {r['us_per_bar']['batched']:>6.2f}/{r['us_per_bar']['per_symbol']:<6.2f}")
    lines.append(f"goal ({data['goal']}): {'met' if data['goal_met'] else 'NOT met'}; "
                 f"load average {data['load_average_1m']:.1f}; {data['wall_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table(run()))
