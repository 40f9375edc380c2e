"""The streaming worker: reader → bounded queue → processor → writer → TimescaleDB.

``run_worker`` owns every task and its shutdown. On SIGTERM/SIGINT (or ``stop``) it stops
reading, waits for running backfills, drains the queue through the processor, flushes and commits
the writer, writes a last ``ingest_stats`` row, unregisters, and returns: no accepted tick is lost.
The bounded queue (``queue_max_frames`` frames, ≤ ~1000 messages each) is the only buffer between
the socket and the writer's bounded batch; see reader.py and writer.py for the other bounds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from tickvault.alpaca.protocol import ns_to_rfc3339
from tickvault.config import Settings
from tickvault.stream.cache import PriceCache
from tickvault.stream.gaps import GapLedger
from tickvault.stream.metrics import Metrics, serve_prometheus
from tickvault.stream.processor import Processor
from tickvault.stream.reader import MarketDataReader
from tickvault.stream.strategy import Strategy
from tickvault.stream.universe import BackfillUniverse
from tickvault.stream.writer import BatchWriter, ns_to_datetime

log = logging.getLogger("tickvault.worker")

BACKFILL_SYMBOLS_PER_REQUEST = 100  # keeps the query string short; pages are ≤ 10k rows each


class ShutdownIncomplete(RuntimeError):
    """The database did not take every buffered row before the deadline; they were spilled to a file."""


@dataclass
class WorkerHandle:
    """What tests and the CLI hold on a running worker."""

    metrics: Metrics = field(default_factory=Metrics)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reader: MarketDataReader | None = None
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
    return f"{settings.alpaca_stream_url.rstrip('/')}/v2/{settings.alpaca_feed}"


# A restart resumes from the newest trade stored within this window (older data means a first start).
RESUME_WINDOW = "3 days"
RESUME_WINDOW_NS = 3 * 86_400 * 10**9


async def _resume_point(pool, symbols: Sequence[str]) -> int | None:
    """Exchange time of the newest stored trade (of our symbols; any with a wildcard): the start of a restart's gap."""
    async with pool.connection() as conn:
        if symbols:
            cur = await conn.execute(
                f"SELECT max(time_ns) FROM trades WHERE symbol = ANY(%s) AND time > now() - interval '{RESUME_WINDOW}'",
                (list(symbols),),
            )
        else:
            cur = await conn.execute(f"SELECT max(time_ns) FROM trades WHERE time > now() - interval '{RESUME_WINDOW}'")
        row = await cur.fetchone()
        return row[0] if row else None


async def _stored_symbols(pool, limit: int) -> list[str]:
    """Symbols with trades stored in the resume window (at most ``limit``), for a wildcard restart's gap.

    A loose index scan over ``(symbol, time DESC)``: one index probe per symbol, not a scan of three
    days of trades (plain DISTINCT would read them all on the Apache edition, which has no SkipScan).
    """
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"""WITH RECURSIVE stored(symbol) AS (
                  (SELECT symbol FROM trades WHERE time > now() - interval '{RESUME_WINDOW}' ORDER BY symbol LIMIT 1)
                  UNION ALL
                  SELECT (SELECT t.symbol FROM trades t
                           WHERE t.symbol > stored.symbol AND t.time > now() - interval '{RESUME_WINDOW}'
                           ORDER BY t.symbol LIMIT 1)
                    FROM stored WHERE stored.symbol IS NOT NULL)
                SELECT symbol FROM stored WHERE symbol IS NOT NULL LIMIT %s""",
            (limit,),
        )
        return [row[0] for row in await cur.fetchall()]


