"""The Alpaca-protocol simulator: market-data WebSocket, trade-updates stream and REST, on 127.0.0.1.

One event loop runs everything: the market task (generates trades at ``rate`` and fans frames out
to subscribed clients), a ``websockets`` server routing on path (``/v2/{iex|sip|test}`` market data,
``/stream`` trade updates) and a uvicorn/Starlette server for the REST paths — market data in
:mod:`tickvault.sim.data`, trading in :mod:`tickvault.sim.trading` (over :mod:`tickvault.sim.broker`),
both behind this module's auth and fault layer — the fault switches (``POST /_sim/faults``), the clock
(``/_sim/clock``, :mod:`tickvault.sim.calendar`) and the ground truth (``GET /_sim/truth``). It speaks
exactly ``alpaca-protocol.md`` through :mod:`tickvault.alpaca.protocol`; the official alpaca-py clients
work against it unchanged.

The market sends trades ``t``, quotes ``q`` and minute bars ``b`` (each at its minute's end);
``u``/``c``/``x`` come only from the faults; statuses, LULD bands and daily bars are never generated
(subscribing to them is acknowledged). Historical REST serves the retained ground truth. With a
``replay`` (:mod:`tickvault.sim.recording`) the messages are a recorded stream's instead.

What it must never do: bind beyond loopback, grow without bound, log a secret. Bounds:
- per market-data client: ``client_queue_frames`` encoded frames queued (each ≤ ``frame_size``
  messages, ~80 B per message in msgpack) plus the socket's write buffer (``write_limit`` bytes);
  with a ``rate``, a client whose queue is full is too slow: it gets error 407 and is closed; with
  ``rate=None`` the market waits for the slowest client instead;
- per trade-updates client: ``TRADE_UPDATES_QUEUE`` events (overflow closes it);
- ground truth: see :class:`tickvault.sim.market.Market` (``truth_limit`` trades retained);
- broker: see :class:`tickvault.sim.broker.Broker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from msgpack import Timestamp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tickvault.alpaca.protocol import (
    ProtocolError,
    decode_client_message,
    encode_frame,
    ns_to_rfc3339,
    rfc3339_to_ns,
)
from tickvault.sim.broker import HOURS, Broker, BrokerError
from tickvault.sim.calendar import Calendar, SimClock
from tickvault.sim.data import MarketDataAPI
from tickvault.alpaca.crypto import CRYPTO_CHANNELS
from tickvault.sim.crypto import CRYPTO_PAIRS, CryptoMarket
from tickvault.sim.news import NewsWire
from tickvault.sim.data import CryptoDataAPI, OptionsDataAPI
from tickvault.sim.options import OptionsMarket
from tickvault.sim.market import CONDITIONS, EXCHANGE, TAPE, Market, TruthChecksum, symbol_names
from tickvault.sim.recording import RecordingError, frame_messages, read_recording
from tickvault.sim.trading import TradingAPI

log = logging.getLogger(__name__)

__all__ = ["Simulator", "run_simulator"]

FEEDS = ("iex", "sip", "test")
_FEED_PATH = re.compile(r"/v2/(iex|sip|test)")
_CRYPTO_PATH = re.compile(r"/v1beta3/crypto/(us|us-1|eu-1)")
_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
# Channels per stream: what a connection of that asset class may subscribe to and has acknowledged.
_NEWS_PATH = "/v1beta1/news"
_OPTIONS_PATH = re.compile(r"/v1beta1/(indicative|opra)")
_ASSET_CHANNELS = {"stocks": _CHANNELS, "crypto": CRYPTO_CHANNELS, "news": ("news",), "options": ("trades", "quotes")}
TRADE_UPDATES_QUEUE = 1_000  # events buffered per trade-updates client; a client this far behind is closed
# msgpack never uses 0xc1: a frame starting with it cannot decode, whatever follows.
GARBAGE_FRAME = b"\xc1\xc1 tickvault-sim malformed frame \xff\xfe"
HOUSEKEEPING_S = 0.05  # how often the clock's events (open, close, chaos faults) are checked when idle


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process that runs the simulator owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Symbols one connection may hold per channel: any string is accepted (as on Alpaca, an unknown
# symbol simply gets no data), so a client could otherwise grow its subscription without end; past
# this the subscribe is answered with error 405 (symbol limit exceeded), as Alpaca does.
MAX_SUBSCRIBED_SYMBOLS = 20_000

class _MarketClient:
    """One market-data WebSocket connection."""

    __slots__ = (
        "ws",
        "asset",
        "channels",
        "feed",
        "use_msgpack",
        "key",
        "authed",
        "subs",
        "sub_key",
        "queue",
        "sender",
        "closed",
        "frames_sent",
    )

    def __init__(self, ws: ServerConnection, feed: str, use_msgpack: bool, queue_frames: int,
                 asset: str = "stocks") -> None:
        self.ws = ws
        self.asset = asset  # "stocks" or "crypto": which market's messages this connection gets
        self.channels = _ASSET_CHANNELS[asset]
        self.feed = feed  # iex/sip/test, or crypto/us...: one connection per key and feed
        self.use_msgpack = use_msgpack
        self.key: str | None = None
        self.authed = False
        self.subs: dict[str, set[str]] = {ch: set() for ch in self.channels}  # ≤ MAX_SUBSCRIBED_SYMBOLS each
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

    def subscription_message(self) -> dict:
        msg: dict[str, Any] = {"T": "subscription"}
        for ch in self.channels:
            msg[ch] = sorted(self.subs[ch])
        if self.asset == "stocks":
            msg["corrections"] = sorted(self.subs["trades"])
            msg["cancelErrors"] = sorted(self.subs["trades"])
        return msg


# The keys `tickvault sim` and `tickvault run` accept when no Alpaca keys are configured: throw-away
# values, printed with the simulator's URLs (a Simulator built in a test defaults to key/secret).
SIM_KEY, SIM_SECRET = "sim-key", "sim-secret"

# The fault methods POST /_sim/faults may call (``{"fault": name, **kwargs}``), one per row of docs/simulator.md's fault table.
FAULTS = frozenset({
    "drop_connections",
    "stall",
    "send_malformed",
    "send_unknown_type",
    "fail_next_auth",
    "rest_fail",
    "rest_latency",
    "send_updated_bar",
    "send_correction",
    "send_cancel",
    "reject_next_orders",
    "rest_fail_rate",
    "chaos",
})


class Simulator:
    """Alpaca-protocol simulator; see the module docstring.

    ``symbols``: a count or a list of names. ``rate``: trades per second across all symbols, or None
    to generate as fast as the slowest subscribed client reads (then the market waits while nobody
    is subscribed). ``max_trades``: stop generating after this many, then set :attr:`finished`;
    None: trade until :meth:`finish` (a test's faults then never outlast the market, however slow
    the machine).
    ``quotes_per_trade``: quotes generated per trade (0.25: one quote every four trades).
    ``ws_port``/``rest_port``: 0 picks free ports (read :attr:`ws_url`, :attr:`rest_url` after start).
    ``clock``: simulated time in ns since the epoch for trades, orders, ``/v2/clock`` and expiry; default
    a :class:`~tickvault.sim.calendar.SimClock` at wall time and speed, which ``POST /_sim/clock`` moves
    (any other function: a test's own pace, not movable). ``hours``: ``"always"`` (the exchange never
    closes) or ``"calendar"`` (NYSE's sessions: no trades while closed, orders wait for the open,
    ``day`` orders expire at the close). Other keyword arguments state bounds; see the module docstring.
    """

    def __init__(
        self,
        symbols: int | list[str] = 50,
        rate: float | None = 20_000.0,
        frame_size: int = 100,
        seed: int = 42,
        max_trades: int | None = None,
        quotes_per_trade: float = 0.25,
        key: str = "key",
        secret: str = "secret",
        *,
        host: str = "127.0.0.1",
        ws_port: int = 0,
        rest_port: int = 0,
        client_queue_frames: int = 256,
        write_limit: int = 2**20,
        max_connections_per_key: int = 1,
        auth_timeout: float = 10.0,
        truth_limit: int = 5_000_000,
        cash: str = "100000",
        clock: Callable[[], int] | None = None,
        hours: str = "always",
        calendar: Calendar | None = None,
        replay: str | Path | None = None,
        replay_speed: float = 1.0,
        crypto_pairs: list[str] | None = None,
        crypto_rate: float = 50.0,
        news_interval_s: float | None = 1.0,
        option_underlyings: int = 2,
        options_rate: float = 20.0,
    ) -> None:
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError("the simulator binds to loopback only")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 (or None: as fast as the client reads)")
        if frame_size < 1:
            raise ValueError("frame_size must be >= 1")
        if hours not in HOURS:
            raise ValueError(f"hours must be one of {HOURS}")
        if replay_speed < 0:
            raise ValueError("replay_speed must be >= 0 (0: as fast as the clients read)")
        self.replay = Path(replay) if replay is not None else None
        self.replay_speed = replay_speed
        self._replay_frames: Iterator[tuple[int, bytes | str]] | None = None
        if self.replay is not None:
            meta, frames = read_recording(self.replay)
            first = next(frames, None)
            if first is None:
                raise RecordingError(f"{self.replay} holds no frames")
            self._replay_frames = itertools.chain([first], frames)
            if clock is None:  # the recorded day's time, running at the replay's speed
                clock = SimClock(start_ns=first[0], scale=replay_speed or 1.0)
            wanted = {s for syms in (meta.get("subscription") or {}).values() for s in syms if s != "*"}
            names = sorted(wanted)
        else:
            names = symbol_names(symbols) if isinstance(symbols, int) else [s.upper() for s in symbols]
        self.rate = rate
        self.frame_size = frame_size
        self.max_trades = max_trades
        self.key = key
        self.secret = secret
        self.host = host
        self._ws_port = ws_port
        self._rest_port = rest_port
        self.client_queue_frames = client_queue_frames
        self.write_limit = write_limit
        self.max_connections_per_key = max_connections_per_key
        self.clock: Callable[[], int] = clock if clock is not None else SimClock()
        self.hours = hours
        self.auth_timeout = auth_timeout
        self.market = Market(names, seed=seed, quotes_per_trade=quotes_per_trade, truth_limit=truth_limit,
                             allow_empty=self.replay is not None)
        self.symbols = self.market.symbols  # one list: a replay adds the symbols it meets
        # The crypto market (``/v1beta3/crypto/{loc}``): its own pairs, rate and truth, same seed family.
        # It trades around the clock, also with calendar hours, and whether or not anyone listens.
        if crypto_rate <= 0:
            raise ValueError("crypto_rate must be > 0")
        self.crypto_market = CryptoMarket(list(CRYPTO_PAIRS) if crypto_pairs is None else
                                          [p.upper() for p in crypto_pairs], seed=seed + 1)
        self.crypto_pairs = self.crypto_market.symbols
        self.crypto_rate = crypto_rate
        self._crypto_task: asyncio.Task | None = None
        # The news wire (``/v1beta1/news``): an article about the stock symbols every news_interval_s.
        if news_interval_s is not None and news_interval_s <= 0:
            raise ValueError("news_interval_s must be > 0 (or None: no news)")
        self.news = NewsWire(self.symbols or ["AAPL"], seed=seed + 2)
        self.news_interval_s = news_interval_s
        self._news_task: asyncio.Task | None = None
        # Options (``/v1beta1/{indicative,opra}``, msgpack only): 8 contracts on each of the first
        # ``option_underlyings`` stock symbols, ``options_rate`` trades a second across them.
        if options_rate <= 0:
            raise ValueError("options_rate must be > 0")
        underlyings = [s for s in self.symbols[:option_underlyings] if s.isalpha() and len(s) <= 6]
        self.options_market = OptionsMarket(underlyings, seed=seed + 3) if underlyings else None
        self.option_symbols = self.options_market.symbols if self.options_market is not None else []
        self.options_rate = options_rate
        self._options_task: asyncio.Task | None = None
        self.broker = Broker(self._price_for_broker, quote=self.market.last_quote, clock=self.clock,
                             hours=hours, calendar=calendar, cash=cash)
        self.trading = TradingAPI(self)
        self.finished = asyncio.Event()
        self._finish_requested = False  # set by finish(): the market makes no trade after it
        self.corrections: list[dict] = []  # one per send_correction() call (bounded by the caller)
        self.cancels: list[dict] = []  # one per send_cancel() call (bounded by the caller)
        self.stats: dict[str, int] = {
            "connections": 0,
            "auth_failures": 0,
            "frames_sent": 0,
            "drops": 0,
            "slow_disconnects": 0,
            "stall_dropped_frames": 0,
            "rest_requests": 0,
            "rest_faults": 0,
            "rest_in_flight_max": 0,  # most Alpaca REST requests being answered at once
        }
        self._rest_in_flight = 0
        self._clients: set[_MarketClient] = set()  # every open market-data connection
        self._authed: dict[
            tuple[str, str], set[_MarketClient]
        ] = {}  # (key, feed) → ≤ max_connections_per_key
        self._tu_queues: set[asyncio.Queue] = set()  # one per listening trade-updates client
        self._subscribed = asyncio.Event()  # set when some client has a subscription (rate=None pacing)
        self._pending_garbage = 0
        self._pending_unknown = 0
        self._pending_extra: list[tuple[str, str, dict]] = []  # fault messages for the next round
        self._fail_auth = 0
        self._stall_until = 0.0
        self._rest_fail: tuple[int, int, float | None] = (0, 0, None)  # (status, count, retry_after)
        self._rest_latency_s = 0.0
        self._rest_fail_rates: dict[int, float] = {}  # status → share of REST requests answered with it
        self._fault_rng = random.Random(seed)  # draws for rate-based faults: a seed repeats a run's faults
        self._chaos: dict[str, float] = {}  # periodic faults: drop_every, stall_every, stall_seconds, malformed_every
        self._chaos_due: dict[str, float] = {}  # fault → loop time it next fires
        self._housekeeping_task: asyncio.Task | None = None
        self._ws_server: Server | None = None
        self._uvicorn: _QuietUvicorn | None = None
        self._uvicorn_task: asyncio.Task | None = None
        self._market_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.ws_port = 0
        self.rest_port = 0
        self.broker.listeners.append(self._on_trade_update)

    @classmethod
    def from_settings(cls, settings, **overrides: Any) -> Simulator:
        """Build from :class:`~tickvault.config.Settings` (``sim_*``; keys from ``alpaca_*`` if both are
        set, else :data:`SIM_KEY` / :data:`SIM_SECRET`)."""
        kwargs: dict[str, Any] = dict(
            symbols=settings.sim_symbols,
            rate=settings.sim_rate,
            frame_size=settings.sim_frame_size,
            seed=settings.sim_seed,
            host=settings.sim_host,
            ws_port=settings.sim_port,
            rest_port=settings.sim_rest_port,
            key=SIM_KEY,
            secret=SIM_SECRET,
            hours=settings.sim_hours,
            calendar=Calendar.from_file(settings.sim_calendar_file) if settings.sim_calendar_file else None,
            replay=settings.sim_replay,
            replay_speed=settings.sim_replay_speed,
        )
        start = settings.sim_clock_start
        if start is not None or settings.sim_clock_scale != 1.0:
            start_ns = None if start is None else int(start.timestamp()) * 10**9 + start.microsecond * 1000
            kwargs["clock"] = SimClock(start_ns=start_ns, scale=settings.sim_clock_scale)
        if settings.alpaca_key_id is not None and settings.alpaca_secret_key is not None:
            kwargs["key"] = settings.alpaca_key_id.get_secret_value()
            kwargs["secret"] = settings.alpaca_secret_key.get_secret_value()
        kwargs.update(overrides)
        return cls(**kwargs)

    # ------------------------------------------------------------------ lifecycle
    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    def crypto_stream_url(self, location: str = "us") -> str:
        """``ws://.../v1beta3/crypto/{location}`` (``us``, ``us-1`` or ``eu-1``)."""
        if not _CRYPTO_PATH.fullmatch(f"/v1beta3/crypto/{location}"):
            raise ValueError("location must be us, us-1 or eu-1")
        return f"{self.ws_url}/v1beta3/crypto/{location}"

    def options_stream_url(self, feed: str = "indicative") -> str:
        """``ws://.../v1beta1/{indicative,opra}`` (msgpack only)."""
        if not _OPTIONS_PATH.fullmatch(f"/v1beta1/{feed}"):
            raise ValueError("feed must be indicative or opra")
        return f"{self.ws_url}/v1beta1/{feed}"

    @property
    def news_stream_url(self) -> str:
        return f"{self.ws_url}{_NEWS_PATH}"

    def stream_url(self, feed: str = "iex") -> str:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}")
        return f"{self.ws_url}/v2/{feed}"

    @property
    def trade_updates_url(self) -> str:
        return f"{self.ws_url}/stream"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    async def start(self) -> None:
        self._ws_server = await serve(
            self._handle_ws,
            self.host,
            self._ws_port,
            process_request=self._route_ws,
            compression=None,  # deflate would cost more CPU than the loopback saves
            write_limit=self.write_limit,
            max_size=2**22,
            max_queue=64,
            ping_interval=20,
            ping_timeout=60,
        )
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says it is TCP; without it uvicorn's header/body writes hit Nagle + delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._rest_port))
        sock.listen(128)  # connections before uvicorn is up wait in the backlog
        sock.setblocking(False)
        self.rest_port = sock.getsockname()[1]
        config = uvicorn.Config(self._rest_app(), log_level="warning", lifespan="off", access_log=False)
        self._uvicorn = _QuietUvicorn(config)
        self._uvicorn_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="sim-rest")
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            if self._uvicorn_task.done():
                self._uvicorn_task.result()
                raise RuntimeError("the simulator's REST server stopped during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator's REST server did not start within 10 s")
            await asyncio.sleep(0.005)  # startup poll, not synchronisation of results
        self._market_task = asyncio.create_task(self._run_market(), name="sim-market")
        if self.crypto_pairs and self.replay is None:
            self._crypto_task = asyncio.create_task(
                self._run_side_market(self.crypto_market, self.crypto_rate), name="sim-crypto-market")
        if self.options_market is not None and self.replay is None:
            self._options_task = asyncio.create_task(
                self._run_side_market(self.options_market, self.options_rate), name="sim-options-market")
        if self.news_interval_s is not None:
            self._news_task = asyncio.create_task(self._run_news(), name="sim-news")
        self._housekeeping_task = asyncio.create_task(self._housekeeping(), name="sim-housekeeping")
        log.info("simulator up: market data %s, REST %s", self.ws_url, self.rest_url)

    async def stop(self) -> None:
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping_task
            self._housekeeping_task = None
        for attr in ("_crypto_task", "_options_task", "_news_task"):
            task = getattr(self, attr)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                setattr(self, attr, None)
        if self._market_task is not None:
            self._market_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._market_task
            self._market_task = None
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._uvicorn is not None and self._uvicorn_task is not None:
            self._uvicorn.should_exit = True
            await self._uvicorn_task
            self._uvicorn = self._uvicorn_task = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ ground truth
    def truth_count(self, symbol: str | None = None) -> int:
        """Trades generated (all symbols, or one)."""
        return self.market.truth_count(symbol)

    def truth_checksum(self, symbol: str | None = None) -> TruthChecksum | dict[str, TruthChecksum]:
        """Per-symbol checksum ``(count, sum(trade_id), sum(time_ns % 1000003), sum((time_ns/1000) %
        1000003), sum(round(price*100)), sum(size))``; all symbols (those with trades) as a dict when
        ``symbol`` is None. SQL recipe in :mod:`tickvault.sim.market`."""
        return self.market.truth_checksum(symbol)

    def truth_trades(self, symbol: str) -> Iterator[tuple[int, int, float, int]]:
        """Retained trades of ``symbol``: ``(trade_id, time_ns, price, size)`` in time order."""
        return self.market.truth_trades(symbol)

    def _price_for_broker(self, symbol: str) -> int | None:
        book = self.market.books.get(symbol)
        return None if book is None else book.price_cents

    def trade_update_listeners(self) -> int:
        """Trade-updates connections listening to ``trade_updates`` (a test waits on this, not on a sleep)."""
        return len(self._tu_queues)

    def subscribed_clients(self) -> int:
        """Open market-data connections with a subscription (a test waits on this, not on a sleep)."""
        return sum(1 for c in self._clients if c.sub_key is not None and not c.closed)

    def finish(self) -> None:
        """Stop the market now and set :attr:`finished`: no trade is made after this returns, so the
        ground truth is final. Frames already made are still delivered; REST keeps serving."""
        self._finish_requested = True
        self.finished.set()

    # ------------------------------------------------------------------ faults
    def drop_connections(self) -> int:
        """Abort every market-data connection (no close frame, like a network failure). Returns how many."""
        n = 0
        for c in list(self._clients):
            c.ws.transport.abort()
            n += 1
        self.stats["drops"] += n
        return n

    def stall(self, seconds: float) -> None:
        """Stop sending market data for ``seconds`` (sockets stay open). With a ``rate``, what the market
        makes meanwhile is not delivered (REST has it); with ``rate=None`` the market waits."""
        self._stall_until = asyncio.get_running_loop().time() + seconds

    def send_malformed(self) -> None:
        """Each client's next data frame is preceded by one undecodable frame."""
        self._pending_garbage += 1

    def send_unknown_type(self) -> None:
        """The next data frame carries one extra message with unknown ``T`` ("Z") among good ones."""
        self._pending_unknown += 1

    def fail_next_auth(self, count: int = 1) -> None:
        """The next ``count`` auth attempts answer 402 even with the right key."""
        self._fail_auth += count

    def rest_fail(self, status: int = 500, count: int = 1, retry_after: float | None = None) -> None:
        """The next ``count`` REST requests (not ``/_sim``) answer ``status`` (+ ``Retry-After`` if given)."""
        self._rest_fail = (status, count, retry_after)

    def rest_latency(self, ms: float) -> None:
        """Add ``ms`` milliseconds before every REST answer (0 turns it off)."""
        self._rest_latency_s = max(0.0, ms) / 1000

    def send_updated_bar(self, symbol: str) -> dict | None:
        """Send a ``u`` updated bar for ``symbol``'s last sent minute bar (same values: the sim has no late
        trades). None if no bar was sent yet."""
        bar = self.market.books[symbol].last_bar
        if bar is None:
            return None
        msg = dict(bar, T="u")
        self._pending_extra.append(("updatedBars", symbol, msg))
        return msg

    def send_correction(self, symbol: str) -> dict | None:
        """Send a ``c`` correction of ``symbol``'s latest trade (price +1 cent, new id); recorded in
        :attr:`corrections`. The ground-truth trades are not changed. None if it has no trade yet."""
        book = self.market.books[symbol]
        if not book.ids:
            return None
        tid, cents, size = book.ids[-1], book.cents[-1], book.sizes[-1]
        corr_id = self.market.next_id
        self.market.next_id += 1
        t = book.last_ns = max(book.last_ns + 1, self.clock())
        msg = {
            "T": "c",
            "S": symbol,
            "x": EXCHANGE,
            "oi": tid,
            "op": cents / 100,
            "os": size,
            "oc": list(CONDITIONS),
            "ci": corr_id,
            "cp": (cents + 1) / 100,
            "cs": size,
            "cc": list(CONDITIONS),
            "z": TAPE,
            "t": t,
        }
        self.corrections.append(msg)
        self._pending_extra.append(("trades", symbol, msg))
        return msg

    def send_cancel(self, symbol: str) -> dict | None:
        """Send an ``x`` cancel of ``symbol``'s latest trade; recorded in :attr:`cancels`, truth unchanged."""
        book = self.market.books[symbol]
        if not book.ids:
            return None
        t = book.last_ns = max(book.last_ns + 1, self.clock())
        msg = {
            "T": "x",
            "S": symbol,
            "i": book.ids[-1],
            "x": EXCHANGE,
            "p": book.cents[-1] / 100,
            "s": book.sizes[-1],
            "a": "C",
            "z": TAPE,
            "t": t,
        }
        self.cancels.append(msg)
        self._pending_extra.append(("trades", symbol, msg))
        return msg

    def reject_next_orders(self, count: int = 1) -> None:
        """The next ``count`` submitted orders are rejected after validation: the answer carries status
        ``rejected`` and trade updates a ``rejected`` event (as when Alpaca's risk checks refuse one)."""
        self.broker.reject_next += count

    def rest_fail_rate(self, status: int = 429, rate: float = 0.0) -> None:
        """Answer this share (0..1) of REST requests (not ``/_sim``) with ``status``, drawn from the seeded
        fault generator; 0 turns that status off."""
        if not 0 <= rate <= 1:
            raise ValueError("rate is a share between 0 and 1")
        if rate:
            self._rest_fail_rates[int(status)] = float(rate)
        else:
            self._rest_fail_rates.pop(int(status), None)

    def _draw_rest_fault(self) -> int:
        draw = self._fault_rng.random()
        for status, rate in self._rest_fail_rates.items():
            if draw < rate:
                return status
            draw -= rate
        return 0

    def chaos(self, drop_every: float = 0, stall_every: float = 0, stall_seconds: float = 0,
              malformed_every: float = 0) -> dict:
        """Periodic faults, every N seconds of wall time (0: off): drop every connection, stall the feed
        for ``stall_seconds``, precede a frame with a malformed one. Returns the settings in force."""
        if stall_every and stall_seconds <= 0:
            raise ValueError("stall_every needs stall_seconds > 0")
        settings = {"drop_every": drop_every, "stall_every": stall_every, "malformed_every": malformed_every}
        for name, every in settings.items():
            if every < 0:
                raise ValueError(f"{name} must be >= 0")
        self._chaos = {k: float(v) for k, v in settings.items() if v}
        if stall_seconds:
            self._chaos["stall_seconds"] = float(stall_seconds)
        self._chaos_due = {}
        return dict(self._chaos)

    def _run_chaos(self, now: float) -> None:
        actions = {"drop_every": self.drop_connections, "malformed_every": self.send_malformed,
                   "stall_every": lambda: self.stall(self._chaos["stall_seconds"])}
        for name, action in actions.items():
            every = self._chaos.get(name)
            if not every:
                continue
            due = self._chaos_due.setdefault(name, now + every)
            if now >= due:
                self._chaos_due[name] = now + every
                action()

    async def _housekeeping(self) -> None:
        """The clock's events while nothing else happens: the open, the close, periodic faults."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.broker.advance()
            except BrokerError as exc:  # e.g. a position planted in a symbol the market does not have
                log.warning("simulated clock: %s", exc.message)
            if self._chaos:
                self._run_chaos(loop.time())
            await asyncio.sleep(HOUSEKEEPING_S)

    def apply_fault(self, spec: dict) -> Any:
        """Apply ``{"fault": name, **kwargs}`` (what ``POST /_sim/faults`` receives)."""
        name = spec.get("fault")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; one of {sorted(FAULTS)}")
        kwargs = {k: v for k, v in spec.items() if k != "fault"}
        return getattr(self, name)(**kwargs)

    # ------------------------------------------------------------------ market loop
    def _closed(self) -> bool:
        """With calendar hours, the exchange makes no trades between sessions."""
        return self.hours == "calendar" and not self.broker.is_open(self.clock())

    async def _run_replay(self) -> None:
        """Serve the recording's messages at their recorded pace × ``replay_speed`` (0: as fast as the
        slowest subscribed client reads), moving the clock to each frame's time; fill orders on them."""
        assert self._replay_frames is not None
        on_trade, on_quote = self.broker.on_trade, self.broker.on_quote
        clock = self.clock
        frames = 0
        for recv_ns, payload in self._replay_frames:  # one gzip record read at a time (small, buffered)
            if self._finish_requested:
                break
            if self.replay_speed:
                wait = (recv_ns - clock()) / 1e9 / getattr(clock, "scale", 1.0)
                if wait > 0:
                    await asyncio.sleep(wait)  # the recorded pace, not synchronisation
            elif not any(c.sub_key is not None for c in self._clients):
                self._subscribed.clear()
                await self._subscribed.wait()
            if isinstance(clock, SimClock) and clock() < recv_ns:
                clock.set(recv_ns)
            try:
                messages = frame_messages(payload)
            except ValueError:
                continue  # a frame the live stream sent malformed stays skipped
            items = self.market.ingest(messages, on_trade, on_quote)
            frames += 1
            if self.replay_speed:
                self._fan_out(items)
            else:
                await self._fan_out_wait(items)
            await asyncio.sleep(0)
        self.finished.set()
        log.info("replay finished: %d frames", frames)

    async def _run_market(self) -> None:
        if self._replay_frames is not None:
            await self._run_replay()
            while True:  # keep serving REST and fault messages after the recording ends
                if self._pending_extra:
                    self._fan_out([])
                await asyncio.sleep(HOUSEKEEPING_S)
        loop = asyncio.get_running_loop()
        on_trade, on_quote = self.broker.on_trade, self.broker.on_quote
        made = 0
        limit = self.max_trades
        # Nothing awaits between a loop test and generate(): finish() takes effect before the next trade.
        if self.rate is None:
            while (limit is None or made < limit) and not self._finish_requested:
                if not any(c.sub_key is not None for c in self._clients):
                    self._subscribed.clear()
                    await self._subscribed.wait()
                    continue
                if self._closed():
                    await asyncio.sleep(HOUSEKEEPING_S)
                    continue
                n = self.frame_size if limit is None else min(self.frame_size, limit - made)
                items = self.market.generate(n, self.clock(), on_trade, on_quote)
                made += n
                await self._fan_out_wait(items)
                await asyncio.sleep(0)
        else:
            rate = self.rate
            tick = min(0.05, max(0.001, self.frame_size / rate))  # ~one full frame per tick
            max_batch = max(self.frame_size, int(rate * 0.05))  # bounded work per loop turn
            t0 = loop.time()
            while (limit is None or made < limit) and not self._finish_requested:
                due = int((loop.time() - t0) * rate) - made
                if due > 0 and self._closed():
                    t0 += due / rate  # the closed hours make no trades, and owe none at the open
                    due = 0
                if due <= 0:
                    items = self.market.flush_bars(self.clock())
                    if items or self._pending_extra:
                        self._fan_out(items)
                    await asyncio.sleep(tick)
                    continue
                n = min(due, max_batch) if limit is None else min(due, max_batch, limit - made)
                items = self.market.generate(n, self.clock(), on_trade, on_quote)
                made += n
                self._fan_out(items)
                await asyncio.sleep(0)
        self.finished.set()
        log.info("simulator finished: %d trades", made)
        # Keep delivering fault messages (corrections, updated bars) after the market stops.
        while True:
            if self._pending_extra:
                if self.rate is None:
                    await self._fan_out_wait([])
                else:
                    self._fan_out([])
            await asyncio.sleep(0.01)

    async def _run_news(self) -> None:
        """An article every ``news_interval_s`` (wall time) until :meth:`finish`."""
        while not self._finish_requested:
            await asyncio.sleep(self.news_interval_s)
            if self._finish_requested:
                break
            self._fan_out([("news:news", tuple(m["symbols"]), m) for m in self.news.publish(self.clock())])

    async def _run_side_market(self, market: Market, rate: float) -> None:
        """The crypto or options market: ``rate`` trades a second across its symbols until :meth:`finish`,
        whatever the stock hours (crypto never closes; the options tape is kept simple)."""
        loop = asyncio.get_running_loop()
        tick = min(0.05, max(0.001, self.frame_size / rate))
        max_batch = max(self.frame_size, int(rate * 0.05))  # bounded work per loop turn
        t0, made = loop.time(), 0
        while not self._finish_requested:
            due = int((loop.time() - t0) * rate) - made
            if due <= 0:
                items = market.flush_bars(self.clock())
                if items:
                    self._fan_out(items)
                await asyncio.sleep(tick)
                continue
            n = min(due, max_batch)
            items = market.generate(n, self.clock(), self.broker.on_trade, self.broker.on_quote)
            made += n
            self._fan_out(items)
            await asyncio.sleep(0)

    def _frames_for_round(self, items: list[tuple[str, str, dict]]) -> list[tuple[_MarketClient, list]]:
        """Encode this round's messages per client (clients with equal subscriptions share the encoding)."""
        clients = [c for c in self._clients if c.sub_key is not None and not c.closed]
        if not clients:
            return []  # pending faults wait for a subscribed client
        if self._pending_extra:
            items = items + self._pending_extra
            self._pending_extra = []
        if not items:
            return []
        if self._pending_unknown:
            self._pending_unknown -= 1
            first = items[0]
            unknown = {"T": "Z", "S": first[1], "t": time.time_ns(), "note": "tickvault-sim unknown type"}
            items = [first, ("_all", first[1], unknown), *items[1:]]
        garbage = 0
        if self._pending_garbage:
            garbage, self._pending_garbage = self._pending_garbage, 0
        fs = self.frame_size
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

    def _fan_out(self, items: list[tuple[str, str, dict]]) -> None:
        """Rate mode: enqueue without waiting; a full queue means a slow client (407, closed)."""
        rounds = self._frames_for_round(items)
        stalled = self._stall_until > asyncio.get_running_loop().time()
        for c, frames in rounds:
            if stalled:
                self.stats["stall_dropped_frames"] += len(frames)
                continue
            put = c.queue.put_nowait
            try:
                for f in frames:
                    put(f)
            except asyncio.QueueFull:
                self._disconnect_slow(c)

    async def _fan_out_wait(self, items: list[tuple[str, str, dict]]) -> None:
        """rate=None: wait for room in every client's queue (the market runs at the slowest reader's pace)."""
        for c, frames in self._frames_for_round(items):
            for f in frames:
                if c.closed:
                    break
                await c.queue.put(f)

    def _disconnect_slow(self, c: _MarketClient) -> None:
        self.stats["slow_disconnects"] += 1
        c.closed = True
        _drain(c.queue)
        c.queue.put_nowait(
            encode_frame([{"T": "error", "code": 407, "msg": "slow client"}], use_msgpack=c.use_msgpack)
        )
        c.queue.put_nowait(None)  # the sender closes the connection after the error

    async def _send_loop(self, c: _MarketClient) -> None:
        loop = asyncio.get_running_loop()
        queue = c.queue
        ws = c.ws
        try:
            while True:
                frame = await queue.get()
                if frame is None:
                    await ws.close(1008, "slow client")
                    return
                wait = self._stall_until - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(frame)
                c.frames_sent += 1
                self.stats["frames_sent"] += 1
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ market-data WebSocket
    def _route_ws(self, connection: ServerConnection, request: Any) -> Any:
        path = urlsplit(request.path).path
        if (path in ("/stream", _NEWS_PATH) or _FEED_PATH.fullmatch(path) or _CRYPTO_PATH.fullmatch(path)
                or _OPTIONS_PATH.fullmatch(path)):
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "unknown path\n")

    async def _handle_ws(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        if path == "/stream":
            await self._handle_trade_updates(ws)
            return
        crypto = _CRYPTO_PATH.fullmatch(path)
        options = _OPTIONS_PATH.fullmatch(path)
        if path == _NEWS_PATH:
            feed, asset = "news", "news"
        elif options:
            feed, asset = f"options/{options.group(1)}", "options"
        elif crypto:
            feed, asset = f"crypto/{crypto.group(1)}", "crypto"
        else:
            feed, asset = _FEED_PATH.fullmatch(path).group(1), "stocks"
        content_type = ws.request.headers.get("Content-Type", "")
        c = _MarketClient(
            ws, feed, content_type.lower().startswith("application/msgpack"), self.client_queue_frames, asset=asset,
        )
        if asset == "options" and not c.use_msgpack:
            # Alpaca's options stream speaks msgpack only: a client that did not ask for it is refused.
            await ws.send(encode_frame([{"T": "error", "code": 400, "msg": "the options stream is msgpack only: "
                                         "send Content-Type: application/msgpack"}], use_msgpack=False))
            await ws.close()
            return
        self._clients.add(c)
        self.stats["connections"] += 1
        try:
            await self._control(c, {"T": "success", "msg": "connected"})
            while True:
                if c.authed:
                    data = await ws.recv()
                else:
                    try:
                        async with asyncio.timeout(self.auth_timeout):
                            data = await ws.recv()
                    except TimeoutError:
                        await self._error(c, 404)
                        await ws.close()
                        return
                try:
                    msg = decode_client_message(data)
                except ProtocolError:
                    await self._error(c, 400)
                    continue
                action = msg["action"]
                if action == "auth":
                    if not await self._auth(c, msg):
                        await ws.close()
                        return
                elif action in ("subscribe", "unsubscribe"):
                    if not c.authed:
                        await self._error(c, 401)
                        continue
                    await self._subscribe(c, msg, action == "subscribe")
                else:
                    await self._error(c, 400)
        except ConnectionClosed:
            pass
        finally:
            c.closed = True
            self._clients.discard(c)
            if c.key is not None:
                peers = self._authed.get((c.key, c.feed))
                if peers is not None:
                    peers.discard(c)
            if c.sender is not None:
                c.sender.cancel()
            _drain(c.queue)  # unblocks a market waiting to put (rate=None)

    async def _control(self, c: _MarketClient, msg: dict) -> None:
        await c.ws.send(encode_frame([msg], use_msgpack=c.use_msgpack))

    async def _control_many(self, c: _MarketClient, msgs: list[dict]) -> None:
        await c.ws.send(encode_frame(msgs, use_msgpack=c.use_msgpack))

    async def _error(self, c: _MarketClient, code: int) -> None:
        from tickvault.alpaca.protocol import ERROR_CODES

        await self._control(c, {"T": "error", "code": code, "msg": ERROR_CODES[code]})

    async def _auth(self, c: _MarketClient, msg: dict) -> bool:
        """Answer an auth action; False when the connection must close."""
        if c.authed:
            await self._error(c, 403)
            return True
        if self._fail_auth > 0 or msg.get("key") != self.key or msg.get("secret") != self.secret:
            self._fail_auth = max(0, self._fail_auth - 1)
            self.stats["auth_failures"] += 1
            await self._error(c, 402)
            return False
        peers = self._authed.setdefault((self.key, c.feed), set())
        if len(peers) >= self.max_connections_per_key:
            await self._error(c, 406)
            return False
        peers.add(c)
        c.key = self.key
        c.authed = True
        await self._control(c, {"T": "success", "msg": "authenticated"})
        c.sender = self._spawn(self._send_loop(c), "sim-send")
        return True

    async def _subscribe(self, c: _MarketClient, msg: dict, add: bool) -> None:
        new = {ch: set(syms) for ch, syms in c.subs.items()}
        for ch in c.channels:
            symbols = msg.get(ch)
            if not symbols:
                continue
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                await self._error(c, 400)
                return
            symbols = {s.upper() for s in symbols}
            if add:
                new[ch] |= symbols
            else:
                new[ch] -= symbols
        if any(len(syms) > MAX_SUBSCRIBED_SYMBOLS for syms in new.values()):
            await self._error(c, 405)  # Alpaca's "symbol limit exceeded": the subscription is unchanged
            return
        old = c.subs
        c.subs = new
        ack = c.subscription_message()
        c.subs = old
        await self._control(c, ack)  # the ack goes out before any data of the new subscription
        if c.asset == "crypto" and add:
            # Alpaca sends each new orderbooks subscriber the whole book first (r: reset).
            fresh = new["orderbooks"] - old["orderbooks"]
            pairs = self.crypto_pairs if "*" in fresh else sorted(fresh)
            books = [b for b in (self.crypto_market.orderbook_snapshot(p, self.clock()) for p in pairs
                                 if p in self.crypto_market.books) if b is not None]
            if books:
                await self._control_many(c, books)
        c.subs = new
        key = tuple((ch, frozenset(s)) for ch, s in new.items() if s)
        c.sub_key = key or None
        if c.sub_key is not None:
            self._subscribed.set()

    # ------------------------------------------------------------------ trade updates stream
    def _on_trade_update(self, data: dict) -> None:
        frame = json.dumps({"stream": "trade_updates", "data": data}, separators=(",", ":")).encode()
        for q in list(self._tu_queues):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:
                _drain(q)
                q.put_nowait(None)  # too far behind: the sender closes it

    async def _handle_trade_updates(self, ws: ServerConnection) -> None:
        """Alpaca's ``/stream``: JSON in binary frames (as Alpaca sends them)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(TRADE_UPDATES_QUEUE)
        sender: asyncio.Task | None = None

        async def send_events() -> None:
            with contextlib.suppress(ConnectionClosed):
                while (frame := await queue.get()) is not None:
                    await ws.send(frame)
                await ws.close(1008, "slow client")

        def reply(stream: str, data: dict) -> bytes:
            return json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode()

        authorized = False
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    action = msg["action"]
                    data = msg.get("data") or {}
                except (ValueError, KeyError, TypeError):
                    await ws.send(reply("error", {"error_message": "invalid syntax"}))
                    continue
                if action in ("authenticate", "auth"):
                    ok = data.get("key_id") == self.key and data.get("secret_key") == self.secret
                    status = "authorized" if ok else "unauthorized"
                    await ws.send(reply("authorization", {"action": "authenticate", "status": status}))
                    if not ok:
                        await ws.close()
                        return
                    authorized = True
                elif action == "listen":
                    if not authorized:
                        await ws.send(reply("authorization", {"action": "listen", "status": "unauthorized"}))
                        continue
                    streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                    await ws.send(reply("listening", {"streams": streams}))
                    if streams and sender is None:
                        self._tu_queues.add(queue)
                        sender = self._spawn(send_events(), "sim-trade-updates")
                    elif not streams and sender is not None:
                        self._tu_queues.discard(queue)
                else:
                    await ws.send(reply("error", {"error_message": f"unknown action {action!r}"}))
        except ConnectionClosed:
            pass
        finally:
            self._tu_queues.discard(queue)
            if sender is not None:
                sender.cancel()

    # ------------------------------------------------------------------ REST
    def _rest_app(self) -> Starlette:
        routes = [
            *MarketDataAPI(self.market).routes(self._endpoint),
            *CryptoDataAPI(self.crypto_market).routes(self._endpoint),
            *(OptionsDataAPI(self.options_market).routes(self._endpoint) if self.options_market else []),
            Route(_NEWS_PATH, self._endpoint(self._news_history)),
            *self.trading.routes(self._endpoint),
            *self.trading.control_routes(),
            Route("/_sim/faults", self._sim_faults, methods=["POST"]),
            Route("/_sim/truth", self._sim_truth),
            Route("/_sim/stats", self._sim_stats),
        ]
        return Starlette(routes=routes)

    def _endpoint(self, fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Wrap an Alpaca endpoint: latency and failure faults, auth headers, errors as Alpaca's JSON."""

        async def endpoint(request: Request) -> Response:
            self.stats["rest_requests"] += 1
            self._rest_in_flight += 1  # concurrency is observed here, not inferred from timings
            self.stats["rest_in_flight_max"] = max(self.stats["rest_in_flight_max"], self._rest_in_flight)
            try:
                return await answer(request)
            finally:
                self._rest_in_flight -= 1

        async def answer(request: Request) -> Response:
            if self._rest_latency_s:
                await asyncio.sleep(self._rest_latency_s)
            status, count, retry_after = self._rest_fail
            if count <= 0 and self._rest_fail_rates:
                status = self._draw_rest_fault()
                count = 1 if status else 0
            elif count > 0:
                self._rest_fail = (status, count - 1, retry_after)
            if count > 0:
                self.stats["rest_faults"] += 1
                headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
                message = "too many requests." if status == 429 else "internal server error (simulated)"
                return JSONResponse({"code": status * 100000, "message": message}, status, headers=headers)
            if (
                request.headers.get("APCA-API-KEY-ID") != self.key
                or request.headers.get("APCA-API-SECRET-KEY") != self.secret
            ):
                return JSONResponse({"code": 40110000, "message": "request is not authorized"}, 401)
            self.broker.advance()  # the simulated clock acts before the request is answered
            try:
                result = fn(request)
                if asyncio.iscoroutine(result):
                    result = await result
            except BrokerError as exc:
                return JSONResponse(exc.body(), exc.status)
            except (ValueError, KeyError) as exc:
                return JSONResponse({"code": 42210000, "message": f"invalid request: {exc}"}, 422)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return endpoint

    def _news_history(self, request: Request) -> dict:
        """``GET /v1beta1/news``: the newest version of each article, Alpaca's parameters and paging."""
        q = request.query_params
        symbols = {s.strip().upper() for s in (q.get("symbols") or "").split(",") if s.strip()} or None
        sort = q.get("sort") or "desc"
        if sort not in ("asc", "desc"):
            raise ValueError("sort must be asc or desc")
        return self.news.page(
            symbols=symbols, start_ns=rfc3339_to_ns(q["start"]) if q.get("start") else 0,
            end_ns=rfc3339_to_ns(q["end"]) if q.get("end") else 2**62, limit=int(q.get("limit") or 10),
            asc=sort == "asc", token=q.get("page_token") or None,
            include_content=(q.get("include_content") or "").lower() == "true",
        )

    # --- simulator control (no auth, no faults: loopback only)
    async def _sim_faults(self, request: Request) -> Response:
        try:
            body = await request.json()
            specs = body if isinstance(body, list) else [body]
            results = [self.apply_fault(spec) for spec in specs]
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"message": str(exc)}, 422)
        return JSONResponse({"applied": len(results), "results": [_jsonable(r) for r in results]})

    def _sim_truth(self, request: Request) -> Response:
        sym = request.query_params.get("symbol")
        sums = {sym: self.truth_checksum(sym)} if sym else self.truth_checksum()
        return JSONResponse(
            {
                "count": self.truth_count(sym) if sym else self.truth_count(),
                "finished": self.finished.is_set(),
                "formula": "count, sum(trade_id), sum(time_ns % 1000003), sum((time_ns/1000) % 1000003), "
                "sum(round(price*100)), sum(size)",
                "symbols": {s: cs._asdict() for s, cs in sums.items()},
                "corrections": len(self.corrections),
                "cancels": len(self.cancels),
            }
        )

    def _sim_stats(self, request: Request) -> Response:
        return JSONResponse(dict(self.stats, clients=len(self._clients), truth_count=self.truth_count()))


# ---------------------------------------------------------------------- helpers
def _drain(queue: asyncio.Queue) -> None:
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return


def _jsonable(value: Any) -> Any:
    """A fault's result as JSON: wire messages hold msgpack Timestamps, shown as RFC 3339 (Alpaca's JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Timestamp):
        return ns_to_rfc3339(value.to_unix_nano())
    return repr(value)


async def run_simulator(
    settings, *, stop: asyncio.Event | None = None, on_ready: Callable[[Simulator], None] | None = None,
    **overrides: Any,
) -> None:
    """Run the simulator from :class:`~tickvault.config.Settings` until ``stop`` is set, SIGINT/SIGTERM
    arrive (when run in the main thread), or the task is cancelled. ``on_ready(sim)`` is called once
    the servers listen (the CLI prints the URLs there); ``overrides`` go to :meth:`Simulator.from_settings`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signal support: the caller stops us
    try:
        async with Simulator.from_settings(settings, **overrides) as sim:
            if on_ready is not None:
                on_ready(sim)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
