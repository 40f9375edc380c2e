"""The simulator's trade-updates WebSocket (Alpaca's ``/stream``): auth, listen, the broker's events.

The protocol (authenticate → authorization, listen → listening) is
:class:`tickvault.alpaca.session.TradeUpdatesServerSession`; this module does the I/O and the
fan-out.

JSON in binary frames, as Alpaca sends them. Every order event of the
:class:`~tickvault.sim.broker.Broker` goes to each connection listening to ``trade_updates``.
Bound: per connection :data:`TRADE_UPDATES_QUEUE` events; a client that far behind is closed
(1008, "slow client"), never waited for: the broker never blocks on a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tickvault.alpaca import session
from tickvault.sim.market_stream import drain

if TYPE_CHECKING:
    from tickvault.sim.server import Simulator

__all__ = ["TRADE_UPDATES_QUEUE", "TradeUpdatesServer"]

TRADE_UPDATES_QUEUE = 1_000  # events buffered per trade-updates client; a client this far behind is closed


class TradeUpdatesServer:
    """Every trade-updates connection of one :class:`~tickvault.sim.server.Simulator`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.queues: set[asyncio.Queue] = set()  # one per listening trade-updates client

    def listeners(self) -> int:
        return len(self.queues)

    def on_trade_update(self, data: dict) -> None:
        """The broker's listener: queue ``data`` for every listening client, never waiting."""
        frame = json.dumps({"stream": "trade_updates", "data": data}, separators=(",", ":")).encode()
        for q in list(self.queues):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:
                self.queues.discard(q)  # nothing more is queued behind the close
                drain(q)
                q.put_nowait(None)  # too far behind: the sender closes it

    async def handle(self, ws: ServerConnection) -> None:
        """Alpaca's ``/stream``: JSON in binary frames (as Alpaca sends them)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(TRADE_UPDATES_QUEUE)
        sender: asyncio.Task | None = None

        async def send_events() -> None:
            with contextlib.suppress(ConnectionClosed):
                while (frame := await queue.get()) is not None:
                    await ws.send(frame)
                await ws.close(1008, "slow client")

        protocol = session.TradeUpdatesServerSession()
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = None  # the session answers "invalid syntax"
                events = protocol.receive(msg)
                while events:
                    event = events.pop(0)
                    if isinstance(event, session.Send):
                        await ws.send(json.dumps(event.message, separators=(",", ":")).encode())
                    elif isinstance(event, session.Close):
                        await ws.close()
                        return
                    elif isinstance(event, session.AuthRequest):
                        ok = event.key == self.sim.key and event.secret == self.sim.secret
                        events[:0] = protocol.authorize(ok)
                    elif isinstance(event, session.Listening):
                        if event.streams:  # (again, after an un-listen: the sender is still there)
                            self.queues.add(queue)
                            if sender is None:
                                sender = self.sim._spawn(send_events(), "sim-trade-updates")
                        else:
                            self.queues.discard(queue)
        except ConnectionClosed:
            pass
        finally:
            self.queues.discard(queue)
            if sender is not None:
                sender.cancel()
