"""The Alpaca-protocol simulator: market-data WebSocket, trade-updates stream and REST, on 127.0.0.1.

One event loop runs everything: the market runners (:mod:`tickvault.sim.runners`: stocks at ``rate``,
or a replay; crypto, options, news) hand their messages to the market-data stream's fan-out
(:mod:`tickvault.sim.market_stream`), a ``websockets`` server routes on path (``/v2/{iex|sip|test}``,
crypto, options and news market data; ``/stream`` trade updates, :mod:`tickvault.sim.trade_updates`)
and a uvicorn/Starlette server serves the REST paths (:mod:`tickvault.sim.rest_app`) — market data in
:mod:`tickvault.sim.data`, trading in :mod:`tickvault.sim.trading` (over :mod:`tickvault.sim.broker`),
both behind its auth and fault layer — the fault switches (``POST /_sim/faults``,
:mod:`tickvault.sim.faults`), the clock (``/_sim/clock``, :mod:`tickvault.sim.calendar`) and the ground
truth (``GET /_sim/truth``). This module holds the :class:`Simulator` itself: its settings, lifecycle,
URLs and ground truth. It speaks exactly ``alpaca-protocol.md`` through :mod:`tickvault.alpaca.protocol`;
the official alpaca-py clients work against it unchanged.

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
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve

from tickvault.sim.broker import HOURS, OPTIONS_APPROVED_LEVEL, Broker
from tickvault.sim.calendar import Calendar, SimClock
from tickvault.sim.crypto import CRYPTO_PAIRS, CryptoMarket
from tickvault.sim.faults import FAULTS, FaultSwitches
from tickvault.sim.market import Market, TruthChecksum, symbol_names
from tickvault.sim.market_stream import CRYPTO_PATH, FEEDS, NEWS_PATH, OPTIONS_PATH, MarketDataServer, stream_of
from tickvault.sim.news import NewsWire
from tickvault.sim.options import OptionsMarket
from tickvault.sim.recording import RecordingError, read_recording
from tickvault.sim.rest_app import SimREST
from tickvault.sim.runners import run_news, run_side_market, run_stocks
from tickvault.sim.trade_updates import TradeUpdatesServer
from tickvault.sim.trading import TradingAPI

log = logging.getLogger(__name__)

__all__ = ["FAULTS", "SIM_KEY", "SIM_SECRET", "Simulator", "run_simulator"]


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process that runs the simulator owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# The keys `tickvault sim` and `tickvault run` accept when no Alpaca keys are configured: throw-away
# values, printed with the simulator's URLs (a Simulator built in a test defaults to key/secret).
SIM_KEY, SIM_SECRET = "sim-key", "sim-secret"


class Simulator(FaultSwitches):
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
        options_level: int = OPTIONS_APPROVED_LEVEL,
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
        if client_queue_frames < 2:  # a slow client's queue takes the 407 error frame and the close
            raise ValueError("client_queue_frames must be >= 2")
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
        today = datetime.fromtimestamp(self.clock() / 1e9, UTC).date()  # expiries ahead of simulated time
        self.options_market = OptionsMarket(underlyings, seed=seed + 3, today=today) if underlyings else None
        self.option_symbols = self.options_market.symbols if self.options_market is not None else []
        self.options_rate = options_rate
        self._options_task: asyncio.Task | None = None
        self.broker = Broker(self._price_for_broker, quote=self.market.last_quote, clock=self.clock,
                             hours=hours, calendar=calendar, cash=cash, options_level=options_level)
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
        self.market_stream = MarketDataServer(self)  # /v2/..., crypto, options, news WebSockets
        self._authed = self.market_stream.authed  # (key, feed) → its connections (tests wait on it)
        self.trade_updates = TradeUpdatesServer(self)  # /stream
        self.rest = SimREST(self, seed)  # Alpaca's REST paths and /_sim
        self._init_faults()
        self._housekeeping_task: asyncio.Task | None = None
        self._ws_server: Server | None = None
        self._uvicorn: _QuietUvicorn | None = None
        self._uvicorn_task: asyncio.Task | None = None
        self._market_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.ws_port = 0
        self.rest_port = 0
        self.broker.listeners.append(self.trade_updates.on_trade_update)

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
            options_level=settings.sim_options_level,
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
        if not CRYPTO_PATH.fullmatch(f"/v1beta3/crypto/{location}"):
            raise ValueError("location must be us, us-1 or eu-1")
        return f"{self.ws_url}/v1beta3/crypto/{location}"

    def options_stream_url(self, feed: str = "indicative") -> str:
        """``ws://.../v1beta1/{indicative,opra}`` (msgpack only)."""
        if not OPTIONS_PATH.fullmatch(f"/v1beta1/{feed}"):
            raise ValueError("feed must be indicative or opra")
        return f"{self.ws_url}/v1beta1/{feed}"

    @property
    def news_stream_url(self) -> str:
        return f"{self.ws_url}{NEWS_PATH}"

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
        config = uvicorn.Config(self.rest.app(), log_level="warning", lifespan="off", access_log=False)
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
        self._market_task = asyncio.create_task(run_stocks(self), name="sim-market")
        if self.crypto_pairs and self.replay is None:
            self._crypto_task = asyncio.create_task(
                run_side_market(self, self.crypto_market, self.crypto_rate), name="sim-crypto-market")
        if self.options_market is not None and self.replay is None:
            self._options_task = asyncio.create_task(
                run_side_market(self, self.options_market, self.options_rate), name="sim-options-market")
        if self.news_interval_s is not None:
            self._news_task = asyncio.create_task(run_news(self), name="sim-news")
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

    def underlying_price(self, symbol: str) -> float | None:
        """The stock's last simulated price in dollars (an option's underlying); None if not simulated."""
        cents = self._price_for_broker(symbol)
        return None if cents is None else cents / 100

    def trade_update_listeners(self) -> int:
        """Trade-updates connections listening to ``trade_updates`` (a test waits on this, not on a sleep)."""
        return self.trade_updates.listeners()

    def subscribed_clients(self) -> int:
        """Open market-data connections with a subscription (a test waits on this, not on a sleep)."""
        return self.market_stream.subscribed_clients()

    def finish(self) -> None:
        """Stop the market now and set :attr:`finished`: no trade is made after this returns, so the
        ground truth is final. Frames already made are still delivered; REST keeps serving."""
        self._finish_requested = True
        self.finished.set()


    # ------------------------------------------------------------------ WebSocket routing
    def _route_ws(self, connection: ServerConnection, request: Any) -> Any:
        path = urlsplit(request.path).path
        if path == "/stream" or stream_of(path) is not None:
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "unknown path\n")

    async def _handle_ws(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        if path == "/stream":
            await self.trade_updates.handle(ws)
            return
        feed, asset = stream_of(path)
        await self.market_stream.handle(ws, feed, asset)


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

