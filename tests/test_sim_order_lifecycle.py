"""Order lifecycles past the simple ones, through alpaca-py's TradingClient and TradingStream only:
trailing stops, replacing a partly filled order, exits that fill in pieces, the fields of every
trade update along the way, and a calendar with its own closures and early closes.

The market runs with ``rate=None`` (it moves only while a market-data client reads), so a test reads
a quote, sends an order against it and knows the quote did not move in between; the simulator's
ground-truth trades say what the market did while it moved.
"""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.requests import StockLatestQuoteRequest
    from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, OrderType, TimeInForce
    from alpaca.trading.requests import (
        GetCalendarRequest,
        GetOrderByIdRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        ReplaceOrderRequest,
        StopLossRequest,
        TakeProfitRequest,
        TrailingStopOrderRequest,
    )

from tests.support.alpaca_bot import WAIT, Bot, assert_events_add_up, d, ny_ns, sim
from tickvault.sim.calendar import Calendar, CalendarError, SimClock

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

CENT = Decimal("0.01")


async def quote(bot: Bot, symbol: str):
    return (await bot.call(bot.data.get_stock_latest_quote, StockLatestQuoteRequest(symbol_or_symbols=symbol)))[symbol]


async def buy_position(bot: Bot, symbol: str, qty: int):
    """A long position of ``qty`` from a market buy, the market moved until it is complete."""
    order = await bot.trade("submit_order", MarketOrderRequest(
        symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.GTC))
    async with asyncio.timeout(WAIT):
        while (await bot.trade("get_order_by_id", order.id)).status != OrderStatus.FILLED:
            await bot.move_market(5, symbol)
    return await bot.trade("get_open_position", symbol)


async def test_trailing_stop_follows_the_high_water_mark_and_fills_when_crossed() -> None:
    async with sim(symbols=["AAPL"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        await buy_position(bot, "AAPL", 10)
        last = Decimal(s.market.last_price_cents("AAPL")) / 100
        seen = s.truth_count("AAPL")
        trail = Decimal("0.10")
        async with bot.trade_updates():
            order = await bot.trade("submit_order", TrailingStopOrderRequest(
                symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, trail_price=float(trail)))
            assert order.type == OrderType.TRAILING_STOP and order.status == OrderStatus.NEW
            assert d(order.trail_price) == trail and order.trail_percent is None
            assert d(order.hwm) == last and d(order.stop_price) == last - trail
            percent = await bot.trade("submit_order", TrailingStopOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, trail_percent=2.5))
            assert d(percent.hwm) == last
            assert d(percent.stop_price) == (last * Decimal("1.025")).quantize(CENT, ROUND_HALF_UP)
            async with asyncio.timeout(WAIT):
                while "fill" not in bot.events(order.id):
                    await bot.move_market(10, "AAPL")
            filled = await bot.trade("get_order_by_id", order.id)
        # Replay the market since the order: the high-water mark rises with the trades, the stop keeps
        # its trail below it, and the first trade at or under the stop triggers the order.
        hwm = last
        for _, _, price, _ in list(s.truth_trades("AAPL"))[seen:]:
            p = Decimal(str(price))
            hwm = max(hwm, p)
            if p <= hwm - trail:
                break
        else:
            pytest.fail("no trade crossed the stop, yet the order filled")
        assert d(filled.hwm) == hwm and d(filled.stop_price) == hwm - trail
        assert filled.status == OrderStatus.FILLED and d(filled.filled_qty) == 10
        assert bot.events(order.id)[0] == "new" and bot.events(order.id)[-1] == "fill"
        assert_events_add_up(bot, order.id)
        # Alpaca's refusals for trailing stops.
        for bad in (dict(trail_price=1.0, time_in_force=TimeInForce.IOC), dict(trail_percent=100.0)):
            bad.setdefault("time_in_force", TimeInForce.GTC)
            refused = await bot.refused("submit_order", TrailingStopOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, **bad))
            assert refused.status_code == 422
        with pytest.raises(APIError) as neither:  # neither trail_price nor trail_percent
            await bot.call(bot.trading.post, "/orders", {
                "symbol": "AAPL", "qty": "1", "side": "buy", "type": "trailing_stop", "time_in_force": "gtc"})
        assert neither.value.status_code == 422


