"""Refresh the OHLCV aggregates, then recompute the 1-minute indicators of every symbol with new
bars, vectorized, and upsert them into ``indicators`` (``source = 'flow'``).

The values equal what the streaming worker's incremental :class:`~tickvault.indicators.IndicatorSet`
produces for the same bars: same definitions, VWAP from each bar's own ``vwap`` (the typical price
where a bar has none) restarted at each session start by the same
:class:`~tickvault.indicators.sessions.SessionTracker` the worker steps (US equities: the exchange's
extended session in New York time from ``/v2/calendar``, which the flow fetches and hands in as a
:class:`~tickvault.indicators.sessions.SessionCalendar`; crypto: the UTC day).
EMA, RSI, ATR and MACD are recursive: a value depends on every bar since the series began. Rather
than replaying a symbol's whole history every minute, each symbol loads a warm-up of
:data:`WARMUP_BARS` bars before its first new bar (and at least back to the start of that bar's
session, for VWAP). The slowest-decaying state is Wilder's (weight 13/14 per bar for RSI/ATR 14):
after 1000 bars a difference in the seed has shrunk by (13/14)**1000 ≈ 1e-32, far below float64
resolution, so the result equals a replay from the first bar. A symbol with fewer bars than that is replayed
from its first bar, exactly as the worker saw it.

"New bars" of a symbol are those at or after the newest bar the flow already computed (that bar
may have been still open then, so it is recomputed), or after ``since`` when given. Re-running is
idempotent: the same bars give the same rows.

Aggregates: :func:`tickvault.db.aggregates.refresh_ohlcv` without a window refreshes exactly what
changed since the last refresh on either edition (the Apache routine moves its watermark and
consumes late-data invalidations; Timescale's continuous-aggregate refresh consumes its own
invalidation log), so this module never needs to know the edition.

Nothing here uses Prefect, and nothing here may run on an event loop's thread: it blocks on the
database. From async code call the ``*_async`` wrappers, which use a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from tickvault.alpaca.protocol import datetime_to_ns
from tickvault.db.aggregates import STOCKS, AggregateStatus, RefreshResult, aggregate_status, refresh_ohlcv
from tickvault.db.migrate import server_edition
from tickvault.db.tables import indicators_upsert
from tickvault.db.jobs import JobHealth, job_health, jobs_markdown, warning_lines
from tickvault.indicators import COLUMNS, compute_all
from tickvault.indicators import definitions as d
from tickvault.indicators.sessions import SessionCalendar, default_calendar, session_marks
from tickvault.jobs.markdown import table
from tickvault.market_time import MarketClock

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INITIAL_LOOKBACK",
    "WARMUP_BARS",
    "IndicatorRefreshSummary",
    "log_summary",
    "NewBars",
    "OhlcvState",
    "SymbolRefresh",
    "compute_symbol",
    "history_start",
    "session_start_of",
    "indicator_rows",
    "load_bars",
    "upsert_indicator_rows",
    "find_new_bars",
    "refresh_aggregates",
    "refresh_indicators",
    "read_ohlcv_state",
    "refresh_indicators_async",
]

TIMEFRAME = "1m"  # the worker computes indicators on 1-minute bars; so does the flow
SOURCE = "flow"
WARMUP_BARS = d.WARMUP_BARS  # (13/14)**1000 ≈ 1e-32: 1000 bars of warm-up equal a full replay
# The warm-up search looks back at most this far (1000 market-hours bars are ~2.6 sessions; 30
# days covers weekends and holidays with room to spare while bounding the scan).
MAX_HISTORY = timedelta(days=30)
# When the flow has never run, it starts this far back from now rather than scanning all history.
DEFAULT_INITIAL_LOOKBACK = timedelta(days=1)

_UPSERT = indicators_upsert(time_from_ns=False, source=SOURCE)  # the flow's rows, marked as its own


@dataclass(frozen=True)
class NewBars:
    """A symbol whose bars from ``start`` (inclusive) to ``last`` need indicators."""

    symbol: str
    start: datetime
    last: datetime
    bars: int


@dataclass(frozen=True)
class SymbolRefresh:
    symbol: str
    history_bars: int  # bars loaded, warm-up included
    rows_upserted: int  # new bars written
    first: datetime | None
    last: datetime | None
    last_close: float | None
    last_rsi: float | None


# Bars of history an indicator needs before its first value (TA-Lib's warm-up, definitions.py):
# a symbol with fewer shows that indicator empty, and the artifact says so.
BARS_NEEDED: dict[str, int] = {
    f"MACD {d.MACD_FAST}/{d.MACD_SLOW}/{d.MACD_SIGNAL}": d.macd_first_index(d.MACD_FAST, d.MACD_SLOW, d.MACD_SIGNAL) + 1,
    f"EMA {d.EMA_SLOW_PERIOD}": d.ema_first_index(d.EMA_SLOW_PERIOD) + 1,
    f"SMA {d.SMA_PERIOD} and Bollinger {d.BB_PERIOD}": max(d.sma_first_index(d.SMA_PERIOD), d.bbands_first_index(d.BB_PERIOD)) + 1,
    f"RSI {d.RSI_PERIOD} and ATR {d.ATR_PERIOD}": max(d.rsi_first_index(d.RSI_PERIOD), d.atr_first_index(d.ATR_PERIOD)) + 1,
    f"EMA {d.EMA_FAST_PERIOD}": d.ema_first_index(d.EMA_FAST_PERIOD) + 1,
}
RSI_BARS_NEEDED = d.rsi_first_index(d.RSI_PERIOD) + 1


@dataclass(frozen=True)
class OhlcvState:
    """The server's edition and how far each OHLCV timeframe is materialized (after a refresh)."""

    edition: str
    timeframes: list[AggregateStatus]


