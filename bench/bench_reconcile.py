"""Reconciliation benchmark: the broker fetch phase concurrent vs one call after another, and where
a whole ``reconcile()`` run spends its time.

Run from the repo root: ``python -m bench.bench_reconcile`` (~10 s). Writes
``bench/results/reconcile.json`` and prints a table.

Set-up: the Alpaca simulator on 127.0.0.1 with :data:`LATENCY_MS` added before every REST answer
(a stand-in for the round trip to Alpaca), an account holding orders, fills and positions; a scratch
database (created, migrated and dropped here) holding part of them, so the measured run has drift
to find and repair.

* ``concurrent_fetch_s``: :func:`tickvault.jobs.reconcile.fetch_broker_state` (six calls gathered),
  median of :data:`REPEATS`.
* ``sequential_fetch_s``: the same six calls awaited one after another, median of :data:`REPEATS`.
* ``slowest_call_s``: the slowest single call of a concurrent fetch (median over the repeats).
* ``flow_wall_s``: a whole ``reconcile()`` that repairs the same planted drift (25 unknown orders,
  20 missing fills, 20 missing positions), timed from outside, median of :data:`FLOW_REPEATS`, with
  that run's phases (``breakdown``); ``flow_wall_clean_s``: a run with nothing to repair (median).

Goal: concurrent ≤ :data:`GOAL_RATIO` × the slowest single call. The HTTP pool is warmed first
(a flow run's later calls reuse its connections too).
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from bench.common import scratch_database

from tickvault.alpaca.models import FillActivity, Order, OrderRequest
from tickvault.alpaca.rest import AlpacaREST, collect
from tickvault.config import load_settings
from tickvault.http import aclose_http_client
from tickvault.jobs.reconcile import (
    DEFAULT_LOOKBACK,
    OPTION_EVENTS_LOOKBACK,
    ReconcileSummary,
    _all_orders,
    fetch_broker_state,
    reconcile,
)
from tickvault.sim import Simulator
from tickvault.db.tables import INSERT_FILL, record_order

LATENCY_MS = 50.0
REPEATS = 7
FLOW_REPEATS = 5
GOAL_RATIO = 1.5
SYMBOLS = 20
FILLED_ORDERS = 40  # market orders: filled, with a fill activity each
RESTING_ORDERS = 10  # limit orders far below the price: stay open
KEY_ID = "PKBENCHRECONCILE"
SECRET = "bench-reconcile-secret"




async def _seed(sim: Simulator, rest: AlpacaREST) -> tuple[list[Order], list[FillActivity]]:
    """Orders at the broker: market orders (filled, one fill activity each) and resting limits."""
    orders = []
    for i in range(FILLED_ORDERS):
        orders.append(await rest.submit_order(OrderRequest(
            symbol=sim.symbols[i % SYMBOLS], side="buy", qty=Decimal(1 + i % 3),
            client_order_id=OrderRequest.new_client_order_id("bench"))))  # fmt: skip
    for i in range(RESTING_ORDERS):
        orders.append(await rest.submit_order(OrderRequest(
            symbol=sim.symbols[i % SYMBOLS], side="buy", qty=Decimal(1), type="limit",
            limit_price=Decimal("0.01"), time_in_force="gtc",
            client_order_id=OrderRequest.new_client_order_id("bench"))))  # fmt: skip
    return orders, await collect(rest.fill_activities())


async def _plant_drift(url: str, orders: list[Order], fills: list[FillActivity]) -> None:
    """The database knows every other order and fill and no position (same drift every time)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "TRUNCATE orders, fills, position_snapshots, account_snapshots, reconciliation_runs CASCADE"
        )
        for order in orders[::2]:
            await record_order(conn, order, source="stream")
        for f in fills[::2]:
            await conn.execute(
                INSERT_FILL,
                (
                    f.order_id,
                    f.cum_qty,
                    f.id,
                    None,
                    f.symbol,
                    f.side,
                    f.qty,
                    f.price,
                    f.leaves_qty,
                    f.type,
                    f.transaction_time,
                    "stream",
                ),
            )


async def _sequential_fetch(rest: AlpacaREST, since: datetime) -> tuple[float, dict[str, float]]:
    """The six calls of fetch_broker_state, awaited one after another."""
    timings: dict[str, float] = {}
    calls = {
        "account": rest.get_account,
        "positions": rest.get_positions,
        "open_orders": lambda: _all_orders(rest, "open", None),
        "closed_orders": lambda: _all_orders(rest, "closed", since),
        "fills": lambda: collect(rest.fill_activities(after=since, page_size=100)),
        "option_events": lambda: collect(
            rest.option_activities(after=since - OPTION_EVENTS_LOOKBACK, page_size=100)
        ),
    }
    started = time.perf_counter()
    for name, call in calls.items():
        t = time.perf_counter()
        await call()
        timings[name] = time.perf_counter() - t
    return time.perf_counter() - started, timings


