"""The batch writer: buffers decoded rows per table and commits them with binary COPY.

A batch is every buffered row of every table, committed in ONE transaction together with a row
in ``ingest_batches`` (its id). Bounds: at most ``max_pending_rows`` rows wait in memory; past
that, :meth:`BatchWriter.submit` blocks the processor, the processor stops draining the bounded
queue, the reader stops reading the socket, and TCP pushes back on the feed: the database's speed
sets the pace and memory stays flat. Every such wait is counted as a stall.

Crypto and option trades and quotes arrive as columns too (``alpaca.crypto``, ``alpaca.options``) and
take the same COPY and dedupe paths into their own tables; crypto bars upsert ``crypto_bars``, order
books are copied, news articles upsert ``news`` on the id (the newest version wins).

Trades and quotes arrive as columns (:mod:`tickvault.alpaca.columnar`): each frame's rows are
already binary COPY tuple data, so a batch's COPY is one header, the frames' bytes joined, one
trailer — no Python call per row. The other tables (bars, statuses, LULDs, corrections, bad
messages: a few rows a minute) keep row tuples and psycopg's formatter.

Durability and duplicates:
* Live trades go straight into ``trades`` by COPY (fast path). If the unique key rejects a row (a
  re-delivery), the batch is retried through a staging table with ``ON CONFLICT DO NOTHING``.
  Backfilled trades always take that path. Bars upsert (an ``u`` updated bar replaces its bar).
* A database that goes away makes the commit retry (:data:`tickvault.retry.COMMIT`: 0.1 s doubling
  to 5 s, full jitter), forever, holding the batch; after a failure where the COMMIT's outcome is
  unknown, the ledger says whether the batch landed.
* Late trades (stocks and crypto) below the OHLCV watermark are noted (tickvault_aggregate_invalidate)
  in the same transaction, so the rollups recompute those buckets.
This module must never drop a row silently or open a connection per row.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tickvault.alpaca.columnar import (
    COPY_HEADER,
    COPY_TRAILER,
    QuoteColumns,
    TradeColumns,
    UnstorableRow,
    quote_columns,
    trade_columns,
)
from tickvault.alpaca.crypto import crypto_quote_columns, crypto_trade_columns, size_decimal
from tickvault.alpaca.options import option_quote_columns, option_trade_columns
from tickvault.alpaca.protocol import ns_to_datetime
from tickvault.db.aggregates import CRYPTO, STOCKS, Aggregate
from tickvault.db.tables import (
    BAD_MESSAGES,
    BARS_STAGE,
    CRYPTO_BARS_STAGE,
    CRYPTO_ORDERBOOKS,
    CRYPTO_QUOTES,
    CRYPTO_TRADES,
    LULDS,
    OPTION_QUOTES,
    OPTION_TRADES,
    QUOTES,
    TRADES,
    TRADING_STATUSES,
    UPSERT_BARS_FROM_STAGE,
    UPSERT_CRYPTO_BARS_FROM_STAGE,
    UPSERT_NEWS,
    CopySpec,
    indicators_upsert,
)
from tickvault import retry
from tickvault.stream.metrics import Metrics

log = logging.getLogger("tickvault.writer")

PENDING_BATCHES = 8  # rows buffered plus in flight, in batches: see BatchWriter.__init__
_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix µs
_pack_q = struct.Struct("!q").pack


class _NsTimestamptz(Dumper):
    """Binary timestamptz from int nanoseconds: no datetime object per row on the hot path."""

    format = Format.BINARY
    oid = postgres.types["timestamptz"].oid

    def dump(self, obj: int) -> bytes:
        return _pack_q(obj // 1000 - _PG_EPOCH_US)


class _NsTime(int):
    """Marker type to register the dumper on one cursor only."""


_unpack_q = struct.Struct("!q").unpack


class NsTimestamptzLoader(Loader):
    """Binary timestamptz to int nanoseconds (the inverse of :class:`_NsTimestamptz`, exact: the
    server's µs times 1000): no datetime object per row where a reader wants ns, e.g. the
    processor's restore. Register it on one cursor: ``cur.adapters.register_loader("timestamptz", ...)``."""

    format = Format.BINARY

    def load(self, data) -> int:
        return (_unpack_q(data)[0] + _PG_EPOCH_US) * 1000


_TEXT_OID = postgres.types["text"].oid
_array_header = struct.Struct("!iiiii").pack
_pack_i = struct.Struct("!i").pack
# Trade and quote condition sets repeat endlessly ("@", "@ F", "@ F T" ...): their binary text[]
# encoding is cached. Bound: CONDITIONS_CACHE_MAX entries of a few dozen bytes; cleared when full.
CONDITIONS_CACHE_MAX = 4096
_conditions_cache: dict[tuple, bytes] = {}


class _CachedTextArray(Dumper):
    """Binary text[] for condition lists, from a bounded cache (~1.2 µs/row saved over the stock dumper)."""

    format = Format.BINARY
    oid = postgres.types["text"].array_oid

    def dump(self, obj: list[str]) -> bytes:
        key = tuple(obj)
        data = _conditions_cache.get(key)
        if data is None:
            if not obj:
                data = struct.pack("!iii", 0, 0, _TEXT_OID)
            else:
                parts = [_array_header(1, 0, _TEXT_OID, len(obj), 1)]
                for item in obj:
                    raw = item.encode()
                    parts.append(_pack_i(len(raw)))
                    parts.append(raw)
                data = b"".join(parts)
            if len(_conditions_cache) >= CONDITIONS_CACHE_MAX:
                _conditions_cache.clear()
            _conditions_cache[key] = data
        return data


class _Conditions(list):
    """Marker type to register the text[] dumper on one cursor only."""


_UPSERT_INDICATORS = indicators_upsert(time_from_ns=True, source=None)  # the worker's rows: source defaults
# Column blocks are sent to the server in pieces of about this size (one write per piece).
COPY_PIECE_BYTES = 1 << 20
YIELD_EVERY = 250  # rows formatted between event-loop turns (~0.6 ms): keeps processing p99 under 1 ms



SPILL_FIELDS = (
    "trades", "backfill_trades", "quotes", "bars", "corrections", "cancels", "statuses", "lulds", "indicators", "bad",
    "crypto_trades", "backfill_crypto_trades", "crypto_quotes", "crypto_bars", "crypto_orderbooks", "news",
    "option_trades", "backfill_option_trades", "option_quotes",
)


# Batch fields that hold columns (one TradeColumns/QuoteColumns per frame), not row tuples.
_COLUMNS = {"trades": trade_columns, "backfill_trades": trade_columns, "quotes": quote_columns,
            "crypto_trades": crypto_trade_columns, "backfill_crypto_trades": crypto_trade_columns,
            "crypto_quotes": crypto_quote_columns, "option_trades": option_trade_columns,
            "backfill_option_trades": option_trade_columns, "option_quotes": option_quote_columns}
_QUOTE_FIELDS = ("quotes", "crypto_quotes", "option_quotes")


@dataclass
class Batch:
    """Rows waiting for one transaction: trades and quotes as columns (one block per frame), the rest
    as the protocol's *_FIELDS tuples."""

    trades: list[TradeColumns] = field(default_factory=list)
    backfill_trades: list[TradeColumns] = field(default_factory=list)
    quotes: list[QuoteColumns] = field(default_factory=list)
    bars: list[tuple] = field(default_factory=list)  # (time_ns, symbol, timeframe, o, h, l, c, v, n, vw, updated, source)
    corrections: list[tuple] = field(default_factory=list)
    cancels: list[tuple] = field(default_factory=list)
    statuses: list[tuple] = field(default_factory=list)
    lulds: list[tuple] = field(default_factory=list)
    indicators: list[tuple] = field(default_factory=list)  # tables.INDICATORS order, time as ns
    bad: list[tuple] = field(default_factory=list)  # (source, reason, payload)
    # crypto (alpaca/crypto.py): trades and quotes as columns, bars and orderbooks as CRYPTO_*_FIELDS tuples
    crypto_trades: list[TradeColumns] = field(default_factory=list)
    backfill_crypto_trades: list[TradeColumns] = field(default_factory=list)
    crypto_quotes: list[QuoteColumns] = field(default_factory=list)
    crypto_bars: list[tuple] = field(default_factory=list)  # as `bars`, volume a float or int (numeric column)
    crypto_orderbooks: list[tuple] = field(default_factory=list)
    news: list[tuple] = field(default_factory=list)  # alpaca/news.py NEWS_FIELDS tuples, upserted on the id
    option_trades: list[TradeColumns] = field(default_factory=list)  # alpaca/options.py COPY columns
    backfill_option_trades: list[TradeColumns] = field(default_factory=list)
    option_quotes: list[QuoteColumns] = field(default_factory=list)
    # (received monotonic ns, rows, the feed's Metrics or None: the writer's) per submission
    frames: list[tuple] = field(default_factory=list)
    backfill_metrics: dict = field(default_factory=dict)  # backfill field -> the Metrics its new rows count in
    rows: int = 0
    first_mono: int = 0
    batch_id: uuid.UUID = field(default_factory=uuid.uuid4)
    dedupe: bool = False
    maybe_committed: bool = False
    backfilled: int = 0  # backfilled trades that were new (set at commit)
    backfilled_crypto: int = 0
    backfilled_options: int = 0


def _encode_rows(name: str, rows: list[tuple]) -> tuple[list, list[tuple]]:
    """Row tuples -> one columns block; a row the table cannot store goes to bad_messages instead."""
    encode = _COLUMNS[name]
    try:
        block = encode(rows)
        return ([block] if block is not None else []), []
    except UnstorableRow:
        pass
    good, bad = [], []
    for row in rows:  # the slow path, only for a batch holding an unstorable row
        try:
            encode([row])
            good.append(row)
        except UnstorableRow as exc:
            bad.append(("backfill" if name.startswith("backfill") else "writer", str(exc), repr(row).encode()))
    block = encode(good) if good else None
    if bad:
        log.warning("%d %s row(s) cannot be stored and were kept in bad_messages, e.g. %s", len(bad), name, bad[0][1])
    return ([block] if block is not None else []), bad


def _blocks_to_json(blocks: list) -> list[dict]:
    return [{"n": b.n, "copy": base64.b64encode(b.copy).decode(), "min": b.time_min_ns, "max": b.time_max_ns,
             "last": b.time_last_ns} for b in blocks]


def _blocks_from_json(cls, docs: list[dict]) -> list:
    # `latest` only feeds the price cache, which a recovered batch does not touch.
    return [cls(d["n"], base64.b64decode(d["copy"]), d["min"], d["max"], d["last"], {}) for d in docs]


class RecoveryStopped(Exception):
    """A stop request ended the spill recovery between batches; what is left stays in its file."""


class BatchWriter:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        metrics: Metrics,
        *,
        worker: str,
        batch_rows: int,
        flush_ms: int,
        max_pending_rows: int | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.worker = worker
        self.batch_rows = batch_rows
        self.flush_ns = flush_ms * 1_000_000
        # Group commit: while one batch commits, up to PENDING_BATCHES - 1 more batches' rows may
        # gather, and the next commit takes them all. A database that keeps up sees batch_rows-sized
        # commits; one that falls behind gets fewer, larger transactions (what makes bare COPY with
        # big batches fast) before backpressure starts. Memory stays bounded: ≈ PENDING_BATCHES ×
        # batch_rows × ~70 B per trade (binary COPY data), 11 MB at the defaults. 8 measured best
        # (bench_ingest): 91-95 % of bare COPY with the latency goals met; 5 gave 88 %, 10 a p99
        # commit latency over 250 ms.
        self.max_pending_rows = max_pending_rows or PENDING_BATCHES * batch_rows
        self._batch = Batch()
        self._pending_rows = 0  # buffered + in flight
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False
        self._force = False  # set by drain(): flush now, whatever the batch's size and age
        self._idle = asyncio.Event()
        self._idle.set()
        self.committed_batches = 0
        self._inflight: Batch | None = None

    # --- producer side --------------------------------------------------------------------
    async def submit(self, recv_mono_ns: int, *, metrics: Metrics | None = None, **rows: list) -> None:
        """Buffer rows (keyword = Batch field). Blocks while too much is pending (backpressure).

        ``trades``, ``backfill_trades`` and ``quotes`` (and their ``crypto_`` twins) take columns (a
        list of ``TradeColumns`` / ``QuoteColumns``, as the reader decodes them) or row tuples (REST
        backfill, tests), which are encoded here once. ``metrics``: the feed whose figures these rows
        count in (committed rows, commit latency, new backfilled trades); default the writer's own.
        """
        # Row tuples (a REST page of up to 10k rows) are encoded first, YIELD_EVERY rows between
        # event-loop turns, so a backfill never holds the live stream's processing for tens of ms;
        # only then are they added to the current batch, with no await in between.
        encoded: dict[str, tuple[list, list[tuple]]] = {}
        for name, values in rows.items():
            if values and name in _COLUMNS and isinstance(values[0], tuple):
                blocks: list = []
                bad: list[tuple] = []
                for i in range(0, len(values), YIELD_EVERY):
                    if i:
                        await asyncio.sleep(0)
                    b, x = _encode_rows(name, values[i:i + YIELD_EVERY])
                    blocks += b
                    bad += x
                encoded[name] = (blocks, bad)
        if self._pending_rows >= self.max_pending_rows:
            started = time.monotonic()
            self.metrics.add("stalls")
            while self._pending_rows >= self.max_pending_rows:
                self._space.clear()
                await self._space.wait()
            self.metrics.add("stall_seconds", time.monotonic() - started)
        batch = self._batch
        n = 0
        for name, values in rows.items():
            if not values:
                continue
            if name in _COLUMNS:
                if name in encoded:
                    values, bad = encoded[name]
                    if bad:
                        batch.bad.extend(bad)
                        n += len(bad)
                getattr(batch, name).extend(values)
                n += sum(block.n for block in values)
            else:
                getattr(batch, name).extend(values)
                n += len(values)
        if n == 0:
            return
        first = not batch.frames
        if first:
            batch.first_mono = recv_mono_ns
        batch.frames.append((recv_mono_ns, n, metrics))
        if metrics is not None:
            for name in ("backfill_trades", "backfill_crypto_trades", "backfill_option_trades"):
                if rows.get(name):
                    batch.backfill_metrics[name] = metrics
        batch.rows += n
        self._pending_rows += n
        self._idle.clear()
        # The first rows of a batch start its age clock (the writer sleeps untimed while empty);
        # a full batch goes at once.
        if first or batch.rows >= self.batch_rows:
            self._wake.set()

    async def drain(self) -> None:
        """Flush everything buffered and wait until it is committed."""
        self._force = True
        try:
            while self._batch.rows or self._pending_rows:
                self._idle.clear()
                self._wake.set()
                await self._idle.wait()
        finally:
            self._force = False

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def pending_rows(self) -> int:
        return self._pending_rows

    def spill(self, directory: Path) -> tuple[Path, int] | None:
        """Write every uncommitted batch (in flight and buffered) to a file; the next start commits it.

        Called only after the writer task was cancelled at a shutdown deadline. A batch that was in
        flight may have committed: its id travels along and the ledger decides on recovery.
        """
        batches = [b for b in (self._inflight, self._batch) if b is not None and b.rows]
        if not batches:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = directory / f"{self.worker}-{stamp}-{uuid.uuid4().hex[:8]}.spill.jsonl"
        tmp = path.with_suffix(".tmp")
        rows = 0
        with open(tmp, "w") as fh:
            for b in batches:
                fields = {f: _blocks_to_json(getattr(b, f)) if f in _COLUMNS else [list(r) for r in getattr(b, f)]
                          for f in SPILL_FIELDS if getattr(b, f)}
                for r in fields.get("bad", []):
                    r[2] = base64.b64encode(r[2]).decode()
                fh.write(json.dumps({"batch_id": str(b.batch_id), "maybe_committed": b is self._inflight,
                                     "rows": b.rows, "fields": fields}) + "\n")
                rows += b.rows
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
        return path, rows

    async def recover(self, directory: Path, stop: asyncio.Event | None = None) -> int:
        """Commit batches a previous run spilled (each once: the ledger is checked first); returns rows.

        ``stop`` (the worker's stop request) ends the recovery between two batches, never inside
        one's transaction: the batch in flight commits, then :class:`RecoveryStopped` is raised. A
        file is deleted only once all its batches committed; what stays is committed by the next
        start, which asks the ledger about each batch first (none lost, none doubled). A database
        that is down ends the recovery at its next retry instead of being waited for."""
        if not directory.is_dir():
            return 0
        total = 0
        for path in sorted(directory.glob(f"{self.worker}-*.spill.jsonl")):
            before = total
            for line in path.read_text().splitlines():
                if stop is not None and stop.is_set():
                    raise RecoveryStopped(f"stop requested during the spill recovery: {total} rows recovered; "
                                          f"{path.name} and any later spill files stay for the next start")
                doc = json.loads(line)
                batch = Batch(batch_id=uuid.UUID(doc["batch_id"]), maybe_committed=True, rows=doc["rows"])
                for name, rows in doc["fields"].items():
                    if name in _COLUMNS:
                        getattr(batch, name).extend(
                            _blocks_from_json(QuoteColumns if name in _QUOTE_FIELDS else TradeColumns, rows))
                        continue
                    if name == "bad":
                        rows = [(r[0], r[1], base64.b64decode(r[2])) for r in rows]
                    getattr(batch, name).extend(tuple(r) for r in rows)
                await self._commit(batch, stop)
                total += batch.rows
            path.unlink()
            log.warning("recovered %s: %d rows committed (or found already committed)", path.name, total - before)
        return total

    # --- consumer side --------------------------------------------------------------------
    async def run(self) -> None:
        """Commit batches until closed and empty."""
        while True:
            batch = self._batch
            if batch.rows == 0:
                if self._closing:
                    self._idle.set()
                    return
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            age = time.monotonic_ns() - batch.first_mono
            if batch.rows < self.batch_rows and age < self.flush_ns and not (self._closing or self._force):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), (self.flush_ns - age) / 1e9)
                except asyncio.TimeoutError:
                    pass
                continue
            self._batch = Batch()
            self._inflight = batch
            await self._commit(batch)
            self._inflight = None
            self._pending_rows -= batch.rows
            self._space.set()
            if self._batch.rows == 0:
                self._idle.set()

    async def _commit(self, batch: Batch, stop: asyncio.Event | None = None) -> None:
        """Commit ``batch`` (retrying while the database is unavailable). ``stop``: a recovered batch's
        retries end at a stop request (RecoveryStopped); the ledger decides about it next time."""
        backoff = retry.COMMIT.start()
        while True:
            try:
                async with self.pool.connection(timeout=10) as conn:
                    if batch.maybe_committed and await self._landed(conn, batch):
                        log.warning("batch %s had landed before the connection was lost; not writing it again",
                                    batch.batch_id)
                        break
                    await self._write(conn, batch)
                break
            except psycopg.errors.UniqueViolation:
                # A re-delivered trade: retry this batch through the de-duplicating path.
                batch.dedupe = True
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
                batch.maybe_committed = True
                self.metrics.add("db_errors")
                delay = backoff.next_delay()
                log.warning("database unavailable (%s); retrying batch of %d rows in %.1f s",
                            type(exc).__name__, batch.rows, delay)
                if stop is None:
                    await asyncio.sleep(delay)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise RecoveryStopped(f"stop requested while the database was unavailable; spilled batch "
                                          f"{batch.batch_id} stays for the next start") from exc
        now = time.monotonic_ns()
        counted = 0
        for recv, n, metrics in batch.frames:
            (metrics or self.metrics).observe("received_to_committed", now - recv, n)
            (metrics or self.metrics).add("rows_committed", n)
            counted += n
        if batch.rows > counted:  # a recovered spill: its frames were not kept
            self.metrics.add("rows_committed", batch.rows - counted)
        if batch.backfilled:
            batch.backfill_metrics.get("backfill_trades", self.metrics).add("backfilled", batch.backfilled)
        if batch.backfilled_crypto:
            batch.backfill_metrics.get("backfill_crypto_trades", self.metrics).add("backfilled", batch.backfilled_crypto)
        if batch.backfilled_options:
            batch.backfill_metrics.get("backfill_option_trades", self.metrics).add("backfilled",
                                                                                   batch.backfilled_options)
        self.committed_batches += 1

    async def _landed(self, conn: psycopg.AsyncConnection, batch: Batch) -> bool:
        cur = await conn.execute("SELECT 1 FROM ingest_batches WHERE batch_id = %s", (batch.batch_id,))
        return await cur.fetchone() is not None

    async def _write(self, conn: psycopg.AsyncConnection, batch: Batch) -> None:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ingest_batches (batch_id, worker, rows) VALUES (%s, %s, %s)",
                (batch.batch_id, self.worker, batch.rows),
            )
            cur = conn.cursor()
            cur.adapters.register_dumper(_NsTime, _NsTimestamptz)  # this cursor only
            cur.adapters.register_dumper(_Conditions, _CachedTextArray)
            if batch.trades or batch.backfill_trades:
                await self._note_trades(cur, STOCKS, batch.trades + batch.backfill_trades)
                if batch.trades:
                    if batch.dedupe:
                        await self._staged(cur, TRADES, batch.trades)
                    else:
                        await self._copy_columns(cur, TRADES.copy_statement(), batch.trades)
                if batch.backfill_trades:
                    inserted = await self._staged(cur, TRADES, batch.backfill_trades)
                    batch.backfilled = inserted
            if batch.quotes:
                await self._copy_columns(cur, QUOTES.copy_statement(), batch.quotes)
            if batch.bars:
                await self._upsert_bars(cur, batch.bars)
            if batch.statuses:
                await self._copy(cur, TRADING_STATUSES, (s + (s[0],) for s in batch.statuses))
            if batch.lulds:
                await self._copy(cur, LULDS, (x + (x[0],) for x in batch.lulds))
            if batch.indicators:
                await self._upsert_indicators(cur, batch.indicators)
            if batch.corrections or batch.cancels:
                await self._apply_corrections(cur, batch.corrections, batch.cancels)
            if batch.crypto_trades or batch.backfill_crypto_trades or batch.crypto_quotes or batch.crypto_bars \
                    or batch.crypto_orderbooks:
                await self._write_crypto(cur, batch)
            if batch.option_trades or batch.backfill_option_trades or batch.option_quotes:
                await self._write_options(cur, batch)
            if batch.news:
                # A few articles a minute: one upsert each; the newest version of an article wins.
                await cur.executemany(UPSERT_NEWS, [a[:8] + (ns_to_datetime(a[8]), ns_to_datetime(a[9]))
                                                    for a in batch.news])
            if batch.bad:
                await self._copy(cur, BAD_MESSAGES, ((s, r, p, self.worker) for s, r, p in batch.bad))

    async def _write_crypto(self, cur: psycopg.AsyncCursor, batch: Batch) -> None:
        """Crypto rows, in the batch's transaction: trades by COPY (through the de-duplicating staging
        table after a key violation, and always for backfills), quotes and orderbooks by COPY, bars upserted."""
        if batch.crypto_trades or batch.backfill_crypto_trades:
            await self._note_trades(cur, CRYPTO, batch.crypto_trades + batch.backfill_crypto_trades)
        if batch.crypto_trades:
            if batch.dedupe:
                await self._staged(cur, CRYPTO_TRADES, batch.crypto_trades)
            else:
                await self._copy_columns(cur, CRYPTO_TRADES.copy_statement(), batch.crypto_trades)
        if batch.backfill_crypto_trades:
            batch.backfilled_crypto = await self._staged(cur, CRYPTO_TRADES, batch.backfill_crypto_trades)
        if batch.crypto_quotes:
            await self._copy_columns(cur, CRYPTO_QUOTES.copy_statement(), batch.crypto_quotes)
        if batch.crypto_orderbooks:
            await self._copy(cur, CRYPTO_ORDERBOOKS, (o + (o[0],) for o in batch.crypto_orderbooks))
        if batch.crypto_bars:
            await cur.execute("CREATE TEMP TABLE IF NOT EXISTS crypto_bars_stage (LIKE crypto_bars INCLUDING DEFAULTS) "
                              "ON COMMIT DELETE ROWS")
            # numeric volume: the decimal the venue printed (alpaca/crypto.py's size_decimal)
            rows = (b[:7] + (size_decimal(b[7]),) + b[8:] for b in batch.crypto_bars)
            await self._copy(cur, CRYPTO_BARS_STAGE, rows)
            await cur.execute(UPSERT_CRYPTO_BARS_FROM_STAGE)

    async def _write_options(self, cur: psycopg.AsyncCursor, batch: Batch) -> None:
        """Option rows: trades by COPY (through the staging table after a key violation, always for a
        backfill), quotes by COPY."""
        if batch.option_trades:
            if batch.dedupe:
                await self._staged(cur, OPTION_TRADES, batch.option_trades)
            else:
                await self._copy_columns(cur, OPTION_TRADES.copy_statement(), batch.option_trades)
        if batch.backfill_option_trades:
            batch.backfilled_options = await self._staged(cur, OPTION_TRADES, batch.backfill_option_trades)
        if batch.option_quotes:
            await self._copy_columns(cur, OPTION_QUOTES.copy_statement(), batch.option_quotes)

    @staticmethod
    async def _note_trades(cur: psycopg.AsyncCursor, aggregate: Aggregate, blocks: list[TradeColumns]) -> None:
        """Tell ``aggregate``'s OHLCV rollups the time range these trades fall in (late ones get recomputed).

        Real feeds are not time-ordered (late prints carry earlier stamps): true min/max, one cheap call
        per batch."""
        lo, hi = min(b.time_min_ns for b in blocks), max(b.time_max_ns for b in blocks)
        await cur.execute("SELECT tickvault_aggregate_invalidate(%s, %s, %s)",
                          (aggregate.name, ns_to_datetime(lo), ns_to_datetime(hi)))

    @staticmethod
    async def _copy(cur: psycopg.AsyncCursor, spec: CopySpec, rows) -> None:
        async with cur.copy(spec.copy_statement()) as copy:
            copy.set_types(list(spec.types))
            # Rows are formatted synchronously into psycopg's 32 KB buffer and only a full buffer is
            # awaited: `await copy.write_row()` per row costs ~2x the formatting itself. Every
            # YIELD_EVERY rows the loop gets a turn, so a 20k-row batch never holds it for long.
            format_row = copy.formatter.write_row
            write = copy.write
            n = 0
            for row in rows:
                data = format_row(row)
                if data:
                    await write(data)
                n += 1
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)

    @staticmethod
    async def _copy_columns(cur: psycopg.AsyncCursor, statement: str, blocks: list) -> None:
        """COPY column blocks: their tuple data is already binary COPY, written in 1 MiB pieces."""
        async with cur.copy(statement) as copy:
            # Raw writes in binary format: the header and trailer are ours to send (psycopg adds
            # them only around write_row). Pieces of ~1 MiB keep one write from holding the loop.
            piece = [COPY_HEADER]
            size = len(COPY_HEADER)
            for block in blocks:
                piece.append(block.copy)
                size += len(block.copy)
                if size >= COPY_PIECE_BYTES:
                    await copy.write(b"".join(piece))
                    piece, size = [], 0
            piece.append(COPY_TRAILER)
            await copy.write(b"".join(piece))

    async def _staged(self, cur: psycopg.AsyncCursor, spec: CopySpec, blocks: list[TradeColumns]) -> int:
        """COPY into ``spec``'s staging twin, then insert what is not stored yet; returns rows inserted."""
        await cur.execute(spec.create_stage())
        await self._copy_columns(cur, spec.copy_statement(spec.stage), blocks)
        await cur.execute(spec.dedupe_insert())
        inserted = max(cur.rowcount, 0)
        offered = sum(b.n for b in blocks)
        if offered - inserted:
            log.debug("%d re-delivered %s rows were already stored", offered - inserted, spec.table)
        await cur.execute(f"TRUNCATE {spec.stage}")  # a dedupe retry and a backfill may share one transaction
        return inserted

    async def _upsert_bars(self, cur: psycopg.AsyncCursor, bars: list[tuple]) -> None:
        await cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS bars_stage (LIKE bars INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await self._copy(cur, BARS_STAGE, bars)
        await cur.execute(UPSERT_BARS_FROM_STAGE)

    async def _upsert_indicators(self, cur: psycopg.AsyncCursor, rows: list[tuple]) -> None:
        await cur.executemany(_UPSERT_INDICATORS, rows)

    async def _apply_corrections(self, cur: psycopg.AsyncCursor, corrections: list[tuple], cancels: list[tuple]) -> None:
        # Corrections refer to a trade sent earlier the same day: look back one day from the message.
        for c in corrections:
            (t_ns, sym, x, oid, op, osz, oc, cid, cp, cs, cc, tape) = c
            await cur.execute(
                "UPDATE trades SET price = %s, size = %s, conditions = %s, corrected = true "
                "WHERE symbol = %s AND trade_id = %s AND time > to_timestamp(%s::float8 / 1e9) - interval '1 day' "
                "AND time <= to_timestamp(%s::float8 / 1e9) RETURNING time",
                (cp, cs, cc, sym, oid, t_ns, t_ns),
            )
            found = await cur.fetchall()
            for (when,) in found:
                await cur.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (when, when))
            await cur.execute(
                "INSERT INTO trade_corrections (time, symbol, kind, exchange, orig_trade_id, orig_price, orig_size, "
                "orig_conditions, corr_trade_id, corr_price, corr_size, corr_conditions, tape, time_ns, applied) "
                "VALUES (to_timestamp(%s::float8 / 1e9), %s, 'correction', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (t_ns, sym, x, oid, op, osz, oc, cid, cp, cs, cc, tape, t_ns, bool(found)),
            )
        for c in cancels:
            (t_ns, sym, tid, x, p, s, action, tape) = c
            await cur.execute(
                "UPDATE trades SET canceled = true WHERE symbol = %s AND trade_id = %s "
                "AND time > to_timestamp(%s::float8 / 1e9) - interval '1 day' AND time <= to_timestamp(%s::float8 / 1e9) "
                "RETURNING time",
                (sym, tid, t_ns, t_ns),
            )
            found = await cur.fetchall()
            for (when,) in found:
                await cur.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (when, when))
            await cur.execute(
                "INSERT INTO trade_corrections (time, symbol, kind, exchange, orig_trade_id, orig_price, orig_size, "
                "tape, time_ns, applied) VALUES (to_timestamp(%s::float8 / 1e9), %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (t_ns, sym, "error" if action == "E" else "cancel", x, tid, p, s, tape, t_ns, bool(found)),
            )
