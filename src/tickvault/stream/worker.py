"""The streaming worker: one reader per feed → bounded queue → processor → writer → TimescaleDB.

Feeds (TICKVAULT_FEEDS): stocks, crypto, options, news, each its own connection, reconnect, watchdog,
gap ledger and backfill; the first feed's figures are the worker's (Prometheus, status), every other
feed counts in its own :class:`Metrics`, and ``ingest_stats`` gets one row per feed per interval.

``run_worker`` owns every task and its shutdown. On SIGTERM/SIGINT (or ``stop``) it stops
reading, waits for running backfills, drains the queue through the processor, flushes and commits
the writer, writes a last ``ingest_stats`` row, unregisters, and returns: no accepted tick is lost.
A signal during start-up (handlers and Prometheus are up from its first moment) ends the start-up at a
safe point and releases what it took, as a failed start does; the spill recovery stops between batches.
The bounded queue (``queue_max_frames`` frames, ≤ ~1000 messages each) is the only buffer between
the socket and the writer's bounded batch; see reader.py and writer.py for the other bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from tickvault.alpaca.protocol import datetime_to_ns, ns_to_rfc3339
from tickvault.config import Settings
from tickvault.db.tables import recent_symbols_sql
from tickvault.indicators.sessions import is_crypto
from tickvault.stream.cache import PriceCache
from tickvault.stream.gaps import GapLedger
from tickvault.stream.metrics import Metrics, WorkerPhase, serve_prometheus
from tickvault.stream.processor import Processor
from tickvault.stream.reader import MarketDataReader
from tickvault.stream.strategy import Strategy
from tickvault.stream.universe import BackfillUniverse
from tickvault.stream.writer import BatchWriter, RecoveryStopped, ns_to_datetime

log = logging.getLogger("tickvault.worker")

BACKFILL_SYMBOLS_PER_REQUEST = 100  # keeps the query string short; pages are ≤ 10k rows each
# News is re-sent when an article is updated, often within minutes of publication: a gap's backfill
# also asks for the hour before it (tens to a few hundred articles: a few 50-article pages).
NEWS_UPDATE_LOOKBACK_NS = 3600 * 10**9


class ShutdownIncomplete(RuntimeError):
    """The database did not take every buffered row before the deadline; they were spilled to a file."""


@dataclass
class WorkerHandle:
    """What tests and the CLI hold on a running worker."""

    metrics: Metrics = field(default_factory=Metrics)
    phase: WorkerPhase = field(default_factory=WorkerPhase)  # what it does now (Prometheus, status line)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reader: MarketDataReader | None = None  # the first feed's
    readers: dict = field(default_factory=dict)  # feed label ("stocks:iex", "crypto:us") -> its reader
    writer: BatchWriter | None = None
    last_status: dict = field(default_factory=dict)
    trade_updates: object | None = None

    force_event: asyncio.Event = field(default_factory=asyncio.Event)
    spilled: tuple | None = None  # (path, rows) when shutdown had to spill

    def stop(self) -> None:
        """First call: stop and drain. A second call (a second Ctrl-C): stop waiting, spill, exit."""
        if self.stop_event.is_set():
            self.force_event.set()
        self.stop_event.set()


def stream_url(settings: Settings) -> str:
    """The stocks stream's URL (``/v2/{feed}``: the ``stocks:`` entry of TICKVAULT_FEEDS)."""
    feed = next((f.partition(":")[2] for f in settings.feeds if f.startswith("stocks:")), settings.alpaca_feed)
    return f"{settings.alpaca_stream_url.rstrip('/')}/v2/{feed}"


def options_stream_url(settings: Settings, feed: str) -> str:
    return f"{settings.alpaca_stream_url.rstrip('/')}/v1beta1/{feed}"


def news_stream_url(settings: Settings) -> str:
    return f"{settings.alpaca_stream_url.rstrip('/')}/v1beta1/news"


def crypto_stream_url(settings: Settings, location: str) -> str:
    return f"{settings.alpaca_stream_url.rstrip('/')}/v1beta3/crypto/{location}"


# A restart resumes from the newest trade stored within this window (older data means a first start).
RESUME_WINDOW = "3 days"
RESUME_WINDOW_NS = 3 * 86_400 * 10**9


async def _resume_point(pool, symbols: Sequence[str], table: str = "trades") -> int | None:
    """Exchange time of the newest stored trade (of our symbols; any with a wildcard): the start of a restart's gap.
    ``table``: ``trades`` or ``crypto_trades`` (a constant of ours, never user input)."""
    async with pool.connection() as conn:
        if symbols:
            cur = await conn.execute(
                f"SELECT max(time_ns) FROM {table} WHERE symbol = ANY(%s) AND time > now() - interval '{RESUME_WINDOW}'",
                (list(symbols),),
            )
        else:
            cur = await conn.execute(f"SELECT max(time_ns) FROM {table} WHERE time > now() - interval '{RESUME_WINDOW}'")
        row = await cur.fetchone()
        return row[0] if row else None


