"""Order gateway, trade-updates listener and the strategy hook against the simulator and the real database."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from contextlib import asynccontextmanager
from decimal import Decimal

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from tickvault.alpaca.errors import UnprocessableError
from tickvault.alpaca.models import OrderRequest
from tickvault.alpaca.rest import AlpacaREST
from tickvault.config import load_settings
from tickvault.http import aclose_http_client
from tickvault.jobs.reconcile import reconcile
from tickvault.sim.calendar import SimClock
from tickvault.sim.server import Simulator
from tickvault.stream.metrics import Metrics
from tickvault.stream.orders import OrderGateway, TradeUpdatesListener, client_order_id
from tickvault.stream.strategy import Bar, OrderIntent, StrategyLoadError, load_strategy
from tests.support.waiting import wait_until



@pytest_asyncio.fixture(loop_scope="function")  # the pool lives in the test's own loop
async def env(fresh_database):
    url = fresh_database()
    async with Simulator(symbols=["AAPL", "MSFT"], rate=2_000, seed=1) as sim:
        settings = load_settings(
            database_url=url, alpaca_key_id=sim.key, alpaca_secret_key=sim.secret,
            alpaca_trading_url=sim.rest_url, alpaca_data_url=sim.rest_url,
        )
        pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False)
        await pool.open()
        try:
            yield sim, settings, pool, url
        finally:
            await pool.close()


BAR = Bar("AAPL", 1_767_000_000_000_000_000, 100.0, 101.0, 99.0, 100.5, 1000, 10, 100.2)


async def test_gateway_submits_each_intent_once(env):
    sim, settings, pool, url = env
    metrics = Metrics()
    gateway = OrderGateway(AlpacaREST(settings), pool, metrics)
    intent = OrderIntent("AAPL", "buy", Decimal("3"))
    first = await gateway.submit("s1", BAR, intent)
    again = await gateway.submit("s1", BAR, intent)  # the same bar seen twice (restart, duplicate frame)
    assert first is not None and again is None
    cid = client_order_id("s1", BAR, intent)
    assert first.client_order_id == cid
    broker = await AlpacaREST(settings).list_orders(status="all")
    assert [o.client_order_id for o in broker].count(cid) == 1
    with psycopg.connect(url) as conn:
        status, qty, latency, strategy = conn.execute(
            "SELECT status, qty, submit_latency_ms, strategy FROM orders WHERE client_order_id = %s", (cid,)
        ).fetchone()
    assert status in ("filled", "accepted", "new") and qty == Decimal("3") and latency > 0 and strategy == "s1"
    assert metrics.totals["orders_submitted"] == 1


async def test_restart_mid_submit_finds_the_order_instead_of_resubmitting(env):
    sim, settings, pool, url = env
    intent = OrderIntent("MSFT", "sell", Decimal("2"))
    cid = client_order_id("s2", BAR, intent)
    rest = AlpacaREST(settings)
    # the previous run recorded the intent and the broker took the order, then the run died before the ack
    await rest.submit_order(OrderRequest(symbol="MSFT", side="sell", qty=Decimal("2"), client_order_id=cid))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (client_order_id, symbol, side, order_type, time_in_force, qty, status) "
            "VALUES (%s, 'MSFT', 'sell', 'market', 'day', 2, 'pending_submit')", (cid,)
        )
    order = await OrderGateway(rest, pool, Metrics()).submit("s2", BAR, intent)
    assert order is not None and order.client_order_id == cid
    broker = await rest.list_orders(status="all")
    assert [o.client_order_id for o in broker].count(cid) == 1
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status FROM orders WHERE client_order_id = %s", (cid,)).fetchone()[0] != "pending_submit"


def test_client_order_id_covers_every_field_that_makes_an_order_different():
    base = OrderIntent("AAPL", "buy", Decimal("3"), type="limit", limit_price=Decimal("100"))
    other = {"symbol": "MSFT", "side": "sell", "qty": Decimal("4"), "type": "market", "limit_price": Decimal("101"),
             "time_in_force": "gtc", "tag": "second"}
    # A field added to OrderIntent without a case here fails: the id must be shown to cover it.
    assert {f.name for f in dataclasses.fields(OrderIntent)} == set(other)
    ids = {client_order_id("s", BAR, base)}
    for name, value in other.items():
        ids.add(client_order_id("s", BAR, dataclasses.replace(base, **{name: value})))
    for tif in ("ioc", "fok"):
        ids.add(client_order_id("s", BAR, dataclasses.replace(base, time_in_force=tif)))
    ids.add(client_order_id("t", BAR, base))
    ids.add(client_order_id("s", dataclasses.replace(BAR, time_ns=BAR.time_ns + 60 * 10**9), base))
    assert len(ids) == len(other) + 5  # every variant its own order
    # An intent with every later field at its default keeps the id it had before them (the first key).
    first = f"s|AAPL|{BAR.time_ns}|buy|3|limit|100|"
    assert client_order_id("s", BAR, base) == "tv-" + hashlib.sha256(first.encode()).hexdigest()[:32]
    assert client_order_id("s", BAR, base) == client_order_id("s", BAR, dataclasses.replace(base))


async def test_two_intents_that_differ_only_in_time_in_force_are_both_sent(env):
    sim, settings, pool, url = env
    gateway = OrderGateway(AlpacaREST(settings), pool, Metrics())
    low = Decimal(sim.market.last_price_cents("MSFT") - 500) / 100  # rests: the two stay open side by side
    day = OrderIntent("MSFT", "buy", Decimal("1"), type="limit", limit_price=low)
    gtc = dataclasses.replace(day, time_in_force="gtc")
    sent = [await gateway.submit("s3", BAR, intent) for intent in (day, gtc)]
    assert all(o is not None for o in sent) and sent[0].client_order_id != sent[1].client_order_id
    broker = {o.client_order_id: o for o in await AlpacaREST(settings).list_orders(status="all")}
    assert [broker[o.client_order_id].time_in_force for o in sent] == ["day", "gtc"]


@asynccontextmanager
async def listening(sim, pool, metrics: Metrics):
    """A TradeUpdatesListener on the simulator's trade-updates stream, listening; stopped after."""
    listener = TradeUpdatesListener(sim.trade_updates_url, sim.key, sim.secret, pool, metrics)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        yield listener
    finally:
        listener.stop()
        await asyncio.wait_for(task, 10)