async def run_worker(
    settings: Settings,
    handle: WorkerHandle | None = None,
    *,
    install_signal_handlers: bool = False,
    on_status: Callable[[dict], None] | None = None,
    strategy: Strategy | None = None,
) -> WorkerHandle:
    """Run the worker until it is stopped (``handle.stop()``, or a signal) and return its handle.

    What a user can get wrong is refused before anything starts: missing keys (``ValueError``), a
    strategy that cannot be loaded (``StrategyLoadError``) and a worker name a live worker holds
    (``WorkerNameTaken``: the name is claimed atomically in the run directory, a stale registration
    is taken over). ``strategy`` is an already loaded one (the CLI loads it before it starts the
    database or the simulator); without it ``settings.strategy`` is loaded here. Only then the pool
    opens, and it is closed whatever happens after: an error during start-up must end the process,
    not leave the pool's connection attempts running (asyncio.run would wait for them for ever).
    The registration is removed at the end, only if it is still this process's.
    """
    from tickvault.db.pool import open_pool
    from tickvault.registration import register_worker, unregister_worker

    if not settings.has_alpaca_keys:
        raise ValueError("the worker needs TICKVAULT_ALPACA_KEY_ID and TICKVAULT_ALPACA_SECRET_KEY (or the simulator's)")
    if strategy is None and settings.strategy:
        from tickvault.stream.strategy import load_strategy

        strategy = load_strategy(settings.strategy)
    # Claimed before the spill files of this name are recovered or the feed is opened: a second
    # worker of the same name must touch neither.
    register_worker(settings, name=settings.worker_name, pid=os.getpid(),
                    extra={"metrics_port": settings.metrics_port, "stream": stream_url(settings)})
    try:
        pool = await open_pool(settings, min_size=2, name=f"tickvault-{settings.worker_name}")
        try:
            return await _run_started_worker(settings, handle, pool, strategy,
                                             install_signal_handlers=install_signal_handlers, on_status=on_status)
        finally:
            await pool.close(timeout=0.5)  # a no-op after a clean run, which closed it itself
    finally:
        unregister_worker(settings, settings.worker_name, pid=os.getpid())


