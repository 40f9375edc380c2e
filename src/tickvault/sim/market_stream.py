"""The simulator's market-data WebSocket: connections, auth/subscribe, fan-out and send loops.

Paths ``/v2/{iex|sip|test}`` (stocks), ``/v1beta3/crypto/{us|us-1|eu-1}``, ``/v1beta1/{indicative|opra}``
(options, msgpack only) and ``/v1beta1/news``; each connection is a :class:`MarketClient`. The market
runners (:mod:`tickvault.sim.runners`) hand each round's messages to :meth:`MarketDataServer.fan_out`
(with a ``rate``: never waits; a client whose queue is full is too slow, gets error 407 and is closed)
or :meth:`MarketDataServer.fan_out_wait` (``rate=None``: the market waits for the slowest client).

Bounds: per client ``client_queue_frames`` encoded frames queued (each ≤ ``frame_size`` messages, ~80 B
per message in msgpack) plus the socket's write buffer (``write_limit`` bytes); per client and channel
at most :data:`MAX_SUBSCRIBED_SYMBOLS` symbols. It owns the stream's fault state (a stall, frames to
break, auth attempts to fail, messages to slip in); :mod:`tickvault.sim.faults` flips it.
Never blocks the market on one client in rate mode, never logs a key.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tickvault.alpaca.crypto import CRYPTO_CHANNELS
from tickvault.alpaca import session
from tickvault.alpaca.protocol import ProtocolError, decode_client_message, encode_frame

if TYPE_CHECKING:
    from tickvault.sim.server import Simulator

__all__ = ["FEEDS", "GARBAGE_FRAME", "MAX_SUBSCRIBED_SYMBOLS", "MarketClient", "MarketDataServer", "drain"]

FEEDS = ("iex", "sip", "test")
FEED_PATH = re.compile(r"/v2/(iex|sip|test)")
CRYPTO_PATH = re.compile(r"/v1beta3/crypto/(us|us-1|eu-1)")
NEWS_PATH = "/v1beta1/news"
OPTIONS_PATH = re.compile(r"/v1beta1/(indicative|opra)")
_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
# Channels per stream: what a connection of that asset class may subscribe to and has acknowledged.
_ASSET_CHANNELS = {"stocks": _CHANNELS, "crypto": CRYPTO_CHANNELS, "news": ("news",), "options": ("trades", "quotes")}
# msgpack never uses 0xc1: a frame starting with it cannot decode, whatever follows.
GARBAGE_FRAME = b"\xc1\xc1 tickvault-sim malformed frame \xff\xfe"

# Symbols one connection may hold per channel: any string is accepted (as on Alpaca, an unknown
# symbol simply gets no data), so a client could otherwise grow its subscription without end; past
# this the subscribe is answered with error 405 (symbol limit exceeded), as Alpaca does.
MAX_SUBSCRIBED_SYMBOLS = 20_000


def stream_of(path: str) -> tuple[str, str] | None:
    """``(feed, asset)`` of a market-data path (``("iex", "stocks")``, ``("crypto/us", "crypto")``...);
    None for any other path."""
    if path == NEWS_PATH:
        return "news", "news"
    if options := OPTIONS_PATH.fullmatch(path):
        return f"options/{options.group(1)}", "options"
    if crypto := CRYPTO_PATH.fullmatch(path):
        return f"crypto/{crypto.group(1)}", "crypto"
    if stocks := FEED_PATH.fullmatch(path):
        return stocks.group(1), "stocks"
    return None


class MarketClient:
    """One market-data WebSocket connection."""

    __slots__ = (
        "ws",
        "asset",
        "channels",
        "feed",
        "use_msgpack",
        "key",
        "session",
        "subs",
        "sub_key",
        "queue",
        "sender",
        "closed",
        "frames_sent",
    )

    def __init__(self, ws: ServerConnection, feed: str, use_msgpack: bool, queue_frames: int,
                 asset: str = "stocks", max_symbols: int = MAX_SUBSCRIBED_SYMBOLS) -> None:
        self.ws = ws
        self.asset = asset  # "stocks" or "crypto": which market's messages this connection gets
        self.channels = _ASSET_CHANNELS[asset]
        self.feed = feed  # iex/sip/test, or crypto/us...: one connection per key and feed
        self.use_msgpack = use_msgpack
        self.key: str | None = None
        # The protocol's view (auth, the acknowledged subscription); ``subs`` is what is delivered, taken
        # from it once the ack is sent.
        self.session = session.MarketDataServerSession(self.channels, stocks=asset == "stocks",
                                                       max_symbols=max_symbols)
        self.subs: Mapping[str, frozenset[str]] = self.session.subscription  # ≤ max_symbols each
        self.sub_key: tuple | None = None  # hashable copy of subs for the per-round encode cache; None: none
        self.queue: asyncio.Queue[bytes | str | None] = asyncio.Queue(queue_frames)
        self.sender: asyncio.Task | None = None
        self.closed = False
        self.frames_sent = 0

    def wants(self, channel: str, symbol: str) -> bool:
        if channel == "_all":
            return True
        asset, _, name = channel.rpartition(":")  # "crypto:trades"; a stock channel has no prefix
        if (asset or "stocks") != self.asset:
            return False
        subs = self.subs.get(name)
        if symbol.__class__ is tuple:  # a news article: any of its symbols
            return bool(subs) and ("*" in subs or any(s in subs for s in symbol))
        return bool(subs) and (symbol in subs or "*" in subs)


class MarketDataServer:
    """Every market-data connection of one :class:`~tickvault.sim.server.Simulator` and the fan-out to them."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.stats = sim.stats
        self.clients: set[MarketClient] = set()  # every open market-data connection
        self.authed: dict[tuple[str, str], set[MarketClient]] = {}  # (key, feed) → ≤ max_connections_per_key
        self.subscribed = asyncio.Event()  # set when some client has a subscription (rate=None pacing)
        # Fault state (set by tickvault.sim.faults): what the next round or auth attempt gets.
        self.pending_garbage = 0
        self.pending_unknown = 0
        self.pending_extra: list[tuple[str, str, dict]] = []  # fault messages for the next round
        self.fail_auth = 0
        self.stall_until = 0.0

    def subscribed_clients(self) -> int:
        return sum(1 for c in self.clients if c.sub_key is not None and not c.closed)

    def any_subscribed(self) -> bool:
        return any(c.sub_key is not None for c in self.clients)

    async def wait_subscribed(self) -> None:
        """Until some client holds a subscription (the rate=None market and replay wait here)."""
        self.subscribed.clear()
        await self.subscribed.wait()

    def drop_all(self) -> int:
        """Abort every connection (no close frame, like a network failure). Returns how many."""
        n = 0
        for c in list(self.clients):
            c.ws.transport.abort()
            n += 1
        return n

    # ------------------------------------------------------------------ fan-out
    def frames_for_round(self, items: list[tuple[str, str, dict]]) -> list[tuple[MarketClient, list]]:
        """Encode this round's messages per client (clients with equal subscriptions share the encoding)."""
        clients = [c for c in self.clients if c.sub_key is not None and not c.closed]
        if not clients:
            return []  # pending faults wait for a subscribed client
        if self.pending_extra:
            items = items + self.pending_extra
            self.pending_extra = []
        if not items:
            return []
        if self.pending_unknown:
            self.pending_unknown -= 1
            first = items[0]
            unknown = {"T": "Z", "S": first[1], "t": time.time_ns(), "note": "tickvault-sim unknown type"}
            items = [first, ("_all", first[1], unknown), *items[1:]]
        garbage = 0
        if self.pending_garbage:
            garbage, self.pending_garbage = self.pending_garbage, 0
        fs = self.sim.frame_size
        cache: dict[tuple, list] = {}
        out = []
        for c in clients:
            ck = (c.asset, c.sub_key, c.use_msgpack)  # equal subscriptions of two streams differ
            frames = cache.get(ck)
            if frames is None:
                wants = c.wants
                msgs = [m for ch, sym, m in items if wants(ch, sym)]
                frames = [
                    encode_frame(msgs[i : i + fs], use_msgpack=c.use_msgpack) for i in range(0, len(msgs), fs)
                ]
                if frames and garbage:
                    junk = GARBAGE_FRAME if c.use_msgpack else "[{this is not json"
                    frames = [junk] * garbage + frames
                cache[ck] = frames
            if frames:
                out.append((c, frames))
        return out

    def fan_out(self, items: list[tuple[str, str, dict]]) -> None:
        """Rate mode: enqueue without waiting; a full queue means a slow client (407, closed)."""
        if self.stall_until > asyncio.get_running_loop().time():
            # The market's messages are lost to the stall (REST has them); pending fault messages
            # (corrections, cancels, malformed frames) wait for the first round after it.
            self.stats["stall_dropped_frames"] += -(-len(items) // self.sim.frame_size) if items else 0
            return
        for c, frames in self.frames_for_round(items):
            put = c.queue.put_nowait
            try:
                for f in frames:
                    put(f)
            except asyncio.QueueFull:
                self._disconnect_slow(c)

    async def fan_out_wait(self, items: list[tuple[str, str, dict]]) -> None:
        """rate=None: wait for room in every client's queue (the market runs at the slowest reader's pace)."""
        for c, frames in self.frames_for_round(items):
            for f in frames:
                if c.closed:
                    break
                await c.queue.put(f)

    def _disconnect_slow(self, c: MarketClient) -> None:
        self.stats["slow_disconnects"] += 1
        c.closed = True
        drain(c.queue)
        slow = session.MarketDataServerSession.error(407).message
        c.queue.put_nowait(encode_frame([slow], use_msgpack=c.use_msgpack))
        c.queue.put_nowait(None)  # the sender closes the connection after the error

    async def _send_loop(self, c: MarketClient) -> None:
        loop = asyncio.get_running_loop()
        queue = c.queue
        ws = c.ws
        try:
            while True:
                frame = await queue.get()
                if frame is None:
                    await ws.close(1008, "slow client")
                    return
                wait = self.stall_until - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(frame)
                c.frames_sent += 1
                self.stats["frames_sent"] += 1
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ one connection
    async def handle(self, ws: ServerConnection, feed: str, asset: str) -> None:
        sim = self.sim
        content_type = ws.request.headers.get("Content-Type", "")
        c = MarketClient(
            ws, feed, content_type.lower().startswith("application/msgpack"), sim.client_queue_frames, asset=asset,
            max_symbols=MAX_SUBSCRIBED_SYMBOLS,
        )
        if asset == "options" and not c.use_msgpack:
            # Alpaca's options stream speaks msgpack only: a client that did not ask for it is refused.
            await ws.send(encode_frame([{"T": "error", "code": 400, "msg": "the options stream is msgpack only: "
                                         "send Content-Type: application/msgpack"}], use_msgpack=False))
            await ws.close()
            return
        self.clients.add(c)
        self.stats["connections"] += 1
        try:
            await self._perform(c, c.session.welcome())
            while True:
                if c.session.state is session.State.AUTHENTICATED:
                    data = await ws.recv()
                else:
                    try:
                        async with asyncio.timeout(sim.auth_timeout):
                            data = await ws.recv()
                    except TimeoutError:
                        await self._perform(c, c.session.auth_timed_out())
                        return
                try:
                    msg = decode_client_message(data)
                except ProtocolError:
                    msg = None  # the session answers 400
                if not await self._perform(c, c.session.receive(msg)):
                    return
        except ConnectionClosed:
            pass
        finally:
            c.closed = True
            self.clients.discard(c)
            if c.key is not None:
                peers = self.authed.get((c.key, c.feed))
                if peers is not None:
                    peers.discard(c)
            if c.sender is not None:
                c.sender.cancel()
            drain(c.queue)  # unblocks a market waiting to put (rate=None)

    async def _perform(self, c: MarketClient, events: list) -> bool:
        """Carry out the session's events; False once the connection is closed."""
        for event in events:
            if isinstance(event, session.Send):
                await c.ws.send(encode_frame([event.message], use_msgpack=c.use_msgpack))
            elif isinstance(event, session.Close):
                await c.ws.close()
                return False
            elif isinstance(event, session.AuthRequest):
                if not await self._auth(c, event):
                    return False
            elif isinstance(event, session.SubscriptionChange):
                await self._subscribe(c, event)
        return True

    async def _auth(self, c: MarketClient, request: session.AuthRequest) -> bool:
        """Decide on the keys (and the fail-auth fault, and the connection limit); False when closed."""
        sim = self.sim
        if self.fail_auth > 0 or request.key != sim.key or request.secret != sim.secret:
            self.fail_auth = max(0, self.fail_auth - 1)
            self.stats["auth_failures"] += 1
            return await self._perform(c, c.session.refuse(402))
        peers = self.authed.setdefault((sim.key, c.feed), set())
        if len(peers) >= sim.max_connections_per_key:
            return await self._perform(c, c.session.refuse(406))
        peers.add(c)
        c.key = sim.key
        await self._perform(c, c.session.accept())
        c.sender = sim._spawn(self._send_loop(c), "sim-send")
        return True

    async def _subscribe(self, c: MarketClient, change: session.SubscriptionChange) -> None:
        """Send the ack, then (crypto) the books of new orderbook subscribers, then deliver the new set."""
        await c.ws.send(encode_frame([change.ack], use_msgpack=c.use_msgpack))  # before any data of it
        if c.asset == "crypto" and change.added:
            # Alpaca sends each new orderbooks subscriber the whole book first (r: reset).
            fresh = change.subscription["orderbooks"] - change.previous["orderbooks"]
            crypto = self.sim.crypto_market
            pairs = self.sim.crypto_pairs if "*" in fresh else sorted(fresh)
            books = [b for b in (crypto.orderbook_snapshot(p, self.sim.clock()) for p in pairs
                                 if p in crypto.books) if b is not None]
            if books:
                await c.ws.send(encode_frame(books, use_msgpack=c.use_msgpack))
        c.subs = change.subscription
        key = tuple((ch, s) for ch, s in c.subs.items() if s)
        c.sub_key = key or None
        if c.sub_key is not None:
            self.subscribed.set()


def drain(queue: asyncio.Queue) -> None:
    """Empty ``queue`` without waiting (unblocks a producer waiting to put)."""
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return
