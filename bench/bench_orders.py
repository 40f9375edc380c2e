"""Order round trip: tickvault's ``OrderGateway.submit`` against alpaca-py's ``TradingClient.submit_order``.

The simulator runs in its own process (``python -m tickvault.cli sim``, a slow market so prices
exist and market orders fill); both clients submit 1-share market orders to its REST port over
loopback, ``N`` each, interleaved one by one so that any disturbance on the host hits both alike,
after ``WARMUP`` each to open connections.

- gateway: the whole ``OrderGateway.submit`` — insert the ``pending_submit`` row with its
  deterministic ``client_order_id`` (scratch database), POST through ``AlpacaREST`` (pooled httpx,
  keep-alive), upsert the acknowledged order and its submit latency. That is what a strategy's
  intent costs in the worker.
- gateway REST only: ``AlpacaREST.submit_order`` alone, to separate the HTTP client from the two
  database round trips.
- alpaca-py: ``TradingClient.submit_order(MarketOrderRequest(...))`` (requests, keep-alive session),
  called in a thread so that blocking I/O never stalls the event loop; timed inside the thread.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from decimal import Decimal

import numpy as np

from bench.bench_decode import KEY, SECRET, machine_info
from bench.common import scratch_database
from bench.bench_memory import SimProcess
from bench.common import write_results

N = 200
WARMUP = 10
SIM_SYMBOLS = 10
SIM_RATE = 1_000  # trades/s: enough for live prices, cheap enough not to disturb the timing


def _side(i: int) -> str:
    """Buy on even, sell on odd: the position stays within a few shares, so buying power never runs out."""
    return "buy" if i % 2 == 0 else "sell"


def _summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


async def _measure(url: str, sim: SimProcess) -> dict:
    from tickvault.alpaca.models import OrderRequest
    from tickvault.alpaca.rest import AlpacaREST
    from tickvault.config import load_settings
    from tickvault.db.pool import open_pool
    from tickvault.stream.metrics import Metrics
    from tickvault.stream.orders import OrderGateway
    from tickvault.stream.strategy import Bar, OrderIntent

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*websockets.legacy.*", DeprecationWarning)
        from alpaca.trading.client import TradingClient
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import MarketOrderRequest

    settings = load_settings(database_url=url, alpaca_key_id=KEY, alpaca_secret_key=SECRET,
                             alpaca_trading_url=sim.rest_url, alpaca_data_url=sim.rest_url)
    pool = await open_pool(settings, min_size=2, name="tickvault-bench-orders")
    await pool.wait(timeout=30)
    rest = AlpacaREST(settings)
    gateway = OrderGateway(rest, pool, Metrics())
    trading = TradingClient(KEY, SECRET, paper=True, url_override=sim.rest_url)
    from tickvault.sim.market import symbol_names

    symbol = symbol_names(SIM_SYMBOLS)[0]
    bar = Bar(symbol, time.time_ns(), 100.0, 100.0, 100.0, 100.0, 1, 1, 100.0)

    async def via_gateway(i: int) -> float:
        intent = OrderIntent(symbol, _side(i), Decimal("1"), tag=f"bench-{i}")
        t = time.perf_counter()
        order = await gateway.submit("bench", bar, intent)
        ms = (time.perf_counter() - t) * 1000
        assert order is not None and order.status is not None
        return ms

    async def via_rest(i: int) -> float:
        req = OrderRequest(symbol=symbol, side=_side(i), qty=Decimal("1"), client_order_id=f"bench-rest-{i}")
        t = time.perf_counter()
        await rest.submit_order(req)
        return (time.perf_counter() - t) * 1000

    def alpaca_py_once(i: int) -> float:
        req = MarketOrderRequest(symbol=symbol, qty=1, side=OrderSide(_side(i)), time_in_force=TimeInForce.DAY,
                                 client_order_id=f"bench-apy-{i}")
        t = time.perf_counter()
        trading.submit_order(req)
        return (time.perf_counter() - t) * 1000

    async def via_alpaca_py(i: int) -> float:
        return await asyncio.to_thread(alpaca_py_once, i)

    # Warm-up: connection pools, first-request imports; not recorded.
    for i in range(WARMUP):
        await via_gateway(-1 - i)
        await via_rest(-1 - i)
        await via_alpaca_py(-1 - i)
    gw, rs, apy = [], [], []
    for i in range(N):
        gw.append(await via_gateway(i))
        rs.append(await via_rest(i))
        apy.append(await via_alpaca_py(i))
    async with pool.connection() as conn:
        recorded = (await (await conn.execute(
            "SELECT count(*), avg(submit_latency_ms) FROM orders WHERE strategy = 'bench' AND status <> 'pending_submit'"
        )).fetchone())
    await pool.close()
    if hasattr(rest, "aclose"):
        await rest.aclose()
    return {"gateway": gw, "gateway_rest_only": rs, "alpaca_py": apy,
            "orders_recorded": recorded[0], "recorded_submit_latency_ms_avg": recorded[1]}


def run() -> dict:
    started = time.perf_counter()
    machine = machine_info()
    with scratch_database("tickvault_bench_orders") as url, SimProcess(SIM_SYMBOLS, SIM_RATE) as sim:
        time.sleep(0.5)  # let the market print a few trades so every symbol has a price
        raw = asyncio.run(_measure(url, sim))
    gw, rs, apy = (_summary(raw[k]) for k in ("gateway", "gateway_rest_only", "alpaca_py"))
    result = {
        "gateway_p50_ms": gw["p50_ms"],
        "gateway_p99_ms": gw["p99_ms"],
        "alpaca_py_p50_ms": apy["p50_ms"],
        "alpaca_py_p99_ms": apy["p99_ms"],
        "gateway_rest_only_p50_ms": rs["p50_ms"],
        "gateway_rest_only_p99_ms": rs["p99_ms"],
        "goal": "none set by the issue (a comparison); reported: gateway p50 <= alpaca-py p50",
        "goal_met": gw["p50_ms"] <= apy["p50_ms"],
        "gateway": gw,
        "gateway_rest_only": rs,
        "alpaca_py": apy,
        "gateway_orders_recorded": int(raw["orders_recorded"]),
        "setup": {
            "n_each": N,
            "warmup_each": WARMUP,
            "order": "market, 1 share, day, alternately buy and sell",
            "simulator": f"separate process, {SIM_SYMBOLS} symbols at {SIM_RATE} trades/s",
            "gateway_includes": "pending_submit insert + REST POST + order upsert/latency update (2 DB round trips)",
            "interleaved": True,
        },
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_results("orders", result)
    return result


if __name__ == "__main__":
    out = run()
    print(
        f"orders: gateway p50 {out['gateway_p50_ms']} ms p99 {out['gateway_p99_ms']} ms "
        f"(REST only p50 {out['gateway_rest_only_p50_ms']} ms); alpaca-py p50 {out['alpaca_py_p50_ms']} ms "
        f"p99 {out['alpaca_py_p99_ms']} ms"
    )
