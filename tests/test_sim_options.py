"""The simulator's options tape through alpaca-py's OptionDataStream and OptionHistoricalDataClient,
unchanged; the stream is msgpack only, like Alpaca's."""

from __future__ import annotations

import asyncio
import json
import warnings
from datetime import UTC, datetime

import pytest
import websockets

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.historical.option import OptionHistoricalDataClient
    from alpaca.data.live.option import OptionDataStream
    from alpaca.data.requests import OptionLatestQuoteRequest, OptionTradesRequest

from tickvault.alpaca.options import parse_occ
from tickvault.sim import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

KEY, SECRET = "key", "secret"


async def _wait(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_option_data_stream_gets_trades_and_quotes_on_occ_symbols() -> None:
    async with Simulator(symbols=["AAPL", "MSFT"], rate=100, options_rate=500) as sim:
        assert len(sim.option_symbols) == 16 and parse_occ(sim.option_symbols[0]).underlying == "AAPL"
        stream = OptionDataStream(KEY, SECRET, raw_data=True, url_override=sim.options_stream_url("indicative"))
        trades, quotes = [], []

        async def on_trade(t) -> None:
            trades.append(t)

        async def on_quote(q) -> None:
            quotes.append(q)

        wanted = sim.option_symbols[:4]
        stream.subscribe_trades(on_trade, *wanted)
        stream.subscribe_quotes(on_quote, wanted[0])
        task = asyncio.create_task(stream._run_forever())
        try:
            await _wait(lambda: len(trades) >= 100 and quotes, 60, "option trades and quotes")
            sim.finish()
            first = min(t["t"].to_unix_nano() for t in trades)
            made = sum(1 for s in wanted for row in sim.options_market.truth_trades_full(s) if row[0] >= first)
            await _wait(lambda: len(trades) >= made, 30, "every option trade made from the first one received on")
        finally:
            await stream.stop_ws()
            sim.drop_connections()
            await asyncio.wait_for(task, 10)
        for symbol in wanted:
            got = [(t["t"].to_unix_nano(), round(t["p"] * 100), t["s"], t["x"]) for t in trades if t["S"] == symbol]
            assert got == [row for row in sim.options_market.truth_trades_full(symbol) if row[0] >= first]
        assert {q["S"] for q in quotes} == {wanted[0]}


async def test_a_json_client_is_refused_on_the_msgpack_only_options_stream() -> None:
    async with Simulator(symbols=["AAPL"], rate=100) as sim:
        async with websockets.connect(sim.options_stream_url("opra")) as ws:  # no msgpack Content-Type
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0]["T"] == "error" and "msgpack only" in reply[0]["msg"]
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)


async def test_option_historical_client_reads_the_truth() -> None:
    async with Simulator(symbols=["AAPL"], rate=100, options_rate=2_000) as sim:
        await _wait(lambda: sim.options_market.total >= 2_000, 60, "2000 option trades")
        sim.finish()
        client = OptionHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url)
        symbols = sim.option_symbols[:3]
        trades = await asyncio.to_thread(client.get_option_trades, OptionTradesRequest(
            symbol_or_symbols=symbols, start=datetime(2000, 1, 1, tzinfo=UTC)))
        for s in symbols:
            got = [(round(t.price * 100), int(t.size), t.exchange) for t in trades[s]]
            assert got == [(c, size, x) for _t, c, size, x in sim.options_market.truth_trades_full(s)]
        quote = await asyncio.to_thread(client.get_option_latest_quote,
                                        OptionLatestQuoteRequest(symbol_or_symbols=symbols[0]))
        assert quote[symbols[0]].bid_price < quote[symbols[0]].ask_price
