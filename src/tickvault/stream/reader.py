"""The reader: Alpaca's market-data WebSocket → decoded frames → the bounded queue.

One connection per feed (a worker runs one reader per entry of TICKVAULT_FEEDS, all into the same
queue), msgpack frames decoded whole by the feed's decoder: stocks into columns
(``tickvault.alpaca.columnar``), crypto (``alpaca.crypto``), options (``alpaca.options``) and news
(``alpaca.news``) likewise; each frame's ``trades`` (for news: its articles' ``updated_at`` range) is
the stream position the gap logic below reads. The reader never does more per frame than decode and
``queue.put``: when the queue is full it waits,
stops reading the socket, and TCP pushes back on the server. websockets' own receive buffer is
bounded too (``max_queue`` frames of at most ``max_size`` bytes).

The session (handshake, subscribe/ack, error codes) is
:class:`tickvault.alpaca.session.MarketDataClientSession`; this module does its I/O. On any disconnect it reconnects with :data:`tickvault.retry.RECONNECT` (the
one retry policy) at 0.25 s doubling to 30 s with full jitter, reset after a successful
subscription and at least 5 s after error 406; refused keys (401/402 answering the auth) stop it
(:class:`AuthFailed`). It re-authenticates, re-subscribes, then backfills the
gap from the REST history — trades and minute bars from the last exchange time it received up to
the exchange time of the first trade the new connection delivers (where the stream really resumes:
a server may stay silent or drop data for a while after the ack) — and merges it through the
writer's de-duplicating path. The stream itself has no replay. A gap still open at shutdown is
closed by the next start, which resumes from the newest stored trade, or from the oldest backfill
window a crash or a cut shutdown left open (:mod:`tickvault.stream.gaps`). With a wildcard subscription
the reader tells the :class:`~tickvault.stream.universe.BackfillUniverse` each frame's trade symbols
before queueing it, so a gap's symbols include every symbol received before the gap began.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import connect

from tickvault.alpaca.columnar import ColumnarFrame, decode_columnar
from tickvault.alpaca.crypto import CryptoFrame
from tickvault.alpaca import session
from tickvault.alpaca.protocol import (
    ProtocolError,
    StreamError,
    decode_frame,
    encode_client_message,
    ns_to_rfc3339,
    subscribe_message,
)
from tickvault.retry import BACKFILL, RECONNECT
from tickvault.stream.gaps import GapLedger
from tickvault.stream.metrics import Metrics
from tickvault.stream.universe import BackfillUniverse

log = logging.getLogger("tickvault.reader")

# websockets buffers at most MAX_QUEUE frames of at most MAX_SIZE bytes before it stops reading
# the socket: 16 × 16 MiB worst case, in practice 16 × ~100 kB (1000 messages per frame).
MAX_SIZE = 16 * 2**20
MAX_QUEUE = 16
SILENCE_MAX_S = 1800.0


@dataclass(slots=True)
class QueuedFrame:
    frame: ColumnarFrame | CryptoFrame
    received_wall_ns: int
    received_mono_ns: int
    backfill: bool = False
    metrics: Metrics | None = None  # the feed's figures (None: the worker's)


class _SilenceWatch:
    """One connection's silence watchdog: a single timer, re-armed lazily.

    The reader stamps ``last`` (the loop's clock) on every frame; the timer, when it fires, re-arms
    itself at ``last + limit`` if data came meanwhile, and otherwise cancels the reading task — the
    mechanism of ``asyncio.timeout``, with one timer per silence period instead of one per frame.
    ``paused`` while the reader waits on its own full queue: that is backpressure, not silence.
    """

    __slots__ = ("fired", "handle", "last", "limit", "loop", "paused", "task")

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.limit = limit
        self.last = self.loop.time()
        self.paused = False
        self.fired = False
        self.handle = self.loop.call_at(self.last + limit, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        due = (now if self.paused else self.last) + self.limit
        if now < due:
            self.handle = self.loop.call_at(due, self._check)
            return
        self.fired = True
        self.task.cancel()

    def cancel(self) -> None:
        self.handle.cancel()


class FeedSilent(ConnectionError):
    """The server kept the socket open but sent nothing for too long: reconnect and backfill."""


class AuthFailed(Exception):
    """The server refused us in a way a new connection cannot fix (the keys, the plan, the symbol
    limit); the message says which setting to change."""


_REFUSALS = {
    405: "Alpaca refused the subscription: {msg} (code 405): subscribe to fewer symbols (TICKVAULT_SYMBOLS) "
         "or to all of them with '*'",
    409: "Alpaca refused the feed: {msg} (code 409): the account's market-data plan does not include it; "
         "choose a feed it does include in TICKVAULT_FEEDS (e.g. stocks:iex rather than stocks:sip)",
}


def _failure(event: session.StreamFailure) -> Exception:
    """The exception a session's failure ends the connection with: fatal ones stop the reader."""
    if event.fatal:
        text = _REFUSALS.get(event.code, "Alpaca refused the API keys: {msg} (code %d)" % event.code)
        return AuthFailed(text.format(msg=event.message))
    return StreamError(event.code, event.message)


BackfillFn = Callable[[int, int], Awaitable[int]]


def stock_subscription(channels: Sequence[str], symbols: list[str]) -> dict:
    """The stock stream's subscribe action for these channels, each with ``symbols``."""
    wanted = {ch: symbols for ch in channels}
    return subscribe_message(
        trades=wanted.get("trades", ()), quotes=wanted.get("quotes", ()), bars=wanted.get("bars", ()),
        updated_bars=wanted.get("updatedBars", ()), daily_bars=wanted.get("dailyBars", ()),
        statuses=wanted.get("statuses", ()), lulds=wanted.get("lulds", ()),
    )


def channel_subscription(channels: Sequence[str], symbols: list[str]) -> dict:
    """A subscribe action naming the wire channels as given (crypto: trades, quotes, bars, updatedBars,
    dailyBars, orderbooks)."""
    return {"action": "subscribe", **{ch: list(symbols) for ch in channels}}


class MarketDataReader:
    def __init__(
        self,
        url: str,
        key: str,
        secret: str,
        queue: asyncio.Queue,
        metrics: Metrics,
        *,
        channels: Sequence[str],
        symbols: Sequence[str],
        backfill: BackfillFn | None = None,
        resume_from_ns: int | None = None,
        silence_s: float = 0.0,
        universe: BackfillUniverse | None = None,
        gaps: GapLedger | None = None,
        name: str = "stocks",
        decode: Callable[[bytes | str], ColumnarFrame | CryptoFrame] = decode_columnar,
        subscription: Callable[[Sequence[str], list[str]], dict] = stock_subscription,
        silence_backoff: bool = True,
        tag_metrics: bool = False,
    ) -> None:
        self.name = name  # the feed's label in logs and ingest_stats ("stocks:iex", "crypto:us")
        self._decode = decode
        self._subscription = subscription
        # A 24/7 feed's silence is a fault, not a closed market: its limit stays put (no doubling).
        self._silence_backoff = silence_backoff
        self._frame_metrics = metrics if tag_metrics else None  # frames carry the feed's own figures
        self.url = url
        self._key = key
        self._secret = secret
        self.queue = queue
        self.metrics = metrics
        self.channels = list(channels)
        self.symbols = list(symbols) or ["*"]
        self.backfill = backfill
        self.gaps = gaps  # open backfill windows, on disk until done (a restart redoes what a crash cut)
        # Learns a wildcard subscription's symbols from the frames (bounded: see universe.py).
        self._observe = universe.observe if universe is not None and universe.wildcard else None
        self.last_exchange_ns = resume_from_ns  # latest exchange time received (or stored, at start)
        self.silence_s = silence_s or None
        # A quiet feed (overnight, weekends) is not a fault: each silent reconnect that brings no data
        # doubles the limit, up to 30 min; data resets it.
        self._silence_now = self.silence_s
        self._watch: _SilenceWatch | None = None
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ws = None
        self._session: session.MarketDataClientSession | None = None  # this connection's protocol state
        self._backfills: set[asyncio.Task] = set()
        self._gap_from: int | None = None  # start of a gap waiting for the stream to resume

    def stop(self) -> None:
        self._stopping.set()
        if self._ws is not None:
            asyncio.ensure_future(self._ws.close())

    async def wait_backfills(self) -> None:
        if self._backfills:
            await asyncio.gather(*self._backfills, return_exceptions=True)

    async def run(self) -> None:
        backoff = RECONNECT.start()
        first = True
        while not self._stopping.is_set():
            try:
                async with connect(
                    self.url,
                    additional_headers={"Content-Type": "application/msgpack"},
                    max_size=MAX_SIZE,
                    max_queue=MAX_QUEUE,
                    compression=None,
                    open_timeout=10,
                    ping_interval=10,
                    ping_timeout=180,
                ) as ws:
                    self._ws = ws
                    # The gap starts where the data stopped, fixed before the handshake: trades that
                    # arrive before the ack would otherwise move its start past the hole.
                    gap_start = self._gap_from if self._gap_from is not None else self.last_exchange_ns
                    await self._handshake(ws)
                    self.connected.set()
                    if not first:
                        self.metrics.add("reconnects")
                    first = False
                    backoff.reset()
                    if self.backfill is not None:
                        start = gap_start
                        if start is not None:
                            # What the market made up to the ack is in the REST history now; what it
                            # makes between the ack and the first trade this connection delivers is
                            # fetched when that trade arrives (a server may stay silent after the ack).
                            ack_ns = time.time_ns()
                            self._spawn_backfill(start, max(ack_ns, start))
                            self._gap_from = max(ack_ns, start)
                    await self._read(ws)
            except AuthFailed:
                raise
            except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError, StreamError, ProtocolError,
                    websockets.InvalidHandshake) as exc:
                if self._stopping.is_set():
                    break
                self.connected.clear()
                if isinstance(exc, StreamError):
                    _, stay_away = session.ERROR_POLICY.get(exc.code, (False, None))
                    if stay_away:  # 406: another connection holds the feed; give it time to go
                        backoff.at_least(stay_away)
                log.warning("%s market-data stream lost (%s: %s); reconnecting in ≤ %.2f s", self.name,
                            type(exc).__name__, exc, backoff.bound)
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff.next_delay())
                except asyncio.TimeoutError:
                    pass
            finally:
                self._ws = None

    async def _handshake(self, ws) -> None:
        """Drive a :class:`~tickvault.alpaca.session.MarketDataClientSession` to STREAMING: connected → auth →
        authenticated → subscribe → ack, each reply within 10 s."""
        protocol = self._session = session.MarketDataClientSession(
            self._key, self._secret, self._subscription(self.channels, self.symbols))
        while protocol.state is not session.State.STREAMING:
            data = await asyncio.wait_for(ws.recv(), 10)
            frame = self._decode(data) if protocol.accepts_data else None
            control = frame.rest.control if frame is not None else decode_frame(data).control
            for event in protocol.receive(control):
                if isinstance(event, session.Send):
                    await ws.send(encode_client_message(event.message))
                elif isinstance(event, session.StreamFailure):
                    raise _failure(event)
            # Market data may already be flowing before the ack; keep it.
            if frame is not None and (frame.market_count() or frame.rest.rejects):
                await self._enqueue(frame, time.time_ns(), time.monotonic_ns())

    async def _read(self, ws) -> None:
        recv = ws.recv
        silence = self._silence_now
        if not silence:
            while True:
                await self._on_data(await recv())
        # The silence watchdog is one timer per silence period, not one per frame (a wait_for per
        # frame cost a task and a timer each: ~10 % of the worker's CPU at full rate).
        watch = self._watch = _SilenceWatch(silence)
        stamp = watch.loop.time
        try:
            while True:
                data = await recv()
                watch.last = stamp()
                if self._silence_now != self.silence_s:  # data resets a doubled limit
                    self._silence_now = watch.limit = self.silence_s
                await self._on_data(data)
        except asyncio.CancelledError:
            if watch.fired and watch.task.uncancel() == 0:  # our watchdog's cancel, not a shutdown
                self.metrics.add("stalls")
                if self._silence_backoff:
                    self._silence_now = min(watch.limit * 2, SILENCE_MAX_S)
                raise FeedSilent(f"no market data for {watch.limit:.1f} s on an open connection") from None
            raise
        finally:
            watch.cancel()
            self._watch = None

    async def _on_data(self, data: bytes | str) -> None:
        wall = time.time_ns()
        mono = time.monotonic_ns()
        frame = self._decode(data)
        if frame.rest.control:  # errors, (re)subscription acks: the session says what they mean
            for event in self._session.receive(frame.rest.control):
                if isinstance(event, session.StreamFailure):
                    raise _failure(event)
        await self._enqueue(frame, wall, mono)

    async def _enqueue(self, frame: ColumnarFrame | CryptoFrame, wall: int, mono: int) -> None:
        trades = frame.trades
        if trades is not None:
            if self._observe is not None:
                self._observe(trades.latest)  # the frame's symbols: one key per symbol
            if self._gap_from is not None:
                resumed = trades.time_min_ns
                self._spawn_backfill(self._gap_from, max(resumed, self._gap_from))
                self._gap_from = None
            last = trades.time_last_ns
            if self.last_exchange_ns is None or last > self.last_exchange_ns:
                self.last_exchange_ns = last
        item = QueuedFrame(frame, wall, mono, False, self._frame_metrics)
        queue = self.queue
        if queue.full():
            started = time.monotonic()
            self.metrics.add("stalls")
            watch = self._watch
            if watch is not None:  # waiting on our own queue is not the feed going quiet
                watch.paused = True
            try:
                await queue.put(item)
            finally:
                if watch is not None:
                    watch.paused = False
                    watch.last = watch.loop.time()
            self.metrics.add("stall_seconds", time.monotonic() - started)
        else:
            queue.put_nowait(item)
        depth = queue.qsize()
        self.metrics.queue_depth = depth
        if depth > self.metrics.queue_max:
            self.metrics.queue_max = depth

    def _spawn_backfill(self, start_ns: int, end_ns: int) -> None:
        token = self.gaps.open(start_ns, end_ns) if self.gaps is not None else None
        task = asyncio.create_task(self._run_backfill(start_ns, end_ns, token))
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)

    async def _run_backfill(self, start_ns: int, end_ns: int, token: int | None = None) -> None:
        backoff = BACKFILL.start()
        attempt = 0
        while True:
            attempt += 1
            try:
                rows = await self.backfill(start_ns, end_ns)
                log.info("%s: backfilled %d rows for the gap %d → %d", self.name, rows, start_ns, end_ns)
                if token is not None:
                    self.gaps.close(token)  # only now: a crash or a cut shutdown leaves it for the next start
                return
            except Exception as exc:  # noqa: BLE001 - retried, then logged with the exact window
                self.metrics.add("db_errors")
                if backoff.exhausted:
                    log.error("backfill of the gap %s → %s failed %d times (%s): the trades of that window are "
                              "NOT stored%s", ns_to_rfc3339(start_ns), ns_to_rfc3339(end_ns), attempt, exc,
                              f" (kept in {self.gaps.path}: the next start backfills it)" if self.gaps else "")
                    return
                delay = backoff.next_delay()
                log.warning("backfill attempt %d failed (%s); retrying in %.0f s", attempt, exc, delay)
                await asyncio.sleep(delay)