@dataclass
class IndicatorRefreshSummary:
    """What one refresh did; :meth:`to_markdown` is the flow's artifact."""

    started_at: datetime
    aggregates: list[RefreshResult] = field(default_factory=list)
    symbols: list[SymbolRefresh] = field(default_factory=list)
    aggregates_s: float = 0.0
    compute_s: float = 0.0
    duration_s: float = 0.0
    jobs: list[JobHealth] = field(default_factory=list)  # TimescaleDB background jobs, failing first
    ohlcv: OhlcvState | None = None

    @property
    def rows_upserted(self) -> int:
        return sum(s.rows_upserted for s in self.symbols)

    def headline(self, clock: MarketClock | None = None) -> str:
        """The artifact's first heading (without ``#``)."""
        clock = clock or MarketClock()
        return (
            f"Indicators refreshed at {clock.time(self.started_at, seconds=False)}: "
            f"{self.rows_upserted} {'row' if self.rows_upserted == 1 else 'rows'} for "
            f"{len(self.symbols)} {'symbol' if len(self.symbols) == 1 else 'symbols'}"
        )

    def short_of_history(self) -> list[tuple[str, int, int, int]]:
        """(indicator, bars needed, symbols with fewer, most bars among those), for every indicator
        that is empty for some symbol because its history is too short."""
        out = []
        for name, needed in BARS_NEEDED.items():
            short = [s.history_bars for s in self.symbols if s.history_bars < needed]
            if short:
                out.append((name, needed, len(short), max(short)))
        return out

    def log_line(self, clock: MarketClock | None = None) -> str:
        clock = clock or MarketClock()
        parts = [f"refresh-indicators: {self.rows_upserted} indicator rows for {len(self.symbols)} symbols"]
        if self.ohlcv is not None:
            parts.append("OHLCV materialized to " + ", ".join(
                f"{t.timeframe} {clock.time(t.materialized_to, seconds=False)}" for t in self.ohlcv.timeframes))
        short = self.short_of_history()
        if short:
            parts.append("too little history: " + ", ".join(
                f"{name} (needs {needed} bars) empty for {count} symbol(s)" for name, needed, count, _ in short))
        parts.append(f"took {self.duration_s * 1000:.0f} ms")
        return "; ".join(parts)

    def to_markdown(self, clock: MarketClock | None = None) -> str:
        clock = clock or MarketClock()
        lines = [
            f"# {self.headline(clock)}",
            "",
            f"- started {clock.stamp(self.started_at)}, took {self.duration_s:.2f} s "
            f"(aggregates {self.aggregates_s:.2f} s, indicators {self.compute_s:.2f} s)",
            f"- one-minute indicators (source `{SOURCE}`) for every symbol with new bars",
            "",
            "## OHLCV aggregates: current up to when",
            "",
        ]
        lines += self._aggregates_markdown(clock)
        lines += ["", "## Symbols", ""]
        if self.symbols:
            lines += table(
                ("symbol", "new bars", "history", "first new", "last", "close", f"RSI {d.RSI_PERIOD}"),
                [(s.symbol, s.rows_upserted, s.history_bars, clock.short(s.first), clock.short(s.last),
                  _num(s.last_close), _rsi_cell(s)) for s in self.symbols],
                right=(1, 2, 5, 6),
            )
            short = self.short_of_history()
            if short:
                lines += ["", "**Why some indicators are empty:** too little history. An indicator has no value "
                          "until a symbol has as many one-minute bars as its warm-up needs (TA-Lib's definition; "
                          "the values appear by themselves as bars arrive):", ""]
                lines += [f"- {name}: {needed} bars needed; empty for {count} symbol(s), which have at most {most}"
                          for name, needed, count, most in short]
        else:
            lines.append("No new bars since the last refresh.")
        lines += ["", jobs_markdown(self.jobs)]
        return "\n".join(lines) + "\n"

    def _aggregates_markdown(self, clock: MarketClock) -> list[str]:
        state = self.ohlcv
        edition = state.edition if state else None
        how = {
            "timescale": "continuous aggregates with real-time aggregation (Timescale edition)",
            "apache": "tickvault's rollups behind views (Apache-2 edition)",
        }.get(edition or "", "the OHLCV relations")
        lines = [
            f"`ohlcv_1m` … `ohlcv_1d` are {how}: a query is always current to the newest trade. Buckets "
            "before the time below are stored; newer ones are computed from `trades` when read, so a "
            "time falling behind makes reads slower, not wrong.",
            "",
        ]
        done = {r.timeframe: r for r in self.aggregates if r.aggregate == STOCKS.name}
        if state is None:
            lines.append("Materialization state was not read in this run.")
            return lines
        rows = []
        for t in state.timeframes:
            r = done.get(t.timeframe)
            if r is None:
                this_run = "nothing pending"
            elif r.rows is None:  # continuous aggregates do not report a count
                this_run = f"refreshed {clock.short(r.lo)} – {clock.short(r.hi)} (Timescale reports no row count)"
            else:
                this_run = f"{r.rows} buckets rewritten, {clock.short(r.lo)} – {clock.short(r.hi)}"
            rows.append((t.timeframe,
                         clock.stamp(t.materialized_to, seconds=False) if t.materialized_to else "nothing yet",
                         clock.time(t.refreshed_at) if t.refreshed_at else "never", this_run))
        lines += table(("timeframe", "materialized up to", "last refresh", "this run"), rows)
        crypto = [r for r in self.aggregates if r.aggregate != STOCKS.name]
        lines += ["", "`crypto_ohlcv_1m` … `crypto_ohlcv_1d` (crypto pairs, from `crypto_trades`): "
                  + (", ".join(f"{r.timeframe} {clock.short(r.lo)} – {clock.short(r.hi)}" for r in crypto)
                     if crypto else "nothing pending") + "."]
        return lines


