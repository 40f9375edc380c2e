"""A trading bot's alpaca-py clients pointed at an in-process simulator, for the simulator's proof suite.

Blocking REST clients run in worker threads while the simulator answers on the test's loop; the
trade-updates stream collects every event; ``move_market`` lets a ``rate=None`` market run for a
number of quotes, then stand still again. Nothing here sleeps to synchronise: each wait is on a
condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import warnings
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.live import StockDataStream
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderStatus
    from alpaca.trading.models import NonTradeActivity
    from alpaca.trading.stream import TradingStream

from tickvault.sim import Simulator
from tickvault.sim.calendar import NEW_YORK

KEY, SECRET = "bot-key", "bot-secret"
WAIT = 30  # seconds any one condition may take before the test fails (a failure detector, not a pace)


def ny_ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=NEW_YORK).timestamp()) * 10**9


class Bot:
    """A trading bot's clients, pointed at the simulator; blocking calls run in threads."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.trading = TradingClient(KEY, SECRET, paper=True, url_override=sim.rest_url)
        self.data = StockHistoricalDataClient(KEY, SECRET, url_override=sim.rest_url)
        self.updates: list[Any] = []  # TradeUpdate models, in arrival order
        self._changed = asyncio.Event()

    async def call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def trade(self, method: str, *args, **kwargs):
        return await self.call(getattr(self.trading, method), *args, **kwargs)

    async def refused(self, method: str, *args) -> APIError:
        with pytest.raises(APIError) as caught:
            await self.trade(method, *args)
        return caught.value

    @asynccontextmanager
    async def trade_updates(self):
        """TradingStream listening; ``self.updates`` collects every event."""
        stream = TradingStream(KEY, SECRET, paper=True, url_override=self.sim.trade_updates_url)

        async def on_update(update) -> None:
            self.updates.append(update)
            self._changed.set()

        stream.subscribe_trade_updates(on_update)
        task = asyncio.create_task(stream._run_forever())
        try:
            await self.until(lambda: self.sim.trade_update_listeners() == 1, "TradingStream listening")
            yield
        finally:
            await stream.stop_ws()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with_poll = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait([with_poll], timeout=0.02)  # woken by an event, or re-check the condition
                with_poll.cancel()
        assert condition(), what

    def events(self, order_id) -> list[str]:
        return [str(u.event.value if hasattr(u.event, "value") else u.event) for u in self.updates
                if str(u.order.id) == str(order_id)]

    async def event(self, order_id, event: str):
        await self.until(lambda: event in self.events(order_id), f"{event} of {order_id}")
        return next(u for u in self.updates if str(u.order.id) == str(order_id)
                    and str(getattr(u.event, "value", u.event)) == event)

    async def move_market(self, quotes: int, *symbols: str) -> None:
        """Let a rate=None market run until ``quotes`` quotes reached a StockDataStream, then stop it."""
        stream = StockDataStream(KEY, SECRET, raw_data=True, url_override=self.sim.stream_url("iex"))
        seen = 0
        enough = asyncio.Event()

        async def on_quote(q) -> None:
            nonlocal seen
            seen += 1
            if seen >= quotes:
                enough.set()

        stream.subscribe_quotes(on_quote, *(symbols or self.sim.symbols))
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(enough.wait(), WAIT)
        finally:
            await stream.stop_ws()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.until(lambda: self.sim.subscribed_clients() == 0, "the market stands still again")

    async def sim_control(self, path: str, body: dict) -> dict:
        async with httpx.AsyncClient(base_url=self.sim.rest_url) as http:
            r = await http.post(path, json=body)
            assert r.status_code == 200, r.text
            return r.json()


async def activities_of(bot: Bot, *types: str) -> list[NonTradeActivity]:
    """The account's non-trade activities of ``types`` (``OPEXC``, ``OPASN``, ...), oldest first, as alpaca-py
    reads them."""
    rows = await bot.call(bot.trading.get, "/account/activities",
                          {"activity_types": ",".join(types), "direction": "asc"})
    return [NonTradeActivity(**r) for r in rows]


def sim(**kwargs) -> Simulator:
    kwargs.setdefault("symbols", ["AAPL", "MSFT", "NVDA"])
    kwargs.setdefault("rate", None)
    kwargs.setdefault("seed", 4)
    kwargs.setdefault("cash", "1000000")  # room for orders larger than a quote's size (≤ 1,900 shares)
    return Simulator(key=KEY, secret=SECRET, **kwargs)


def d(value) -> Decimal:
    return Decimal(str(value))


def assert_events_add_up(bot: Bot, order_id) -> None:
    """Every fill event of an order: its qty and price add up to the order's filled_qty and
    filled_avg_price as the event carries them, in order; the last says ``fill``, the others ``partial_fill``."""
    filled, value = Decimal(0), Decimal(0)
    pieces = [u for u in bot.updates if str(u.order.id) == str(order_id) and u.price is not None]
    for u in pieces:
        filled += d(u.qty)
        value += d(u.qty) * d(u.price)
        assert d(u.order.filled_qty) == filled
        assert abs(d(u.order.filled_avg_price) - value / filled) < Decimal("1e-8")
        done = filled == d(u.order.qty)
        assert str(getattr(u.event, "value", u.event)) == ("fill" if done else "partial_fill")
        assert u.order.status == (OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED)
