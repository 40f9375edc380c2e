"""AlpacaREST against tickvault's Alpaca simulator (``tickvault.sim``): real HTTP over 127.0.0.1.

The simulator runs in the test's own event loop (``async with Simulator(...)``); the client is a
private pooled client built from Settings, as a flow run's would be. Ground truth comes from the
simulator itself (``truth_trades``, ``broker``, ``stats``).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

pytest.importorskip("tickvault.sim")

from tickvault.alpaca.errors import ServerError, UnprocessableError
from tests.support.option_expiry import close_expiry, plant_expiring_book
from tickvault.alpaca.models import OptionActivity, OrderRequest, format_rfc3339
from tickvault.alpaca.rest import AlpacaREST, RetryPolicy, collect
from tickvault.config import Settings
from tickvault.http import build_http_client, pool_stats
from tickvault.sim import Simulator

KEY_ID = "PKSIMKEY0001"
SECRET = "sim-secret-do-not-log-0001"
FAST_RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_cap_s=0.05)


def _settings(sim: Simulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "alpaca_key_id": KEY_ID,
        "alpaca_secret_key": SECRET,
        "alpaca_trading_url": sim.rest_url,
        "alpaca_data_url": sim.rest_url,
        "http_timeout_s": 2.0,
        "http_max_connections": 5,
        "http_max_retries": 3,
    }
    values.update(overrides)
    return Settings(**values)


class SimREST:
    """An AlpacaREST on its own pooled client, pointed at a simulator; closes its client on exit."""

    def __init__(self, sim: Simulator, retry: RetryPolicy = FAST_RETRY, **overrides: Any) -> None:
        self.settings = _settings(sim, **overrides)
        self.client = build_http_client(self.settings)
        self.rest = AlpacaREST(self.settings, self.client, retry=retry)

    async def __aenter__(self) -> AlpacaREST:
        return self.rest

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _sim(**kwargs: Any) -> Simulator:
    kwargs.setdefault("symbols", 5)
    kwargs.setdefault("rate", 50_000)
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("max_trades", 2_000)
    return Simulator(key=KEY_ID, secret=SECRET, **kwargs)


async def test_account_positions_orders_and_fills_round_trip():
    async with _sim() as sim, SimREST(sim) as rest:
        symbol = sim.symbols[0]
        sim.broker.set_position(symbol, 10, "100.5")
        account, positions = await asyncio.gather(rest.get_account(), rest.get_positions())
        assert account.status == "ACTIVE" and account.cash == Decimal(100000)
        assert isinstance(account.equity, Decimal) and account.created_at is not None
        assert [(p.symbol, p.qty, p.avg_entry_price) for p in positions] == [
            (symbol, Decimal(10), Decimal("100.5"))
        ]

        # three market orders fill at once; a far-below limit order rests and is canceled
        cids = [OrderRequest.new_client_order_id() for _ in range(3)]
        market = [
            await rest.submit_order(
                OrderRequest(symbol=symbol, side="buy", qty=Decimal("1.5"), client_order_id=c)
            )
            for c in cids
        ]
        assert [o.client_order_id for o in market] == cids and all(o.qty == Decimal("1.5") for o in market)
        resting = await rest.submit_order(
            OrderRequest(
                symbol=symbol, side="buy", qty=Decimal(1), type="limit", limit_price=Decimal("0.01"),
                time_in_force="gtc", client_order_id="rest-1",
            )
        )  # fmt: skip
        assert resting.status in ("new", "accepted") and resting.limit_price == Decimal("0.01")
        assert (await rest.get_order(resting.id)).client_order_id == "rest-1"
        assert (await rest.get_order_by_client_id(cids[1])).id == market[1].id
        assert [o.id for o in await rest.list_orders(status="open")] == [resting.id]
        everything = await rest.list_orders(status="all", direction="asc", symbols=[symbol])
        assert [o.id for o in everything] == [o.id for o in market] + [resting.id]
        filled = await rest.get_order(market[0].id)
        assert (
            filled.status == "filled" and filled.filled_qty == Decimal("1.5") and filled.filled_at is not None
        )

        await rest.cancel_order(resting.id)
        assert (await rest.get_order(resting.id)).status == "canceled"
        with pytest.raises(UnprocessableError, match="not cancelable"):
            await rest.cancel_order(resting.id)

        pages = [page async for page in rest.fill_activities(page_size=2)]
        assert [len(p) for p in pages] == [2, 1]
        fills = [f for p in pages for f in p]
        assert [f.order_id for f in fills] == [o.id for o in market]
        assert all(f.qty == Decimal("1.5") and f.symbol == symbol for f in fills)
        positions = await rest.get_positions()
        assert positions[0].qty == Decimal("14.5")


async def test_submit_is_idempotent_when_the_first_answer_is_lost():
    """The first POST creates the order but its answer is lost on the way back (a response hook turns
    it into a read timeout, as a dropped connection would); the retry is refused as a duplicate
    client_order_id, and the client returns the order the first attempt created.

    (The simulator's own faults answer before processing, and its latency fault reads the body after
    the delay, so a client timeout there never lands an order: the loss is injected on the way back.)"""
    async with _sim() as sim, SimREST(sim) as rest:
        cid = "idem-1"
        posts = 0

        async def lose_first_order_answer(response: httpx.Response) -> None:
            nonlocal posts
            if response.request.method == "POST" and response.request.url.path == "/v2/orders":
                posts += 1
                if posts == 1:
                    assert response.status_code == 200  # it landed ...
                    raise httpx.ReadTimeout("answer lost (injected)", request=response.request)  # ... unseen

        rest.http_client.event_hooks["response"].append(lose_first_order_answer)
        order = await rest.submit_order(
            OrderRequest(symbol=sim.symbols[1], side="buy", qty=Decimal(2), client_order_id=cid)
        )
        assert posts == 2
        assert order.client_order_id == cid
        assert order.id == sim.broker.get_by_client_id(cid)["id"]
        assert sum(1 for o in sim.broker.orders.values() if o.client_order_id == cid) == 1  # no double order
        # reusing the id on purpose (no ambiguity) is still the caller's error
        with pytest.raises(UnprocessableError, match="client_order_id must be unique"):
            await rest.submit_order(
                OrderRequest(symbol=sim.symbols[1], side="buy", qty=Decimal(2), client_order_id=cid)
            )


async def test_submit_survives_a_5xx_before_processing():
    async with _sim() as sim, SimREST(sim) as rest:
        sim.rest_fail(503, 2)
        order = await rest.submit_order(
            OrderRequest(symbol=sim.symbols[2], side="buy", qty=Decimal("0.25"), client_order_id="retry-503")
        )
        assert order.client_order_id == "retry-503" and sim.stats["rest_faults"] == 2
        assert len([o for o in sim.broker.orders.values() if o.client_order_id == "retry-503"]) == 1


async def test_historical_trades_paged_equal_the_simulator_ground_truth():
    async with _sim(max_trades=12_000, rate=400_000) as sim, SimREST(sim) as rest:
        await asyncio.wait_for(sim.finished.wait(), 120)  # a failure detector: the market needs 0.03 s
        truth = {
            (sym, tid, t, round(price * 100), size)
            for sym in sim.symbols
            for tid, t, price, size in sim.truth_trades(sym)
        }
        times = sorted(t for _, _, t, _, _ in truth)
        start, end = times[len(times) // 10], times[-len(times) // 10]  # an inner window, edges included
        expected = {row for row in truth if start <= row[2] <= end}

        got = []
        pages = 0
        async for page in rest.historical_trades(
            sim.symbols, format_rfc3339(start), format_rfc3339(end), limit=1_000
        ):
            assert 0 < len(page) <= 1_000
            pages += 1
            got.extend(page)
        assert pages == -(-len(expected) // 1_000)
        rows = [(t.symbol, t.id, t.time_ns, t.price * 100, t.size) for t in got]
        assert len(rows) == len(set(rows)) == len(expected)  # nothing lost, nothing twice
        assert {(s, i, ns, int(p), int(sz)) for s, i, ns, p, sz in rows} == expected
        assert all(p == int(p) for _, _, _, p, _ in rows)  # prices are exact cents, no float residue
        # per symbol ascending time, as Alpaca pages
        for sym in sim.symbols:
            ns = [t.time_ns for t in got if t.symbol == sym]
            assert ns == sorted(ns)

        quotes = await collect(
            rest.historical_quotes(sim.symbols[:2], format_rfc3339(start), format_rfc3339(end))
        )
        assert quotes and all(q.bid_price <= q.ask_price and start <= q.time_ns <= end for q in quotes)
        minute = 60 * 10**9  # bars are selected by their start time: start at the first trade's minute
        bars = await collect(
            rest.historical_bars(sim.symbols, times[0] - times[0] % minute, times[-1], timeframe="1Min")
        )
        assert sum(b.trade_count for b in bars) == len(truth)
        latest = await rest.latest_trades(sim.symbols)
        assert {s: t.time_ns for s, t in latest.items()} == {
            s: max(t for sym, _, t, _, _ in truth if sym == s)
            for s in sim.symbols
            if any(r[0] == s for r in truth)
        }


async def test_rate_limit_and_server_faults_are_survived_by_retries():
    async with _sim() as sim, SimREST(sim) as rest:
        sim.rest_fail(429, 2, retry_after=0.1)
        started = time.monotonic()
        account = await rest.get_account()
        assert account.status == "ACTIVE"
        assert time.monotonic() - started >= 0.2  # Retry-After honoured twice
        assert sim.stats["rest_faults"] == 2

        sim.rest_fail(500, 3)
        assert isinstance(await rest.get_positions(), list)
        assert sim.stats["rest_faults"] == 5

        sim.rest_fail(500, 4)  # one more than max_retries allows
        with pytest.raises(ServerError) as info:
            await rest.get_account()
        assert info.value.attempts == 4 and sim.stats["rest_faults"] == 9


async def test_latency_fault_with_many_gathered_calls_stays_within_the_pool():
    async with _sim() as sim, SimREST(sim) as rest:
        client = rest.http_client
        sim.rest_latency(50)
        before = sim.stats["rest_requests"]
        started = time.monotonic()
        results = await asyncio.gather(*[rest.get_account() for _ in range(40)])
        elapsed = time.monotonic() - started
        assert len(results) == 40 and sim.stats["rest_requests"] - before == 40
        stats = pool_stats(client)
        assert stats.connections_opened <= 5
        assert elapsed >= 40 / 5 * 0.05 * 0.9  # at most 5 in flight: the pool, not the caller, bounds them


async def test_list_assets_returns_the_tradable_symbols_through_a_server_error():
    async with _sim(symbols=["AAPL", "MSFT", "ZAAA"]) as sim, SimREST(sim) as rest:
        sim.rest_fail(503, 1)  # the one retry policy covers it
        assets = await rest.list_assets()
        assert [a.symbol for a in assets] == ["AAPL", "MSFT", "ZAAA"] and sim.stats["rest_faults"] == 1
        assert all(a.tradable and a.status == "active" and a.asset_class == "us_equity" for a in assets)
        assert await rest.list_assets(status="inactive") == []
        with pytest.raises(UnprocessableError):
            await rest.list_assets(asset_class="bonds")  # type: ignore[arg-type]


async def test_option_activities_are_paged_oldest_first_in_alpacas_non_trade_shape():
    """An expiry close at the simulator (a long call exercised, a short call assigned, a long put
    expired): the client lists the five option events page by page (page_token: the last id), exact
    decimals, and alpaca-py's NonTradeActivity model reads the very same rows from the same endpoint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        from alpaca.trading.client import TradingClient
        from alpaca.trading.models import NonTradeActivity

    async with _sim(symbols=["AAPL", "MSFT"], rate=None, seed=4) as sim, SimREST(sim) as rest:
        book = plant_expiring_book(sim)
        before = datetime.now(UTC)
        assert await collect(rest.option_activities(after=before)) == []
        expiry_ns = close_expiry(sim, book)
        sim.broker.cash_activity("CSD", "100")  # a non-trade activity of another type: not listed

        pages = [page async for page in rest.option_activities(after=before, page_size=2)]
        assert [len(p) for p in pages] == [2, 2, 1]
        events = [e for p in pages for e in p]
        assert [(e.activity_type, e.symbol, e.qty, e.price, e.net_amount) for e in events] == [
            ("OPEXC", book.exercised, Decimal(-2), None, Decimal(0)),
            ("OPTRD", "AAPL", Decimal(200), Decimal(100), Decimal(-20_000)),
            ("OPASN", book.assigned, Decimal(1), None, Decimal(0)),
            ("OPTRD", "AAPL", Decimal(-100), Decimal(150), Decimal(15_000)),
            ("OPEXP", book.expired, Decimal(-1), None, Decimal(0)),
        ]
        closed_at = datetime.fromtimestamp(expiry_ns / 1e9, UTC)
        assert {(e.date, e.time, e.status) for e in events} == {(closed_at.date(), closed_at, "executed")}
        assert await collect(rest.option_activities(after=closed_at)) == []  # ``after`` is exclusive

        trading = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.rest_url)
        raw = await asyncio.to_thread(trading.get, "/account/activities", {
            "activity_types": "OPEXC,OPASN,OPEXP,OPTRD", "direction": "asc", "after": format_rfc3339(before)})
        official = [NonTradeActivity(**row) for row in raw]
        assert [a.id for a in official] == [e.id for e in events]
        assert [(str(getattr(a.activity_type, "value", a.activity_type)), a.symbol, Decimal(str(a.qty)),
                 Decimal(str(a.net_amount)), a.date) for a in official] == [
            (e.activity_type, e.symbol, e.qty, e.net_amount, e.date) for e in events]


