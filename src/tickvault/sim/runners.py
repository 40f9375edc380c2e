"""The simulator's market runners: one task per stream, making messages and handing them to the
market-data stream's fan-out (:class:`~tickvault.sim.market_stream.MarketDataServer`).

- :func:`run_stocks`: the stock market at ``rate`` trades a second (or, ``rate=None``, as fast as
  the slowest subscribed client reads), within the hours; or :func:`run_replay` when replaying a
  recording;
- :func:`run_side_market`: the crypto or options market at its own rate, whatever the stock hours;
- :func:`run_news`: an article every ``news_interval_s``.

Each generates a bounded batch per loop turn (≤ ``max(frame_size, rate × 50 ms)`` trades) and yields
to the loop between batches; all stop making messages at :meth:`~tickvault.sim.server.Simulator.finish`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tickvault.sim.calendar import SimClock
from tickvault.sim.faults import HOUSEKEEPING_S
from tickvault.sim.recording import frame_messages

if TYPE_CHECKING:
    from tickvault.sim.market import Market
    from tickvault.sim.server import Simulator

log = logging.getLogger("tickvault.sim.server")

__all__ = ["run_news", "run_replay", "run_side_market", "run_stocks"]


def _closed(sim: Simulator) -> bool:
    """With calendar hours, the exchange makes no trades between sessions."""
    return sim.hours == "calendar" and not sim.broker.is_open(sim.clock())


async def run_replay(sim: Simulator) -> None:
    """Serve the recording's messages at their recorded pace × ``replay_speed`` (0: as fast as the
    slowest subscribed client reads), moving the clock to each frame's time; fill orders on them."""
    assert sim._replay_frames is not None
    stream = sim.market_stream
    on_trade, on_quote = sim.broker.on_trade, sim.broker.on_quote
    clock = sim.clock
    frames = 0
    for recv_ns, payload in sim._replay_frames:  # one gzip record read at a time (small, buffered)
        if sim._finish_requested:
            break
        if sim.replay_speed:
            wait = (recv_ns - clock()) / 1e9 / getattr(clock, "scale", 1.0)
            if wait > 0:
                await asyncio.sleep(wait)  # the recorded pace, not synchronisation
        elif not stream.any_subscribed():
            await stream.wait_subscribed()
        if isinstance(clock, SimClock) and clock() < recv_ns:
            clock.set(recv_ns)
        try:
            messages = frame_messages(payload)
        except ValueError:
            continue  # a frame the live stream sent malformed stays skipped
        items = sim.market.ingest(messages, on_trade, on_quote)
        frames += 1
        if sim.replay_speed:
            stream.fan_out(items)
        else:
            await stream.fan_out_wait(items)
        await asyncio.sleep(0)
    sim.finished.set()
    log.info("replay finished: %d frames", frames)


async def run_stocks(sim: Simulator) -> None:
    """The stock market (or the replay), then fault messages (corrections, updated bars) for good."""
    stream = sim.market_stream
    if sim._replay_frames is not None:
        await run_replay(sim)
        while True:  # keep serving REST and fault messages after the recording ends
            if stream.pending_extra:
                stream.fan_out([])
            await asyncio.sleep(HOUSEKEEPING_S)
    loop = asyncio.get_running_loop()
    on_trade, on_quote = sim.broker.on_trade, sim.broker.on_quote
    made = 0
    limit = sim.max_trades
    # Nothing awaits between a loop test and generate(): finish() takes effect before the next trade.
    if sim.rate is None:
        while (limit is None or made < limit) and not sim._finish_requested:
            if not stream.any_subscribed():
                await stream.wait_subscribed()
                continue
            if _closed(sim):
                await asyncio.sleep(HOUSEKEEPING_S)
                continue
            n = sim.frame_size if limit is None else min(sim.frame_size, limit - made)
            items = sim.market.generate(n, sim.clock(), on_trade, on_quote)
            made += n
            await stream.fan_out_wait(items)
            await asyncio.sleep(0)
    else:
        rate = sim.rate
        tick = min(0.05, max(0.001, sim.frame_size / rate))  # ~one full frame per tick
        max_batch = max(sim.frame_size, int(rate * 0.05))  # bounded work per loop turn
        t0 = loop.time()
        while (limit is None or made < limit) and not sim._finish_requested:
            due = int((loop.time() - t0) * rate) - made
            if due > 0 and _closed(sim):
                t0 += due / rate  # the closed hours make no trades, and owe none at the open
                due = 0
            if due <= 0:
                items = sim.market.flush_bars(sim.clock())
                if items or stream.pending_extra:
                    stream.fan_out(items)
                await asyncio.sleep(tick)
                continue
            n = min(due, max_batch) if limit is None else min(due, max_batch, limit - made)
            items = sim.market.generate(n, sim.clock(), on_trade, on_quote)
            made += n
            stream.fan_out(items)
            await asyncio.sleep(0)
    sim.finished.set()
    log.info("simulator finished: %d trades", made)
    # Keep delivering fault messages (corrections, updated bars) after the market stops.
    while True:
        if stream.pending_extra:
            if sim.rate is None:
                await stream.fan_out_wait([])
            else:
                stream.fan_out([])
        await asyncio.sleep(0.01)


async def run_news(sim: Simulator) -> None:
    """An article every ``news_interval_s`` (wall time) until :meth:`~tickvault.sim.server.Simulator.finish`."""
    while not sim._finish_requested:
        await asyncio.sleep(sim.news_interval_s)
        if sim._finish_requested:
            break
        sim.market_stream.fan_out([("news:news", tuple(m["symbols"]), m) for m in sim.news.publish(sim.clock())])


async def run_side_market(sim: Simulator, market: Market, rate: float) -> None:
    """The crypto or options market: ``rate`` trades a second across its symbols until
    :meth:`~tickvault.sim.server.Simulator.finish`, whatever the stock hours (crypto never closes;
    the options tape is kept simple)."""
    loop = asyncio.get_running_loop()
    stream = sim.market_stream
    tick = min(0.05, max(0.001, sim.frame_size / rate))
    max_batch = max(sim.frame_size, int(rate * 0.05))  # bounded work per loop turn
    t0, made = loop.time(), 0
    while not sim._finish_requested:
        due = int((loop.time() - t0) * rate) - made
        if due <= 0:
            items = market.flush_bars(sim.clock())
            if items:
                stream.fan_out(items)
            await asyncio.sleep(tick)
            continue
        n = min(due, max_batch)
        items = market.generate(n, sim.clock(), sim.broker.on_trade, sim.broker.on_quote)
        made += n
        stream.fan_out(items)
        await asyncio.sleep(0)
