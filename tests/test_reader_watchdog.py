"""The reader's silence watchdog against the simulator over real WebSockets: a silent feed is
reconnected, a reader held back by its own full queue is not, and data resets a doubled limit."""

from __future__ import annotations

import asyncio

import pytest

from tickvault.sim.server import Simulator
from tickvault.stream.metrics import Metrics
from tickvault.stream.reader import MarketDataReader
from tests.support.waiting import wait_until

SILENCE_S = 0.5


def _reader(sim: Simulator, queue: asyncio.Queue, metrics: Metrics) -> MarketDataReader:
    return MarketDataReader(sim.stream_url("iex"), sim.key, sim.secret, queue, metrics, channels=["trades"],
                            symbols=sim.symbols, silence_s=SILENCE_S)


async def _drain(queue: asyncio.Queue, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(queue.get(), 0.1)
        except asyncio.TimeoutError:
            pass


@pytest.mark.asyncio
async def test_a_silent_feed_is_reconnected_and_data_resets_the_limit():
    async with Simulator(symbols=5, rate=500.0, frame_size=5) as sim:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        metrics = Metrics()
        reader = _reader(sim, queue, metrics)
        stop = asyncio.Event()
        consumer = asyncio.create_task(_drain(queue, stop))
        task = asyncio.create_task(reader.run())
        try:
            await wait_until(reader.connected.is_set, 30, "connected")
            sim.stall(4 * SILENCE_S)
            await wait_until(lambda: metrics.totals["stalls"] >= 1, 30, "the watchdog to notice the silence")
            await wait_until(lambda: metrics.totals["reconnects"] >= 1, 30, "a reconnect after the silence")
            # A data frame on the new connection resets the limit the silent reconnects doubled.
            await wait_until(lambda: reader._silence_now == SILENCE_S and reader.connected.is_set(), 30,
                             "data after the reconnect")
        finally:
            stop.set()
            reader.stop()
            await asyncio.wait_for(task, 30)
            await consumer


@pytest.mark.asyncio
async def test_a_reader_held_back_by_its_full_queue_is_not_declared_silent():
    async with Simulator(symbols=5, rate=2_000.0, frame_size=5) as sim:
        queue: asyncio.Queue = asyncio.Queue(maxsize=2)  # nobody consumes: the reader blocks on put
        metrics = Metrics()
        reader = _reader(sim, queue, metrics)
        task = asyncio.create_task(reader.run())
        try:
            await wait_until(queue.full, 30, "the queue to fill")
            blocked_from = asyncio.get_running_loop().time()
            # Held back for many silence limits: backpressure, not a quiet feed. (The span itself is
            # what is tested, so the test waits for the clock, not for an event.)
            await wait_until(lambda: asyncio.get_running_loop().time() - blocked_from > 6 * SILENCE_S, 30,
                             "six silence limits to pass")
            assert metrics.totals["reconnects"] == 0
            assert reader.connected.is_set()
            frames_before = queue.qsize()
            for _ in range(frames_before):
                queue.get_nowait()
            # Released, it reads on from the same connection.
            await wait_until(queue.full, 30, "the reader to read on")
            assert metrics.totals["reconnects"] == 0
        finally:
            reader.stop()
            stop = asyncio.Event()
            consumer = asyncio.create_task(_drain(queue, stop))  # unblocks the reader's put
            await asyncio.wait_for(task, 30)
            stop.set()
            await consumer
