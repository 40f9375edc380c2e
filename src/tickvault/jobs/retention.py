"""Retention: drop whole chunks of market data and operations tables older than their window.

Windows come from :class:`~tickvault.config.Settings` (days; 0 keeps a table forever):

======================================  ===========================================================
``retention_trades_days``               trades, trade_corrections, trading_statuses, lulds
``retention_quotes_days``               quotes
``retention_bars_days``                 bars, crypto_bars and the OHLCV aggregates (ohlcv_1m/5m/1h/1d,
                                        crypto_ohlcv_1m/5m/1h/1d)
``retention_crypto_trades_days``        crypto_trades
``retention_crypto_quotes_days``        crypto_quotes
``retention_crypto_orderbooks_days``    crypto_orderbooks
``retention_option_trades_days``        option_trades
``retention_option_quotes_days``        option_quotes
``retention_news_days``                 news
``retention_indicators_days``           indicators
``retention_ingest_stats_days``         ingest_stats
``retention_bad_messages_days``         bad_messages
======================================  ===========================================================

Trade history (orders, fills, position and account snapshots, reconciliation runs and diffs,
profiles) is never purged here: it is the record of what happened to money. ``ingest_batches`` is a
plain table (the writer's ledger of committed batch ids, only ever asked about recent batches), so
its rows older than :data:`INGEST_BATCHES_KEEP` are deleted.

How the boundary behaves. ``drop_chunks(table, older_than => now - window)`` drops only chunks whose
whole time range ends at or before the cutoff. So **no row inside the window is ever touched** —
not even one in the chunk that straddles the cutoff — and, by the same rule, a few rows older than
the window survive in that straddling chunk until the whole chunk ages out (at most one chunk
interval later: 1 day for trades, 6 hours for quotes, 7 days for bars). The report counts them
(``rows_older_remaining``). Deleting them row by row would cost a scan and bloat for no gain.

The OHLCV relations (stocks' ``ohlcv_*`` and crypto's ``crypto_ohlcv_*``) are rollup hypertables
(``ohlcv_1m_rollup``...) on the Apache edition and continuous aggregates (``ohlcv_1m``...) on the
Timescale edition; :func:`purge_retention` finds whichever exists, so the flow never needs to know
the edition. Aggregates keep their own window (``retention_bars_days``), dropped on the aggregate
itself.

Retention and refresh agree by construction (:mod:`tickvault.db.aggregates`): dropping chunks of a
raw table the aggregates are computed from (``trades``, ``crypto_trades``) records the newest dropped
chunk end as that table's raw horizon in the same transaction, below which no refresh of its
aggregates ever runs, so the aggregates kept for 730 days survive the raw trades' 30; the purge holds
the retention lock exclusively (a refresh holds it shared); and it first brings the ``timescale``
edition's refresh policies inside the raw window (:func:`tickvault.db.policies.apply_policies`).

What this module must never do: touch a row inside a window, purge trade history, or delete row by
row from a hypertable (whole chunks only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from tickvault.config import Settings
from tickvault.db.aggregates import AGGREGATES, RAW_HORIZON_SQL, RETENTION_LOCK_KEY
from tickvault.jobs.markdown import human_bytes, table
from tickvault.db.jobs import JobHealth, job_health, jobs_markdown, warning_lines
from tickvault.db.policies import CompressionStats, apply_policies, compression_stats
from tickvault.market_time import MarketClock

__all__ = [
    "INGEST_BATCHES_KEEP",
    "PurgeError",
    "PurgeReport",
    "TablePurge",
    "plan_purge",
    "purge_retention",
    "retention_plan",
]

log = logging.getLogger(__name__)

# The writer asks ingest_batches about a batch only right after an ambiguous commit (seconds); a
# week of ids is ample and keeps the table small.
INGEST_BATCHES_KEEP = timedelta(days=7)
# drop_chunks needs an exclusive lock on each chunk; a long reader would make it wait, and the
# writer's inserts would queue behind it. Give up on that table after this long and say so.
LOCK_TIMEOUT = "10s"
# Session-level advisory lock, exclusive here and shared by every aggregate refresh: two purges at
# once would only contend on the same chunk locks, and a refresh must not read a raw horizon that a
# purge is about to move.
PURGE_LOCK_KEY = RETENTION_LOCK_KEY
# The raw tables the OHLCV aggregates are computed from: their drops move their raw horizons.
RAW_TABLES = tuple(a.raw_table for a in AGGREGATES)
# The relations (and name prefixes) of the OHLCV aggregates, whatever the edition made of them.
_AGGREGATE_PREFIXES = tuple(f"{a.name}_" for a in AGGREGATES)

# (setting, tables) in the order they are purged.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("retention_trades_days", ("trades", "trade_corrections", "trading_statuses", "lulds")),
    ("retention_quotes_days", ("quotes",)),
    ("retention_bars_days", ("bars", "crypto_bars", "ohlcv_1m", "ohlcv_5m", "ohlcv_1h", "ohlcv_1d",
                             "crypto_ohlcv_1m", "crypto_ohlcv_5m", "crypto_ohlcv_1h", "crypto_ohlcv_1d")),
    ("retention_crypto_trades_days", ("crypto_trades",)),
    ("retention_crypto_quotes_days", ("crypto_quotes",)),
    ("retention_crypto_orderbooks_days", ("crypto_orderbooks",)),
    ("retention_option_trades_days", ("option_trades",)),
    ("retention_option_quotes_days", ("option_quotes",)),
    ("retention_news_days", ("news",)),
    ("retention_indicators_days", ("indicators",)),
    ("retention_ingest_stats_days", ("ingest_stats",)),
    ("retention_bad_messages_days", ("bad_messages",)),
)


def retention_plan(settings: Settings) -> list[tuple[str, str, int]]:
    """``(table, setting, days)`` for every table retention manages (days 0: keep forever)."""
    return [
        (table, setting, int(getattr(settings, setting))) for setting, tables in _RULES for table in tables
    ]


def plan_purge(settings: Settings, now: datetime) -> list[tuple[TablePurge, datetime | None]]:
    """Pure: every managed table's outcome-to-be and its cutoff (``now`` less its window), in purge
    order; a window of 0 days is already marked kept forever, with no cutoff."""
    plan: list[tuple[TablePurge, datetime | None]] = []
    for name, setting, days in retention_plan(settings):
        t = TablePurge(table=name, setting=setting, window_days=days)
        if days == 0:
            t.skipped = f"kept forever ({setting}=0)"
        plan.append((t, None if days == 0 else now - timedelta(days=days)))
    return plan


class PurgeError(RuntimeError):
    """At least one table could not be purged; ``report`` has every table's outcome (the rest ran)."""

    def __init__(self, report: PurgeReport) -> None:
        failed = ", ".join(f"{t.table} ({t.error})" for t in report.tables if t.error)
        super().__init__(f"retention purge failed for: {failed}")
        self.report = report


