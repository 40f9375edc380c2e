"""TimescaleDB policies that depend on settings: aggregate refresh windows and compression.

Which edition gives what (``timescaledb.license``):

=====================================  ===============================  ==============================
                                       ``timescale`` (official images)  ``apache`` (Debian's package)
=====================================  ===============================  ==============================
OHLCV ``ohlcv_*``, ``crypto_ohlcv_*``  continuous aggregates            tickvault's rollup tables
background refresh                     refresh policies (below)         the ``refresh_indicators`` flow
compression of trades and quotes       compression policies (below)     none
retention                              tickvault's ``drop_chunks``      the same
=====================================  ===============================  ==============================

**Refresh policies agree with retention by construction.** A policy refreshes
``[now - start_offset, now - end_offset]`` without tickvault's locks, so its start must stay inside
the window of the raw table its aggregate is computed from, with room to spare: ``start_offset <=
retention_trades_days - RAW_MARGIN`` for the stocks' ``ohlcv_*``, ``retention_crypto_trades_days -
RAW_MARGIN`` for ``crypto_ohlcv_*`` (:func:`policy_start_offset`; both raw tables have 1-day chunks).
Timescale refuses a policy window shorter than two buckets past its
end offset; when the raw window is too short for that, the policy is removed and the
``refresh_indicators`` flow (clamped to the raw horizon, :mod:`tickvault.db.aggregates`) refreshes
that timeframe. :func:`apply_policies` runs at ``tickvault db up`` and before every retention purge,
so a changed retention setting reaches the policies before any chunk is dropped under it.

**Compression** (``timescale`` only): chunks of trades and quotes older than
``compress_after_hours`` are compressed (segment by symbol, newest first; migration 007). A late
trade or a backfill into a compressed chunk still inserts (TimescaleDB 2.11+ writes it to the
chunk's uncompressed part and checks the trades key against the compressed rows, so duplicates are
still refused); corrections update compressed rows in place. The policy recompresses such chunks.

What this module must never do: leave a refresh policy reaching past the raw retention window, or
touch anything on the ``apache`` edition (it only reports that the features are not there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from tickvault.config import Settings
from tickvault.db.aggregates import AGGREGATES
from tickvault.db.migrate import server_edition

__all__ = [
    "APACHE_NOTE",
    "COMPRESSED_TABLES",
    "RAW_MARGIN",
    "REFRESH_POLICIES",
    "CompressionStats",
    "PolicyReport",
    "RefreshPolicy",
    "apply_policies",
    "compression_stats",
    "current_policies",
    "policy_start_offset",
]

log = logging.getLogger(__name__)

APACHE_NOTE = (
    "apache edition: no continuous aggregates, refresh policies or compression on this server; "
    "tickvault keeps the OHLCV rollups itself (refresh_indicators flow) and retention uses drop_chunks"
)
# How far inside the raw retention window a policy's start must stay: one trades chunk (1 day), so
# a purge that runs just before the policy (its cutoff moves with the clock) is always behind it.
RAW_MARGIN = timedelta(days=1)
COMPRESSED_TABLES = ("trades", "quotes")


@dataclass(frozen=True)
class RefreshPolicy:
    """One continuous aggregate's refresh policy as migration 004 created it (the defaults)."""

    timeframe: str
    width: timedelta
    start_offset: timedelta  # how far back each run recomputes (late trades within it are picked up)
    end_offset: timedelta  # one bucket: the open bucket is served live (real-time aggregation)
    schedule: timedelta


REFRESH_POLICIES: dict[str, RefreshPolicy] = {
    p.timeframe: p
    for p in (
        RefreshPolicy("1m", timedelta(minutes=1), timedelta(hours=2), timedelta(minutes=1), timedelta(minutes=1)),
        RefreshPolicy("5m", timedelta(minutes=5), timedelta(hours=6), timedelta(minutes=5), timedelta(minutes=5)),
        RefreshPolicy("1h", timedelta(hours=1), timedelta(days=3), timedelta(hours=1), timedelta(minutes=30)),
        RefreshPolicy("1d", timedelta(days=1), timedelta(days=30), timedelta(days=1), timedelta(hours=1)),
    )
}


def policy_start_offset(timeframe: str, raw_retention_days: int) -> timedelta | None:
    """The start offset a refresh policy may have under this raw retention (None: no policy fits)."""
    policy = REFRESH_POLICIES[timeframe]
    if raw_retention_days == 0:  # raw trades kept forever: nothing can fall out of the window
        return policy.start_offset
    start = min(policy.start_offset, timedelta(days=raw_retention_days) - RAW_MARGIN)
    if start < policy.end_offset + 2 * policy.width:
        return None
    return start