def _utc(when: datetime | None) -> str:
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _rsi_cell(s: SymbolRefresh) -> str:
    if s.last_rsi is None and s.history_bars < RSI_BARS_NEEDED:
        return f"- (needs {RSI_BARS_NEEDED} bars)"
    return _num(s.last_rsi)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


# --- steps ------------------------------------------------------------------------------------


def refresh_aggregates(url: str) -> list[RefreshResult]:
    """Materialize what changed since the last refresh, on either edition (see the module docstring)."""
    results = refresh_ohlcv(url)
    for r in results:
        log.info(
            "%s_%s: refreshed %s to %s UTC%s", r.aggregate, r.timeframe, _utc(r.lo), _utc(r.hi),
            "" if r.rows is None else f", {r.rows} buckets written",
        )
    return results


def read_ohlcv_state(url: str) -> OhlcvState:
    """The edition and each timeframe's materialization watermark (see :class:`AggregateStatus`)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return OhlcvState(server_edition(conn), aggregate_status(conn))


def check_jobs(url: str) -> list[JobHealth]:
    """TimescaleDB's background jobs with their health; each failing one is logged as a warning."""
    with psycopg.connect(url, autocommit=True) as conn:
        jobs = job_health(conn)
    for line in warning_lines(jobs):
        log.warning("%s", line)
    return jobs


