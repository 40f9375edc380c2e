"""Crypto and options orders at the simulated broker, through alpaca-py's TradingClient only.

Crypto pairs trade around the clock against the simulated crypto quotes (``BTC/USD``; positions named
``BTCUSD`` as Alpaca names them), in fractional qty or notional, ``gtc``/``ioc`` only; option contracts
(OCC symbols) in whole contracts, ``day`` only, 100 shares of cash a point. Refusals come back with
Alpaca's statuses.
"""

from __future__ import annotations

import warnings
from decimal import Decimal

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.trading.enums import AssetClass, OrderSide, OrderStatus, TimeInForce
    from alpaca.trading.models import AccountConfiguration
    from alpaca.trading.requests import ClosePositionRequest, LimitOrderRequest, MarketOrderRequest, StopOrderRequest

from tests.support.alpaca_bot import WAIT, Bot, assert_events_add_up, d, ny_ns, sim
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
        ask = Decimal(s.options_market.last_quote(contract)[2]) / 100
        order = await bot.trade("submit_order", MarketOrderRequest(
            symbol=contract, qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert order.status == OrderStatus.FILLED and order.asset_class == AssetClass.US_OPTION
        price = d(order.filled_avg_price)
        assert price == ask
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
