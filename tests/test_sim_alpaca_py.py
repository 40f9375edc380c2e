"""The official alpaca-py clients, unchanged, against the simulator: proof that it speaks Alpaca.

alpaca-py's REST clients block (``requests``), so they run in a worker thread while the simulator
answers on this test's event loop; its ``StockDataStream`` runs as a task on the same loop.
"""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime
from decimal import Decimal

import pytest

with warnings.catch_warnings():
    # alpaca-py 0.44 imports websockets.legacy, deprecated since websockets 14: that warning only.
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.enums import DataFeed
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.live import StockDataStream
    from alpaca.data.requests import StockBarsRequest, StockLatestTradeRequest, StockTradesRequest
    from alpaca.data.timeframe import TimeFrame
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import GetAssetsRequest, GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from tickvault.sim import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

KEY, SECRET = "key", "secret"
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


async def test_stock_data_stream_receives_exactly_the_ground_truth() -> None:
    n = 3_000
    async with Simulator(symbols=4, rate=None, max_trades=n, frame_size=100) as sim:
        stream = StockDataStream(KEY, SECRET, feed=DataFeed.IEX, url_override=sim.stream_url("iex"))
        trades = []
        enough = asyncio.Event()

        async def on_trade(trade) -> None:
            trades.append(trade)
            if len(trades) >= n:
                enough.set()

        stream.subscribe_trades(on_trade, "*")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(enough.wait(), 120)  # a failure detector, not a speed requirement
        finally:
            await stream.stop_ws()
            sim.send_cancel(sim.symbols[0])  # wakes its receive loop so it sees the stop at once
            await asyncio.wait_for(task, 10)
        assert len(trades) == n == sim.truth_count()
        for sym in sim.symbols:
            got = [(t.id, t.price, int(t.size)) for t in trades if t.symbol == sym]
            assert got == [(tid, price, size) for tid, _, price, size in sim.truth_trades(sym)]
        first = trades[0]
        assert first.exchange == "V" and first.conditions == ["@"] and first.timestamp.tzinfo is not None


async def test_stock_data_stream_comes_back_after_a_drop() -> None:
    async with Simulator(symbols=2, rate=2_000, frame_size=50) as sim:
        stream = StockDataStream(KEY, SECRET, url_override=sim.stream_url("iex"))
        count = 0
        arrived = asyncio.Event()

        async def on_trade(trade) -> None:
            nonlocal count
            count += 1
            arrived.set()

        stream.subscribe_trades(on_trade, *sim.symbols)
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(arrived.wait(), 10)
            assert sim.drop_connections() == 1
            arrived.clear()
            async with asyncio.timeout(15):  # alpaca-py backs off 1 s (with jitter) before reconnecting
                while sim.stats["connections"] < 2 or not arrived.is_set():
                    arrived.clear()
                    await arrived.wait()
        finally:
            await stream.stop_ws()
            await asyncio.wait_for(task, 10)
        assert sim.stats["connections"] == 2 and count > 0


async def test_trading_client_orders_account_positions() -> None:
    async with Simulator(symbols=["AAPL", "MSFT"], rate=1_000) as sim:
        client = TradingClient(KEY, SECRET, paper=True, url_override=sim.rest_url)
        account = await asyncio.to_thread(client.get_account)
        assert Decimal(account.cash) == Decimal(100000) and account.status == "ACTIVE"

        market = await asyncio.to_thread(
            client.submit_order,
            MarketOrderRequest(
                symbol="AAPL",
                qty=2,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.DAY,
                client_order_id="tv-market-1",
            ),
        )
        assert market.status == OrderStatus.FILLED and Decimal(market.filled_qty) == 2
        assert market.filled_at is not None and market.client_order_id == "tv-market-1"

        low = Decimal(sim.market.last_price_cents("MSFT")) / 200  # half the price: rests
        limit = await asyncio.to_thread(
            client.submit_order,
            LimitOrderRequest(
                symbol="MSFT",
                qty=1.5,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.DAY,  # Alpaca takes fractional orders as DAY orders only
                limit_price=float(round(low, 2)),
                client_order_id="tv-limit-1",
            ),
        )
        assert limit.status == OrderStatus.NEW and Decimal(str(limit.qty)) == Decimal("1.5")

        open_orders = await asyncio.to_thread(
            client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN)
        )
        assert [o.id for o in open_orders] == [limit.id]
        all_orders = await asyncio.to_thread(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL))
        assert {o.id for o in all_orders} == {limit.id, market.id}
        same = await asyncio.to_thread(client.get_order_by_client_id, "tv-limit-1")
        assert same.id == limit.id

        with pytest.raises(APIError) as refused:
            await asyncio.to_thread(
                client.submit_order,
                MarketOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side=OrderSide.SELL,
                    time_in_force=TimeInForce.DAY,
                    client_order_id="tv-market-1",
                ),
            )
        assert refused.value.status_code == 422 and "client_order_id" in str(refused.value)

        assert await asyncio.to_thread(client.cancel_order_by_id, limit.id) is None
        canceled = await asyncio.to_thread(client.get_order_by_id, limit.id)
        assert canceled.status == OrderStatus.CANCELED

        positions = await asyncio.to_thread(client.get_all_positions)
        assert [(p.symbol, p.qty, p.side) for p in positions] == [("AAPL", "2", "long")]
        assert Decimal(positions[0].avg_entry_price) == Decimal(market.filled_avg_price)