def find_new_bars(
    url: str,
    *,
    since: datetime | None = None,
    symbols: Sequence[str] | None = None,
    now: datetime | None = None,
    initial_lookback: timedelta = DEFAULT_INITIAL_LOOKBACK,
) -> list[NewBars]:
    """Symbols with bars needing indicators, and from when.

    Without ``since``: from each symbol's newest flow-computed bar (inclusive); a symbol the flow
    never computed starts where the oldest cursor is, or ``initial_lookback`` before ``now`` on the
    very first run. With ``since``: every bar at or after it (an explicit recompute).
    """
    now = now or datetime.now(UTC)
    wanted = [s.upper() for s in symbols] if symbols else None
    with psycopg.connect(url, autocommit=True) as conn:
        cursors: dict[str, datetime] = {}
        if since is None:
            rows = conn.execute(
                "SELECT symbol, max(time) FROM indicators WHERE timeframe = %s AND source = %s GROUP BY symbol",
                (TIMEFRAME, SOURCE),
            ).fetchall()
            cursors = {sym: t for sym, t in rows}
            floor = min(cursors.values()) if cursors else now - initial_lookback
        else:
            floor = since
        query = "SELECT symbol, min(bucket), max(bucket), count(*) FROM ohlcv_1m WHERE bucket >= %s"
        params: list[object] = [floor]
        if wanted:
            query += " AND symbol = ANY(%s)"
            params.append(wanted)
        query += " GROUP BY symbol ORDER BY symbol"
        found = []
        for sym, first, last, count in conn.execute(query, params).fetchall():
            start = cursors.get(sym, floor)
            if start > last:
                continue
            if start > first:
                count = conn.execute(
                    "SELECT count(*) FROM ohlcv_1m WHERE symbol = %s AND bucket >= %s", (sym, start)
                ).fetchone()[0]
            if count:
                found.append(NewBars(sym, max(start, first), last, count))
        return found


#: one 1-minute bar as the indicators need it: (bucket, high, low, close, volume, vwap or None).
Bar = tuple[datetime, float, float, float, float, float | None]


