"""Account activities beyond fills and the portfolio history's cash flows, through alpaca-py.

Cash moves through the simulator's own control (``POST /_sim/activities``: deposits, withdrawals,
fees, dividends), as a transfer or a corporate action would at Alpaca; everything else is read back
through TradingClient and parsed with alpaca-py's activity models, as a bot would.
"""

from __future__ import annotations

import warnings
from decimal import Decimal

import httpx
import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.enums import ActivityType, OrderSide, OrderStatus, TimeInForce
    from alpaca.trading.models import NonTradeActivity, TradeActivity
    from alpaca.trading.requests import GetPortfolioHistoryRequest, MarketOrderRequest

from tests.support.alpaca_bot import Bot, d, ny_ns, sim
from tickvault.sim.calendar import SimClock

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")


async def book(bot: Bot, **body) -> httpx.Response:
    async with httpx.AsyncClient(base_url=bot.sim.rest_url) as http:
        return await http.post("/_sim/activities", json=body)


async def activities(bot: Bot, path: str = "/account/activities", **params) -> list:
    rows = await bot.call(bot.trading.get, path, params)
    return [TradeActivity(**r) if r["activity_type"] == "FILL" else NonTradeActivity(**r) for r in rows]


async def test_cash_activities_are_listed_filtered_paged_and_move_the_cash() -> None:
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 10, 0), scale=1)
    async with sim(symbols=["AAPL"], clock=clock, cash="100000") as s:
        bot = Bot(s)
        await bot.move_market(3)
        deposit = await book(bot, activity_type="CSD", amount="5000")
        assert deposit.status_code == 200 and deposit.json()["net_amount"] == "5000"
        order = await bot.trade("submit_order", MarketOrderRequest(
            symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert order.status == OrderStatus.FILLED
        cost = d(order.filled_avg_price) * 10
        await bot.sim_control("/_sim/clock", {"advance": 180})
        assert (await book(bot, activity_type="CSW", amount="1000.004")).json()["net_amount"] == "-1000"
        assert (await book(bot, activity_type="FEE", amount="2.5", description="regulatory fee")).status_code == 200
        dividend = (await book(bot, activity_type="DIV", amount="0.25", symbol="AAPL")).json()
        assert (dividend["net_amount"], dividend["qty"], dividend["per_share_amount"]) == ("2.5", "10", "0.25")
        # Refused as Alpaca refuses, and nothing booked.
        for body, status in ((dict(activity_type="CSW", amount="1e9"), 403),
                             (dict(activity_type="DIV", amount="1", symbol="MSFT"), 422),
                             (dict(activity_type="CSD", amount="-5"), 422),
                             (dict(activity_type="JNLC", amount="5"), 422)):
            refused = await book(bot, **body)
            assert refused.status_code == status and refused.json()["code"] and refused.json()["message"]
        account = await bot.trade("get_account")
        assert d(account.cash) == Decimal(100_000) + 5000 - cost - 1000 - Decimal("2.5") + Decimal("2.5")

        everything = await activities(bot, direction="asc")
        assert [a.activity_type for a in everything] == [
            ActivityType.CSD, ActivityType.FILL, ActivityType.CSW, ActivityType.FEE, ActivityType.DIV]
        fee = everything[3]
        assert isinstance(fee, NonTradeActivity) and fee.net_amount == -2.5 and fee.description == "regulatory fee"
        assert str(fee.date) == "2025-03-04" and fee.status.value == "executed"
        cash = await activities(bot, activity_types="CSD,CSW", direction="asc")
        assert [(a.activity_type, a.net_amount) for a in cash] == [(ActivityType.CSD, 5000), (ActivityType.CSW, -1000)]
        assert [a.id for a in await activities(bot, "/account/activities/DIV")] == [everything[4].id]
        non_trade = await activities(bot, category="non_trade_activity")
        assert [a.activity_type for a in non_trade] == [ActivityType.DIV, ActivityType.FEE, ActivityType.CSW,
                                                        ActivityType.CSD]  # newest first by default
        assert [a.id for a in await activities(bot, date="2025-03-04", direction="asc")] == [a.id for a in everything]
        assert await activities(bot, date="2025-03-05") == []
        # Pages across types: each starts after the last id of the one before.
        first = await activities(bot, direction="asc", page_size=2)
        rest = await activities(bot, direction="asc", page_size=2, page_token=first[-1].id)
        last = await activities(bot, direction="asc", page_size=2, page_token=rest[-1].id)
        assert [a.id for a in first + rest + last] == [a.id for a in everything]
        for bad in (dict(activity_types="NOPE"), dict(category="other"), dict(page_token="x::y")):
            with pytest.raises(APIError) as caught:
                await activities(bot, **bad)
            assert caught.value.status_code == 422


async def test_portfolio_history_reports_cash_flows_and_leaves_them_out_of_profit() -> None:
    clock = SimClock(start_ns=ny_ns(2025, 3, 4, 10, 0), scale=1)
    async with sim(symbols=["AAPL"], clock=clock, cash="100000") as s:
        bot = Bot(s)
        await bot.move_market(3)
        await bot.sim_control("/_sim/clock", {"advance": 120})
        await book(bot, activity_type="CSD", amount="2500")
        await bot.sim_control("/_sim/clock", {"advance": 120})
        await book(bot, activity_type="FEE", amount="10")
        await bot.sim_control("/_sim/clock", {"advance": 120})
        history = await bot.trade("get_portfolio_history", GetPortfolioHistoryRequest(period="1D", timeframe="1Min"))
        assert set(history.cashflow) == {ActivityType.CSD, ActivityType.FEE}
        for series in history.cashflow.values():
            assert len(series) == len(history.timestamp)
        assert sum(history.cashflow[ActivityType.CSD]) == 2500 and sum(history.cashflow[ActivityType.FEE]) == -10
        assert history.equity[-1] == pytest.approx(102_490)  # no position: the equity is the cash
        assert history.profit_loss[-1] == pytest.approx(-10)  # the deposit is no gain; the fee is a loss
        assert history.profit_loss_pct[-1] == pytest.approx(-10 / 102_500, abs=1e-6)
        only = await bot.trade("get_portfolio_history",
                               GetPortfolioHistoryRequest(period="1D", timeframe="1Min", cashflow_types="CSD"))
        assert set(only.cashflow) == {ActivityType.CSD}
        none = await bot.trade("get_portfolio_history",
                               GetPortfolioHistoryRequest(period="1D", timeframe="1Min", cashflow_types="NONE"))
        assert none.cashflow == {}