@dataclass(slots=True)
class CompressionStats:
    table: str
    chunks: int
    compressed_chunks: int
    bytes_before: int  # of the compressed chunks, before compression
    bytes_after: int  # the same chunks now

    @property
    def bytes_saved(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


@dataclass(slots=True)
class PolicyReport:
    edition: str
    # continuous aggregate (ohlcv_1m, crypto_ohlcv_1m...) -> start offset now in force (None: no policy);
    # only on timescale
    refresh: dict[str, timedelta | None] = field(default_factory=dict)
    # table -> compress_after now in force (None: no policy); only on timescale
    compression: dict[str, timedelta | None] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # what this call changed, for the log

    @property
    def note(self) -> str:
        if self.edition != "timescale":
            return APACHE_NOTE
        refresh = ", ".join(f"{view} {_interval(v)}" for view, v in self.refresh.items())
        compress = ", ".join(f"{t} after {_interval(v)}" for t, v in self.compression.items())
        return f"timescale edition: refresh policies look back {refresh}; compression: {compress}"


def _interval(value: timedelta | None) -> str:
    if value is None:
        return "off"
    secs = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs % size == 0:
            return f"{secs // size} {unit}"
    return f"{secs} s"


def _refresh_job(conn: psycopg.Connection, view: str) -> tuple[timedelta, timedelta] | None:
    row = conn.execute(
        "SELECT (j.config->>'start_offset')::interval, (j.config->>'end_offset')::interval "
        "FROM timescaledb_information.jobs j JOIN timescaledb_information.continuous_aggregates c "
        "ON j.hypertable_schema = c.materialization_hypertable_schema "
        "AND j.hypertable_name = c.materialization_hypertable_name "
        "WHERE j.proc_name = 'policy_refresh_continuous_aggregate' AND c.view_name = %s",
        (view,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _compression_job(conn: psycopg.Connection, table: str) -> timedelta | None:
    row = conn.execute(
        "SELECT (config->>'compress_after')::interval FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_name = %s",
        (table,),
    ).fetchone()
    return None if row is None else row[0]


def apply_policies(conn: psycopg.Connection, settings: Settings) -> PolicyReport:
    """Make the server's refresh and compression policies what the settings say (idempotent).

    ``conn`` must be in autocommit mode; each change is its own transaction. Nothing is changed on
    the ``apache`` edition.
    """
    report = PolicyReport(edition=server_edition(conn))
    if report.edition != "timescale":
        return report
    for aggregate, (tf, policy) in ((a, p) for a in AGGREGATES for p in REFRESH_POLICIES.items()):
        view = aggregate.relation(tf)
        want = policy_start_offset(tf, getattr(settings, aggregate.retention))
        have = _refresh_job(conn, view)
        report.refresh[view] = want
        if (want is None and have is None) or (want is not None and have == (want, policy.end_offset)):
            continue
        with conn.transaction():
            conn.execute("SELECT remove_continuous_aggregate_policy(%s, if_exists => true)", (view,))
            if want is not None:
                conn.execute(
                    "SELECT add_continuous_aggregate_policy(%s, start_offset => %s::interval, "
                    "end_offset => %s::interval, schedule_interval => %s::interval)",
                    (view, want, policy.end_offset, policy.schedule),
                )
        report.changed.append(f"{view} refresh policy start_offset {_interval(want)}")
    # Whole seconds: the server's interval then reads back equal, so an unchanged setting changes nothing.
    want_after = (timedelta(seconds=round(settings.compress_after_hours * 3600))
                  if settings.compress_after_hours > 0 else None)
    for table in COMPRESSED_TABLES:
        have_after = _compression_job(conn, table)
        report.compression[table] = want_after
        if have_after == want_after:
            continue
        with conn.transaction():
            conn.execute("SELECT remove_compression_policy(%s, if_exists => true)", (table,))
            if want_after is not None:
                conn.execute(
                    "SELECT add_compression_policy(%s, compress_after => %s::interval)", (table, want_after)
                )
        report.changed.append(f"{table} compression after {_interval(want_after)}")
    for change in report.changed:
        log.info("timescaledb policies: %s", change)
    return report


def current_policies(conn: psycopg.Connection) -> PolicyReport:
    """The refresh and compression policies in force on the server (changes nothing)."""
    report = PolicyReport(edition=server_edition(conn))
    if report.edition == "timescale":
        for view in (a.relation(tf) for a in AGGREGATES for tf in REFRESH_POLICIES):
            job = _refresh_job(conn, view)
            report.refresh[view] = job[0] if job else None
        report.compression = {t: _compression_job(conn, t) for t in COMPRESSED_TABLES}
    return report


def compression_stats(conn: psycopg.Connection) -> list[CompressionStats]:
    """Compressed chunks and bytes saved per compressed table (empty on the ``apache`` edition)."""
    if server_edition(conn) != "timescale":
        return []
    out = []
    for table in COMPRESSED_TABLES:
        row = conn.execute(
            "SELECT coalesce(sum(total_chunks), 0), coalesce(sum(number_compressed_chunks), 0), "
            "coalesce(sum(before_compression_total_bytes), 0), coalesce(sum(after_compression_total_bytes), 0) "
            "FROM hypertable_compression_stats(%s::regclass)",
            (table,),
        ).fetchone()
        out.append(CompressionStats(table, int(row[0]), int(row[1]), int(row[2]), int(row[3])))  # type: ignore[index]
    return out