def session_start_of(new: NewBars, calendar: SessionCalendar) -> datetime:
    """Pure: the start of the session holding the first new bar (VWAP restarts there); the bar's own
    time when it falls outside every session."""
    window = calendar.window(new.symbol, datetime_to_ns(new.start))
    return datetime.fromtimestamp(window[0] // 10**9, UTC) if window else new.start


def history_start(new: NewBars, warmup_start: datetime | None, session_start: datetime) -> datetime:
    """Pure: where a symbol's loaded history begins: the warm-up's first bar (``None``: fewer than
    the warm-up before the start, so replay from :data:`MAX_HISTORY` back), never after the start of
    the first new bar's session."""
    return min(warmup_start, session_start) if warmup_start else min(new.start - MAX_HISTORY, session_start)


def indicator_rows(
    symbol: str, bars: Sequence[Bar], start: datetime, calendar: SessionCalendar
) -> tuple[list[tuple], SymbolRefresh]:
    """Pure: every indicator over ``bars`` (oldest first, warm-up included), vectorized, sessions
    stepped as the worker steps them (:func:`~tickvault.indicators.sessions.session_marks`); the
    :data:`~tickvault.db.tables.INDICATORS` rows (plus ``source``) of the bars at or after ``start``,
    NaN as None, and what they were."""
    if not bars:
        return [], SymbolRefresh(symbol, 0, 0, None, None, None, None)
    n = len(bars)
    buckets = [b[0] for b in bars]
    high = np.fromiter((b[1] for b in bars), dtype=np.float64, count=n)
    low = np.fromiter((b[2] for b in bars), dtype=np.float64, count=n)
    close = np.fromiter((b[3] for b in bars), dtype=np.float64, count=n)
    volume = np.fromiter((b[4] for b in bars), dtype=np.float64, count=n)
    bar_vwap = np.fromiter((np.nan if b[5] is None else b[5] for b in bars), dtype=np.float64,
                           count=n)  # NaN: no vwap, the typical price stands in
    starts, inside = session_marks(symbol, (datetime_to_ns(b) for b in buckets), calendar)
    values = compute_all(
        high, low, close, volume, bar_vwap=bar_vwap,
        session_start=np.array(starts, dtype=bool), in_session=np.array(inside, dtype=bool),
    )
    first_new = next(i for i, b in enumerate(buckets) if b >= start)
    columns = [values[c] for c in COLUMNS]
    rows = [
        (buckets[i], symbol, TIMEFRAME, float(close[i]), *(_none_if_nan(col[i]) for col in columns), SOURCE)
        for i in range(first_new, n)
    ]
    return rows, SymbolRefresh(
        symbol=symbol,
        history_bars=n,
        rows_upserted=len(rows),
        first=buckets[first_new],
        last=buckets[-1],
        last_close=float(close[-1]),
        last_rsi=_none_if_nan(values["rsi_14"][-1]),
    )


def load_bars(conn: psycopg.Connection, new: NewBars, *, warmup_bars: int, session_start: datetime) -> list[Bar]:
    """The warm-up and the new bars of one symbol from ``ohlcv_1m``, oldest first."""
    row = conn.execute(
        "SELECT bucket FROM ohlcv_1m WHERE symbol = %s AND bucket < %s AND bucket >= %s "
        "ORDER BY bucket DESC OFFSET %s LIMIT 1",
        (new.symbol, new.start, new.start - MAX_HISTORY, max(warmup_bars - 1, 0)),
    ).fetchone()
    return conn.execute(
        "SELECT bucket, high, low, close, volume, vwap FROM ohlcv_1m "
        "WHERE symbol = %s AND bucket >= %s AND bucket <= %s ORDER BY bucket",
        (new.symbol, history_start(new, row[0] if row else None, session_start), new.last),
    ).fetchall()


def upsert_indicator_rows(conn: psycopg.Connection, rows: Sequence[tuple]) -> None:
    """Upsert (keyed by symbol, timeframe, time: idempotent) and commit."""
    with conn.cursor() as cur:
        cur.executemany(_UPSERT, rows)
    conn.commit()


def compute_symbol(
    url: str, new: NewBars, *, warmup_bars: int = WARMUP_BARS, calendar: SessionCalendar | None = None
) -> SymbolRefresh:
    """One symbol: load its bars, compute its indicators, upsert the new rows.
    ``calendar``: the US equity sessions (default: the default rule, logged once)."""
    calendar = calendar if calendar is not None else default_calendar()
    with psycopg.connect(url) as conn:
        bars = load_bars(conn, new, warmup_bars=warmup_bars, session_start=session_start_of(new, calendar))
        rows, refreshed = indicator_rows(new.symbol, bars, new.start, calendar)
        if rows:
            upsert_indicator_rows(conn, rows)
    return refreshed


def refresh_indicators(
    url: str,
    *,
    since: datetime | None = None,
    symbols: Sequence[str] | None = None,
    warmup_bars: int = WARMUP_BARS,
    refresh: bool = True,
    now: datetime | None = None,
    initial_lookback: timedelta = DEFAULT_INITIAL_LOOKBACK,
    calendar: SessionCalendar | None = None,
) -> IndicatorRefreshSummary:
    """The whole job in one call (what tests and scripts use; the flow runs the same steps as tasks).
    ``calendar``: the US equity sessions, e.g. from
    :func:`~tickvault.indicators.sessions.fetch_session_calendar` (default: the default rule)."""
    calendar = calendar if calendar is not None else default_calendar()
    t0 = time.perf_counter()
    summary = IndicatorRefreshSummary(started_at=datetime.now(UTC))
    if refresh:
        summary.aggregates = refresh_aggregates(url)
    t1 = time.perf_counter()
    summary.aggregates_s = t1 - t0
    for new in find_new_bars(url, since=since, symbols=symbols, now=now, initial_lookback=initial_lookback):
        summary.symbols.append(compute_symbol(url, new, warmup_bars=warmup_bars, calendar=calendar))
    summary.compute_s = time.perf_counter() - t1
    summary.ohlcv = read_ohlcv_state(url)
    summary.jobs = check_jobs(url)
    summary.duration_s = time.perf_counter() - t0
    log_summary(summary)
    return summary


def log_summary(summary: IndicatorRefreshSummary, clock: MarketClock | None = None) -> None:
    """The refresh's one INFO line with its figures (what a flow run's logs show)."""
    log.info("%s", summary.log_line(clock))


async def refresh_indicators_async(url: str, **kwargs: object) -> IndicatorRefreshSummary:
    return await asyncio.to_thread(refresh_indicators, url, **kwargs)  # type: ignore[arg-type]
