"""Crypto and options orders at the simulated broker, through alpaca-py's TradingClient only.

Crypto pairs trade around the clock against the simulated crypto quotes (``BTC/USD``; positions named
``BTCUSD`` as Alpaca names them), in fractional qty or notional, ``gtc``/``ioc`` only; option contracts
(OCC symbols) in whole contracts, ``day`` only, 100 shares of cash a point. Refusals come back with
Alpaca's statuses.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from decimal import Decimal

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, OrderStatus, TimeInForce
    from alpaca.trading.models import AccountConfiguration
    from alpaca.trading.requests import (
        ClosePositionRequest,
        GetOptionContractsRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        ReplaceOrderRequest,
        StopOrderRequest,
    )

from tests.support.alpaca_bot import WAIT, Bot, activities_of, assert_events_add_up, d, ny_ns, sim
from tickvault.sim.broker import asset_id
from tickvault.sim.calendar import SimClock

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")


async def test_crypto_orders_fill_fractionally_around_the_clock_and_positions_drop_the_slash() -> None:
    saturday = SimClock(start_ns=ny_ns(2025, 3, 8, 12, 0), scale=1)
    async with sim(hours="calendar", clock=saturday, cash="100000") as s:
        bot = Bot(s)
        assert not (await bot.trade("get_clock")).is_open  # the stock market is closed; crypto is not
        await bot.until(lambda: s.crypto_market.last_quote("BTC/USD") is not None, "a BTC/USD quote")
        async with bot.trade_updates():
            order = await bot.trade("submit_order", MarketOrderRequest(
                symbol="BTC/USD", qty=0.0123, side=OrderSide.BUY, time_in_force=TimeInForce.GTC))
            assert order.status == OrderStatus.FILLED and order.asset_class == AssetClass.CRYPTO
            assert order.symbol == "BTC/USD" and d(order.filled_qty) == Decimal("0.0123")
            ask = d(order.filled_avg_price)
            await bot.event(order.id, "fill")
            stock = await bot.trade("submit_order", MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            assert stock.status == OrderStatus.ACCEPTED  # waits for Monday's open
            position = await bot.trade("get_open_position", "BTCUSD")
            assert position.symbol == "BTCUSD" and position.asset_class == AssetClass.CRYPTO
            assert d(position.qty) == Decimal("0.0123") and d(position.cost_basis) == (ask * Decimal("0.0123")).quantize(
                Decimal("0.01"))
            assert d((await bot.trade("get_open_position", "BTC/USD")).qty) == Decimal("0.0123")
            notional = await bot.trade("submit_order", MarketOrderRequest(
                symbol="ETH/USD", notional=100, side=OrderSide.BUY, time_in_force=TimeInForce.IOC))
            assert notional.status == OrderStatus.FILLED and notional.notional is not None
            eth = d(notional.filled_qty)
            assert eth != eth.to_integral_value() and abs(eth * d(notional.filled_avg_price) - 100) < Decimal("0.01")
            # A sell resting 5 % above the market (the walk moves ~5 bp a trade) holds its coins.
            bid = Decimal(s.crypto_market.last_quote("BTC/USD")[0]) / 100
            resting = await bot.trade("submit_order", LimitOrderRequest(
                symbol="BTC/USD", qty=0.001, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                limit_price=float((bid * Decimal("1.05")).quantize(Decimal("0.01")))))
            assert resting.status == OrderStatus.NEW
            held = await bot.refused("close_position", "BTCUSD")
            assert held.status_code == 403 and "available: 0.0113" in str(held)
            closed = await bot.trade("close_position", "BTCUSD", ClosePositionRequest(qty="0.0113"))
            assert closed.symbol == "BTC/USD" and d(closed.qty) == Decimal("0.0113")
            await bot.event(closed.id, "fill")
            # A sell limit a cent over the last trade and the bid rests, then fills from the crypto market's
            # own moves (its walk comes back over it within a few dozen trades).
            bought = await bot.trade("submit_order", MarketOrderRequest(
                symbol="SOL/USD", qty=0.05, side=OrderSide.BUY, time_in_force=TimeInForce.GTC))
            await bot.event(bought.id, "fill")
            bid_cents = s.crypto_market.last_quote("SOL/USD")[0]
            limit = Decimal(max(s.crypto_market.books["SOL/USD"].price_cents, bid_cents) + 1) / 100
            rally = await bot.trade("submit_order", LimitOrderRequest(
                symbol="SOL/USD", qty=0.05, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                limit_price=float(limit)))
            assert rally.status == OrderStatus.NEW
            await bot.until(lambda: "fill" in bot.events(rally.id), "the resting limit filled", timeout=3 * WAIT)
            assert_events_add_up(bot, rally.id)
            assert all(d(u.price) >= limit for u in bot.updates if str(u.order.id) == str(rally.id) and u.price)
        account = await bot.trade("get_account")
        assert d(account.cash) < Decimal(100_000)  # bought with cash, every fill in Decimal
        # Alpaca's refusals: crypto is gtc/ioc, no plain stops, and nothing sold that is not held.
        for request, status in (
            (MarketOrderRequest(symbol="BTC/USD", qty=0.01, side=OrderSide.BUY, time_in_force=TimeInForce.DAY), 422),
            (StopOrderRequest(symbol="BTC/USD", qty=0.01, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                              stop_price=1.0), 422),
            (MarketOrderRequest(symbol="SOL/USD", qty=1.5, side=OrderSide.SELL, time_in_force=TimeInForce.GTC), 403),
        ):
            refused = await bot.refused("submit_order", request)
            assert refused.status_code == status
        too_much = await bot.refused("submit_order", MarketOrderRequest(
            symbol="ETH/USD", qty=float(eth) + 1, side=OrderSide.SELL, time_in_force=TimeInForce.GTC))
        assert too_much.status_code == 403 and "insufficient balance for ETH" in str(too_much)


async def test_options_orders_trade_whole_contracts_for_the_day_at_100_a_point() -> None:
    async with sim(cash="100000") as s:
        bot = Bot(s)
        contract = s.option_symbols[0]
        await bot.until(lambda: s.options_market.last_quote(contract) is not None, f"a {contract} quote")
        before = s.options_market.last_quote(contract)
        order = await bot.trade("submit_order", MarketOrderRequest(
            symbol=contract, qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        after = s.options_market.last_quote(contract)
        assert order.status == OrderStatus.FILLED and order.asset_class == AssetClass.US_OPTION
        price = d(order.filled_avg_price)
        if before[4] == after[4]:  # the ask standing then; else the options tape quoted during the request
            assert price == Decimal(before[2]) / 100
        else:
            assert min(before[2], after[2]) <= price * 100 <= max(before[2], after[2])
        account = await bot.trade("get_account")
        assert d(account.cash) == Decimal(100_000) - 2 * price * 100
        position = await bot.trade("get_open_position", contract)
        assert position.asset_class == AssetClass.US_OPTION and d(position.qty) == 2
        assert d(position.avg_entry_price) == price and d(position.cost_basis) == 2 * price * 100
        mark = d(position.current_price)
        assert d(position.market_value) == (2 * mark * 100).quantize(Decimal("0.01"))
        sold = await bot.trade("submit_order", MarketOrderRequest(
            symbol=contract, qty=2, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
        assert sold.status == OrderStatus.FILLED and await bot.trade("get_all_positions") == []
        # A resting buy replaced with a larger qty needs the buying power of the new qty, 100 shares a
        # contract, as a submit does: 1,000 contracts at $1.00 are $100,000 plus what the first two cost.
        resting = await bot.trade("submit_order", LimitOrderRequest(
            symbol=contract, qty=1, limit_price=0.01, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert resting.status == OrderStatus.NEW  # rests: far below the ask
        bigger = await bot.refused("replace_order_by_id", resting.id, ReplaceOrderRequest(qty=1000, limit_price=1.0))
        assert bigger.status_code == 403 and "insufficient buying power" in str(bigger)
        await bot.trade("cancel_order_by_id", resting.id)
        for request, status in (
            (MarketOrderRequest(symbol=contract, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC), 422),
            (MarketOrderRequest(symbol=contract, qty=1.5, side=OrderSide.BUY, time_in_force=TimeInForce.DAY), 422),
            (MarketOrderRequest(symbol=contract, notional=100, side=OrderSide.BUY, time_in_force=TimeInForce.DAY), 422),
            (MarketOrderRequest(symbol=contract, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY), 403),
        ):
            refused = await bot.refused("submit_order", request)
            assert refused.status_code == status
        account = await bot.trade("get_account")
        assert account.options_approved_level == 3 and account.options_trading_level == 3
        await bot.call(bot.trading.set_account_configurations, AccountConfiguration(
            **{**(await bot.trade("get_account_configurations")).model_dump(), "max_options_trading_level": 1}))
        assert (await bot.trade("get_account")).options_trading_level == 1
        disabled = await bot.refused("submit_order", MarketOrderRequest(
            symbol=contract, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert disabled.status_code == 403  # buying calls and puts is level 2
        unknown = await bot.refused("submit_order", MarketOrderRequest(
            symbol="AAPL270115C00999000", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert unknown.status_code == 422


# ------------------------------------------------------------------------------- options expiry and exercise
CONTRACT = Decimal(100)  # shares a contract delivers


async def buy_contracts(bot: Bot, contract: str, qty: int):
    s = bot.sim
    await bot.until(lambda: s.options_market.last_quote(contract) is not None, f"a {contract} quote")
    order = await bot.trade("submit_order", MarketOrderRequest(
        symbol=contract, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert order.status == OrderStatus.FILLED
    return order


async def test_options_expire_at_the_close_exercised_assigned_liquidated_or_worthless() -> None:
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 10, 0), scale=1)
    async with sim(clock=clock, option_underlyings=3) as s:
        bot = Bot(s)
        # The May contracts (third Friday, 2025-05-16) expire; August's stay. The stocks stand still
        # (rate=None): AAPL over $150, NVDA under $100, so the calls of AAPL and puts of NVDA are in the money.
        aapl, nvda = (Decimal(s.market.last_price_cents(u)) / 100 for u in ("AAPL", "NVDA"))
        assert aapl > 150 and nvda < 100
        call100, call150, put100, put150 = (f"AAPL250516{k}00{st}000" for k, st in
                                            (("C", 100), ("C", 150), ("P", 100), ("P", 150)))
        nvda_put, august = "NVDA250516P00150000", "AAPL250815C00100000"
        assert {call100, put100, nvda_put, august} <= set(s.option_symbols)
        await buy_contracts(bot, call100, 2)  # in the money: exercised, 200 shares bought at $100
        await buy_contracts(bot, put100, 1)  # out of the money: expires worthless
        await buy_contracts(bot, nvda_put, 1)  # in the money, but no NVDA to deliver: liquidated at the bid
        await buy_contracts(bot, august, 1)  # not expiring
        # Written as Alpaca's level 1 writes them: a call covered by 100 shares, a put secured by its strike.
        shares = await bot.trade("submit_order", MarketOrderRequest(
            symbol="AAPL", qty=100, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert shares.status == OrderStatus.FILLED
        for short in (call150, put150):  # the call in the money: assigned, its 100 shares sold at $150
            await bot.until(lambda: s.options_market.last_quote(short) is not None, f"a {short} quote")
            written = await bot.trade("submit_order", MarketOrderRequest(
                symbol=short, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
            assert written.status == OrderStatus.FILLED and str(written.position_intent.value) == "sell_to_open"
        resting = await bot.trade("submit_order", LimitOrderRequest(
            symbol=put100, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY, limit_price=999.0))
        assert resting.status == OrderStatus.NEW
        # From 15:30 on the expiration day, no new position in the contract (Alpaca's 422); closing still is.
        await bot.sim_control("/_sim/clock", {"set": "2025-05-16T19:31:00Z"})
        late = await bot.refused("submit_order", MarketOrderRequest(
            symbol=call100, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert late.status_code == 422 and "expires soon" in str(late)
        cash = d((await bot.trade("get_account")).cash)
        async with bot.trade_updates():
            await bot.sim_control("/_sim/clock", {"to": "next_close"})  # 16:00 New York: the contracts expire
            canceled = await bot.event(resting.id, "canceled")
            assert canceled.order.status == OrderStatus.CANCELED
            await bot.until(lambda: any(u.order.symbol == nvda_put and u.price is not None for u in bot.updates),
                            "the liquidation's fill")
            liquidation = next(u for u in bot.updates if u.order.symbol == nvda_put and u.price is not None)
        assert str(getattr(liquidation.event, "value", liquidation.event)) == "fill" and d(liquidation.qty) == 1
        bid = d(liquidation.price)
        expiry = datetime(2025, 5, 16, 20, 0, tzinfo=UTC)
        assert liquidation.timestamp == expiry and liquidation.order.side == OrderSide.SELL
        # What Alpaca's non-trade activities record: each contract out (qty: the change to the position),
        # and each delivery of shares at the strike.
        rows = await activities_of(bot, "OPEXC", "OPASN", "OPEXP", "OPTRD")
        assert {(str(getattr(a.activity_type, "value", a.activity_type)), a.symbol, d(a.qty), d(a.net_amount),
                 None if a.price is None else d(a.price)) for a in rows} == {
            ("OPEXC", call100, -2, 0, None), ("OPTRD", "AAPL", 200, -20_000, 100),
            ("OPASN", call150, 1, 0, None), ("OPTRD", "AAPL", -100, 15_000, 150),
            ("OPEXP", put100, -1, 0, None), ("OPEXP", put150, 1, 0, None)}
        assert {str(a.date) for a in rows} == {"2025-05-16"} and len(rows) == 6
        assert {a.description for a in rows} >= {"Option Exercise", "Option Assignment", "Option Expiry"}
        positions = {p.symbol: p for p in await bot.trade("get_all_positions")}
        assert set(positions) == {"AAPL", august}
        # 100 bought, 200 delivered at $100, the 100 covering the call gone at $150: the average entry stays.
        entry = ((d(shares.filled_avg_price) * 100 + 20_000) / 300).quantize(Decimal("0.0001"))
        assert d(positions["AAPL"].qty) == 200 and d(positions["AAPL"].avg_entry_price) == entry
        assert d((await bot.trade("get_account")).cash) == cash - 20_000 + 15_000 + bid * CONTRACT
        # An expired contract is inactive and refuses orders.
        assert (await bot.trade("get_option_contract", call100)).status == AssetStatus.INACTIVE
        active = await bot.trade("get_option_contracts", GetOptionContractsRequest(underlying_symbols=["AAPL"]))
        assert {c.symbol for c in active.option_contracts} == {c for c in s.option_symbols if "250815" in c
                                                               and c.startswith("AAPL")}
        expired = await bot.refused("submit_order", MarketOrderRequest(
            symbol=call100, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert expired.status_code == 422 and "is expired" in str(expired)


async def test_exercise_a_long_contract_early_delivers_the_shares_at_the_strike() -> None:
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 10, 0), scale=1)
    async with sim(hours="calendar", clock=clock, cash="100000") as s:
        bot = Bot(s)
        call100, put100, call150 = "AAPL250516C00100000", "AAPL250516P00100000", "AAPL250516C00150000"
        assert Decimal(s.market.last_price_cents("AAPL")) / 100 > 150  # the calls in the money, the puts out
        await buy_contracts(bot, call100, 2)
        cash = d((await bot.trade("get_account")).cash)
        assert await bot.trade("exercise_options_position", call100) is None
        assert d((await bot.trade("get_account")).cash) == cash - 2 * CONTRACT * 100
        positions = {p.symbol: p for p in await bot.trade("get_all_positions")}
        assert set(positions) == {"AAPL"} and d(positions["AAPL"].qty) == 200
        rows = await activities_of(bot, "OPEXC", "OPTRD")
        assert [(str(getattr(a.activity_type, "value", a.activity_type)), a.symbol, d(a.qty), d(a.net_amount))
                for a in rows] == [("OPEXC", call100, -2, 0), ("OPTRD", "AAPL", 200, -20_000)]
        assert str(rows[0].date) == "2025-03-04" and d(rows[1].price) == 100
        # Alpaca's refusals, and nothing exercised by them.
        await buy_contracts(bot, put100, 1)
        out = await bot.refused("exercise_options_position", put100)
        assert out.status_code == 403 and "out of the money" in str(out)
        missing = await bot.refused("exercise_options_position", call150)
        assert missing.status_code == 404 and "long position not found" in str(missing)
        await buy_contracts(bot, call150, 1)
        held = await bot.trade("submit_order", LimitOrderRequest(
            symbol=call150, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY, limit_price=999.0))
        none_left = await bot.refused("exercise_options_position", call150)
        assert none_left.status_code == 403 and "no qty available" in str(none_left)
        await bot.trade("cancel_order_by_id", held.id)
        s.broker.set_cash(1000)
        poor = await bot.refused("exercise_options_position", call150)
        assert poor.status_code == 403 and "insufficient cash available (required: 15000" in str(poor)
        s.broker.set_cash(100000)
        await bot.sim_control("/_sim/clock", {"to": "next_close"})
        closed = await bot.refused("exercise_options_position", asset_id(call150))  # by contract id too
        assert closed.status_code == 403 and "market close" in str(closed)
        assert {p.symbol for p in await bot.trade("get_all_positions")} == {"AAPL", put100, call150}
        assert len(await activities_of(bot, "OPEXC")) == 1


async def test_a_contract_whose_expiration_is_a_holiday_expires_at_the_session_before() -> None:
    # Started in February 2025, the near contracts are April's: third Friday 2025-04-18, Good Friday.
    clock = SimClock(start_ns=ny_ns(2025, 2, 10, 10, 0), scale=1)
    async with sim(clock=clock) as s:
        bot = Bot(s)
        contract = "AAPL250418C00100000"
        assert contract in s.option_symbols
        assert s.broker.contract_expiry_ns(contract) == ny_ns(2025, 4, 17, 16, 0)
        await bot.sim_control("/_sim/clock", {"set": "2025-04-17T19:59:00Z"})
        assert (await bot.trade("get_option_contract", contract)).status == AssetStatus.ACTIVE
        await bot.sim_control("/_sim/clock", {"to": "next_close"})
        assert (await bot.trade("get_option_contract", contract)).status == AssetStatus.INACTIVE


async def test_a_trade_after_the_close_expires_a_day_order_before_it_can_fill_it() -> None:
    """A market message stamped after the close reaches the broker before its clock's next turn (a
    request or the market loop's housekeeping): the order's expiry at the close comes first, so a day
    limit on a contract is expired at 16:00, never filled by a print at 16:00:01."""
    close = ny_ns(2025, 3, 4, 16, 0)
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 15, 58), scale=1)
    async with sim(hours="calendar", clock=clock, cash="100000") as s:
        bot = Bot(s)
        contract = s.option_symbols[0]
        resting = await bot.trade("submit_order", LimitOrderRequest(
            symbol=contract, qty=1, limit_price=0.05, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert resting.status == OrderStatus.NEW
        s.broker.on_trade(contract, 1, close + 10**9)  # $0.01: through the limit, a second after the close
        order = await bot.trade("get_order_by_id", resting.id)
        assert order.status == OrderStatus.EXPIRED and d(order.filled_qty) == 0
        assert order.expired_at == datetime.fromtimestamp(close / 1e9, UTC)
        assert await bot.trade("get_all_positions") == []