def restore_symbols(configured: Sequence[str], feed_on: bool) -> Sequence[str]:
    """What a feed's indicators are restored for at start: nothing for a feed not run; ``["*"]`` (every
    symbol with recent bars) for a wildcard subscription, which an empty list is as much as ``*``
    (:class:`~tickvault.stream.universe.BackfillUniverse`'s rule); else the configured symbols."""
    if not feed_on:
        return ()
    return ["*"] if BackfillUniverse(list(configured)).wildcard else configured


async def _stored_symbols(pool, limit: int, table: str = "trades") -> list[str]:
    """Symbols with trades stored in the resume window (at most ``limit``), for a wildcard restart's gap
    (a loose index scan: :func:`~tickvault.db.tables.recent_symbols_sql`)."""
    async with pool.connection() as conn:
        cur = await conn.execute(recent_symbols_sql(table), {"window": RESUME_WINDOW, "limit": limit})
        return [row[0] for row in await cur.fetchall()]


async def run_worker(
    settings: Settings,
    handle: WorkerHandle | None = None,
    *,
    install_signal_handlers: bool = False,
    on_status: Callable[[dict], None] | None = None,
    strategy: Strategy | None = None,
) -> WorkerHandle:
    """Run a :class:`Worker` until it is stopped (``handle.stop()``, or a signal); return its handle."""
    worker = Worker(settings, handle, strategy=strategy, install_signal_handlers=install_signal_handlers,
                    on_status=on_status)
    return await worker.run()


