"""Options written (sold to open) at the simulated broker, through alpaca-py's TradingClient and TradingStream.

Alpaca's options level 1: a covered call (100 shares of the underlying a contract, held while the call is
written) and a cash-secured put (strike × 100 a contract of ``options_buying_power``, reserved likewise);
the sale fills at the bid, the premium is cash, the position short. Buying it back, its expiry or its
assignment (``OPASN`` + ``OPTRD`` at the strike) releases what covered it. Refusals carry Alpaca's status and body.
The simulated clock jumps to the expiration day's close as the expiry tests of test_sim_crypto_options_orders do.
"""

from __future__ import annotations

import json
import warnings
from decimal import Decimal

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.trading.enums import OrderSide, OrderStatus, PositionIntent, PositionSide, TimeInForce
    from alpaca.trading.models import AccountConfiguration
    from alpaca.trading.requests import (
        ClosePositionRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        ReplaceOrderRequest,
    )

from tests.support.alpaca_bot import Bot, activities_of, d, ny_ns, sim
from tickvault.alpaca.options import parse_occ
from tickvault.config import ConfigError, load_settings
from tickvault.sim import Simulator
from tickvault.sim.broker import asset_id
from tickvault.sim.calendar import SimClock

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

CONTRACT = 100  # shares a contract delivers
# Started on 2025-03-04 the contracts expire on 2025-05-16 (third Friday) and 2025-08-15; AAPL stands over
# $150 (the stocks stand still, rate=None), so its calls at 100 and 150 are in the money, its puts out.
START = ny_ns(2025, 3, 4, 10, 0)
CALL150, PUT100, PUT150, CALL100 = "AAPL250516C00150000", "AAPL250516P00100000", "AAPL250516P00150000", \
    "AAPL250516C00100000"


def value(x) -> str:
    return str(getattr(x, "value", x))


def body(error) -> dict:
    return json.loads(str(error))