async def test_trade_updates_stream_records_fills(env):
    sim, settings, pool, url = env
    metrics = Metrics()
    async with listening(sim, pool, metrics):
        rest = AlpacaREST(settings)
        order = await rest.submit_order(OrderRequest(symbol="AAPL", side="buy", qty=Decimal("5"), client_order_id="tu-1"))

        async def filled() -> bool:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute("SELECT qty, price, cum_qty, source FROM fills WHERE order_id = %s", (order.id,))
                return await cur.fetchone() is not None

        await wait_until(filled, 10, "the fill from the trade-updates stream")
        with psycopg.connect(url) as conn:
            qty, price, cum, source = conn.execute(
                "SELECT qty, price, cum_qty, source FROM fills WHERE order_id = %s", (order.id,)
            ).fetchone()
            status = conn.execute("SELECT status FROM orders WHERE id = %s", (order.id,)).fetchone()[0]
        assert (qty, cum, source, status) == (Decimal("5"), Decimal("5"), "stream", "filled") and price > 0
        assert metrics.totals["fills_recorded"] == 1


def test_strategy_loading_errors_are_clear():
    with pytest.raises(StrategyLoadError, match="package.module:Name"):
        load_strategy("no_colon_here")
    with pytest.raises(StrategyLoadError, match="cannot load"):
        load_strategy("tests.support.nothing_here:X")
    assert load_strategy("tests.support.strategies:BuyOneShareEachBar").name == "buy-each-bar"