class Worker:
    """One streaming worker: it owns its resources and runs in stages a test can drive one by one.

    * ``Worker(...)`` refuses what a user can get wrong before anything starts: missing keys
      (``ValueError``), a strategy that cannot be loaded (``StrategyLoadError``).
    * :meth:`start` claims the worker name (``WorkerNameTaken`` if a live worker holds it; a stale
      registration is taken over), opens the pool, commits what a previous run spilled, works out
      where the stream resumes (newest stored trade, or the oldest gap a crash left open, or
      ``TICKVAULT_BACKFILL_FROM`` on a first start) and starts the tasks. Every resource it takes
      is pushed on an ``AsyncExitStack``, so an error half-way releases exactly what was taken:
      an error during start-up ends the process instead of leaving the pool's connection attempts
      running (``asyncio.run`` would wait for them for ever). :meth:`run` starts it as a task that a
      stop request cuts short (:meth:`_start_until_stopped`); ``handle.phase`` says which step runs.
    * :meth:`serve` waits until the reader is subscribed (``handle.ready``), then until a stop or a
      crashed component (an error, not a silent stop).
    * :meth:`drain` stops reading and, before the shutdown deadline (``shutdown_timeout_s``, or a
      second signal), waits for running backfills, drains the queue through the processor and
      commits the writer; :meth:`spill` writes what the database did not take to the spill file,
      which the next :meth:`start` commits.
    * :meth:`close` stops the order gateway and the trade-updates listener, writes the last
      ``ingest_stats`` row (after a full drain, so it counts the drained rows) and unwinds the stack:
      Prometheus, REST, pool, GC settings, signal handlers, registration (removed only if still
      this process's).

    :meth:`run` is all of it in order. Bounds: the queue holds ``queue_max_frames`` frames; see
    reader.py, writer.py and processor.py for theirs.
    """

    def __init__(
        self,
        settings: Settings,
        handle: WorkerHandle | None = None,
        *,
        strategy: Strategy | None = None,
        install_signal_handlers: bool = False,
        on_status: Callable[[dict], None] | None = None,
    ) -> None:
        if not settings.has_alpaca_keys:
            raise ValueError("the worker needs TICKVAULT_ALPACA_KEY_ID and TICKVAULT_ALPACA_SECRET_KEY (or the simulator's)")
        if strategy is None and settings.strategy:
            from tickvault.stream.strategy import load_strategy

            strategy = load_strategy(settings.strategy)
        self.settings = settings
        self.handle = handle or WorkerHandle()
        self.metrics = self.handle.metrics
        self.strategy = strategy
        self.install_signal_handlers = install_signal_handlers
        self.on_status = on_status
        self.spill_dir = settings.run_dir / "spill"
        self._stack = contextlib.AsyncExitStack()
        self._tasks: dict[str, asyncio.Task] = {}
        self._recovery: asyncio.Future | None = None  # the spill recovery while start() runs it
        self.drained = False
        self._started = False  # every component exists and its task runs
        self._stats_clock = time.monotonic()

    # --- the whole life ----------------------------------------------------------------------
    async def run(self) -> WorkerHandle:
        """start → serve → drain (or spill) → close; raises ShutdownIncomplete after a spill."""
        try:
            if await self._start_until_stopped():
                await self.serve()
        finally:
            if self._started:  # shut down in order, whatever happened
                self.drained = await self.drain()
                if not self.drained:
                    self.spill()
            else:  # start-up failed half-way: stop what it started, release what it took
                for task in self._tasks.values():
                    task.cancel()
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                self._tasks.clear()
            await self.close()
        handle = self.handle
        if handle.spilled:
            raise ShutdownIncomplete(
                f"{handle.spilled[1]} rows were not committed before shutdown; they are kept in {handle.spilled[0]} "
                "and committed by the next `tickvault worker run`"
            )
        return handle

    # --- start -------------------------------------------------------------------------------
    async def _start_until_stopped(self) -> bool:
        """:meth:`start`, unless a stop request (a signal, ``handle.stop()``) comes first: then the
        start-up is cut at a safe point and False returned (``run`` releases what it took, and the
        stop is as orderly as one while serving). The spill recovery stops by itself between two
        batches (the one in flight commits, up to the shutdown deadline or a second signal); the other
        steps only read or claim what the exit stack gives back, so they are cancelled where they are."""
        handle = self.handle
        starting = asyncio.create_task(self.start(), name="start")
        stopping = asyncio.create_task(handle.stop_event.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # run() itself cancelled: the start-up ends before run()'s cleanup
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            raise
        finally:
            stopping.cancel()
        if starting.done():  # started (a stop at this moment is serve's to see), or failed
            try:
                starting.result()
                return True
            except RecoveryStopped as exc:  # the stop reached the recovery first
                log.warning("%s", exc)
                return False
        log.warning("stop requested while %s: start-up stopped, releasing what it took", handle.phase.describe())
        recovery = self._recovery
        if recovery is not None and not recovery.done():
            force = asyncio.create_task(handle.force_event.wait())
            done, _ = await asyncio.wait({recovery, force}, timeout=self.settings.shutdown_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if recovery not in done:
                why = ("a second signal came" if force in done
                       else f"not committed within {self.settings.shutdown_timeout_s:.0f} s")
                log.error("the spilled batch being recovered is cancelled (%s): it stays in its spill file, and "
                          "the next start asks the ledger whether it landed", why)
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            pass
        except RecoveryStopped as exc:
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - unwinding a cancelled step (a query cut off): the stop goes on
            log.warning("start-up step ended with %r while being stopped", exc)
        return False

    async def start(self) -> None:
        from tickvault.alpaca.rest import AlpacaREST
        from tickvault.db.pool import open_pool
        from tickvault.indicators.sessions import SessionCalendar, calendar_range, fetch_session_calendar
        from tickvault.registration import register_worker, unregister_worker

        settings, metrics, stack, phase = self.settings, self.metrics, self._stack, self.handle.phase
        phase.set("starting")
        if self.install_signal_handlers:
            # From the first moment: a SIGTERM during start-up stops it in order (_start_until_stopped)
            # instead of killing the process with its registration, claims and a recovery half done.
            # Removed last, so a signal during the cleanup cannot kill it either.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.handle.stop)
                stack.callback(loop.remove_signal_handler, sig)
        pid = os.getpid()
        # Claimed before the spill files of this name are recovered or the feed is opened: a second
        # worker of the same name must touch neither.
        register_worker(settings, name=settings.worker_name, pid=pid,
                        extra={"metrics_port": settings.metrics_port, "stream": stream_url(settings),
                               "feeds": list(settings.feeds)})
        stack.callback(unregister_worker, settings, settings.worker_name, pid=pid)
        # Every feed's figures exist from the start (the first feed's are the worker's), so Prometheus
        # answers at once: the phase while starting, the feeds' series (zero until they run) with it.
        self.feed_metrics: dict[str, Metrics] = {
            label: metrics if i == 0 else Metrics() for i, label in enumerate(settings.feeds)}
        if settings.metrics_port:  # after the registration: a taken name is refused before a taken port
            prom = await serve_prometheus(self.feed_metrics, settings.worker_name, settings.metrics_port, phase=phase)
            stack.callback(prom.close)
        self._tune_gc()
        self.pool = pool = await open_pool(settings, min_size=2, name=f"tickvault-{settings.worker_name}")
        stack.push_async_callback(self._close_pool)
        # One worker per feed of an account, across machines: claimed before any stream opens.
        from tickvault.db import database_url
        from tickvault.stream.feed_claims import account_id, claim_feeds, release_feeds

        account = account_id(settings.alpaca_key_id.get_secret_value())
        claims = await claim_feeds(database_url(settings), account=account, feeds=list(settings.feeds),
                                   worker=settings.worker_name, pid=pid)
        stack.push_async_callback(release_feeds, claims, account=account, worker=settings.worker_name, pid=pid)
        self.rest = rest = AlpacaREST(settings)
        if hasattr(rest, "aclose"):
            stack.push_async_callback(rest.aclose)
        self.writer = writer = BatchWriter(pool, metrics, worker=settings.worker_name,
                                           batch_rows=settings.writer_batch_rows, flush_ms=settings.writer_flush_ms)
        self.cache = PriceCache(settings.cache_ttl_s, metrics, self._fetch_latest)
        self.gateway = None
        if self.strategy is not None:
            from tickvault.stream.orders import OrderGateway

            self.gateway = OrderGateway(rest, pool, metrics)
        self.queue = asyncio.Queue(maxsize=settings.queue_max_frames)  # the bound between socket and writer
        kinds = {label.partition(":")[0] for label in settings.feeds}
        # VWAP's US equity sessions: the exchange calendar, fetched once (one request; the default
        # rule, logged, when it fails). Crypto needs none: its session is the UTC day.
        calendar = (await fetch_session_calendar(rest, *calendar_range()) if "stocks" in kinds
                    else SessionCalendar(reason="no stocks feed"))
        self.processor = Processor(self.queue, writer, self.cache, metrics, strategy=self.strategy,
                                   on_intent=self.gateway.enqueue if self.gateway else None,
                                   calendar=calendar)
        metrics.pending_rows_source = writer.pending_rows
        self._tasks["writer"] = asyncio.create_task(writer.run(), name="writer")
        phase.set("recovering_spill")
        # What a previous run could not commit, first. A stop ends it between batches (see recover).
        self._recovery = asyncio.ensure_future(writer.recover(self.spill_dir, stop=self.handle.stop_event))
        recovered = await self._recovery
        if recovered:
            log.warning("committed %d rows spilled by the previous run", recovered)
        # After a restart the indicators go on from the stored bars (warm-up + the current session),
        # not from nothing: what the refresh flow computes for the same bars.
        phase.set("restoring_indicators")
        await self.processor.restore(pool, stocks=restore_symbols(settings.symbols, "stocks" in kinds),
                                     crypto=restore_symbols(settings.crypto_symbols, "crypto" in kinds),
                                     progress=phase.restore)
        phase.set("connecting")
        # One reader per feed (TICKVAULT_FEEDS), each on its own connection with its own reconnect,
        # watchdog, gap ledger and backfill, all into the one bounded queue. The first feed's figures
        # are the worker's Metrics (Prometheus, `worker status`); every other feed counts in its own.
        self.readers: dict[str, MarketDataReader] = {}
        key, secret = settings.alpaca_key_id.get_secret_value(), settings.alpaca_secret_key.get_secret_value()
        for label in settings.feeds:
            kind, _, where = label.partition(":")
            primary = not self.readers
            feed_metrics = self.feed_metrics[label]
            if kind == "stocks":
                self.stocks_metrics = feed_metrics  # its backfill counts in its own figures
                self.universe = BackfillUniverse(list(settings.symbols))  # a gap's symbols; with "*" it learns
                resume, gaps = await self._resume_point()
                self.readers[label] = MarketDataReader(
                    stream_url(settings), key, secret, self.queue, feed_metrics,
                    channels=settings.channels, symbols=list(settings.symbols), backfill=self.backfill,
                    resume_from_ns=resume, universe=self.universe, gaps=gaps, silence_s=settings.feed_silence_s,
                    name=label, tag_metrics=not primary,
                )
            elif kind == "options":
                from tickvault.alpaca.options import decode_options
                from tickvault.stream.reader import channel_subscription

                self.options_feed, self.options_metrics = where, feed_metrics
                resume, gaps = await self._table_resume_point("option_trades", settings.option_symbols, "options")
                self.readers[label] = MarketDataReader(
                    options_stream_url(settings, where), key, secret, self.queue, feed_metrics,
                    channels=["trades", "quotes"], symbols=list(settings.option_symbols),
                    backfill=self.backfill_options, resume_from_ns=resume, gaps=gaps,
                    silence_s=settings.option_feed_silence_s, name=label, decode=decode_options,
                    subscription=channel_subscription, tag_metrics=not primary,
                )
            elif kind == "news":
                from tickvault.alpaca.news import decode_news
                from tickvault.stream.reader import channel_subscription

                self.news_metrics = feed_metrics
                resume, gaps = await self._news_resume_point()
                # No silence watchdog: an hour without an article is ordinary; pings catch a dead socket.
                self.readers[label] = MarketDataReader(
                    news_stream_url(settings), key, secret, self.queue, feed_metrics, channels=["news"],
                    symbols=list(settings.news_symbols), backfill=self.backfill_news, resume_from_ns=resume,
                    gaps=gaps, silence_s=0, name=label, decode=decode_news, subscription=channel_subscription,
                    tag_metrics=not primary,
                )
            else:  # crypto (Settings refuses anything else)
                from tickvault.alpaca.crypto import decode_crypto
                from tickvault.stream.reader import channel_subscription

                self.crypto_location, self.crypto_metrics = where, feed_metrics
                self.crypto_universe = BackfillUniverse(list(settings.crypto_symbols))
                resume, gaps = await self._crypto_resume_point()
                self.readers[label] = MarketDataReader(
                    crypto_stream_url(settings, where), key, secret, self.queue, feed_metrics,
                    channels=settings.crypto_channels, symbols=list(settings.crypto_symbols),
                    backfill=self.backfill_crypto, resume_from_ns=resume, universe=self.crypto_universe, gaps=gaps,
                    silence_s=settings.crypto_feed_silence_s, name=label, decode=decode_crypto,
                    subscription=channel_subscription, silence_backoff=False, tag_metrics=not primary,
                )
        self.reader = reader = next(iter(self.readers.values()))
        self.handle.reader, self.handle.writer = reader, writer
        self.handle.readers = self.readers
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self._tasks["processor"] = asyncio.create_task(self.processor.run(), name="processor")
        for i, (label, feed_reader) in enumerate(self.readers.items()):
            name = "reader" if i == 0 else f"reader:{label}"
            self._tasks[name] = asyncio.create_task(feed_reader.run(), name=name)
        self._tasks["stats"] = asyncio.create_task(self._stats_loop(), name="stats")
        if self.gateway is not None:
            self._tasks["gateway"] = asyncio.create_task(self.gateway.run(), name="order-gateway")
        from tickvault.stream.orders import TradeUpdatesListener

        self.listener = TradeUpdatesListener(settings.alpaca_trade_stream_url, settings.alpaca_key_id.get_secret_value(),
                                             settings.alpaca_secret_key.get_secret_value(), pool, metrics)
        self.handle.trade_updates = self.listener
        self._tasks["listener"] = asyncio.create_task(self.listener.run(), name="trade-updates")
        self._started = True

    def _tune_gc(self) -> None:
        # Latency: Python's full collections walk every tracked container (tens of ms with the loop
        # stopped). Freeze what start-up allocated and collect the young generation less often;
        # nothing here creates reference cycles on the hot path, so garbage is still freed by
        # reference counting. Restored at close.
        threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

        def restore() -> None:
            gc.set_threshold(*threshold)
            gc.unfreeze()

        self._stack.callback(restore)

    async def _close_pool(self) -> None:
        await self.pool.close(timeout=5 if self.drained else 0.5)

    async def _fetch_latest(self, symbols):
        """Latest trades from REST for the cache: stocks from /v2/stocks, crypto pairs (a "/" in the symbol)
        from the crypto feed's location."""
        pairs = [s for s in symbols if is_crypto(s)]
        stocks = [s for s in symbols if "/" not in s]
        out = {}
        if stocks:
            latest = await self.rest.latest_trades(stocks)
            out.update({s: (t.time_ns, float(t.price)) for s, t in latest.items()})
        if pairs and getattr(self, "crypto_location", None):
            latest = await self.rest.crypto_latest_trades(self.crypto_location, pairs)
            out.update({s: (t[0], t[3]) for s, t in latest.items()})
        return out

    async def _resume_point(self) -> tuple[int | None, GapLedger]:
        """Where the stream resumes (None: from the live stream) and the ledger of open backfill windows."""
        settings, pool, universe = self.settings, self.pool, self.universe
        resume = await _resume_point(pool, [] if universe.wildcard else list(settings.symbols))
        resume, gaps, left_needs_assets = self._open_gaps(resume, f"{settings.worker_name}.json", "")
        if universe.wildcard and resume is not None:  # a restart's gap is made of the symbols stored before it
            universe.add(await _stored_symbols(pool, universe.max_symbols + 1), "the stored trades")
        first_start_backfill = resume is None and settings.backfill_from is not None
        if first_start_backfill:
            resume = self._backfill_from_ns()
            universe.fetch_tradable_once(self._tradable_symbols)  # nothing stored or received yet: ask the broker
            gaps.with_assets = universe.wildcard
        elif left_needs_assets and universe.wildcard:
            universe.fetch_tradable_once(self._tradable_symbols)  # a first start's backfill was cut short
            gaps.with_assets = True
        if universe.wildcard:
            log.info("wildcard subscription: gap backfills ask for the %d symbols stored in the last %s, those "
                     "received%s", len(universe), RESUME_WINDOW,
                     ", the broker's tradable assets" if first_start_backfill else "")
        return resume, gaps

    def _open_gaps(self, resume: int | None, ledger_file: str, what: str) -> tuple[int | None, GapLedger, bool]:
        """A feed's resume point moved back to the oldest backfill window a crash or a cut shutdown left
        open in its ledger (``run_dir/gaps/<ledger_file>``), never before the resume window; with the
        ledger and whether that window was a first start's (which asked the broker's asset list)."""
        gaps = GapLedger(self.settings.run_dir / "gaps" / ledger_file)
        window_start_ns = time.time_ns() - RESUME_WINDOW_NS
        left_open, left_needs_assets = gaps.oldest_inherited(window_start_ns)
        if left_open is not None and (resume is None or left_open < resume):
            # The previous run stored trades past a gap it had not finished backfilling: resume before it.
            log.warning("the previous run left a%s backfill unfinished from %s; resuming from there",
                        what, ns_to_rfc3339(left_open))
            resume = max(left_open, window_start_ns)
        return resume, gaps, left_needs_assets

    def _backfill_from_ns(self) -> int | None:
        """TICKVAULT_BACKFILL_FROM (Settings refuses a time without a UTC offset) as epoch ns."""
        since = self.settings.backfill_from
        return None if since is None else datetime_to_ns(since)

    async def _crypto_resume_point(self) -> tuple[int | None, GapLedger]:
        """The crypto feed's resume point and gap ledger: as stocks', over ``crypto_trades``, with the
        ledger in ``run_dir/gaps/<worker>-crypto.json``. A wildcard has no asset list to ask: a first
        start backfills the pairs of TICKVAULT_CRYPTO_SYMBOLS only."""
        settings, universe = self.settings, self.crypto_universe
        resume = await _resume_point(self.pool, [] if universe.wildcard else list(settings.crypto_symbols),
                                     "crypto_trades")
        resume, gaps, _ = self._open_gaps(resume, f"{settings.worker_name}-crypto.json", " crypto")
        if universe.wildcard and resume is not None:
            universe.add(await _stored_symbols(self.pool, universe.max_symbols + 1, "crypto_trades"),
                         "the stored crypto trades")
        if resume is None:
            resume = self._backfill_from_ns()
        return resume, gaps

    async def backfill_crypto(self, start_ns: int, end_ns: int) -> int:
        """Crypto trades and 1-minute bars of [start, end] from ``/v1beta3/crypto/{loc}``, through the dedupe path."""
        rest, writer, loc, metrics = self.rest, self.writer, self.crypto_location, self.crypto_metrics
        wanted = await self.crypto_universe.resolve()
        if not wanted:
            log.warning("no crypto pairs known for the gap %s → %s (wildcard subscription, nothing stored or "
                        "received yet): nothing to backfill", ns_to_rfc3339(start_ns), ns_to_rfc3339(end_ns))
            return 0
        total = 0
        start, end = ns_to_datetime(start_ns), ns_to_datetime(end_ns + 1000)
        for i in range(0, len(wanted), BACKFILL_SYMBOLS_PER_REQUEST):
            chunk = wanted[i:i + BACKFILL_SYMBOLS_PER_REQUEST]
            async for page in rest.crypto_trades(loc, chunk, start, end):
                await writer.submit(time.monotonic_ns(), metrics=metrics, backfill_crypto_trades=page)
                total += len(page)
            async for page in rest.crypto_bars(loc, chunk, start, end):
                bars = [b[:2] + ("1Min",) + b[2:] + (False, "backfill") for b in page]
                await writer.submit(time.monotonic_ns(), metrics=metrics, crypto_bars=bars)
        return total

    async def _table_resume_point(self, table: str, symbols: list[str], ledger: str) -> tuple[int | None, GapLedger]:
        """Newest stored trade of ``symbols`` in ``table``, or a gap a crash left open, or
        TICKVAULT_BACKFILL_FROM on a first start; ledger ``run_dir/gaps/<worker>-<ledger>.json``."""
        return self._resume_with_open_gaps(await _resume_point(self.pool, symbols, table), ledger)

    def _resume_with_open_gaps(self, resume: int | None, ledger: str) -> tuple[int | None, GapLedger]:
        """A feed's resume point, moved back to a gap a crash left open in its ledger
        (``run_dir/gaps/<worker>-<ledger>.json``), or TICKVAULT_BACKFILL_FROM on a first start."""
        resume, gaps, _ = self._open_gaps(resume, f"{self.settings.worker_name}-{ledger}.json", f" {ledger}")
        return (self._backfill_from_ns() if resume is None else resume), gaps

    async def backfill_options(self, start_ns: int, end_ns: int) -> int:
        """Option trades of [start, end] from ``GET /v1beta1/options/trades``, through the dedupe path."""
        symbols = list(self.settings.option_symbols)
        total = 0
        start, end = ns_to_datetime(start_ns), ns_to_datetime(end_ns + 1000)
        for i in range(0, len(symbols), BACKFILL_SYMBOLS_PER_REQUEST):
            async for page in self.rest.option_trades(symbols[i:i + BACKFILL_SYMBOLS_PER_REQUEST], start, end,
                                                      feed=self.options_feed):
                await self.writer.submit(time.monotonic_ns(), metrics=self.options_metrics,
                                         backfill_option_trades=page)
                total += len(page)
        return total

    async def _news_resume_point(self) -> tuple[int | None, GapLedger]:
        """Newest stored article version (``updated_at`` in the last three days), or a gap a crash left
        open, or TICKVAULT_BACKFILL_FROM on a first start; ledger ``run_dir/gaps/<worker>-news.json``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (extract(epoch FROM max(updated_at)) * 1e6)::bigint * 1000 FROM news "
                f"WHERE created_at > now() - interval '{RESUME_WINDOW}'")
            resume = (await cur.fetchone())[0]
        return self._resume_with_open_gaps(resume, "news")

    async def backfill_news(self, start_ns: int, end_ns: int) -> int:
        """Articles of the gap from ``GET /v1beta1/news``, upserted like the stream's: those created in
        [start − NEWS_UPDATE_LOOKBACK, end], so that an article updated during the gap is refreshed too
        when it was published up to an hour before it (the upsert keeps the newest version either way)."""
        total = 0
        async for page in self.rest.news(ns_to_datetime(start_ns - NEWS_UPDATE_LOOKBACK_NS),
                                         ns_to_datetime(end_ns + 1000),
                                         symbols=self.settings.news_symbols):
            await self.writer.submit(time.monotonic_ns(), metrics=self.news_metrics, news=page)
            total += len(page)
        return total

    async def _tradable_symbols(self) -> list[str]:
        assets = await self.rest.list_assets(status="active", asset_class="us_equity")
        return [a.symbol for a in assets if a.tradable]

    async def backfill(self, start_ns: int, end_ns: int) -> int:
        """Trades and 1-minute bars of [start, end] from the REST history, through the dedupe path."""
        settings, rest, writer = self.settings, self.rest, self.writer
        wanted = await self.universe.resolve()
        if not wanted:
            log.warning("no symbols known for the gap %s → %s (wildcard subscription, nothing stored or received "
                        "yet): nothing to backfill", ns_to_rfc3339(start_ns), ns_to_rfc3339(end_ns))
            return 0
        total = 0
        start, end = ns_to_datetime(start_ns), ns_to_datetime(end_ns + 1000)
        for i in range(0, len(wanted), BACKFILL_SYMBOLS_PER_REQUEST):
            chunk = wanted[i:i + BACKFILL_SYMBOLS_PER_REQUEST]
            async for page in rest.historical_trades(chunk, start, end, feed=settings.alpaca_feed):
                rows = [(t.time_ns, t.symbol, t.id or 0, t.exchange, float(t.price), int(t.size),
                         list(t.conditions) or None, t.tape) for t in page]
                await writer.submit(time.monotonic_ns(), metrics=self.stocks_metrics, backfill_trades=rows)
                total += len(rows)
            async for page in rest.historical_bars(chunk, start, end, feed=settings.alpaca_feed):
                bars = [(b.time_ns, b.symbol, "1Min", float(b.open), float(b.high), float(b.low), float(b.close),
                         int(b.volume), b.trade_count, float(b.vwap) if b.vwap is not None else None, False, "backfill")
                        for b in page]
                await writer.submit(time.monotonic_ns(), metrics=self.stocks_metrics, bars=bars)
        return total

    # --- serve -------------------------------------------------------------------------------
    async def serve(self) -> None:
        handle, tasks = self.handle, self._tasks
        reader_tasks = {t for name, t in tasks.items() if name.startswith("reader")}
        # Ready when every feed is subscribed.
        connected = asyncio.ensure_future(asyncio.gather(*(r.connected.wait() for r in self.readers.values())))
        stopping = asyncio.create_task(handle.stop_event.wait())
        try:
            done, _ = await asyncio.wait({connected, stopping, *reader_tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done & reader_tasks:
                task.result()  # AuthFailed and friends surface here
            handle.ready.set()
            handle.phase.set("running")
            done, _ = await asyncio.wait({stopping, *reader_tasks, tasks["processor"], tasks["writer"]},
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                task.result()  # a crashed component is an error, not a silent stop
        finally:
            connected.cancel()
            stopping.cancel()

    # --- drain, spill ------------------------------------------------------------------------
    async def drain(self) -> bool:
        """Stop reading; commit everything accepted before the deadline. False: cut short (spill next)."""
        handle, tasks = self.handle, self._tasks
        handle.stop_event.set()
        handle.phase.set("draining")
        for reader in self.readers.values():
            reader.stop()
        # Every feed's reader stops at once: one 15 s wait for all of them, not 15 s each in turn.
        readers = [task for name, task in tasks.items() if name.startswith("reader")]
        if readers:
            done, late = await asyncio.wait(readers, timeout=15)
            for task in done:  # their errors were surfaced by serve(); retrieved here so none is left unread
                if not task.cancelled():
                    task.exception()
            for task in late:
                task.cancel()
        self._deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
        drained = (
            await self._until_deadline(asyncio.gather(*(r.wait_backfills() for r in self.readers.values())))
            and await self._until_deadline(self.queue.put(None))
            and await self._until_deadline(tasks["processor"])
            and await self._until_deadline(self.writer.drain())
        )
        if drained:
            self.writer.close()
            await tasks["writer"]
        return drained

    async def _until_deadline(self, aw) -> bool:
        """Await ``aw`` until the shutdown deadline or a second signal; False if cut short."""
        task = asyncio.ensure_future(aw)
        force = asyncio.create_task(self.handle.force_event.wait())
        remaining = max(0.0, self._deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if task in done:
            task.result()
            return True
        task.cancel()
        return False

    def spill(self) -> None:
        """After a cut-short drain: stop processor and writer, write the uncommitted rows to a file."""
        tasks = self._tasks
        tasks["processor"].cancel()
        tasks["writer"].cancel()
        self.handle.spilled = self.writer.spill(self.spill_dir)
        if self.handle.spilled:
            log.error("the database did not take %d buffered rows within %.0f s; kept in %s and committed "
                      "on the next start", self.handle.spilled[1], self.settings.shutdown_timeout_s,
                      self.handle.spilled[0])

    # --- close -------------------------------------------------------------------------------
    async def close(self) -> None:
        tasks = self._tasks
        self.handle.phase.set("stopping")
        try:
            if "processor" in tasks:  # cancelled by spill(), or finished by drain()
                await asyncio.gather(tasks["processor"], tasks["writer"], return_exceptions=True)
            if "gateway" in tasks:
                self.gateway.close()
                if not hasattr(self, "_deadline"):
                    self._deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
                if not await self._until_deadline(tasks["gateway"]):
                    log.error("order gateway did not finish within the shutdown deadline; pending intents "
                              "stay pending_submit in orders, where reconciliation reports them")
            if "listener" in tasks:
                self.listener.stop()
                try:
                    # It only waits on the socket: a second is plenty to leave cleanly, else it is cancelled.
                    await asyncio.wait_for(tasks["listener"], 2)
                except asyncio.TimeoutError:
                    pass
                except Exception as exc:  # noqa: BLE001 - a refused trade-updates stream is logged at exit
                    log.warning("trade updates listener ended with %r", exc)
            if "stats" in tasks:
                tasks["stats"].cancel()
                await asyncio.gather(tasks["stats"], return_exceptions=True)
                if self.drained:
                    await self._stats_tick()
        finally:
            await self._stack.aclose()

    # --- ingest_stats ------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.handle.stop_event.wait(), self.settings.stats_interval_s)
                return
            except asyncio.TimeoutError:
                await self._stats_tick()

    async def _stats_tick(self) -> None:
        now = time.monotonic()
        await self._write_stats(now - self._stats_clock)
        self._stats_clock = now

    async def _write_stats(self, interval_s: float) -> None:
        """One ``ingest_stats`` row per feed (its label in ``feed``); the first feed's row is also the status."""
        settings, queue, proc = self.settings, self.queue, self._proc
        rss_mb = proc.memory_info().rss / 2**20
        cpu = proc.cpu_percent(None)
        rows = []
        for i, (label, metrics) in enumerate(self.feed_metrics.items()):
            metrics.rss_mb, metrics.cpu_percent = rss_mb, cpu  # the process's, on every feed's row
            counts, hists = metrics.snapshot_and_reset()
            if i == 0:
                self._publish_status(interval_s, metrics, counts, hists)
            rows.append((label, metrics.queue_max, counts, hists))
            metrics.queue_max = queue.qsize()  # the next interval's maximum starts from now
        try:
            async with self.pool.connection(timeout=5) as conn:
                for label, queue_max, counts, h in rows:
                    await conn.execute(
                        "INSERT INTO ingest_stats (time, worker, feed, interval_s, trades, quotes, bars, other_messages, "
                        "rows_committed, rejects, drops, stalls, reconnects, backfilled, queue_depth, queue_max, "
                        "exchange_to_received_p50_ms, exchange_to_received_p99_ms, received_to_processed_p50_ms, "
                        "received_to_processed_p99_ms, received_to_processed_max_ms, received_to_committed_p50_ms, "
                        "received_to_committed_p99_ms, received_to_committed_max_ms, rss_mb, cpu_percent, extra) "
                        "VALUES (now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                        "%s, %s, %s, %s, %s, %s, %s)",
                        (settings.worker_name, label, interval_s, counts["trades"], counts["quotes"], counts["bars"],
                         counts["other_messages"], counts["rows_committed"], counts["rejects"], counts["drops"],
                         counts["stalls"], counts["reconnects"], counts["backfilled"], queue.qsize(),
                         queue_max,
                         h["exchange_to_received"]["p50_ms"], h["exchange_to_received"]["p99_ms"],
                         h["received_to_processed"]["p50_ms"], h["received_to_processed"]["p99_ms"],
                         h["received_to_processed"]["max_ms"], h["received_to_committed"]["p50_ms"],
                         h["received_to_committed"]["p99_ms"], h["received_to_committed"]["max_ms"],
                         rss_mb, cpu,
                         json.dumps({k: counts[k] for k in ("stall_seconds", "db_errors", "cache_hits", "cache_misses",
                                                            "cache_stale", "frames", "orders_submitted",
                                                            "fills_recorded")})),
                    )
        except Exception as exc:  # noqa: BLE001 - stats must never take the worker down
            log.warning("could not write ingest_stats (%s); figures kept in memory", exc)

    def _publish_status(self, interval_s: float, metrics: Metrics, counts: dict, hists: dict) -> None:
        status = {
            "worker": self.settings.worker_name, "interval_s": interval_s,
            "trades_per_s": counts["trades"] / interval_s if interval_s else 0.0,
            "rows_per_s": counts["rows_committed"] / interval_s if interval_s else 0.0,
            "queue_depth": self.queue.qsize(), "queue_max": metrics.queue_max, "rss_mb": metrics.rss_mb,
            "cpu_percent": metrics.cpu_percent, **{f"{k}": v for k, v in counts.items()},
            **{f"{s}_{q}": h[q] for s, h in hists.items() for q in ("p50_ms", "p99_ms", "max_ms")},
        }
        self.handle.last_status = status
        if self.on_status:
            self.on_status(status)
