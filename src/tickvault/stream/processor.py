"""The processor: one decoded frame at a time from the bounded queue → cache, indicators,
strategy → the writer's buffers. Crypto, options and news frames go straight to their tables (no
cache, indicators or strategy for them yet), counted in their feed's figures.

Per frame, not per message: trades and quotes arrive as columns (:mod:`tickvault.alpaca.columnar`:
the frame's COPY data, its time range, the newest row per symbol), so the cache takes each
symbol's newest trade and quote of the frame, latency is recorded once per frame with the frame's
message count as weight, and the columns travel to the writer as they are: no Python object per
trade or quote between the socket and PostgreSQL. Bars, corrections and the other rare messages
stay the protocol's tuples. Indicators update once per closed minute bar
(O(1) each, bounded state per symbol), VWAP restarting at each session start by the rules of
:mod:`tickvault.indicators.sessions` (US equities: the exchange's extended session in New York
time, from ``/v2/calendar``; crypto: the UTC day), exactly as the ``refresh_indicators`` flow does.
After a restart :meth:`Processor.restore` rebuilds each symbol's state from its stored bars (the
warm-up and the whole current session) before the feed opens, every symbol of a table in two
statements, the bars streamed in pages. It must never block the loop: the
strategy is called inline and must be fast; orders go out through the gateway's own bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import groupby
from operator import itemgetter

import psycopg

from tickvault.alpaca.crypto import CRYPTO_TRADE_FIELDS, CryptoFrame
from tickvault.alpaca.protocol import ns_to_datetime
from tickvault.alpaca.news import NewsFrame
from tickvault.alpaca.options import OptionsFrame
from tickvault.db.tables import INDICATOR_VALUES, recent_symbols_sql
from tickvault.indicators import IndicatorSet
from tickvault.indicators.definitions import WARMUP_BARS
from tickvault.indicators.sessions import (
    NEW_SESSION,
    NO_SESSION,
    SessionCalendar,
    SessionTracker,
    default_calendar,
)
from tickvault.stream.cache import PriceCache
from tickvault.stream.metrics import Metrics, RestoreProgress
from tickvault.stream.reader import QueuedFrame
from tickvault.stream.strategy import Bar, OrderIntent, Strategy
from tickvault.stream.universe import MAX_SYMBOLS
from tickvault.stream.writer import BatchWriter, NsTimestamptzLoader

log = logging.getLogger("tickvault.processor")

# The restore reads a symbol's stored bars back at most this far (as the refresh flow's warm-up).
RESTORE_HORIZON_S = 30 * 86_400
# With a "*" subscription, the symbols restored are those with a stored bar this recent.
RESTORE_RECENT_S = 4 * 86_400
RESTORE_MAX_SYMBOLS = MAX_SYMBOLS  # a wildcard restore: as many symbols as a wildcard universe holds
_BARS_TABLE = {False: "bars", True: "crypto_bars"}  # by is-crypto
# Bars a restore fetches per round trip and replays before the loop gets control back: ~1.3 MB of
# row tuples (two pages are held: one in hand, one in flight) and ~13 ms of replay on the dev
# machine (~2.6 µs a bar read and replayed). 2000 symbols × 1000 bars take 400 fetches; pages of
# 1000 and of 20000 bars restored within noise of each other.
RESTORE_PAGE_ROWS = 5000

# Every symbol's warm-up bounds in one statement: per symbol (in the order given), the oldest and
# newest of its last %s 1-minute bars, NULLs when it has none; one (symbol, time DESC) index probe
# each, reading at most the warm-up's index entries.
_RESTORE_BOUNDS_SQL = """
SELECT s.symbol, w.oldest, w.newest
  FROM unnest(%s::text[]) AS s(symbol)
 CROSS JOIN LATERAL (SELECT min(time) AS oldest, max(time) AS newest
                       FROM (SELECT time FROM {table} WHERE symbol = s.symbol AND timeframe = '1Min'
                              ORDER BY time DESC LIMIT %s) AS recent) AS w"""
# Every symbol's bars from its own start, symbol after symbol (in the order given), each in time
# order: an index range scan per symbol; the sort by (n, time) finds each symbol's bars already
# in order (an incremental sort over groups of one symbol, never the whole result).
_RESTORE_BARS_SQL = """
SELECT b.time, b.high, b.low, b.close, b.volume::float8, b.vwap, s.symbol
  FROM unnest(%s::text[], %s::timestamptz[]) WITH ORDINALITY AS s(symbol, start, n)
 CROSS JOIN LATERAL (SELECT time, high, low, close, volume, vwap FROM {table}
                      WHERE symbol = s.symbol AND timeframe = '1Min' AND time >= s.start) AS b
 ORDER BY s.n, b.time"""
_SYMBOL_OF_ROW = itemgetter(6)  # the symbol column of _RESTORE_BARS_SQL's rows


def _nan_to_none(v: float) -> float | None:
    return None if v != v else v


class Processor:
    def __init__(
        self,
        queue: asyncio.Queue,
        writer: BatchWriter,
        cache: PriceCache,
        metrics: Metrics,
        *,
        strategy: Strategy | None = None,
        on_intent: Callable[[str, Bar, OrderIntent], None] | None = None,
        calendar: SessionCalendar | None = None,
    ) -> None:
        self.queue = queue
        self.writer = writer
        self.cache = cache
        self.metrics = metrics
        self.strategy = strategy
        self.on_intent = on_intent
        # One IndicatorSet per symbol with bars: bounded by the subscribed universe; each set's
        # state is bounded by its longest window (26 + 9 bars for MACD, 20 for Bollinger).
        self.indicators: dict[str, IndicatorSet] = {}
        # The US equity sessions (fetched once by the worker); crypto needs none (the UTC day).
        self.calendar = calendar if calendar is not None else default_calendar()
        self._sessions: dict[str, SessionTracker] = {}  # one per symbol with bars, like indicators

    def _indicators_after(self, symbol: str, time_ns: int, high: float, low: float, close: float,
                          volume: float, bar_vwap: float | None) -> IndicatorSet:
        """Step ``symbol``'s session and indicators over one closed bar (the live path's one-bar
        :meth:`_replay`, so a restored state is the state the live path would have)."""
        return self._replay(symbol, ((time_ns, high, low, close, volume, bar_vwap, symbol),))

    def _replay(self, symbol: str, bars: Iterable[tuple]) -> IndicatorSet:
        """Step ``symbol``'s session and indicators over its closed bars in time order, each
        ``(time_ns, high, low, close, volume, vwap, symbol)``: the one stepping rule of the live path
        and the restore (the symbol's state is looked up once per call, not once per bar)."""
        ind = self.indicators.get(symbol)
        if ind is None:
            ind = self.indicators[symbol] = IndicatorSet()
            self._sessions[symbol] = SessionTracker(symbol, self.calendar)
        step, update = self._sessions[symbol].step, ind.update
        for time_ns, high, low, close, volume, bar_vwap, _ in bars:
            mark = step(time_ns)
            if mark == NEW_SESSION:
                ind.reset_session()
            update(high, low, close, volume, bar_vwap, mark != NO_SESSION)
        return ind

    async def restore(self, pool, stocks: Sequence[str] = (), crypto: Sequence[str] = (),
                      *, warmup_bars: int = WARMUP_BARS, page_rows: int = RESTORE_PAGE_ROWS,
                      progress: RestoreProgress | None = None) -> int:
        """Rebuild the indicators of ``stocks`` and ``crypto`` symbols from their stored 1-minute
        bars (``bars`` / ``crypto_bars``; ``"*"`` means every symbol with a bar in the last
        :data:`RESTORE_RECENT_S`): the last ``warmup_bars`` bars and, further back when needed, the
        whole session of the newest one, so VWAP goes on from the session's stored bars and the
        others from the same warm-up as the refresh flow. Rows are not written again; the strategy
        does not see these bars. Returns the bars replayed. Call before the feed opens.

        A constant number of statements per table, whatever the symbol count (a wildcard restart
        of the whole market has thousands): one for the symbols of a ``"*"``, one for every
        symbol's warm-up bounds, one streaming every symbol's bars through a server-side cursor,
        ``page_rows`` bars a fetch (the memory held: two pages, not the ~1000 bars × symbols read).
        The loop gets control back after every page (a page is ~13 ms of replay), so the tasks
        already on it (the worker's writer) run during a long restore, and so does ``progress``
        (symbols to restore, symbols begun: what the worker's phase shows). Cancelling it (a stop
        during start-up) is safe at any await: it only reads."""
        progress = progress or RestoreProgress()
        replayed = 0
        started = time.monotonic()
        async with pool.connection() as conn:
            for is_crypto_table, wanted in ((False, stocks), (True, crypto)):
                table = _BARS_TABLE[is_crypto_table]
                wanted = list(dict.fromkeys(wanted))  # a symbol named twice is restored once
                if "*" in wanted:  # every symbol with a recent bar (a loose index scan, bounded)
                    cur = await conn.execute(recent_symbols_sql(table, where="timeframe = '1Min'"),
                                             {"window": f"{RESTORE_RECENT_S} seconds", "limit": RESTORE_MAX_SYMBOLS})
                    wanted = [r[0] for r in await cur.fetchall()]
                if wanted:
                    replayed += await self._restore_table(conn, table, wanted, warmup_bars, page_rows, progress)
        if replayed:
            log.info("indicators restored from %d stored bars of %d symbols in %.1f s", replayed,
                     len(self.indicators), time.monotonic() - started)
        return replayed

    async def _restore_table(self, conn, table: str, symbols: list[str], warmup_bars: int, page_rows: int,
                             progress: RestoreProgress) -> int:
        """Restore ``symbols`` from ``table``: their bounds in one statement, their bars in another.
        A database error goes on as it is, with a note of what the restore was doing."""
        replayed = 0
        try:
            names, starts = await self._restore_starts(conn, table, symbols, warmup_bars)
            if not names:
                return 0
            progress.symbols += len(names)
            previous = None  # the symbol the last page ended with: it may go on in this one
            async with conn.cursor(name="tickvault_restore", binary=True) as bars:
                bars.adapters.register_loader("timestamptz", NsTimestamptzLoader)
                await bars.execute(_RESTORE_BARS_SQL.format(table=table), (names, starts))
                # The next page is asked for before this one is replayed, so the server reads it
                # while Python replays (~25 % of a restore's time saved); one page in flight, one in hand.
                fetch = asyncio.ensure_future(bars.fetchmany(page_rows))
                try:
                    while rows := await fetch:
                        fetch = asyncio.ensure_future(bars.fetchmany(page_rows))
                        await asyncio.sleep(0)  # the fetch sends its FETCH; the loop runs between pages
                        # A symbol's bars are consecutive and in time order; one may go on in the next page.
                        for symbol, symbol_bars in groupby(rows, _SYMBOL_OF_ROW):
                            if symbol != previous:
                                progress.done += 1
                                previous = symbol
                            self._replay(symbol, symbol_bars)
                        replayed += len(rows)
                finally:
                    fetch.cancel()  # an error while replaying: psycopg cancels the FETCH in flight
        except psycopg.Error as e:
            e.add_note(f"while restoring the indicators of {len(symbols)} symbols from {table}: "
                       f"{replayed} bars replayed before the error")
            raise
        return replayed

    async def _restore_starts(self, conn, table: str, symbols: list[str],
                              warmup_bars: int) -> tuple[list[str], list[datetime]]:
        """The symbols of ``symbols`` with stored bars and where each one's restore starts: the
        oldest of its last ``warmup_bars`` bars or, when earlier, the start of its newest bar's
        session, never more than :data:`RESTORE_HORIZON_S` before its newest bar. Each one's old
        state is dropped (a restore starts the symbol afresh)."""
        cur = conn.cursor(binary=True)
        cur.adapters.register_loader("timestamptz", NsTimestamptzLoader)  # this cursor only
        await cur.execute(_RESTORE_BOUNDS_SQL.format(table=table), (symbols, max(warmup_bars, 1)))
        names: list[str] = []
        starts: list[datetime] = []
        for symbol, oldest_ns, newest_ns in await cur.fetchall():  # a row per symbol: at most MAX_SYMBOLS
            if newest_ns is None:  # no stored bar: the feed starts the symbol afresh
                continue
            window = self.calendar.window(symbol, newest_ns)
            start_ns = min(oldest_ns, window[0] if window else newest_ns)
            start_ns = max(start_ns, newest_ns - RESTORE_HORIZON_S * 10**9)
            names.append(symbol)
            starts.append(ns_to_datetime(start_ns))  # exact: every part of it is a whole µs
            self.indicators.pop(symbol, None)
        return names, starts

    async def run(self) -> None:
        """Process until a ``None`` sentinel arrives (after the reader stopped): drains the queue."""
        queue = self.queue
        while True:
            item = await queue.get()
            if item is None:
                return
            self.metrics.queue_depth = queue.qsize()
            await self.handle(item)

    async def handle(self, item: QueuedFrame) -> None:
        if isinstance(item.frame, CryptoFrame):
            await self._handle_crypto(item)
            return
        if isinstance(item.frame, NewsFrame):
            await self._handle_news(item)
            return
        if isinstance(item.frame, OptionsFrame):
            await self._handle_options(item)
            return
        trades = item.frame.trades
        quotes = item.frame.quotes
        f = item.frame.rest
        mono = item.received_mono_ns
        metrics = item.metrics or self.metrics
        metrics.add("frames")
        n = 0
        if trades is not None:
            n += trades.n
            metrics.add("trades", trades.n)
            lag = item.received_wall_ns - trades.time_last_ns
            metrics.observe("exchange_to_received", lag if lag > 0 else 0, trades.n)
            self.cache.update_latest_trades(trades.latest, mono)
        if quotes is not None:
            n += quotes.n
            metrics.add("quotes", quotes.n)
            self.cache.update_latest_quotes(quotes.latest, mono)
        bar_rows: list[tuple] = []
        indicator_rows: list[tuple] = []
        if f.bars:
            metrics.add("bars", len(f.bars))
            for b in f.bars:
                bar_rows.append((b[0], b[1], "1Min", b[2], b[3], b[4], b[5], int(b[6]), b[7], b[8], False, "stream"))
                indicator_rows.append(self._on_bar(b))
        if f.updated_bars:
            metrics.add("bars", len(f.updated_bars))
            for b in f.updated_bars:
                bar_rows.append((b[0], b[1], "1Min", b[2], b[3], b[4], b[5], int(b[6]), b[7], b[8], True, "stream"))
        if f.daily_bars:
            metrics.add("bars", len(f.daily_bars))
            for b in f.daily_bars:
                bar_rows.append((b[0], b[1], "1Day", b[2], b[3], b[4], b[5], int(b[6]), b[7], b[8], False, "stream"))
        other = len(f.corrections) + len(f.cancels) + len(f.statuses) + len(f.lulds)
        if other:
            metrics.add("other_messages", other)
        bad = None
        if f.rejects:
            metrics.add("rejects", len(f.rejects))
            bad = [("stream", r.reason, r.payload) for r in f.rejects]
            # one line per frame, not per message: a broken feed must not flood the log
            log.warning("%d rejected message(s) kept in bad_messages, e.g. %s", len(f.rejects), f.rejects[0].reason)
        n += len(bar_rows) + other
        if n:
            metrics.observe("received_to_processed", time.monotonic_ns() - mono, n)
        await self.writer.submit(
            mono,
            metrics=item.metrics,
            trades=[trades] if trades is not None else None,
            quotes=[quotes] if quotes is not None else None,
            bars=bar_rows,
            indicators=[r for r in indicator_rows if r is not None],
            corrections=f.corrections,
            cancels=f.cancels,
            statuses=f.statuses,
            lulds=f.lulds,
            bad=bad,
        )

    async def _handle_crypto(self, item: QueuedFrame) -> None:
        """A crypto frame: its columns and tuples to the crypto tables; the price cache takes each pair's
        newest trade and quote, and every closed minute bar updates the pair's indicators (VWAP restarting
        each UTC day: the crypto session). The strategy does not see crypto bars yet (the order gateway
        sends equity orders only), counted in the feed's own figures."""
        frame, mono = item.frame, item.received_mono_ns
        metrics = item.metrics or self.metrics
        trades, quotes, f = frame.trades, frame.quotes, frame.rest
        metrics.add("frames")
        n = 0
        if trades is not None:
            n += trades.n
            metrics.add("trades", trades.n)
            lag = item.received_wall_ns - trades.time_last_ns
            metrics.observe("exchange_to_received", lag if lag > 0 else 0, trades.n)
            self.cache.update_latest_trades(trades.latest, mono, CRYPTO_TRADE_FIELDS)
        if quotes is not None:
            n += quotes.n
            metrics.add("quotes", quotes.n)
            self.cache.update_latest_quotes(quotes.latest, mono)
        indicator_rows = [self._on_bar(b, strategy=False) for b in f.bars]
        bars = [b[:2] + ("1Min",) + b[2:] + (False, "stream") for b in f.bars]
        bars += [b[:2] + ("1Min",) + b[2:] + (True, "stream") for b in f.updated_bars]
        bars += [b[:2] + ("1Day",) + b[2:] + (False, "stream") for b in f.daily_bars]
        if bars:
            metrics.add("bars", len(bars))
        if f.orderbooks:
            metrics.add("other_messages", len(f.orderbooks))
        bad = None
        if f.rejects:
            metrics.add("rejects", len(f.rejects))
            bad = [("stream:crypto", r.reason, r.payload) for r in f.rejects]
            log.warning("%d rejected crypto message(s) kept in bad_messages, e.g. %s", len(f.rejects),
                        f.rejects[0].reason)
        n += len(bars) + len(f.orderbooks)
        if n:
            metrics.observe("received_to_processed", time.monotonic_ns() - mono, n)
        await self.writer.submit(
            mono, metrics=item.metrics,
            crypto_trades=[trades] if trades is not None else None,
            crypto_quotes=[quotes] if quotes is not None else None,
            crypto_bars=bars, crypto_orderbooks=f.orderbooks, bad=bad, indicators=indicator_rows,
        )

    async def _handle_options(self, item: QueuedFrame) -> None:
        """An options frame: trades and quotes (COPY columns) to option_trades / option_quotes."""
        frame, mono = item.frame, item.received_mono_ns
        metrics = item.metrics or self.metrics
        metrics.add("frames")
        n = 0
        if frame.trades is not None:
            n += frame.trades.n
            metrics.add("trades", frame.trades.n)
            lag = item.received_wall_ns - frame.trades.time_last_ns
            metrics.observe("exchange_to_received", lag if lag > 0 else 0, frame.trades.n)
        if frame.quotes is not None:
            n += frame.quotes.n
            metrics.add("quotes", frame.quotes.n)
        if n:
            metrics.observe("received_to_processed", time.monotonic_ns() - mono, n)
        bad = None
        if frame.rest.rejects:
            metrics.add("rejects", len(frame.rest.rejects))
            bad = [("stream:options", r.reason, r.payload) for r in frame.rest.rejects]
            log.warning("%d rejected option message(s) kept in bad_messages, e.g. %s", len(bad), bad[0][1])
        await self.writer.submit(
            mono, metrics=item.metrics, bad=bad,
            option_trades=[frame.trades] if frame.trades is not None else None,
            option_quotes=[frame.quotes] if frame.quotes is not None else None,
        )

    async def _handle_news(self, item: QueuedFrame) -> None:
        """A news frame: its articles upserted into ``news`` (counted as other messages of the feed)."""
        frame, metrics = item.frame, item.metrics or self.metrics
        metrics.add("frames")
        if frame.articles:
            metrics.add("other_messages", len(frame.articles))
            metrics.observe("received_to_processed", time.monotonic_ns() - item.received_mono_ns, len(frame.articles))
        bad = None
        if frame.rest.rejects:
            metrics.add("rejects", len(frame.rest.rejects))
            bad = [("stream:news", r.reason, r.payload) for r in frame.rest.rejects]
            log.warning("%d rejected news message(s) kept in bad_messages, e.g. %s", len(bad), bad[0][1])
        await self.writer.submit(item.received_mono_ns, metrics=item.metrics, news=frame.articles, bad=bad)

    def _on_bar(self, b: tuple, strategy: bool = True) -> tuple | None:
        time_ns, symbol, o, h, low, c, v, count, vw = b
        values = self._indicators_after(symbol, time_ns, h, low, c, v, vw).values()
        if strategy and self.strategy is not None:
            bar = Bar(symbol, time_ns, o, h, low, c, int(v), count, vw)
            try:
                intents = self.strategy.on_bar(bar, values)
            except Exception:  # noqa: BLE001 - a strategy bug must not stop ingest
                log.exception("strategy %s failed on %s bar %d", self.strategy.name, symbol, time_ns)
                intents = None
            if intents and self.on_intent is not None:
                for intent in intents:
                    self.on_intent(self.strategy.name, bar, intent)
        return (time_ns, symbol, "1m", c) + tuple(_nan_to_none(values[k]) for k in INDICATOR_VALUES)
