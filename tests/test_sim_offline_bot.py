"""A bot's whole Alpaca surface against the simulator, through alpaca-py's public clients only.

TradingClient, StockHistoricalDataClient, StockDataStream and TradingStream talk to the simulator
exactly as they talk to Alpaca; the only other door used is the simulator's own clock control
(``POST /_sim/clock``) and fault switch (``POST /_sim/faults``), so a test reaches the close without
waiting for it. Blocking REST clients run in worker threads while the simulator answers on the
test's loop. Nothing here sleeps to synchronise: each wait is on a condition, with a timeout.

Most tests run the market with ``rate=None``: it moves only while a market-data client reads, so a
test can read a quote, send an order against it and know the quote did not move in between.
"""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.requests import (
        StockBarsRequest,
        StockLatestBarRequest,
        StockLatestQuoteRequest,
        StockQuotesRequest,
        StockSnapshotRequest,
    )
    from alpaca.data.timeframe import TimeFrame
    from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import (
        ClosePositionRequest,
        GetCalendarRequest,
        GetOrdersRequest,
        GetPortfolioHistoryRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        ReplaceOrderRequest,
        StopLossRequest,
        StopOrderRequest,
        TakeProfitRequest,
    )

from tests.support.alpaca_bot import WAIT, Bot, d, ny_ns, sim
from tickvault.sim.calendar import SimClock

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------- the fill model
async def test_market_buy_larger_than_the_ask_fills_partly_at_the_ask_then_the_rest() -> None:
    async with sim(symbols=["AAPL"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        quote = (await bot.call(bot.data.get_stock_latest_quote,
                                StockLatestQuoteRequest(symbol_or_symbols="AAPL")))["AAPL"]
        ask, ask_size = d(quote.ask_price), int(quote.ask_size)
        qty = ask_size + 150
        async with bot.trade_updates():
            order = await bot.trade("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            # the quote's size at its price, at once; the rest waits for the next quotes
            assert order.status == OrderStatus.PARTIALLY_FILLED
            assert d(order.filled_qty) == ask_size and d(order.filled_avg_price) == ask
            first = await bot.event(order.id, "partial_fill")
            assert d(first.price) == ask and d(first.qty) == ask_size and d(first.position_qty) == ask_size
            await bot.move_market(20, "AAPL")  # new quotes bring new liquidity
            final = await bot.event(order.id, "fill")
        pieces = [(d(u.price), d(u.qty)) for u in bot.updates
                  if str(u.order.id) == str(order.id) and u.price is not None]
        assert sum(q for _, q in pieces) == qty and d(final.position_qty) == qty
        assert set(bot.events(order.id)) == {"new", "partial_fill", "fill"}
        done = await bot.trade("get_order_by_id", order.id)
        average = sum(p * q for p, q in pieces) / qty
        assert done.status == OrderStatus.FILLED and d(done.filled_qty) == qty
        assert abs(d(done.filled_avg_price) - average) < Decimal("1e-8")
        fills = await bot.call(bot.trading.get, "/account/activities/FILL", {"direction": "asc"})
        assert [(d(a["price"]), d(a["qty"])) for a in fills] == pieces
        assert [a["type"] for a in fills] == ["partial_fill"] * (len(pieces) - 1) + ["fill"]
        assert d(fills[-1]["cum_qty"]) == qty and fills[-1]["leaves_qty"] == "0"
        account = await bot.trade("get_account")
        assert d(account.cash) == Decimal(1_000_000) - sum(p * q for p, q in pieces)
        position = await bot.trade("get_open_position", "AAPL")
        assert d(position.qty) == qty and abs(d(position.avg_entry_price) - average) < Decimal("0.0001")


async def test_day_limit_that_never_crosses_expires_at_the_close_and_the_clock_follows_the_calendar() -> None:
    tuesday_close = ny_ns(2025, 3, 4, 16, 0)
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 15, 58), scale=1)
    async with sim(rate=500, hours="calendar", clock=clock) as s:
        bot = Bot(s)
        now = await bot.trade("get_clock")
        assert now.is_open and now.next_close == datetime(2025, 3, 4, 21, 0, tzinfo=UTC)
        async with bot.trade_updates():
            resting = await bot.trade("submit_order", LimitOrderRequest(
                symbol="MSFT", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.00))
            gtc = await bot.trade("submit_order", LimitOrderRequest(
                symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=1.00))
            assert resting.status == OrderStatus.NEW and resting.expires_at == datetime(2025, 3, 4, 21, 0, tzinfo=UTC)
            await bot.sim_control("/_sim/clock", {"to": "next_close"})
            expired = await bot.event(resting.id, "expired")
            assert expired.order.status == OrderStatus.EXPIRED
            assert expired.order.expired_at == datetime(2025, 3, 4, 21, 0, tzinfo=UTC)
            assert (await bot.trade("get_order_by_id", gtc.id)).status == OrderStatus.NEW  # gtc outlives the day
            closed = await bot.trade("get_clock")
            assert not closed.is_open and closed.next_open == datetime(2025, 3, 5, 14, 30, tzinfo=UTC)
            # An order sent while the market is closed waits for the open, then fills.
            queued = await bot.trade("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            assert queued.status == OrderStatus.ACCEPTED and d(queued.filled_qty) == 0
            await bot.sim_control("/_sim/clock", {"to": "next_open"})
            await bot.event(queued.id, "fill")
        assert bot.events(queued.id) == ["accepted", "new", "fill"]
        assert (await bot.trade("get_clock")).is_open
        assert s.clock() >= tuesday_close


async def test_stop_triggers_limit_crosses_and_ioc_fok_cancel() -> None:
    async with sim(rate=None) as s:
        bot = Bot(s)
        await bot.move_market(10)
        q = (await bot.call(bot.data.get_stock_latest_quote,
                            StockLatestQuoteRequest(symbol_or_symbols="NVDA")))["NVDA"]
        ask, bid = d(q.ask_price), d(q.bid_price)
        async with bot.trade_updates():
            # A buy stop just above the market and a sell limit just above it: the walk reaches them.
            stop = await bot.trade("submit_order", StopOrderRequest(
                symbol="NVDA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                stop_price=float(ask + Decimal("0.05"))))
            ioc = await bot.trade("submit_order", LimitOrderRequest(
                symbol="NVDA", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.IOC,
                limit_price=float(bid - Decimal("1"))))
            assert ioc.status == OrderStatus.CANCELED and d(ioc.filled_qty) == 0
            fok = await bot.trade("submit_order", LimitOrderRequest(
                symbol="NVDA", qty=int(q.ask_size) + 1, side=OrderSide.BUY,
                time_in_force=TimeInForce.FOK, limit_price=float(ask)))
            assert fok.status == OrderStatus.CANCELED and d(fok.filled_qty) == 0  # all or nothing
            assert stop.status == OrderStatus.NEW
            async with asyncio.timeout(WAIT):
                while "fill" not in bot.events(stop.id):
                    await bot.move_market(20, "NVDA")
        filled = await bot.trade("get_order_by_id", stop.id)
        assert d(filled.filled_avg_price) >= d(filled.stop_price) - Decimal("0.05")  # a market order once triggered
        assert bot.events(ioc.id) == ["new", "canceled"] and bot.events(fok.id) == ["new", "canceled"]


# ------------------------------------------------------------------------------- orders
async def test_orders_submit_get_list_replace_cancel_and_rejections() -> None:
    async with sim() as s:
        bot = Bot(s)
        await bot.move_market(10)
        async with bot.trade_updates():
            market = await bot.trade("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="bot-1"))
            assert market.status == OrderStatus.FILLED and market.client_order_id == "bot-1"
            assert (await bot.trade("get_order_by_client_id", "bot-1")).id == market.id
            dup = await bot.refused("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="bot-1"))
            assert dup.status_code == 422 and "unique" in dup.message

            low = await bot.trade("submit_order", LimitOrderRequest(
                symbol="MSFT", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=1.00))
            replaced = await bot.trade("replace_order_by_id", low.id, ReplaceOrderRequest(qty=3, limit_price=1.5))
            assert str(replaced.replaces) == str(low.id) and d(replaced.qty) == 3 and d(replaced.limit_price) == d("1.5")
            old = await bot.trade("get_order_by_id", low.id)
            assert old.status == OrderStatus.REPLACED and str(old.replaced_by) == str(replaced.id)
            await bot.event(low.id, "replaced")
            await bot.event(replaced.id, "new")
            mkt_replace = await bot.refused("replace_order_by_id", market.id, ReplaceOrderRequest(qty=2))
            assert mkt_replace.status_code == 422

            # Filters: status, symbols, side, direction, limit.
            open_buys = await bot.trade("get_orders", GetOrdersRequest(
                status=QueryOrderStatus.OPEN, symbols=["MSFT"], side=OrderSide.BUY))
            assert [o.id for o in open_buys] == [replaced.id]
            closed = await bot.trade("get_orders", GetOrdersRequest(status=QueryOrderStatus.CLOSED, direction="asc"))
            assert [o.id for o in closed] == [market.id, low.id]
            assert len(await bot.trade("get_orders", GetOrdersRequest(status=QueryOrderStatus.ALL, limit=1))) == 1

            # Alpaca's refusals: buying power, qty beyond the position, fractional short, short not allowed.
            rich = await bot.refused("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=100_000, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            assert rich.status_code == 403 and rich.message == "insufficient buying power"
            flip = await bot.refused("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=11, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
            assert flip.status_code == 403 and "insufficient qty available" in flip.message
            frac = await bot.refused("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=0.5, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
            assert frac.status_code == 403 and "fractional orders cannot be sold short" in frac.message
            await bot.trade("set_account_configurations", _config(no_shorting=True))
            no_short = await bot.refused("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
            assert no_short.status_code == 403 and "not allowed to short" in no_short.message
            config = await bot.trade("set_account_configurations", _config(no_shorting=False))
            assert config.no_shorting is False and (await bot.trade("get_account_configurations")).fractional_trading
            assert (await bot.trade("get_account")).shorting_enabled

            # A rejection after validation comes as Alpaca sends it: the order, then a rejected event.
            await bot.sim_control("/_sim/faults", {"fault": "reject_next_orders", "count": 1})
            rejected = await bot.trade("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            assert rejected.status == OrderStatus.REJECTED and rejected.failed_at is not None
            await bot.event(rejected.id, "rejected")

            # Cancel one, then all.
            spare = await bot.trade("submit_order", LimitOrderRequest(
                symbol="NVDA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.00))
            assert await bot.trade("cancel_order_by_id", spare.id) is None
            await bot.event(spare.id, "canceled")
            gone = await bot.refused("cancel_order_by_id", spare.id)
            assert gone.status_code == 422
            missing = await bot.refused("get_order_by_id", "00000000-0000-4000-8000-000000000000")
            assert missing.status_code == 404
            answers = await bot.trade("cancel_orders")
            assert [(str(a.id), a.status) for a in answers] == [(str(replaced.id), 200)]
            assert await bot.trade("get_orders") == []


def _config(**changes):
    from alpaca.trading.models import AccountConfiguration

    base = dict(dtbp_check="entry", fractional_trading=True, max_margin_multiplier="1", no_shorting=False,
                pdt_check="entry", suspend_trade=False, trade_confirm_email="all", ptp_no_exception_entry=False)
    return AccountConfiguration(**{**base, **changes})


async def test_bracket_oto_and_oco_orders() -> None:
    async with sim() as s:
        bot = Bot(s)
        await bot.move_market(10)
        q = (await bot.call(bot.data.get_stock_latest_quote,
                            StockLatestQuoteRequest(symbol_or_symbols="AAPL")))["AAPL"]
        ask = d(q.ask_price)
        async with bot.trade_updates():
            bracket = await bot.trade("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=4, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                order_class=OrderClass.BRACKET,
                take_profit=TakeProfitRequest(limit_price=float(ask * 2)),
                stop_loss=StopLossRequest(stop_price=float((ask / 2).quantize(Decimal("0.01"))))))
            assert bracket.status == OrderStatus.FILLED and bracket.order_class == OrderClass.BRACKET
            take, stop = bracket.legs
            assert (take.type, take.side, d(take.limit_price)) == ("limit", OrderSide.SELL, ask * 2)
            # As at Alpaca: the take-profit works as new, the stop stays held while it watches the market.
            assert stop.type == "stop" and take.status == OrderStatus.NEW and stop.status == OrderStatus.HELD
            await bot.event(take.id, "new")
            wrong = await bot.refused("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=float(ask / 2)),
                stop_loss=StopLossRequest(stop_price=float(ask / 3))))
            assert wrong.status_code == 422 and "take_profit.limit_price" in wrong.message
            # Canceling one exit of the bracket cancels the other (Alpaca's one-cancels-other).
            await bot.trade("cancel_order_by_id", take.id)
            assert (await bot.trade("get_order_by_id", stop.id)).status == OrderStatus.CANCELED
            await bot.event(stop.id, "canceled")

            oto = await bot.trade("submit_order", LimitOrderRequest(
                symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.00,
                order_class=OrderClass.OTO, stop_loss=StopLossRequest(stop_price=0.5)))
            assert oto.status == OrderStatus.NEW and [leg.status for leg in oto.legs] == [OrderStatus.HELD]
            nested = await bot.trade("get_orders", GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
            assert [(o.id, len(o.legs or [])) for o in nested] == [(oto.id, 1)]
            await bot.trade("cancel_order_by_id", oto.id)
            assert (await bot.trade("get_order_by_id", oto.legs[0].id)).status == OrderStatus.CANCELED

            # OCO on the long AAPL: a take-profit limit far above and a stop far below, both working.
            oco = await bot.trade("submit_order", LimitOrderRequest(
                symbol="AAPL", qty=4, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, limit_price=float(ask * 3),
                order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=float(ask * 3)),
                stop_loss=StopLossRequest(stop_price=float((ask / 3).quantize(Decimal("0.01"))))))
            assert oco.order_class == OrderClass.OCO and oco.status == OrderStatus.NEW
            assert [leg.status for leg in oco.legs] == [OrderStatus.HELD]
            await bot.trade("cancel_order_by_id", oco.id)  # one cancels the other
            await bot.event(oco.legs[0].id, "canceled")


# ------------------------------------------------------------------------------- positions, account
async def test_positions_get_close_close_all_and_the_account_follows() -> None:
    async with sim() as s:
        bot = Bot(s)
        await bot.move_market(10)
        for symbol, side in (("AAPL", OrderSide.BUY), ("MSFT", OrderSide.BUY), ("NVDA", OrderSide.SELL)):
            await bot.trade("submit_order", MarketOrderRequest(
                symbol=symbol, qty=10, side=side, time_in_force=TimeInForce.DAY))
        positions = await bot.trade("get_all_positions")
        assert [(p.symbol, p.qty, p.side) for p in positions] == [
            ("AAPL", "10", "long"), ("MSFT", "10", "long"), ("NVDA", "-10", "short")]
        account = await bot.trade("get_account")
        assert d(account.equity) == d(account.cash) + d(account.long_market_value) + d(account.short_market_value)
        assert d(account.short_market_value) < 0 < d(account.long_market_value)
        aapl = await bot.trade("get_open_position", "AAPL")
        by_id = await bot.trade("get_open_position", aapl.asset_id)
        assert by_id.symbol == "AAPL" and str(aapl.asset_id) == str((await bot.trade("get_asset", "AAPL")).id)
        partial = await bot.trade("close_position", "AAPL", ClosePositionRequest(qty="4"))
        assert partial.side == OrderSide.SELL and d(partial.qty) == 4 and partial.status == OrderStatus.FILLED
        half = await bot.trade("close_position", "MSFT", ClosePositionRequest(percentage="50"))
        assert d(half.qty) == 5
        assert d((await bot.trade("get_open_position", "AAPL")).qty) == 6
        none = await bot.refused("get_open_position", "ZZZZ")
        assert none.status_code == 404
        closing = await bot.trade("close_all_positions", True)
        assert sorted((c.symbol, c.status) for c in closing) == [("AAPL", 200), ("MSFT", 200), ("NVDA", 200)]
        assert {c.symbol: c.body.side for c in closing}["NVDA"] == OrderSide.BUY  # a short is bought back
        assert await bot.trade("get_all_positions") == []
        flat = await bot.trade("get_account")
        assert d(flat.equity) == d(flat.cash) and d(flat.buying_power) == d(flat.cash)
        history = await bot.trade("get_portfolio_history", GetPortfolioHistoryRequest(period="1D", timeframe="1Min"))
        assert history.timeframe == "1Min" and history.equity and len(history.equity) == len(history.timestamp)
        assert history.equity[-1] == pytest.approx(float(flat.equity))
        assert history.profit_loss[-1] == pytest.approx(float(flat.equity) - history.base_value, abs=0.01)
        fills = await bot.call(bot.trading.get, "/account/activities/FILL", {"direction": "asc", "page_size": 3})
        assert len(fills) == 3 and all(f["activity_type"] == "FILL" for f in fills)
        more = await bot.call(bot.trading.get, "/account/activities/FILL",
                              {"direction": "asc", "page_size": 100, "page_token": fills[-1]["id"]})
        assert len(fills) + len(more) == 8  # 3 entries, 2 partial closes, 3 closes
        assert [f["side"] for f in fills] == ["buy", "buy", "sell_short"]


# ------------------------------------------------------------------------------- assets, calendar
async def test_assets_calendar_and_clock() -> None:
    async with sim() as s:
        bot = Bot(s)
        assets = await bot.trade("get_all_assets")
        assert sorted(a.symbol for a in assets) == ["AAPL", "MSFT", "NVDA"]
        nvda = await bot.trade("get_asset", "NVDA")
        assert nvda.tradable and nvda.shortable and nvda.fractionable
        assert (await bot.trade("get_asset", nvda.id)).symbol == "NVDA"
        missing = await bot.refused("get_asset", "ZZZZ")
        assert missing.status_code == 404
        days = await bot.trade("get_calendar", GetCalendarRequest(start=date(2025, 7, 1), end=date(2025, 7, 7)))
        assert [(c.date.isoformat(), c.open.strftime("%H:%M"), c.close.strftime("%H:%M")) for c in days] == [
            ("2025-07-01", "09:30", "16:00"), ("2025-07-02", "09:30", "16:00"),
            ("2025-07-03", "09:30", "13:00"), ("2025-07-07", "09:30", "16:00")]  # July 4th closed, the 3rd early
        year = await bot.trade("get_calendar", GetCalendarRequest(start=date(2024, 1, 1), end=date(2024, 12, 31)))
        assert len(year) == 252
        clock = await bot.trade("get_clock")
        assert clock.is_open and clock.next_open > clock.timestamp  # hours="always": the sim never closes


# ------------------------------------------------------------------------------- market data
async def test_snapshots_latest_bars_and_multi_symbol_pagination() -> None:
    async with sim(symbols=["AAPL", "MSFT", "NVDA"]) as s:
        bot = Bot(s)
        await bot.move_market(6_000)  # ~24,000 trades: several 10,000-item pages across symbols
        snaps = await bot.call(bot.data.get_stock_snapshot, StockSnapshotRequest(symbol_or_symbols=s.symbols))
        assert sorted(snaps) == s.symbols
        for sym, snap in snaps.items():
            last = list(s.truth_trades(sym))[-1]
            assert snap.latest_trade.id == last[0] and snap.latest_trade.price == last[2]
            assert snap.latest_quote.ask_price >= snap.latest_quote.bid_price
            assert snap.minute_bar.close == last[2] and snap.daily_bar.close == last[2]
        latest = await bot.call(bot.data.get_stock_latest_bar, StockLatestBarRequest(symbol_or_symbols=s.symbols))
        assert {sym: bar.close for sym, bar in latest.items()} == {sym: snaps[sym].minute_bar.close for sym in s.symbols}
        quotes = await bot.call(bot.data.get_stock_quotes, StockQuotesRequest(symbol_or_symbols=s.symbols,
                                                                            start=EPOCH_2000))
        assert sum(len(v) for v in quotes.data.values()) == s.market.quotes_total > 10_000
        bars = await bot.call(bot.data.get_stock_bars, StockBarsRequest(symbol_or_symbols=s.symbols,
                                                                        timeframe=TimeFrame.Minute,
                                                                        start=EPOCH_2000, limit=2))
        assert sum(len(v) for v in bars.data.values()) <= 2