@dataclass(slots=True)
class TablePurge:
    """One table's outcome. Sizes are ``hypertable_size`` bytes (heap + indexes + TOAST)."""

    table: str  # the name the settings speak of (ohlcv_1m, not its rollup or materialization table)
    setting: str
    window_days: int
    cutoff: datetime | None = None  # None: kept forever (window 0) or skipped
    relation: str | None = None  # the hypertable actually purged
    chunks: list[str] = field(default_factory=list)  # dropped (or, in a dry run, droppable) chunks
    bytes_before: int = 0
    bytes_after: int = 0
    chunk_bytes: int = 0  # size of `chunks`, measured before the drop
    rows_older_remaining: int = 0  # rows older than the cutoff left in the straddling chunk
    skipped: str | None = None
    error: str | None = None

    @property
    def chunks_dropped(self) -> int:
        return len(self.chunks)

    @property
    def bytes_freed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


@dataclass(slots=True)
class PurgeReport:
    now: datetime
    dry_run: bool
    tables: list[TablePurge]
    ingest_batches_deleted: int = 0
    duration_s: float = 0.0
    # raw table -> the time no refresh of its aggregates covers before (None: no raw rows)
    raw_horizons: dict[str, datetime | None] = field(default_factory=dict)
    policy_note: str = ""  # the edition's refresh/compression policies now in force
    compression: list[CompressionStats] = field(default_factory=list)  # empty on apache
    jobs: list[JobHealth] = field(default_factory=list)

    @property
    def chunks_dropped(self) -> int:
        return sum(t.chunks_dropped for t in self.tables)

    @property
    def raw_horizon(self) -> datetime | None:
        """The stock trades' raw horizon (see :attr:`raw_horizons`)."""
        return self.raw_horizons.get("trades")

    @property
    def bytes_freed(self) -> int:
        """Bytes freed (dry run: the size of the chunks a real run would drop)."""
        if self.dry_run:
            return sum(t.chunk_bytes for t in self.tables)
        return sum(t.bytes_freed for t in self.tables)

    @property
    def ok(self) -> bool:
        return not any(t.error for t in self.tables)

    def table(self, name: str) -> TablePurge:
        return next(t for t in self.tables if t.table == name)

    def headline(self) -> str:
        """The artifact's first heading (without ``#``): what went, in a line."""
        if self.dry_run:
            return (f"Retention purge (dry run): would drop {self.chunks_dropped} chunk(s), "
                    f"free {human_bytes(self.bytes_freed)}")
        return f"Retention purge: dropped {self.chunks_dropped} chunk(s), freed {human_bytes(self.bytes_freed)}"

    def log_line(self) -> str:
        kept = sum(1 for t in self.tables if t.skipped)
        return (
            f"{self.headline().lower().replace('retention purge', 'retention')} across {len(self.tables)} tables"
            + (f" ({kept} kept forever)" if kept else "")
            + f"; {self.ingest_batches_deleted} ingest_batches row(s) "
            + ("would go" if self.dry_run else "deleted")
            + f"; took {self.duration_s * 1000:.0f} ms"
        )

    def to_markdown(self, clock: MarketClock | None = None) -> str:
        clock = clock or MarketClock()
        verb = "would drop" if self.dry_run else "dropped"
        lines = [
            f"# {self.headline()}",
            "",
            (
                f"As of {clock.stamp(self.now)}: {verb} {self.chunks_dropped} chunk(s), "
                f"{'would free' if self.dry_run else 'freed'} {human_bytes(self.bytes_freed)}; "
                f"{'would delete' if self.dry_run else 'deleted'} {self.ingest_batches_deleted} "
                f"ingest_batches row(s) older than {INGEST_BATCHES_KEEP.days} days. "
                f"Took {self.duration_s:.2f} s."
            ),
            "",
            (
                "Only whole chunks older than the cutoff are dropped: nothing inside a window is touched, "
                "and rows older than the cutoff in the chunk that straddles it stay until that chunk ages "
                "out (*older rows left*)."
            ),
            "",
        ]
        rows = []
        for t in self.tables:
            if t.skipped or t.error:
                rows.append((t.table, _window(t), f"error: {t.error}" if t.error else t.skipped, "", "", "", "", ""))
                continue
            freed = t.chunk_bytes if self.dry_run else t.bytes_freed
            cutoff = clock.stamp(t.cutoff, seconds=False, utc=False) if t.cutoff else ""
            rows.append((t.table, _window(t), cutoff, t.chunks_dropped, human_bytes(t.bytes_before),
                         human_bytes(t.bytes_after), human_bytes(freed), t.rows_older_remaining))
        lines += table(
            ("table", "window", "cutoff", f"chunks {verb}", "size before", "size after", "freed", "older rows left"),
            rows,
            right=(1, 3, 4, 5, 6, 7),
        )
        lines += [
            "",
            (
                "Never purged: orders, fills, position_snapshots, account_snapshots, "
                "reconciliation_runs, reconciliation_diffs, profiles."
            ),
            "",
            "## Aggregates and compression",
            "",
        ]
        if not self.dry_run:
            for raw, when in self.raw_horizons.items():
                horizon = f"none (no raw {raw})" if when is None else clock.stamp(when)
                lines.append(
                    f"- raw horizon of {raw}: {horizon} — OHLCV aggregates before it are kept as they are "
                    f"and never refreshed (their raw {raw} are gone)"
                )
        if self.policy_note:
            lines.append(f"- {self.policy_note}")
        if self.compression:
            saved = sum(c.bytes_saved for c in self.compression)
            parts = ", ".join(
                f"{c.table} {c.compressed_chunks}/{c.chunks} chunks ({human_bytes(c.bytes_before)} → {human_bytes(c.bytes_after)})"
                for c in self.compression
            )
            lines.append(f"- compression saved {human_bytes(saved)}: {parts}")
        elif self.policy_note:
            lines.append("- compression: not available on this edition")
        lines.append("")
        lines.append(jobs_markdown(self.jobs))
        return "\n".join(lines) + "\n"