def test_an_option_activity_without_a_stamp_in_its_id_is_timed_at_its_date():
    """Alpaca documents the id as ``<stamp>::<uuid>``, the stamp in New York time (its documented FILL
    activity ``20210510100104650::…`` has ``transaction_time`` ``2021-05-10T14:01:04.650275Z``); an id
    without a readable stamp is no error: the event is timed at midnight New York of its date."""
    row = {"id": "opaque::5f596936", "activity_type": "OPEXP", "date": "2023-07-21", "net_amount": "0",
           "symbol": "AAPL230721C00150000", "qty": "-2", "status": "executed", "description": "Option Expiry"}
    event = OptionActivity.model_validate(row)
    assert event.time == datetime(2023, 7, 21, 4, 0, tzinfo=UTC) and event.date == date(2023, 7, 21)  # EDT
    documented = OptionActivity.model_validate({**row, "id": "20210510100104650::88b5f678-fef5-447b-af15-f21e367e6d8c"})
    assert documented.time == datetime(2021, 5, 10, 14, 1, 4, 650_000, tzinfo=UTC)
    winter = OptionActivity.model_validate({**row, "id": "20240119160000000::5f596936"})  # EST: UTC-5
    assert winter.time == datetime(2024, 1, 19, 21, 0, tzinfo=UTC)
