"""The simulator's crypto market through the official alpaca-py clients, unchanged: the stream
(``CryptoDataStream``) and the history (``CryptoHistoricalDataClient``) both equal its ground truth."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.historical import CryptoHistoricalDataClient
    from alpaca.data.live import CryptoDataStream, StockDataStream
    from alpaca.data.requests import (
        CryptoBarsRequest,
        CryptoLatestOrderbookRequest,
        CryptoLatestTradeRequest,
        CryptoSnapshotRequest,
        CryptoTradesRequest,
    )
    from alpaca.data.timeframe import TimeFrame

from tickvault.sim import Simulator
from tickvault.sim.crypto import SIZE_SCALE
from tests.support.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

KEY, SECRET = "key", "secret"
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


def _truth(sim: Simulator, pair: str) -> list[tuple[int, float, float, str]]:
    return [(tid, cents / 100, units / SIZE_SCALE, side)
            for tid, _t, cents, units, side in sim.crypto_market.truth_trades_full(pair)]


async def test_crypto_data_stream_gets_trades_quotes_and_a_reset_orderbook_equal_to_the_truth() -> None:
    async with Simulator(symbols=2, rate=200, crypto_pairs=["BTC/USD", "ETH/USD"], crypto_rate=400) as sim:
        stream = CryptoDataStream(KEY, SECRET, raw_data=True, url_override=sim.crypto_stream_url("us"))
        trades, quotes, books = [], [], []

        async def on_trade(t) -> None:
            trades.append(t)

        async def on_quote(q) -> None:
            quotes.append(q)

        async def on_book(b) -> None:
            books.append(b)

        stream.subscribe_trades(on_trade, "BTC/USD", "ETH/USD")
        stream.subscribe_quotes(on_quote, "BTC/USD")
        stream.subscribe_orderbooks(on_book, "*")
        task = asyncio.create_task(stream._run_forever())
        try:
            await wait_until(lambda: len(trades) >= 300 and quotes and len(books) > 2, 60, "crypto trades, quotes, books")
            sim.finish()
            first_id = min(t["i"] for t in trades)
            made = sum(1 for p in sim.crypto_pairs for row in _truth(sim, p) if row[0] >= first_id)
            await wait_until(lambda: len(trades) >= made, 30, "every trade made from the first one received on")
        finally:
            await stream.stop_ws()
            sim.drop_connections()  # wakes its receive loop so it sees the stop at once
            await asyncio.wait_for(task, 10)
        assert {t["S"] for t in trades} <= {"BTC/USD", "ETH/USD"}
        for pair in ("BTC/USD", "ETH/USD"):
            got = [(t["i"], t["p"], t["s"], t["tks"]) for t in trades if t["S"] == pair]
            assert got == [row for row in _truth(sim, pair) if row[0] >= first_id]
        assert any(t["s"] != int(t["s"]) for t in trades)  # fractional sizes on the wire
        assert {q["S"] for q in quotes} == {"BTC/USD"} and quotes[0]["bs"] > 0
        assert books[0].get("r") is True and {b["S"] for b in books[:2]} == {"BTC/USD", "ETH/USD"}
        assert not any(b.get("r") for b in books[2:])


async def test_a_stock_connection_never_gets_crypto_and_crypto_never_gets_stocks() -> None:
    async with Simulator(symbols=2, rate=500, crypto_pairs=["BTC/USD"], crypto_rate=500) as sim:
        stocks = StockDataStream(KEY, SECRET, raw_data=True, url_override=sim.stream_url("iex"))
        crypto = CryptoDataStream(KEY, SECRET, raw_data=True, url_override=sim.crypto_stream_url("us"))
        seen_stocks, seen_crypto = set(), set()

        async def on_stock(t) -> None:
            seen_stocks.add(t["S"])

        async def on_crypto(t) -> None:
            seen_crypto.add(t["S"])

        stocks.subscribe_trades(on_stock, "*")
        crypto.subscribe_trades(on_crypto, "*")
        tasks = [asyncio.create_task(stocks._run_forever()), asyncio.create_task(crypto._run_forever())]
        try:
            await wait_until(lambda: seen_stocks and seen_crypto, 30, "trades on both streams")
        finally:
            for s in (stocks, crypto):
                await s.stop_ws()
            sim.drop_connections()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert seen_stocks <= set(sim.symbols) and seen_crypto == {"BTC/USD"}


async def test_crypto_historical_client_reads_the_truth_latest_book_and_snapshot() -> None:
    async with Simulator(symbols=1, rate=100, crypto_pairs=["BTC/USD", "ETH/USD"], crypto_rate=2_000) as sim:
        await wait_until(lambda: sim.crypto_market.total >= 3_000, 60, "3000 crypto trades")
        sim.finish()
        client = CryptoHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url)
        request = CryptoTradesRequest(symbol_or_symbols=["BTC/USD", "ETH/USD"], start=EPOCH_2000)
        trades = await asyncio.to_thread(client.get_crypto_trades, request)
        for pair in ("BTC/USD", "ETH/USD"):
            got = [(t.id, t.price, t.size) for t in trades[pair]]
            assert got == [(tid, p, s) for tid, p, s, _side in _truth(sim, pair)]
        raw = CryptoHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url, raw_data=True)
        raw_trades = await asyncio.to_thread(raw.get_crypto_trades, request)
        assert [t["tks"] for t in raw_trades["BTC/USD"]] == [side for *_, side in _truth(sim, "BTC/USD")]
        bars = await asyncio.to_thread(client.get_crypto_bars, CryptoBarsRequest(
            symbol_or_symbols="BTC/USD", timeframe=TimeFrame.Minute, start=EPOCH_2000))
        units = sum(units for _i, _t, _c, units, _s in sim.crypto_market.truth_trades_full("BTC/USD"))
        assert sum(b.trade_count for b in bars["BTC/USD"]) == sim.crypto_market.truth_count("BTC/USD")
        assert abs(sum(b.volume for b in bars["BTC/USD"]) - units / SIZE_SCALE) < 1e-6
        latest = await asyncio.to_thread(client.get_crypto_latest_trade,
                                         CryptoLatestTradeRequest(symbol_or_symbols="ETH/USD"))
        assert latest["ETH/USD"].id == _truth(sim, "ETH/USD")[-1][0]
        book = await asyncio.to_thread(client.get_crypto_latest_orderbook,
                                       CryptoLatestOrderbookRequest(symbol_or_symbols="BTC/USD"))
        assert book["BTC/USD"].bids[0].price < book["BTC/USD"].asks[0].price
        snap = await asyncio.to_thread(client.get_crypto_snapshot, CryptoSnapshotRequest(symbol_or_symbols="BTC/USD"))
        assert snap["BTC/USD"].latest_trade.id == _truth(sim, "BTC/USD")[-1][0]