async def test_trading_client_lists_the_simulated_symbols_as_tradable_assets() -> None:
    async with Simulator(symbols=["AAPL", "MSFT", "ZAAA"], rate=1_000) as sim:
        client = TradingClient(KEY, SECRET, paper=True, url_override=sim.rest_url)
        wanted = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        assets = await asyncio.to_thread(client.get_all_assets, wanted)
        assert sorted(a.symbol for a in assets) == ["AAPL", "MSFT", "ZAAA"]
        assert all(a.tradable and a.status == AssetStatus.ACTIVE and a.asset_class == AssetClass.US_EQUITY
                   for a in assets)
        assert len({a.id for a in assets}) == 3
        crypto = GetAssetsRequest(asset_class=AssetClass.CRYPTO)
        pairs = await asyncio.to_thread(client.get_all_assets, crypto)
        assert [a.symbol for a in pairs] == sim.crypto_pairs and all(
            a.asset_class == AssetClass.CRYPTO and a.fractionable and not a.shortable for a in pairs)
        btc = await asyncio.to_thread(client.get_asset, "BTCUSD")
        assert btc.symbol == "BTC/USD" and btc.id == pairs[0].id
        assert (await asyncio.to_thread(client.get_asset, "BTC/USD")).id == btc.id


async def test_historical_client_gets_exactly_the_ground_truth() -> None:
    n = 25_000  # more than two 10,000-trade pages
    async with Simulator(symbols=3, rate=None, max_trades=n) as sim:
        stream = StockDataStream(KEY, SECRET, raw_data=True, url_override=sim.stream_url("iex"))
        seen = 0
        enough = asyncio.Event()

        async def on_trade(trade) -> None:  # the market runs as fast as this client reads
            nonlocal seen
            seen += 1
            if seen >= n:
                enough.set()

        stream.subscribe_trades(on_trade, "*")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(enough.wait(), 120)  # a failure detector, not a speed requirement
        finally:
            await stream.stop_ws()
            sim.send_cancel(sim.symbols[0])
            await asyncio.wait_for(task, 10)

        client = StockHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url)
        trades = await asyncio.to_thread(
            client.get_stock_trades, StockTradesRequest(symbol_or_symbols=sim.symbols, start=EPOCH_2000)
        )
        for sym in sim.symbols:
            got = [(t.id, t.price, int(t.size)) for t in trades.data[sym]]
            assert got == [(tid, price, size) for tid, _, price, size in sim.truth_trades(sym)]

        bars = await asyncio.to_thread(
            client.get_stock_bars,
            StockBarsRequest(symbol_or_symbols=sim.symbols, timeframe=TimeFrame.Minute, start=EPOCH_2000),
        )
        for sym in sim.symbols:
            cs = sim.truth_checksum(sym)
            assert sum(b.trade_count for b in bars.data[sym]) == cs.count
            assert sum(b.volume for b in bars.data[sym]) == cs.sum_size

        latest = await asyncio.to_thread(
            client.get_stock_latest_trade, StockLatestTradeRequest(symbol_or_symbols=sim.symbols[0])
        )
        assert latest[sim.symbols[0]].id == list(sim.truth_trades(sim.symbols[0]))[-1][0]