async def refused_uncovered(bot: Bot, call: str, qty: int, *, available: int) -> None:
    """Writing ``qty`` calls that the account's free shares (``available``) cannot cover: Alpaca's 403 body."""
    refused = await bot.refused("submit_order", MarketOrderRequest(
        symbol=call, qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    required = qty * CONTRACT
    assert refused.status_code == 403
    assert body(refused) == {"code": 40310000, "message": "insufficient underlying qty available for covered call "
                             f"(required: {required}, available: {available})", "available_qty": str(available),
                             "required_qty": str(required), "symbol": call,
                             "underlying_asset_id": asset_id(parse_occ(call).underlying)}


async def write(bot: Bot, contract: str, qty: int, **intent):
    """Sell ``qty`` contracts to open at the market; the fill is at the bid of the quote standing then (when
    the options market moved during the request, between the bids before and after it)."""
    s = bot.sim
    await bot.until(lambda: s.options_market.last_quote(contract) is not None, f"a {contract} quote")
    before = s.options_market.last_quote(contract)
    order = await bot.trade("submit_order", MarketOrderRequest(
        symbol=contract, qty=qty, time_in_force=TimeInForce.DAY, **({"side": OrderSide.SELL} | intent)))
    after = s.options_market.last_quote(contract)
    assert order.status == OrderStatus.FILLED and order.position_intent == PositionIntent.SELL_TO_OPEN
    price = d(order.filled_avg_price)
    if before[4] == after[4]:
        assert price == Decimal(before[0]) / 100
    else:
        assert min(before[0], after[0]) <= price * 100 <= max(before[0], after[0])
    return order, price


async def filled(bot: Bot, order) -> None:
    """A stock order filled completely: the still market (rate=None) runs a few quotes at a time until the
    order has taken all it asks from them."""
    while (await bot.trade("get_order_by_id", order.id)).status != OrderStatus.FILLED:
        await bot.move_market(3, order.symbol)


async def buy_shares(bot: Bot, qty: int) -> None:
    await filled(bot, await bot.trade("submit_order", MarketOrderRequest(
        symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)))


async def cover_power(bot: Bot) -> tuple[Decimal, Decimal]:
    account = await bot.trade("get_account")
    return d(account.cash), d(account.options_buying_power)


async def test_a_covered_call_is_written_held_against_its_shares_and_assigned_at_expiry() -> None:
    async with sim(clock=SimClock(start_ns=START, scale=1), cash="100000") as s:
        bot = Bot(s)
        async with bot.trade_updates():
            await buy_shares(bot, 250)
            cash = d((await bot.trade("get_account")).cash)
            order, bid = await write(bot, CALL150, 2)
            fill = await bot.event(order.id, "fill")
            assert bot.events(order.id) == ["new", "fill"]
            assert d(fill.price) == bid and d(fill.qty) == 2 and d(fill.position_qty) == -2
        # The premium is cash; the position is short 2 contracts; 200 of the 250 shares cover it.
        assert d((await bot.trade("get_account")).cash) == cash + 2 * bid * CONTRACT
        position = await bot.trade("get_open_position", CALL150)
        assert position.side == PositionSide.SHORT and d(position.qty) == -2
        assert d(position.avg_entry_price) == bid and d(position.cost_basis) == -2 * bid * CONTRACT
        aapl = await bot.trade("get_open_position", "AAPL")
        assert d(aapl.qty) == 250 and d(aapl.qty_available) == 50
        fills = await bot.call(bot.trading.get, "/account/activities/FILL", {"direction": "asc"})
        assert fills[-1]["side"] == "sell_short" and fills[-1]["symbol"] == CALL150
        # The covering shares cannot be sold, nor cover another call; the 50 others can.
        held = await bot.refused("submit_order", MarketOrderRequest(
            symbol="AAPL", qty=51, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
        assert held.status_code == 403
        assert body(held) == {"code": 40310000, "message": "insufficient qty available for order (requested: 51, "
                              "available: 50)", "symbol": "AAPL", "available": "50", "existing_qty": "250",
                              "held_for_orders": "200"}
        closing = await bot.refused("close_position", "AAPL")
        assert closing.status_code == 403 and "available: 50" in str(closing)
        await refused_uncovered(bot, CALL150, 1, available=50)
        await filled(bot, await bot.trade("close_position", "AAPL", ClosePositionRequest(qty="50")))
        assert {p.symbol: d(p.qty) for p in await bot.trade("get_all_positions")} == {"AAPL": 200, CALL150: -2}
        # At the expiration day's close the call, in the money, is assigned: the 200 shares go at the strike.
        cash = d((await bot.trade("get_account")).cash)
        await bot.sim_control("/_sim/clock", {"set": "2025-05-16T19:59:00Z"})
        await bot.sim_control("/_sim/clock", {"to": "next_close"})
        rows = await activities_of(bot, "OPASN", "OPTRD", "OPEXP")
        assert [(value(a.activity_type), a.symbol, d(a.qty), d(a.net_amount), a.price and d(a.price))
                for a in rows] == [("OPASN", CALL150, 2, 0, None), ("OPTRD", "AAPL", -200, 30_000, 150)]
        assert await bot.trade("get_all_positions") == []
        assert d((await bot.trade("get_account")).cash) == cash + 30_000


async def test_a_cash_secured_put_reserves_its_strike_and_expires_worthless_with_the_premium_kept() -> None:
    async with sim(clock=SimClock(start_ns=START, scale=1), cash="100000") as s:
        bot = Bot(s)
        cash, power = await cover_power(bot)
        assert power == cash == 100_000
        async with bot.trade_updates():
            order, bid = await write(bot, PUT100, 2, position_intent=PositionIntent.SELL_TO_OPEN)
            await bot.event(order.id, "fill")
            # A resting sale to open reserves its strike too, until it is canceled.
            resting = await bot.trade("submit_order", LimitOrderRequest(
                symbol=PUT100, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY, limit_price=999.0))
            assert resting.status == OrderStatus.NEW and resting.position_intent == PositionIntent.SELL_TO_OPEN
            await bot.event(resting.id, "new")
            premium = 2 * bid * CONTRACT
            assert await cover_power(bot) == (cash + premium, cash + premium - 30_000)
            # Replaced with a larger qty, it must be secured again: beyond the buying power it is refused.
            greedy = await bot.refused("replace_order_by_id", resting.id, ReplaceOrderRequest(qty=9))
            assert greedy.status_code == 403 and "cash-secured put (required: 90000" in str(greedy)
            resting = await bot.trade("replace_order_by_id", resting.id, ReplaceOrderRequest(qty=2))
            assert resting.position_intent == PositionIntent.SELL_TO_OPEN and d(resting.qty) == 2
            await bot.event(resting.id, "new")
            assert await cover_power(bot) == (cash + premium, cash + premium - 40_000)
            await bot.trade("cancel_order_by_id", resting.id)
            await bot.event(resting.id, "canceled")
        assert await cover_power(bot) == (cash + premium, cash + premium - 20_000)
        # Out of the money at the close: the put expires, the premium stays, the reservation goes.
        await bot.sim_control("/_sim/clock", {"set": "2025-05-16T19:59:00Z"})
        await bot.sim_control("/_sim/clock", {"to": "next_close"})
        rows = await activities_of(bot, "OPASN", "OPTRD", "OPEXP")
        assert [(value(a.activity_type), a.symbol, d(a.qty)) for a in rows] == [("OPEXP", PUT100, 2)]
        assert await bot.trade("get_all_positions") == []
        assert await cover_power(bot) == (cash + premium, cash + premium)


async def test_buying_to_close_releases_the_shares_and_the_cash_that_covered() -> None:
    async with sim(clock=SimClock(start_ns=START, scale=1), cash="100000") as s:
        bot = Bot(s)
        await buy_shares(bot, 100)
        await write(bot, CALL150, 1)
        await write(bot, PUT150, 1)
        cash, power = await cover_power(bot)
        assert power == cash - 15_000
        assert d((await bot.trade("get_open_position", "AAPL")).qty_available) == 0
        # Buying more than is short would open a long: refused, as a buy beyond a short always is.
        too_many = await bot.refused("submit_order", MarketOrderRequest(
            symbol=PUT150, qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert too_many.status_code == 403 and "insufficient qty available" in str(too_many)
        async with bot.trade_updates():
            for contract in (PUT150, CALL150):
                back = await bot.trade("submit_order", MarketOrderRequest(
                    symbol=contract, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                    position_intent=PositionIntent.BUY_TO_CLOSE))
                assert back.side == OrderSide.BUY and back.position_intent == PositionIntent.BUY_TO_CLOSE
                fill = await bot.event(back.id, "fill")
                assert d(fill.position_qty) == 0
                cash -= d(fill.price) * CONTRACT
        assert {p.symbol for p in await bot.trade("get_all_positions")} == {"AAPL"}
        assert await cover_power(bot) == (cash, cash)
        assert d((await bot.trade("get_open_position", "AAPL")).qty_available) == 100


async def test_refusals_uncovered_call_wrong_intent_and_the_options_levels() -> None:
    async with sim(clock=SimClock(start_ns=START, scale=1), cash="14000", options_level=1) as s:
        bot = Bot(s)
        account = await bot.trade("get_account")
        assert account.options_approved_level == 1 and account.options_trading_level == 1
        assert (await bot.trade("get_account_configurations")).max_options_trading_level == 1
        await bot.until(lambda: s.options_market.last_quote(CALL100) is not None, "a quote")
        await refused_uncovered(bot, CALL100, 3, available=0)
        # Level 1 writes covered calls and cash-secured puts, and buys them back; buying to open is level 2.
        buy = await bot.refused("submit_order", MarketOrderRequest(
            symbol=CALL100, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert buy.status_code == 403
        assert body(buy) == {"code": 40310000, "message": "account not eligible to trade this option strategy: buying "
                             "calls and puts takes options trading level 2 (the account's is 1)"}
        poor = await bot.refused("submit_order", MarketOrderRequest(
            symbol=PUT150, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
        assert poor.status_code == 403
        assert body(poor) == {"code": 40310000, "message": "insufficient options buying power for cash-secured put "
                              "(required: 15000, available: 14000)"}
        await write(bot, PUT100, 1)  # 10,000 of the 14,000 secure it
        # An intent that is not what the order would do, or that disagrees with its side, is refused (422).
        for request, words in (
            (MarketOrderRequest(symbol=PUT100, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                                position_intent=PositionIntent.SELL_TO_CLOSE), "so this order is sell_to_open"),
            (MarketOrderRequest(symbol=PUT100, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                position_intent=PositionIntent.BUY_TO_OPEN), "so this order is buy_to_close"),
            (MarketOrderRequest(symbol=PUT100, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                                position_intent=PositionIntent.BUY_TO_CLOSE), "does not agree with side sell"),
        ):
            wrong = await bot.refused("submit_order", request)
            assert wrong.status_code == 422 and words in str(wrong)
        # Downgraded to level 0 by the account configuration: nothing opens; what is open may still close.
        await bot.call(bot.trading.set_account_configurations, AccountConfiguration(
            **{**(await bot.trade("get_account_configurations")).model_dump(), "max_options_trading_level": 0}))
        assert (await bot.trade("get_account")).options_trading_level == 0
        off = await bot.refused("submit_order", MarketOrderRequest(
            symbol=PUT100, qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
        assert off.status_code == 403 and body(off)["message"].startswith("account not authorized to trade options")
        closed = await bot.trade("close_position", PUT100)
        assert closed.status == OrderStatus.FILLED and closed.position_intent == PositionIntent.BUY_TO_CLOSE
        assert await bot.trade("get_all_positions") == []
        cash, power = await cover_power(bot)
        assert power == cash


def test_the_options_level_is_a_setting_of_the_simulated_account(monkeypatch) -> None:
    monkeypatch.delenv("TICKVAULT_SIM_OPTIONS_LEVEL", raising=False)
    assert load_settings().sim_options_level == 3  # Alpaca paper's
    monkeypatch.setenv("TICKVAULT_SIM_OPTIONS_LEVEL", "1")
    settings = load_settings()
    assert settings.sim_options_level == 1
    account = Simulator.from_settings(settings).broker.account()
    assert (account["options_approved_level"], account["options_trading_level"]) == (1, 1)
    monkeypatch.setenv("TICKVAULT_SIM_OPTIONS_LEVEL", "4")
    with pytest.raises(ConfigError, match="TICKVAULT_SIM_OPTIONS_LEVEL"):
        load_settings()