async def test_worker_strategy_turns_bars_into_orders_and_fills(fresh_database, tmp_path):
    """Minute bars with indicators reach a configured strategy; its intents become broker orders once each,
    and their fills come back through the trade-updates stream."""
    from tickvault.stream.worker import WorkerHandle, run_worker

    url = fresh_database()
    fast = SimClock(scale=120)  # a simulated minute every 0.5 s
    async with Simulator(symbols=["AAPL", "MSFT"], rate=2_000, seed=2, clock=fast) as sim:
        settings = load_settings(
            database_url=url, alpaca_key_id=sim.key, alpaca_secret_key=sim.secret,
            alpaca_stream_url=sim.ws_url, alpaca_data_url=sim.rest_url, alpaca_trading_url=sim.rest_url,
            alpaca_trade_stream_url=sim.trade_updates_url, symbols="AAPL,MSFT", metrics_port=0,
            run_dir=tmp_path / "run", worker_name="strat", strategy="tests.support.strategies:BuyOneShareEachBar",
        )
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))

        async def orders_filled() -> bool:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM orders o JOIN fills f ON f.order_id = o.id WHERE o.strategy = 'buy-each-bar'"
                )
                return (await cur.fetchone())[0] >= 4

        try:
            await wait_until(orders_filled, 60, "strategy orders filled")
        finally:
            handle.stop()
            await asyncio.wait_for(task, 60)
    with psycopg.connect(url) as conn:
        bars = conn.execute("SELECT count(*) FROM bars").fetchone()[0]
        indicators = conn.execute("SELECT count(*) FROM indicators WHERE timeframe = '1m'").fetchone()[0]
        recorded = {r[0] for r in conn.execute(
            "SELECT client_order_id FROM orders WHERE strategy = 'buy-each-bar' AND status <> 'pending_submit'"
        )}
    at_broker = {cid for cid in sim.broker.by_client_id if cid.startswith("tv-")}
    assert bars >= 4 and indicators >= 4
    # every intent the database recorded reached the broker, and the broker holds none the database
    # does not know (no submit bypassed the ledger)
    assert recorded and recorded <= at_broker and at_broker <= recorded | _pending(url)


def _pending(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT client_order_id FROM orders WHERE status = 'pending_submit'")}


async def test_crypto_intent_reaches_fills_positions_and_reconcile_exactly(env):
    """A fractional BTC/USD intent: the gateway submits it (gtc), the trade-updates stream records its
    fill, reconciliation snapshots the BTCUSD position, all in numeric with every digit; an intent
    the broker refuses (a crypto day order) is left ``rejected`` with Alpaca's reason."""
    sim, settings, pool, url = env
    metrics = Metrics()
    try:
        async with listening(sim, pool, metrics):
            await wait_until(lambda: sim.crypto_market.last_quote("BTC/USD") is not None, 10, "a BTC/USD quote")
            gateway = OrderGateway(AlpacaREST(settings), pool, metrics)
            bar = Bar("BTC/USD", 1_767_000_000_000_000_000, 94_000.0, 94_100.0, 93_900.0, 94_050.0, 3, 10, 94_010.0)
            qty = Decimal("0.012345678")
            order = await gateway.submit("btc", bar, OrderIntent("BTC/USD", "buy", qty, time_in_force="gtc"))
            assert order is not None and order.status == "filled" and order.filled_qty == qty

            async def fill_recorded() -> bool:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    cur = await conn.execute("SELECT 1 FROM fills WHERE order_id = %s", (order.id,))
                    return await cur.fetchone() is not None

            await wait_until(fill_recorded, 10, "the crypto fill from the trade-updates stream")
            with pytest.raises(UnprocessableError, match="time_in_force"):
                await gateway.submit("btc", bar, OrderIntent("BTC/USD", "buy", qty, time_in_force="day", tag="day"))
            first = await reconcile(settings, rest=AlpacaREST(settings), db_url=url)
            assert [(d.kind, d.symbol) for d in first.diffs] == [("missing_position", "BTCUSD")]
            second = await reconcile(settings, rest=AlpacaREST(settings), db_url=url)
            assert second.total_diffs == 0  # the snapshot equals the broker's qty to the last digit
    finally:
        await aclose_http_client()
    with psycopg.connect(url) as conn:
        fill_qty, cum, symbol = conn.execute(
            "SELECT qty, cum_qty, symbol FROM fills WHERE order_id = %s", (order.id,)).fetchone()
        row_qty, row_filled, tif = conn.execute(
            "SELECT qty, filled_qty, time_in_force FROM orders WHERE id = %s", (order.id,)).fetchone()
        snapshot = conn.execute(
            "SELECT qty FROM position_snapshots WHERE symbol = 'BTCUSD' ORDER BY time DESC LIMIT 1").fetchone()[0]
        refused = conn.execute(
            "SELECT status, raw->'refused'->>'message' FROM orders WHERE time_in_force = 'day' AND symbol = 'BTC/USD'"
        ).fetchone()
    assert (fill_qty, cum, symbol) == (qty, qty, "BTC/USD")
    assert (row_qty, row_filled, tif) == (qty, qty, "gtc") and snapshot == qty
    assert refused[0] == "rejected" and "time_in_force" in refused[1]