async def _run_started_worker(
    settings: Settings,
    handle: WorkerHandle | None,
    pool,
    strategy: Strategy | None,
    *,
    install_signal_handlers: bool,
    on_status: Callable[[dict], None] | None,
) -> WorkerHandle:
    from tickvault.alpaca.rest import AlpacaREST

    handle = handle or WorkerHandle()
    metrics = handle.metrics
    # Latency: every buffered trade holds a `conditions` list, a GC-tracked container, so Python's
    # full collections would walk hundreds of thousands of them (tens of ms with the loop stopped).
    # Freeze what start-up allocated and collect the young generation less often; nothing here
    # creates reference cycles on the hot path, so garbage is still freed by reference counting.
    gc_threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    key = settings.alpaca_key_id.get_secret_value()
    secret = settings.alpaca_secret_key.get_secret_value()
    symbols = list(settings.symbols)
    universe = BackfillUniverse(symbols)  # what a gap backfill asks for; with "*" it learns (universe.py)

    rest = AlpacaREST(settings)
    writer = BatchWriter(
        pool, metrics, worker=settings.worker_name,
        batch_rows=settings.writer_batch_rows, flush_ms=settings.writer_flush_ms,
    )

    async def fetch_latest(syms):
        latest = await rest.latest_trades(syms)
        return {s: (t.time_ns, float(t.price)) for s, t in latest.items()}

    cache = PriceCache(settings.cache_ttl_s, metrics, fetch_latest)
    gateway = None
    if strategy is not None:
        from tickvault.stream.orders import OrderGateway

        gateway = OrderGateway(rest, pool, metrics)
    queue: asyncio.Queue = asyncio.Queue(maxsize=settings.queue_max_frames)
    processor = Processor(queue, writer, cache, metrics, strategy=strategy,
                          on_intent=gateway.enqueue if gateway else None)

    async def backfill(start_ns: int, end_ns: int) -> int:
        wanted = await universe.resolve()
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
                await writer.submit(time.monotonic_ns(), backfill_trades=rows)
                total += len(rows)
            async for page in rest.historical_bars(chunk, start, end, feed=settings.alpaca_feed):
                bars = [(b.time_ns, b.symbol, "1Min", float(b.open), float(b.high), float(b.low), float(b.close),
                         int(b.volume), b.trade_count, float(b.vwap) if b.vwap is not None else None, False, "backfill")
                        for b in page]
                await writer.submit(time.monotonic_ns(), bars=bars)
        return total

    spill_dir = settings.run_dir / "spill"
    writer_task = asyncio.create_task(writer.run(), name="writer")
    recovered = await writer.recover(spill_dir)  # what a previous run could not commit, first
    if recovered:
        log.warning("committed %d rows spilled by the previous run", recovered)
    resume = await _resume_point(pool, [] if universe.wildcard else symbols)
    gaps = GapLedger(settings.run_dir / "gaps" / f"{settings.worker_name}.json")
    window_start_ns = time.time_ns() - RESUME_WINDOW_NS
    left_open, left_needs_assets = gaps.oldest_inherited(window_start_ns)
    if left_open is not None and (resume is None or left_open < resume):
        # The previous run stored trades past a gap it had not finished backfilling: resume before it.
        log.warning("the previous run left a backfill unfinished from %s; resuming from there",
                    ns_to_rfc3339(left_open))
        resume = max(left_open, window_start_ns)
    if universe.wildcard and resume is not None:  # a restart's gap is made of the symbols stored before it
        universe.add(await _stored_symbols(pool, universe.max_symbols + 1), "the stored trades")
    first_start_backfill = resume is None and settings.backfill_from is not None

    async def tradable_symbols() -> list[str]:
        assets = await rest.list_assets(status="active", asset_class="us_equity")
        return [a.symbol for a in assets if a.tradable]

    if first_start_backfill:
        since = settings.backfill_from
        # Settings refuses a time without a UTC offset (TICKVAULT_BACKFILL_FROM).
        resume = int(since.timestamp()) * 1_000_000_000 + since.microsecond * 1000
        universe.fetch_tradable_once(tradable_symbols)  # nothing stored, nothing received yet: ask the broker
        gaps.with_assets = universe.wildcard
    elif left_needs_assets and universe.wildcard:
        universe.fetch_tradable_once(tradable_symbols)  # a first start's backfill was cut short
        gaps.with_assets = True
    if universe.wildcard:
        log.info("wildcard subscription: gap backfills ask for the %d symbols stored in the last %s, those "
                 "received%s", len(universe), RESUME_WINDOW, ", the broker's tradable assets" if first_start_backfill else "")
    reader = MarketDataReader(
        stream_url(settings), key, secret, queue, metrics,
        channels=settings.channels, symbols=symbols, backfill=backfill, resume_from_ns=resume, universe=universe,
        gaps=gaps,
        silence_s=settings.feed_silence_s,
    )
    handle.reader, handle.writer = reader, writer
    metrics.pending_rows_source = writer.pending_rows

    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, handle.stop)
    prom = await serve_prometheus(metrics, settings.worker_name, settings.metrics_port) if settings.metrics_port else None
    proc = psutil.Process()
    proc.cpu_percent(None)

    async def write_stats(interval_s: float) -> None:
        metrics.rss_mb = proc.memory_info().rss / 2**20
        metrics.cpu_percent = proc.cpu_percent(None)
        counts, hists = metrics.snapshot_and_reset()
        status = {
            "worker": settings.worker_name, "interval_s": interval_s,
            "trades_per_s": counts["trades"] / interval_s if interval_s else 0.0,
            "rows_per_s": counts["rows_committed"] / interval_s if interval_s else 0.0,
            "queue_depth": queue.qsize(), "queue_max": metrics.queue_max, "rss_mb": metrics.rss_mb,
            "cpu_percent": metrics.cpu_percent, **{f"{k}": v for k, v in counts.items()},
            **{f"{s}_{q}": h[q] for s, h in hists.items() for q in ("p50_ms", "p99_ms", "max_ms")},
        }
        handle.last_status = status
        if on_status:
            on_status(status)
        h = hists
        try:
            async with pool.connection(timeout=5) as conn:
                await conn.execute(
                    "INSERT INTO ingest_stats (time, worker, interval_s, trades, quotes, bars, other_messages, "
                    "rows_committed, rejects, drops, stalls, reconnects, backfilled, queue_depth, queue_max, "
                    "exchange_to_received_p50_ms, exchange_to_received_p99_ms, received_to_processed_p50_ms, "
                    "received_to_processed_p99_ms, received_to_processed_max_ms, received_to_committed_p50_ms, "
                    "received_to_committed_p99_ms, received_to_committed_max_ms, rss_mb, cpu_percent, extra) "
                    "VALUES (now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s)",
                    (settings.worker_name, interval_s, counts["trades"], counts["quotes"], counts["bars"],
                     counts["other_messages"], counts["rows_committed"], counts["rejects"], counts["drops"],
                     counts["stalls"], counts["reconnects"], counts["backfilled"], queue.qsize(), metrics.queue_max,
                     h["exchange_to_received"]["p50_ms"], h["exchange_to_received"]["p99_ms"],
                     h["received_to_processed"]["p50_ms"], h["received_to_processed"]["p99_ms"],
                     h["received_to_processed"]["max_ms"], h["received_to_committed"]["p50_ms"],
                     h["received_to_committed"]["p99_ms"], h["received_to_committed"]["max_ms"],
                     metrics.rss_mb, metrics.cpu_percent,
                     json.dumps({k: counts[k] for k in ("stall_seconds", "db_errors", "cache_hits", "cache_misses",
                                                        "cache_stale", "frames", "orders_submitted",
                                                        "fills_recorded")})),
                )
        except Exception as exc:  # noqa: BLE001 - stats must never take the worker down
            log.warning("could not write ingest_stats (%s); figures kept in memory", exc)
        metrics.queue_max = queue.qsize()

    stats_clock = {"last": time.monotonic()}

    async def stats_tick() -> None:
        now = time.monotonic()
        await write_stats(now - stats_clock["last"])
        stats_clock["last"] = now

    async def stats_loop() -> None:
        # Ends on stop; the last row is written after the drain, so it counts the drained rows.
        while True:
            try:
                await asyncio.wait_for(handle.stop_event.wait(), settings.stats_interval_s)
                return
            except asyncio.TimeoutError:
                await stats_tick()

    processor_task = asyncio.create_task(processor.run(), name="processor")
    reader_task = asyncio.create_task(reader.run(), name="reader")
    stats_task = asyncio.create_task(stats_loop(), name="stats")
    gateway_task = asyncio.create_task(gateway.run(), name="order-gateway") if gateway else None
    from tickvault.stream.orders import TradeUpdatesListener

    listener = TradeUpdatesListener(settings.alpaca_trade_stream_url, key, secret, pool, metrics)
    handle.trade_updates = listener
    listener_task = asyncio.create_task(listener.run(), name="trade-updates")
    connected = asyncio.create_task(reader.connected.wait())
    stopping = asyncio.create_task(handle.stop_event.wait())
    try:
        done, _ = await asyncio.wait({connected, stopping, reader_task}, return_when=asyncio.FIRST_COMPLETED)
        if reader_task in done:
            reader_task.result()  # AuthFailed and friends surface here
        handle.ready.set()
        done, _ = await asyncio.wait({stopping, reader_task, processor_task, writer_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopping}:
            task.result()  # a crashed component is an error, not a silent stop
    finally:
        connected.cancel()
        stopping.cancel()
        handle.stop_event.set()
        reader.stop()
        try:
            await asyncio.wait_for(reader_task, 15)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001
            reader_task.cancel()
        deadline = asyncio.get_running_loop().time() + settings.shutdown_timeout_s

        async def until_deadline(aw) -> bool:
            """Await `aw` until the shutdown deadline or a second signal; False if cut short."""
            task = asyncio.ensure_future(aw)
            force = asyncio.create_task(handle.force_event.wait())
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait({task, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if task in done:
                task.result()
                return True
            task.cancel()
            return False

        drained = (
            await until_deadline(reader.wait_backfills())
            and await until_deadline(queue.put(None))
            and await until_deadline(processor_task)
            and await until_deadline(writer.drain())
        )
        if drained:
            writer.close()
            await writer_task
        else:
            processor_task.cancel()
            writer_task.cancel()
            await asyncio.gather(processor_task, writer_task, return_exceptions=True)
            handle.spilled = writer.spill(spill_dir)
            if handle.spilled:
                log.error("the database did not take %d buffered rows within %.0f s; kept in %s and committed "
                          "on the next start", handle.spilled[1], settings.shutdown_timeout_s, handle.spilled[0])
        if gateway_task is not None:
            gateway.close()
            if not await until_deadline(gateway_task):
                log.error("order gateway did not finish within the shutdown deadline; pending intents are "
                          "stay pending_submit in orders, where reconciliation reports them")
        listener.stop()
        try:
            # It only waits on the socket: a second is plenty to leave cleanly, else it is cancelled.
            await asyncio.wait_for(listener_task, 2)
        except asyncio.TimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001 - a refused trade-updates stream is logged, not fatal at exit
            log.warning("trade updates listener ended with %r", exc)
        stats_task.cancel()
        await asyncio.gather(stats_task, return_exceptions=True)
        if drained:
            await stats_tick()
        if prom is not None:
            prom.close()
        await rest.aclose() if hasattr(rest, "aclose") else None
        await pool.close(timeout=5 if drained else 0.5)
        gc.set_threshold(*gc_threshold)
        gc.unfreeze()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    if handle.spilled:
        raise ShutdownIncomplete(
            f"{handle.spilled[1]} rows were not committed before shutdown; they are kept in {handle.spilled[0]} "
            "and committed by the next `tickvault worker run`"
        )
    return handle