def _apply_policies(db_url: str, settings: Settings) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return apply_policies(conn, settings).note


def _server_health(db_url: str) -> tuple[list[CompressionStats], list[JobHealth]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return compression_stats(conn), job_health(conn)


def _window(t: TablePurge) -> str:
    return "forever" if t.window_days == 0 else f"{t.window_days} d"


async def _resolve(conn: psycopg.AsyncConnection, name: str) -> tuple[str, str, str] | None:
    """``(drop target, hypertable holding the chunks, its time column)`` for a table name, or None.

    ``ohlcv_*``: the Apache edition's ``<name>_rollup`` hypertable, else the Timescale edition's
    continuous aggregate (dropped by its own name; chunks live in its materialization hypertable).
    """
    aggregate = name.startswith(_AGGREGATE_PREFIXES)
    candidates = [f"{name}_rollup", name] if aggregate else [name]
    for rel in candidates:
        row = await (await conn.execute(
            "SELECT format('%%I.%%I', h.hypertable_schema, h.hypertable_name), d.column_name "
            "FROM timescaledb_information.hypertables h JOIN timescaledb_information.dimensions d "
            "USING (hypertable_schema, hypertable_name) "
            "WHERE format('%%I.%%I', h.hypertable_schema, h.hypertable_name)::regclass = to_regclass(%s) "
            "AND d.dimension_number = 1",
            (rel,),
        )).fetchone()  # fmt: skip
        if row:
            return row[0], row[0], row[1]
    if aggregate:
        row = await (await conn.execute(
            "SELECT format('%%I.%%I', c.view_schema, c.view_name), "
            "format('%%I.%%I', c.materialization_hypertable_schema, c.materialization_hypertable_name), "
            "d.column_name FROM timescaledb_information.continuous_aggregates c "
            "JOIN timescaledb_information.dimensions d "
            "ON d.hypertable_schema = c.materialization_hypertable_schema "
            "AND d.hypertable_name = c.materialization_hypertable_name AND d.dimension_number = 1 "
            "WHERE format('%%I.%%I', c.view_schema, c.view_name)::regclass = to_regclass(%s)",
            (name,),
        )).fetchone()  # fmt: skip
        if row:
            return row[0], row[1], row[2]
    return None


async def _purge_table(conn: psycopg.AsyncConnection, t: TablePurge, cutoff: datetime, dry_run: bool) -> None:
    resolved = await _resolve(conn, t.table)
    if resolved is None:
        t.skipped = "not a hypertable in this database"
        return
    target, hypertable, time_column = resolved
    t.relation, t.cutoff = hypertable, cutoff
    size_sql = "SELECT coalesce(hypertable_size(%s::regclass), 0)"
    t.bytes_before = (await (await conn.execute(size_sql, (hypertable,))).fetchone())[0]  # type: ignore[index]
    # show_chunks(older_than) is exactly the set drop_chunks(older_than) drops; their ranges and sizes
    # say where the surviving old rows can be and what the drop frees.
    rows = await (await conn.execute(
        "SELECT s.chunk::text, c.range_end, coalesce(z.total_bytes, 0) "
        "FROM show_chunks(%s::regclass, older_than => %s::timestamptz) AS s(chunk) "
        "JOIN timescaledb_information.chunks c "
        "ON format('%%I.%%I', c.chunk_schema, c.chunk_name)::regclass = s.chunk "
        "LEFT JOIN chunks_detailed_size(%s::regclass) z "
        "ON format('%%I.%%I', z.chunk_schema, z.chunk_name)::regclass = s.chunk "
        "ORDER BY c.range_end",
        (target, cutoff, hypertable),
    )).fetchall()  # fmt: skip
    t.chunks = [r[0] for r in rows]
    t.chunk_bytes = sum(r[2] for r in rows)
    boundary = rows[-1][1] if rows else None  # every row before it is in a droppable chunk
    if not dry_run and rows:
        async with conn.transaction():
            dropped = await (await conn.execute(
                "SELECT d::text FROM drop_chunks(%s::regclass, older_than => %s::timestamptz) AS d",
                (target, cutoff),
            )).fetchall()  # fmt: skip
            t.chunks = [r[0] for r in dropped]
            if t.table in RAW_TABLES and t.chunks:
                # The raw horizon moves with the drop, atomically: no refresh may cover what went.
                await conn.execute(
                    "INSERT INTO raw_horizons (relation, dropped_before) VALUES (%s, %s) "
                    "ON CONFLICT (relation) DO UPDATE SET "
                    "dropped_before = greatest(raw_horizons.dropped_before, excluded.dropped_before), updated_at = now()",
                    (t.table, boundary),
                )
    t.bytes_after = (
        t.bytes_before if dry_run
        else (await (await conn.execute(size_sql, (hypertable,))).fetchone())[0]  # type: ignore[index]
    )  # fmt: skip
    # Old rows outside the droppable chunks: only the straddling chunk is scanned (chunk exclusion).
    count = sql.SQL("SELECT count(*) FROM {} WHERE {col} < %s AND {col} >= %s").format(
        sql.SQL(hypertable), col=sql.Identifier(time_column)
    )
    t.rows_older_remaining = (await (await conn.execute(
        count, (cutoff, boundary or datetime.min.replace(tzinfo=UTC))
    )).fetchone())[0]  # type: ignore[index]  # fmt: skip


async def purge_retention(
    settings: Settings,
    *,
    db_url: str | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Drop chunks older than each table's window (see the module docstring) and report what went.

    ``now``: the reference time (default: the current UTC time; tests pin it). ``dry_run``: list the
    chunks that would be dropped (``show_chunks``) and their size, drop and delete nothing.
    A table that fails (lock timeout, ...) does not stop the others; :class:`PurgeError` is raised at
    the end with the full report.
    """
    if db_url is None:
        from tickvault.db import database_url

        db_url = database_url(settings)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    started = time.perf_counter()
    report = PurgeReport(now=now, dry_run=dry_run, tables=[])
    if not dry_run:  # the refresh policies first: never a policy reaching past what is dropped next
        report.policy_note = await asyncio.to_thread(_apply_policies, db_url, settings)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        # Wait for running refreshes (they hold the lock shared) before lock_timeout applies.
        await conn.execute("SELECT pg_advisory_lock(%s)", (PURGE_LOCK_KEY,))
        await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            for t, cutoff in plan_purge(settings, now):
                report.tables.append(t)
                if cutoff is None:
                    continue
                table = t.table
                try:
                    await _purge_table(conn, t, cutoff, dry_run)
                except psycopg.Error as exc:
                    t.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                    log.error("retention: %s: %s", table, t.error)
                    continue
                log.log(
                    logging.INFO if t.chunks_dropped else logging.DEBUG,
                    "retention: %s %s %d chunk(s) older than %s (%d bytes), %d older row(s) remain",
                    table,
                    "would drop" if dry_run else "dropped",
                    t.chunks_dropped,
                    t.cutoff,
                    t.chunk_bytes,
                    t.rows_older_remaining,
                )
            batches_cutoff = now - INGEST_BATCHES_KEEP
            if dry_run:
                cur = await conn.execute(
                    "SELECT count(*) FROM ingest_batches WHERE committed_at < %s", (batches_cutoff,)
                )
                report.ingest_batches_deleted = (await cur.fetchone())[0]  # type: ignore[index]
            else:
                cur = await conn.execute(
                    "DELETE FROM ingest_batches WHERE committed_at < %s", (batches_cutoff,)
                )
                report.ingest_batches_deleted = cur.rowcount
            for raw in RAW_TABLES:
                cur = await conn.execute(RAW_HORIZON_SQL, (raw,))
                report.raw_horizons[raw] = row[0] if (row := await cur.fetchone()) else None
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK_KEY,))
    report.compression, report.jobs = await asyncio.to_thread(_server_health, db_url)
    for line in warning_lines(report.jobs):
        log.warning("%s", line)
    report.duration_s = time.perf_counter() - started
    log.info("%s", report.log_line())
    if not report.ok:
        raise PurgeError(report)
    return report
