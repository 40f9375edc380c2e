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
from tests.support.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

KEY, SECRET = "key", "secret"


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
            await wait_until(lambda: len(trades) >= 100 and quotes, 60, "option trades and quotes")
            sim.finish()
            first = min(t["t"].to_unix_nano() for t in trades)
            made = sum(1 for s in wanted for row in sim.options_market.truth_trades_full(s) if row[0] >= first)
            await wait_until(lambda: len(trades) >= made, 30, "every option trade made from the first one received on")
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
        await wait_until(lambda: sim.options_market.total >= 2_000, 60, "2000 option trades")
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


async def test_option_snapshots_and_chain_through_alpaca_py_with_black_scholes_greeks() -> None:
    """get_option_snapshot and get_option_chain work unchanged: each contract's latest trade and quote
    are the truth's; implied volatility exactly where the price lies inside the model's bounds, and
    there it reprices the contract; the chain's filters and paging select exactly the matching contracts."""
    import math

    import httpx
    from alpaca.trading.enums import ContractType
    from alpaca.data.requests import OptionChainRequest, OptionSnapshotRequest

    from tickvault.sim.greeks import RISK_FREE_RATE, bs_price, years_to_expiry

    async with Simulator(symbols=["AAPL"], rate=200, options_rate=2_000) as sim:
        await wait_until(lambda: sim.options_market.total >= 2_000, 60, "2000 option trades")
        sim.finish()
        client = OptionHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url)
        snaps = await asyncio.to_thread(client.get_option_snapshot,
                                        OptionSnapshotRequest(symbol_or_symbols=sim.option_symbols))
        assert sorted(snaps) == sorted(sim.option_symbols)
        spot = sim.underlying_price("AAPL")
        with_iv = 0
        for s, snap in snaps.items():
            last = list(sim.options_market.truth_trades_full(s))[-1]
            assert (round(snap.latest_trade.price * 100), int(snap.latest_trade.size)) == (last[1], last[2])
            occ = parse_occ(s)
            call, strike = occ.option_type == "C", float(occ.strike)
            t = years_to_expiry(occ.expiration, sim.clock())
            q = snap.latest_quote
            price = (q.bid_price + q.ask_price) / 2
            disc = strike * math.exp(-RISK_FREE_RATE * t)
            lower, upper = (max(0.0, spot - disc), spot) if call else (max(0.0, disc - spot), disc)
            assert (snap.implied_volatility is not None) == (lower < price < upper), (s, price, lower, upper)
            if snap.implied_volatility is None:
                assert snap.greeks is None
                continue
            with_iv += 1
            assert bs_price(call, spot, strike, t, snap.implied_volatility) == pytest.approx(price, abs=1e-6)
            g = snap.greeks
            assert (0 < g.delta < 1) if call else (-1 < g.delta < 0)
            assert g.gamma > 0 and g.vega > 0 and g.theta < 0 and (g.rho > 0) == call
        assert with_iv >= 1  # out-of-the-money contracts always price inside the bounds

        calls_over_120 = await asyncio.to_thread(client.get_option_chain, OptionChainRequest(
            underlying_symbol="AAPL", type=ContractType.CALL, strike_price_gte=120))
        assert sorted(calls_over_120) == sorted(s for s in sim.option_symbols
                                                if parse_occ(s).option_type == "C" and parse_occ(s).strike >= 120)
        first_expiry = min(parse_occ(s).expiration for s in sim.option_symbols)
        expiring = await asyncio.to_thread(client.get_option_chain, OptionChainRequest(
            underlying_symbol="AAPL", expiration_date=first_expiry))
        assert sorted(expiring) == sorted(s for s in sim.option_symbols if parse_occ(s).expiration == first_expiry)

        async with httpx.AsyncClient(base_url=sim.rest_url, headers={
                "APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}) as http:
            pages, token = [], None
            while True:
                r = await http.get("/v1beta1/options/snapshots/AAPL",
                                   params={"limit": 3, **({"page_token": token} if token else {})})
                assert r.status_code == 200
                body = r.json()
                pages.append(list(body["snapshots"]))
                token = body["next_page_token"]
                if token is None:
                    break
            assert [len(p) for p in pages] == [3, 3, 2] and sorted(sum(pages, [])) == sorted(sim.option_symbols)
            bad = await http.get("/v1beta1/options/snapshots/AAPL", params={"strike_price_gte": "abc"})
            assert bad.status_code == 422 and "strike_price_gte" in bad.text  # as its other bad parameters


def test_black_scholes_matches_the_textbook_and_put_call_parity() -> None:
    import math

    from tickvault.sim.greeks import bs_price, greeks, implied_volatility

    # Hull, Options, Futures and Other Derivatives, example 15.6: S 42, K 40, r 10 %, σ 20 %, T 0.5.
    assert bs_price(True, 42, 40, 0.5, 0.2, 0.1) == pytest.approx(4.76, abs=0.005)
    assert bs_price(False, 42, 40, 0.5, 0.2, 0.1) == pytest.approx(0.81, abs=0.005)
    c, p = bs_price(True, 42, 40, 0.5, 0.2, 0.1), bs_price(False, 42, 40, 0.5, 0.2, 0.1)
    assert c - p == pytest.approx(42 - 40 * math.exp(-0.1 * 0.5), abs=1e-12)
    assert implied_volatility(True, c, 42, 40, 0.5, 0.1) == pytest.approx(0.2, abs=1e-9)
    assert implied_volatility(True, 1.0, 42, 40, 0.5, 0.1) is None  # below intrinsic value
    assert implied_volatility(True, c, 42, 40, 0.0, 0.1) is None  # expired
    g, h = greeks(True, 42, 40, 0.5, 0.2, 0.1), 1e-4
    assert g.delta == pytest.approx((bs_price(True, 42 + h, 40, 0.5, 0.2, 0.1)
                                     - bs_price(True, 42 - h, 40, 0.5, 0.2, 0.1)) / (2 * h), rel=1e-6)
    assert g.vega == pytest.approx((bs_price(True, 42, 40, 0.5, 0.2 + h, 0.1)
                                    - bs_price(True, 42, 40, 0.5, 0.2 - h, 0.1)) / (2 * h) / 100, rel=1e-6)
    assert g.theta == pytest.approx(-(bs_price(True, 42, 40, 0.5 + h, 0.2, 0.1)
                                      - bs_price(True, 42, 40, 0.5 - h, 0.2, 0.1)) / (2 * h) / 365, rel=1e-5)


async def test_option_contracts_through_alpaca_py_trading_client() -> None:
    """TradingClient.get_option_contracts / get_option_contract: every simulated contract, Alpaca's
    filters and paging, by symbol and by id; an unknown contract is a 404 and a bad filter a 422."""
    import httpx
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import ContractType, ExerciseStyle
    from alpaca.trading.requests import GetOptionContractsRequest

    async with Simulator(symbols=["AAPL", "MSFT", "AMZN"], rate=200, options_rate=500) as sim:
        await wait_until(lambda: sim.options_market.total >= 200, 60, "option trades")
        sim.finish()
        client = TradingClient(KEY, SECRET, url_override=sim.rest_url)
        every = await asyncio.to_thread(client.get_option_contracts, GetOptionContractsRequest(limit=1000))
        assert sorted(c.symbol for c in every.option_contracts) == sorted(sim.option_symbols)
        assert every.next_page_token is None and len(sim.option_symbols) == 16  # 2 underlyings × 8
        for c in every.option_contracts:
            occ = parse_occ(c.symbol)
            assert (c.underlying_symbol, c.root_symbol, c.expiration_date, c.strike_price, c.size) == (
                occ.underlying, occ.underlying, occ.expiration, float(occ.strike), "100")
            assert c.type == (ContractType.CALL if occ.option_type == "C" else ContractType.PUT)
            assert c.style == ExerciseStyle.AMERICAN and c.tradable
            book = sim.options_market.books[c.symbol]
            if book.times:
                assert c.close_price == f"{book.cents[-1] / 100:.2f}"
        puts = await asyncio.to_thread(client.get_option_contracts, GetOptionContractsRequest(
            underlying_symbols=["MSFT"], type=ContractType.PUT, strike_price_lte="120"))
        assert sorted(c.symbol for c in puts.option_contracts) == sorted(
            s for s in sim.option_symbols if s.startswith("MSFT") and parse_occ(s).option_type == "P"
            and parse_occ(s).strike <= 120)
        page = await asyncio.to_thread(client.get_option_contracts, GetOptionContractsRequest(limit=5))
        rest = await asyncio.to_thread(client.get_option_contracts, GetOptionContractsRequest(
            limit=1000, page_token=page.next_page_token))
        assert len(page.option_contracts) == 5 and page.next_page_token is not None
        assert sorted(c.symbol for c in page.option_contracts + rest.option_contracts) == sorted(sim.option_symbols)
        one = every.option_contracts[0]
        assert (await asyncio.to_thread(client.get_option_contract, one.symbol)).id == one.id
        assert (await asyncio.to_thread(client.get_option_contract, str(one.id))).symbol == one.symbol
        with pytest.raises(APIError):
            await asyncio.to_thread(client.get_option_contract, "AAPL990101C00001000")
        async with httpx.AsyncClient(base_url=sim.rest_url, headers={
                "APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}) as http:
            assert (await http.get("/v2/options/contracts/AAPL990101C00001000")).status_code == 404
            bad = await http.get("/v2/options/contracts", params={"type": "straddle"})
            assert bad.status_code == 422 and "type" in bad.text


@pytest.mark.parametrize("moment", [
    "2026-11-30T23:59:59.999+00:00",  # a month's last instant (UTC), the next day a new month
    "2026-12-31T23:59:59.999+00:00",  # a year's last instant (UTC)
    "2026-12-31T20:00:00-05:00",  # New York's New Year's Eve evening: already 2027 in UTC
    "2027-01-01T00:00:00+00:00",
    "2028-02-29T12:00:00+00:00",  # a leap day
    "2026-03-08T07:00:00+00:00",  # New York's spring DST switch (02:00 EST → 03:00 EDT)
])
def test_option_contracts_expire_on_third_fridays_ahead_of_the_simulated_day_at_any_moment(moment: str) -> None:
    """The contracts are made from the simulated clock's day (``today``): whenever the simulator
    starts, month and year ends included, both expirations are monthly third Fridays more than a
    month ahead, so none expires while it runs."""
    from tickvault.sim.calendar import SimClock
    from tickvault.sim.greeks import years_to_expiry

    start = datetime.fromisoformat(moment)
    sim = Simulator(symbols=["AAPL"], clock=SimClock(start_ns=int(start.timestamp() * 1e9)))
    expirations = sorted({parse_occ(s).expiration for s in sim.option_symbols})
    assert len(expirations) == 2 and len(sim.option_symbols) == 8
    for expiry in expirations:
        assert expiry.weekday() == 4 and 15 <= expiry.day <= 21  # the month's third Friday
        assert years_to_expiry(expiry, sim.clock()) > 31 / 365