async def _run() -> dict[str, Any]:
    with scratch_database("tickvault_bench_reconcile") as url:
        async with Simulator(symbols=SYMBOLS, rate=None, seed=5, key=KEY_ID, secret=SECRET) as sim:
            settings = load_settings(
                database_url=url, alpaca_key_id=KEY_ID, alpaca_secret_key=SECRET,
                alpaca_trading_url=sim.rest_url, alpaca_data_url=sim.rest_url,
            )  # fmt: skip
            rest = AlpacaREST(settings)
            try:
                orders, fills = await _seed(sim, rest)
                sim.rest_latency(LATENCY_MS)
                since = datetime.now(UTC) - DEFAULT_LOOKBACK
                await fetch_broker_state(rest, fills_after=since)  # warm the pool: 6 connections open

                concurrent, slowest, per_call = [], [], []
                sequential = []
                for _ in range(REPEATS):
                    state = await fetch_broker_state(rest, fills_after=since)
                    concurrent.append(state.fetch_s)
                    slowest.append(max(state.timings.values()))
                    per_call.append(state.timings)
                    seq_s, _ = await _sequential_fetch(rest, since)
                    sequential.append(seq_s)

                flows: list[tuple[float, ReconcileSummary]] = []
                clean_walls: list[float] = []
                for _ in range(FLOW_REPEATS):
                    await _plant_drift(url, orders, fills)
                    t = time.perf_counter()
                    summary = await reconcile(settings, rest=rest, db_url=url)
                    flows.append((time.perf_counter() - t, summary))
                    t = time.perf_counter()
                    clean = await reconcile(settings, rest=rest, db_url=url)
                    clean_walls.append(time.perf_counter() - t)
                    assert clean.total_diffs == 0, clean.to_markdown()
                flows.sort(key=lambda f: f[0])
                flow_wall_s, summary = flows[len(flows) // 2]  # the median run, with its own breakdown
                flow_wall_clean_s = statistics.median(clean_walls)
                requests = sim.stats["rest_requests"]
            finally:
                await aclose_http_client()

    phases = {k.removeprefix("phase:"): v for k, v in summary.timings.items() if k.startswith("phase:")}
    breakdown = {f"{k}_s": round(v, 4) for k, v in phases.items()}
    breakdown["connect_close_and_other_s"] = round(flow_wall_s - sum(phases.values()), 4)
    calls = {name: round(statistics.median(t[name] for t in per_call), 4) for name in per_call[0]}
    concurrent_s = statistics.median(concurrent)
    slowest_s = statistics.median(slowest)
    return {
        "concurrent_fetch_s": round(concurrent_s, 4),
        "sequential_fetch_s": round(statistics.median(sequential), 4),
        "slowest_call_s": round(slowest_s, 4),
        "flow_wall_s": round(flow_wall_s, 4),
        "flow_wall_clean_s": round(flow_wall_clean_s, 4),
        "concurrent_vs_slowest": round(concurrent_s / slowest_s, 3),
        "goal_concurrent_le_slowest_x": GOAL_RATIO,
        "goal_met": concurrent_s <= GOAL_RATIO * slowest_s,
        "breakdown": breakdown,
        "per_call_s": calls,
        "flow_diffs": summary.total_diffs,
        "flow_repaired": summary.repaired,
        "setup": {
            "latency_ms_per_call": LATENCY_MS,
            "repeats": REPEATS,
            "flow_repeats": FLOW_REPEATS,
            "orders": FILLED_ORDERS + RESTING_ORDERS,
            "fills": FILLED_ORDERS,
            "symbols": SYMBOLS,
            "rest_requests": requests,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def run() -> dict[str, Any]:
    """Run the benchmark, write ``bench/results/reconcile.json``, return the results."""
    data = asyncio.run(_run())
    try:
        from bench.common import write_results
    except ImportError:  # pragma: no cover - bench/common.py is shared; stay runnable without it
        import json
        from pathlib import Path

        path = Path(__file__).resolve().parent / "results" / "reconcile.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    else:
        path = write_results("reconcile", data)
    data["_path"] = str(path)
    return data


def _print(data: dict[str, Any]) -> None:
    ms = lambda s: f"{s * 1000:8.1f} ms"
    print(f"reconcile: broker fetch with {LATENCY_MS:g} ms added per REST call (median of {REPEATS})")
    print(f"  {'concurrent fetch (6 calls gathered)':40s}{ms(data['concurrent_fetch_s'])}")
    print(f"  {'sequential fetch (same calls in turn)':40s}{ms(data['sequential_fetch_s'])}")
    print(f"  {'slowest single call':40s}{ms(data['slowest_call_s'])}")
    verdict = "met" if data["goal_met"] else "MISSED"
    print(f"  concurrent / slowest = {data['concurrent_vs_slowest']:.2f} (goal ≤ {GOAL_RATIO}: {verdict})")
    print(
        f"whole reconcile() run, {data['flow_diffs']} diffs repaired:{ms(data['flow_wall_s'])}"
        f"   (clean run: {ms(data['flow_wall_clean_s'])})"
    )
    for name, secs in data["breakdown"].items():
        print(f"  {name.removesuffix('_s'):40s}{ms(secs)}")
    print(f"results: {data['_path']}")


if __name__ == "__main__":
    _print(run())
