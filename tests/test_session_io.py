"""The reader and the trade-updates listener drive their sessions against the simulator over loopback:
refused keys stop them, a connection limit (406) and a server error are retried, and the reader
reaches the stream again. No database: the listener never gets an event here, the reader's frames
go to a queue the test reads."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from tickvault.alpaca.protocol import auth_message, decode_frame, encode_client_message
from tickvault.sim import Simulator
from tickvault.stream.metrics import Metrics
from tickvault.stream.orders import TradeUpdatesListener
from tickvault.stream.reader import AuthFailed, MarketDataReader
from tests.support.waiting import wait_until


def reader_for(sim: Simulator, secret: str, queue: asyncio.Queue) -> MarketDataReader:
    return MarketDataReader(sim.stream_url("iex"), sim.key, secret, queue, Metrics(), channels=["trades"],
                            symbols=["*"])


async def test_reader_stops_when_the_keys_are_refused() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        reader = reader_for(sim, "wrong", asyncio.Queue(100))
        with pytest.raises(AuthFailed, match=r"refused the API keys: auth failed \(code 402\)"):
            await asyncio.wait_for(reader.run(), 30)
        assert sim.stats["auth_failures"] == 1


async def test_reader_retries_a_held_feed_406_and_streams_once_it_is_free() -> None:
    async with Simulator(symbols=2, rate=200) as sim:
        queue: asyncio.Queue = asyncio.Queue(1000)
        holder = await connect(sim.stream_url("iex"), additional_headers={"Content-Type": "application/msgpack"})
        await holder.recv()
        await holder.send(encode_client_message(auth_message(sim.key, sim.secret)))
        assert decode_frame(await holder.recv()).control == [{"T": "success", "msg": "authenticated"}]
        reader = reader_for(sim, sim.secret, queue)
        task = asyncio.create_task(reader.run())
        try:
            # The reader is refused while the holder has the feed (406), and does not give up.
            await wait_until(lambda: sim.stats["connections"] >= 2, 30, "the reader's refused attempt")
            assert not reader.connected.is_set() and not task.done()
            await holder.close()
            await wait_until(reader.connected.is_set, 60, "the reader to subscribe after the holder left")
            await wait_until(lambda: queue.qsize() > 0, 30, "trades on the reader's queue")
        finally:
            reader.stop()
            await asyncio.wait_for(task, 30)


async def test_reader_reconnects_after_a_slow_client_error() -> None:
    async with Simulator(symbols=2, rate=20_000, client_queue_frames=2, write_limit=4096) as sim:
        queue: asyncio.Queue = asyncio.Queue(1)  # unread: the reader stops reading the socket
        reader = reader_for(sim, sim.secret, queue)
        task = asyncio.create_task(reader.run())

        async def drain() -> None:
            while True:
                await queue.get()

        drainer = None
        try:
            await wait_until(lambda: sim.stats["slow_disconnects"] >= 1, 60, "a 407 for the stuck reader")
            drainer = asyncio.create_task(drain())  # room again: the reader meets the error, reconnects
            await wait_until(lambda: reader.metrics.totals["reconnects"] >= 1, 60, "the reconnect")
        finally:
            reader.stop()
            if drainer is None:
                drainer = asyncio.create_task(drain())
            await asyncio.wait_for(task, 30)
            drainer.cancel()


async def test_listener_stops_when_the_keys_are_refused_and_listens_with_good_ones() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        refused = TradeUpdatesListener(sim.trade_updates_url, sim.key, "wrong", None, Metrics())
        with pytest.raises(PermissionError, match="refused the keys"):
            await asyncio.wait_for(refused.run(), 30)
        listener = TradeUpdatesListener(sim.trade_updates_url, sim.key, sim.secret, None, Metrics())
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.listening.wait(), 30)
            assert sim.trade_update_listeners() == 1
        finally:
            listener.stop()
            await asyncio.wait_for(task, 30)