async def test_replace_a_trailing_stop_trail_keeps_the_high_water_mark() -> None:
    async with sim(symbols=["MSFT"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        order = await bot.trade("submit_order", TrailingStopOrderRequest(
            symbol="MSFT", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, trail_price=5.0))
        new = await bot.trade("replace_order_by_id", order.id, ReplaceOrderRequest(trail=1.5))
        assert d(new.trail_price) == Decimal("1.5") and d(new.hwm) == d(order.hwm)
        assert d(new.stop_price) == d(order.hwm) + Decimal("1.5") and str(new.replaces) == str(order.id)
        refused = await bot.refused("replace_order_by_id", new.id, ReplaceOrderRequest(stop_price=1.0))
        assert refused.status_code == 422


async def test_replacing_a_partly_filled_order_leaves_the_rest_to_the_replacement() -> None:
    async with sim(symbols=["NVDA"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        q = await quote(bot, "NVDA")
        ask, ask_size, bid = d(q.ask_price), int(q.ask_size), d(q.bid_price)
        qty = ask_size + 150
        async with bot.trade_updates():
            # Marketable on arrival: the ask's size fills at once, the rest rests at the limit.
            order = await bot.trade("submit_order", LimitOrderRequest(
                symbol="NVDA", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=float(ask)))
            assert order.status == OrderStatus.PARTIALLY_FILLED and d(order.filled_qty) == ask_size
            # qty is the order's total: not above what already filled.
            refused = await bot.refused("replace_order_by_id", order.id, ReplaceOrderRequest(qty=ask_size))
            assert refused.status_code == 422
            low = float(bid - 5)
            new = await bot.trade("replace_order_by_id", order.id, ReplaceOrderRequest(limit_price=low))
            assert d(new.qty) == 150 and d(new.filled_qty) == 0 and d(new.limit_price) == d(low)
            assert str(new.replaces) == str(order.id) and new.status == OrderStatus.NEW
            old = await bot.trade("get_order_by_id", order.id)
            assert old.status == OrderStatus.REPLACED and str(old.replaced_by) == str(new.id)
            assert d(old.filled_qty) == ask_size and d(old.filled_avg_price) == ask  # what it filled stays its own
            replaced = await bot.event(order.id, "replaced")
            assert replaced.order.status == OrderStatus.REPLACED and d(replaced.order.filled_qty) == ask_size
            await bot.event(new.id, "new")
            # A new total for the replacement: 100 more than nothing filled on it yet.
            again = await bot.trade("replace_order_by_id", new.id, ReplaceOrderRequest(qty=100))
            assert d(again.qty) == 100
            account_orders = await bot.trade("get_orders")
            assert [str(o.id) for o in account_orders] == [str(again.id)]
        position = await bot.trade("get_open_position", "NVDA")
        assert d(position.qty) == ask_size


async def test_an_exit_that_fills_in_pieces_shrinks_its_sibling_then_cancels_it() -> None:
    async with sim(symbols=["AAPL"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        bid_size = int((await quote(bot, "AAPL")).bid_size)
        qty = bid_size + 120
        await buy_position(bot, "AAPL", qty)
        q = await quote(bot, "AAPL")
        bid, bid_size = d(q.bid_price), int(q.bid_size)
        assert qty > bid_size  # the take-profit cannot fill at once
        async with bot.trade_updates():
            # An OCO exit whose take-profit is marketable now: it takes the bid's size, the rest waits.
            oco = await bot.trade("submit_order", LimitOrderRequest(
                symbol="AAPL", qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                order_class=OrderClass.OCO, limit_price=float(bid - 1),
                take_profit=TakeProfitRequest(limit_price=float(bid - 1)),
                stop_loss=StopLossRequest(stop_price=float(bid - 3))))
            assert oco.status == OrderStatus.PARTIALLY_FILLED and d(oco.filled_qty) == bid_size
            nested = await bot.trade("get_order_by_id", oco.id, GetOrderByIdRequest(nested=True))
            stop_leg = nested.legs[0]
            assert stop_leg.status == OrderStatus.HELD and d(stop_leg.qty) == qty - bid_size  # the rest only
            # The shrink goes out on trade updates, as Alpaca reports an order it updated: ``replaced``,
            # the same order (id, held) with its new qty.
            shrunk = await bot.event(stop_leg.id, "replaced")
            assert d(shrunk.order.qty) == qty - bid_size and shrunk.order.status == OrderStatus.HELD
            assert shrunk.order.replaced_at is not None and shrunk.order.replaced_by is None
            position = await bot.trade("get_open_position", "AAPL")
            assert d(position.qty) == qty - bid_size and d(position.qty_available) == 0
            async with asyncio.timeout(WAIT):
                while "fill" not in bot.events(oco.id) and "fill" not in bot.events(stop_leg.id):
                    await bot.move_market(5, "AAPL")
            await bot.until(lambda: "canceled" in bot.events(stop_leg.id) or "canceled" in bot.events(oco.id),
                            "the other exit canceled")
        assert_events_add_up(bot, oco.id)
        assert_events_add_up(bot, stop_leg.id)
        # Every piece of one exit shrank the other again, each time on the stream: in the order the events
        # came, each ``replaced`` order has exactly what is left of the position still to fill.
        exits = {str(oco.id), str(stop_leg.id)}
        filled = {oid: Decimal(0) for oid in exits}
        pieces = shrinks = 0
        for u in bot.updates:
            oid, event = str(u.order.id), str(getattr(u.event, "value", u.event))
            if oid not in exits:
                continue
            if u.price is not None:
                filled[oid] = d(u.order.filled_qty)
                pieces += event == "partial_fill"
            elif event == "replaced":
                shrinks += 1
                assert d(u.order.qty) - d(u.order.filled_qty) == qty - sum(filled.values())
        assert shrinks == pieces >= 1  # one shrink per piece that left the position open
        positions = await bot.trade("get_all_positions")
        assert positions == []  # one of the two exits closed it all, never more


async def test_bracket_exits_go_to_work_with_the_entry_qty_and_events_carry_the_right_fields() -> None:
    async with sim(symbols=["MSFT"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        q = await quote(bot, "MSFT")
        ask = d(q.ask_price)
        async with bot.trade_updates():
            entry = await bot.trade("submit_order", MarketOrderRequest(
                symbol="MSFT", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=float(ask + 50)),
                stop_loss=StopLossRequest(stop_price=float(ask - 50))))
            await bot.event(entry.id, "fill")
            nested = await bot.trade("get_order_by_id", entry.id, GetOrderByIdRequest(nested=True))
            assert [leg.status for leg in nested.legs] == [OrderStatus.NEW, OrderStatus.HELD]  # the stop watches
            assert [d(leg.qty) for leg in nested.legs] == [5, 5]
            position = await bot.trade("get_open_position", "MSFT")
            assert d(position.qty_available) == 0  # the two exits hold the 5 shares once, not twice
        assert_events_add_up(bot, entry.id)
        new = next(u for u in bot.updates if str(u.order.id) == str(entry.id) and str(getattr(u.event, "value", u.event)) == "new")
        assert d(new.order.filled_qty) == 0 and new.order.filled_avg_price is None and d(new.order.qty) == 5


async def test_a_brackets_held_stop_can_be_moved_and_goes_to_work_when_triggered() -> None:
    async with sim(symbols=["NVDA"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        ask = d((await quote(bot, "NVDA")).ask_price)
        async with bot.trade_updates():
            entry = await bot.trade("submit_order", MarketOrderRequest(
                symbol="NVDA", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=float(ask + 50)),
                stop_loss=StopLossRequest(stop_price=float(ask - 40))))
            take, stop = entry.legs
            assert (take.status, stop.status) == (OrderStatus.NEW, OrderStatus.HELD)
            # Alpaca moves a bracket's stop by replacing it; the replacement stays held, in the pair.
            near = Decimal(s.market.last_price_cents("NVDA") - 2) / 100
            moved = await bot.trade("replace_order_by_id", stop.id, ReplaceOrderRequest(stop_price=float(near)))
            assert moved.status == OrderStatus.HELD and d(moved.stop_price) == near and str(moved.replaces) == str(stop.id)
            await bot.event(stop.id, "replaced")
            async with asyncio.timeout(WAIT):
                while "fill" not in bot.events(moved.id):
                    await bot.move_market(10, "NVDA")
            await bot.event(take.id, "canceled")
        assert bot.events(moved.id)[:1] == ["new"] and bot.events(moved.id)[-1] == "fill"  # new when triggered
        assert_events_add_up(bot, moved.id)
        assert await bot.trade("get_all_positions") == []


async def test_replacing_a_brackets_entry_qty_resizes_its_held_exits_on_trade_updates() -> None:
    async with sim(symbols=["AAPL"]) as s:
        bot = Bot(s)
        await bot.move_market(3)
        bid = d((await quote(bot, "AAPL")).bid_price)
        low = bid - 20  # far under the market: the entry rests, its exits stay held
        async with bot.trade_updates():
            entry = await bot.trade("submit_order", LimitOrderRequest(
                symbol="AAPL", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=float(low),
                order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=float(low + 10)),
                stop_loss=StopLossRequest(stop_price=float(low - 5))))
            take, stop = entry.legs
            new = await bot.trade("replace_order_by_id", entry.id, ReplaceOrderRequest(qty=8))
            for leg in (take, stop):
                resized = await bot.event(leg.id, "replaced")
                assert d(resized.order.qty) == 8 and resized.order.status == OrderStatus.HELD
                assert str(resized.order.id) == str(leg.id)  # the same exit, now for the whole new entry
            assert (await bot.event(entry.id, "replaced")).order.replaced_by is not None
            await bot.event(new.id, "new")
            nested = await bot.trade("get_order_by_id", new.id, GetOrderByIdRequest(nested=True))
            assert [str(leg.id) for leg in nested.legs] == [str(take.id), str(stop.id)]
            assert [d(leg.qty) for leg in nested.legs] == [8, 8]
            # A replacement that keeps the qty changes no exit: no event for them.
            await bot.trade("replace_order_by_id", new.id, ReplaceOrderRequest(limit_price=float(low - 1)))
            await bot.event(new.id, "replaced")
        assert bot.events(take.id) == ["replaced"] and bot.events(stop.id) == ["replaced"]


# ------------------------------------------------------------------------------- calendar changes
async def test_one_off_closure_and_early_close_reach_calendar_clock_expiry_and_the_market() -> None:
    changes = Calendar.from_lines(["# a storm, and a half day", "2025-03-05", "2025-03-04 13:00"])
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 12, 58), scale=1)
    async with sim(rate=500, hours="calendar", clock=clock, calendar=changes) as s:
        bot = Bot(s)
        days = await bot.trade("get_calendar", GetCalendarRequest(start=date(2025, 3, 3), end=date(2025, 3, 7)))
        assert [(str(c.date), c.close.strftime("%H:%M")) for c in days] == [
            ("2025-03-03", "16:00"), ("2025-03-04", "13:00"), ("2025-03-06", "16:00"), ("2025-03-07", "16:00")]
        raw = await bot.call(bot.trading.get, "/calendar", {"start": "2025-03-04", "end": "2025-03-04"})
        assert raw[0]["settlement_date"] == "2025-03-06"  # T+1 skips the closed day
        mourning = await bot.trade("get_calendar", GetCalendarRequest(start=date(2025, 1, 8), end=date(2025, 1, 10)))
        assert [str(c.date) for c in mourning] == ["2025-01-08", "2025-01-10"]  # NYSE's own one-off closure
        now = await bot.trade("get_clock")
        assert now.is_open and now.next_close == datetime(2025, 3, 4, 18, 0, tzinfo=UTC)
        async with bot.trade_updates():
            day = await bot.trade("submit_order", LimitOrderRequest(
                symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.00))
            assert day.expires_at == datetime(2025, 3, 4, 18, 0, tzinfo=UTC)
            await bot.sim_control("/_sim/clock", {"to": "next_close"})
            expired = await bot.event(day.id, "expired")
            assert expired.order.expired_at == datetime(2025, 3, 4, 18, 0, tzinfo=UTC)
        closed = await bot.trade("get_clock")
        assert not closed.is_open and closed.next_open == datetime(2025, 3, 6, 14, 30, tzinfo=UTC)
        before = s.truth_count()
        await bot.sim_control("/_sim/clock", {"to": "next_open"})
        await bot.until(lambda: s.truth_count() > before + 10, "the market trades again at the open")
        close_ns, open_ns = ny_ns(2025, 3, 4, 13, 0), ny_ns(2025, 3, 6, 9, 30)
        for symbol in s.symbols:
            assert not [t for _, t, _, _ in s.truth_trades(symbol) if close_ns <= t < open_ns]  # nothing while closed


def test_calendar_changes_are_refused_when_they_cannot_be() -> None:
    for lines, why in ((["2025-03-08"], "not a trading day"), (["2025-12-25 13:00"], "not a trading day"),
                       (["2025-03-04 17:00"], "between 09:30 and 16:00"), (["2025-03-04 13:00", "2025-03-04"], "both"),
                       (["2025-3-4x"], "line 1")):
        with pytest.raises(CalendarError, match=why):
            Calendar.from_lines(lines)
