"""What the dashboard reads, as async functions over one pooled connection each.

Every function here only reads (SELECT, and catalog functions that only read); the kill switch's
writes live in :mod:`tickvault.ui.killswitch`. Each answer is bounded (a time window and a row cap)
so a page never asks for more than it can draw: ``MAX_BARS`` candles, ``MAX_ROWS`` table rows.
Shapes are columnar where a chart draws them (one list per field), so a month of 1-minute bars is
a few lists, not 43,000 dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg

from tickvault.config import Settings
from tickvault.db.recipes import recipe_sql
from tickvault.indicators.sessions import is_crypto

# A chart of more candles than this is unreadable and slow to ship; 31 days of 1-minute bars fit.
MAX_BARS = 50_000
MAX_ROWS = 200  # rows per table on the Trading page (orders, fills, diffs, profiles)
HEALTH_MAX_ROWS = 2_000  # ingest_stats rows per worker on the Health page (≈ 5.5 h at 10 s)

# timeframe → (relation, bucket width, default window). The relation is picked from this table,
# never formatted from a request.
TIMEFRAMES: dict[str, tuple[str, timedelta, timedelta]] = {
    "1m": ("ohlcv_1m", timedelta(minutes=1), timedelta(days=1)),
    "5m": ("ohlcv_5m", timedelta(minutes=5), timedelta(days=5)),
    "1h": ("ohlcv_1h", timedelta(hours=1), timedelta(days=60)),
    "1d": ("ohlcv_1d", timedelta(days=1), timedelta(days=730)),
}
OVERLAYS = ("ema_12", "ema_26", "sma_20", "bb_upper", "bb_middle", "bb_lower", "vwap")
PANES = ("rsi_14", "macd", "macd_signal", "macd_hist")
_BAR_FIELDS_T = ("t", "o", "h", "l", "c", "v")

# One statement per timeframe: the view's union is planned with the symbol and the window pushed
# into both branches (rollup index on (symbol, bucket DESC); trades index on (symbol, time DESC)
# through TimescaleDB's time_bucket predicate transform), and indicators probed by their key
# within the same window. The transform needs the window as constants at plan time: bound
# parameters are, in the custom plans of unprepared statements, so the dashboard's connections
# never prepare (app.py). With now() in the statement instead, every trade of the symbol since the
# watermark would be read. PostgreSQL builds the columnar JSON itself: a month of bars is one text
# value, never 800,000 Python floats (measured: 0.74 s of the API's time went there).
_COLUMNS = {"t": "extract(epoch FROM b.bucket)::bigint", "o": "b.open", "h": "b.high", "l": "b.low",
            "c": "b.close", "v": "b.volume"} | {name: f"nullif(i.{name}, 'NaN')" for name in OVERLAYS + PANES}


def _json_arrays(names) -> str:
    return ", ".join(f"'{n}', coalesce(json_agg({n} ORDER BY t), '[]')" for n in names)


# Binary columns: each column one bytea of float8send values (8 bytes, big-endian, the exact double
# PostgreSQL holds), ordered by time, built by PostgreSQL; NaN where an indicator has no value.
# The response is those bytes as they come (no Python float per value); the browser reads them
# with a DataView. Half the JSON's size, and no JSON.parse of 10 MB on the page.
BAR_COLUMNS = ("t", "o", "h", "l", "c", "v", *OVERLAYS, *PANES)


def _f64_columns(names) -> str:
    return " || ".join(
        f"coalesce(string_agg(float8send(coalesce({n}::float8, 'NaN')), ''::bytea ORDER BY t), ''::bytea)"
        for n in names
    )


def _bars_statement(rel: str, result: str) -> str:
    """The statement over ``rel`` (``ohlcv_1m``…, or a crypto pair's ``crypto_ohlcv_1m``… from migration
    014) returning the row count and ``result``."""
    return f"""
WITH b AS (
    SELECT {", ".join(f"{expr} AS {name}" for name, expr in _COLUMNS.items())}
      FROM {rel} b
      LEFT JOIN indicators i ON i.symbol = %(symbol)s AND i.timeframe = %(tf)s AND i.time = b.bucket
                            AND i.time >= %(start)s AND i.time < %(end)s
     WHERE b.symbol = %(symbol)s AND b.bucket >= %(start)s AND b.bucket < %(end)s
     ORDER BY b.bucket DESC
     LIMIT %(limit)s)
SELECT count(*), {result}
  FROM b"""


# (timeframe, crypto?) → the statement.
_BARS_SQL = {
    (tf, crypto): _bars_statement(("crypto_" if crypto else "") + rel, f"""json_build_object('symbol', %(symbol)s::text, 'timeframe', %(tf)s::text, {_json_arrays(_BAR_FIELDS_T)},
                                   'ind', json_build_object({_json_arrays(OVERLAYS + PANES)}))::text""")
    for tf, (rel, _w, _d) in TIMEFRAMES.items() for crypto in (False, True)
}
_BARS_F64_SQL = {(tf, crypto): _bars_statement(("crypto_" if crypto else "") + rel, _f64_columns(BAR_COLUMNS))
                 for tf, (rel, _w, _d) in TIMEFRAMES.items() for crypto in (False, True)}


class Bars(NamedTuple):
    """Bars as the JSON object pages draw: ``{symbol, timeframe, t, o, h, l, c, v, ind: {...}}``."""

    count: int
    json: str


class UnknownTimeframe(ValueError):
    """A timeframe the dashboard has no relation for."""


@dataclass(frozen=True, slots=True)
class BarWindow:
    symbol: str
    timeframe: str
    start: datetime
    end: datetime


def bar_window(symbol: str, timeframe: str, days: float | None = None, now: datetime | None = None,
               before: datetime | None = None) -> BarWindow:
    """``days`` (default: the timeframe's window) back from now, or, with ``before``, the older bars
    ``[before - days, before)`` the Market page loads as the user scrolls back."""
    if timeframe not in TIMEFRAMES:
        raise UnknownTimeframe(f"timeframe must be one of {', '.join(TIMEFRAMES)}, not {timeframe!r}")
    _rel, width, default = TIMEFRAMES[timeframe]
    now = now or datetime.now(UTC)
    span = timedelta(days=days) if days else default
    if before is not None:
        return BarWindow(symbol.upper(), timeframe, before - span, before)
    # The end is open: the simulator (or a clock ahead of ours) may stamp trades a little ahead.
    return BarWindow(symbol.upper(), timeframe, now - span, now + timedelta(days=1))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value  # NaN → null (JSON has no NaN)


def _bars_params(w: BarWindow, limit: int) -> dict[str, Any]:
    return {"symbol": w.symbol, "tf": w.timeframe, "start": w.start, "end": w.end, "limit": min(limit, MAX_BARS)}


async def bars(conn: psycopg.AsyncConnection, w: BarWindow, limit: int = MAX_BARS) -> Bars:
    """Candles, volume and indicator columns of one symbol and timeframe, oldest first (JSON text)."""
    cur = await conn.execute(_BARS_SQL[w.timeframe, is_crypto(w.symbol)], _bars_params(w, limit))
    count, text = await cur.fetchone()  # type: ignore[misc]
    return Bars(count, text)


class BarColumns(NamedTuple):
    """Bars as :data:`BAR_COLUMNS` columns of ``count`` big-endian float64 each, one after another."""

    count: int
    data: bytes


async def bar_columns(conn: psycopg.AsyncConnection, w: BarWindow, limit: int = MAX_BARS) -> BarColumns:
    """The same bars as :func:`bars`, as binary columns (see :data:`BAR_COLUMNS`)."""
    # binary: the bytea as bytes, not 12 MB of hex text to decode
    cur = await conn.execute(_BARS_F64_SQL[w.timeframe, is_crypto(w.symbol)], _bars_params(w, limit), binary=True)
    count, data = await cur.fetchone()  # type: ignore[misc]
    return BarColumns(count, bytes(data))


# The open minute, plus the one before it during the first seconds of a minute: its last trades
# and its indicators land just after it closes. Later in the minute only the open bar is re-read,
# which halves what each poll aggregates from raw trades.
PREVIOUS_BAR_GRACE_S = 15


async def latest_bars(conn: psycopg.AsyncConnection, symbol: str) -> Bars:
    """What live updates push for a symbol: its newest one-minute bar(s)."""
    now = datetime.now(UTC)
    symbol = symbol.upper()
    minute = now.replace(second=0, microsecond=0)
    start = minute - timedelta(minutes=1) if now.second < PREVIOUS_BAR_GRACE_S else minute
    found = await bars(conn, BarWindow(symbol, "1m", start, now + timedelta(days=1)), 2)
    if not found.count:
        # Nothing in this minute by our clock (a quiet feed, or a clock ahead of ours such as the
        # simulator's fast one in tests): start from the newest trade, one index probe.
        cur = await conn.execute(
            f"SELECT time FROM {'crypto_trades' if is_crypto(symbol) else 'trades'} "
            "WHERE symbol = %s AND time > %s ORDER BY time DESC LIMIT 1",
            (symbol, now - timedelta(days=2)))
        row = await cur.fetchone()
        if row is not None:
            # Its minute and the whole minute before: that bar's indicators land just after it closes,
            # and on a feed behind our clock (a delayed feed, a simulator started in the past) no
            # other poll pushes them (a window from a minute before the trade left that bucket out).
            newest = row[0].replace(second=0, microsecond=0)
            found = await bars(conn, BarWindow(symbol, "1m", newest - timedelta(minutes=1),
                                               newest + timedelta(minutes=1)), 2)
    return found


async def markers(conn: psycopg.AsyncConnection, w: BarWindow) -> list[dict[str, Any]]:
    """Our fills (buy/sell) and trading halts of the symbol in the window, for chart markers."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM transaction_time)::bigint, side, qty, price FROM fills "
        "WHERE symbol = %s AND transaction_time >= %s AND transaction_time < %s "
        "ORDER BY transaction_time LIMIT %s",
        (w.symbol, w.start, w.end, MAX_ROWS * 10),
    )
    out = [{"t": t, "kind": "fill", "side": side, "text": f"{side} {_qty(q)} @ {price}"}
           for t, side, q, price in await cur.fetchall()]
    cur = await conn.execute(
        "SELECT extract(epoch FROM time)::bigint, status_code, coalesce(status_message, '') FROM trading_statuses "
        "WHERE symbol = %s AND time >= %s AND time < %s ORDER BY time LIMIT %s",
        (w.symbol, w.start, w.end, MAX_ROWS),
    )
    out += [{"t": t, "kind": "status", "text": f"{code} {msg}".strip()} for t, code, msg in await cur.fetchall()]
    out.sort(key=lambda m: m["t"])
    return out


def _qty(q: Decimal | None) -> str:
    return "" if q is None else format(q.normalize(), "f")


async def symbols(conn: psycopg.AsyncConnection, settings: Settings) -> list[str]:
    """Symbols with bars: the configured ones first, then what the last day of bars holds; then the
    crypto pairs alike (configured first)."""
    stocks = await _recent_symbols(conn, "bars", "trades")
    pairs = await _recent_symbols(conn, "crypto_bars", "crypto_trades")
    first = [s for s in [*settings.symbols, *settings.crypto_symbols] if s in stocks or s in pairs]
    return first + [s for s in stocks + pairs if s not in first]


async def _recent_symbols(conn: psycopg.AsyncConnection, bars_table: str, trades_table: str) -> list[str]:
    """The symbols of the last day of a feed's bars; without bars (a trades-only feed), of its trades, one
    index probe per symbol. The last day only: each probe reads the recent chunks, never all history."""
    cur = await conn.execute(
        f"SELECT DISTINCT symbol FROM {bars_table} WHERE time > now() - interval '1 day' ORDER BY symbol LIMIT 1000"
    )
    seen = [r[0] for r in await cur.fetchall()]
    if not seen:
        cur = await conn.execute(
            f"WITH RECURSIVE s AS (SELECT min(symbol) AS symbol FROM {trades_table} "
            "WHERE time > now() - interval '1 day' "
            f"UNION ALL SELECT (SELECT min(symbol) FROM {trades_table} WHERE symbol > s.symbol "
            "AND time > now() - interval '1 day') FROM s WHERE s.symbol IS NOT NULL) "
            "SELECT symbol FROM s WHERE symbol IS NOT NULL LIMIT 1000"
        )
        seen = [r[0] for r in await cur.fetchall()]
    return seen


# --- ingest health -----------------------------------------------------------------------------

_STATS_COLUMNS = (
    "trades", "quotes", "bars", "rows_committed", "rejects", "drops", "stalls", "reconnects", "backfilled",
    "queue_depth", "queue_max", "exchange_to_received_p99_ms", "received_to_processed_p99_ms",
    "received_to_committed_p99_ms", "rss_mb", "cpu_percent",
)
_RATES = ("trades", "quotes", "bars", "rows_committed")  # divided by interval_s: per second


def _stats_row(row: tuple) -> dict[str, Any]:
    t, worker, interval_s, *values = row
    out: dict[str, Any] = {"t": t, "worker": worker}
    for name, value in zip(_STATS_COLUMNS, values):
        if name in _RATES:
            out[name + "_per_s"] = round(float(value) / interval_s, 1) if interval_s else None
        else:
            out[name] = _num(value)
    return out


_STATS_SELECT = "SELECT extract(epoch FROM time)::float8, worker, interval_s, " + ", ".join(_STATS_COLUMNS)
_SUMMED = ("trades", "quotes", "bars", "rows_committed", "rejects", "drops", "stalls", "reconnects", "backfilled")
# A worker recording several feeds writes one ingest_stats row per feed per interval, all with the same
# time (one transaction): the Health page shows the worker, so its feeds are added up (counts) or the
# worst taken (latencies, queue, RSS, CPU). Quals on worker and time are pushed into the GROUP BY.
_STATS_BY_WORKER = (
    "(SELECT time, worker, max(interval_s) AS interval_s, "
    + ", ".join(f"sum({c})::bigint AS {c}" if c in _SUMMED else f"max({c}) AS {c}" for c in _STATS_COLUMNS)
    + " FROM ingest_stats GROUP BY time, worker) AS ingest_stats"
)


async def workers(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    """Every worker that wrote ingest_stats in the last day, with its newest row and its age."""
    cur = await conn.execute(
        "SELECT DISTINCT ON (worker) worker FROM ingest_stats WHERE time > now() - interval '1 day' "
        "ORDER BY worker LIMIT 100"
    )
    names = [r[0] for r in await cur.fetchall()]
    out = []
    for name in names:  # one index probe each on ingest_stats_worker_time_idx
        cur = await conn.execute(
            _STATS_SELECT + f", extract(epoch FROM now() - time)::float8 FROM {_STATS_BY_WORKER} WHERE worker = %s "
            "ORDER BY time DESC LIMIT 1", (name,))
        row = await cur.fetchone()
        if row:
            latest = _stats_row(row[:-1])
            latest["age_s"] = round(row[-1], 1)
            out.append(latest)
    return out


async def ingest_history(conn: psycopg.AsyncConnection, worker: str, minutes: float = 60) -> list[dict[str, Any]]:
    cur = await conn.execute(
        _STATS_SELECT + f" FROM {_STATS_BY_WORKER} WHERE worker = %s AND time > now() - make_interval(secs => %s) "
        "ORDER BY time DESC LIMIT %s",
        (worker, minutes * 60, HEALTH_MAX_ROWS),
    )
    rows = [_stats_row(r) for r in await cur.fetchall()]
    rows.reverse()
    return rows


async def ingest_since(conn: psycopg.AsyncConnection, since_epoch: float) -> list[dict[str, Any]]:
    """Rows of every worker newer than ``since_epoch`` (what live updates push to the Health page)."""
    cur = await conn.execute(
        _STATS_SELECT + f" FROM {_STATS_BY_WORKER} WHERE time > to_timestamp(%s) AND time > now() - interval '1 hour' "
        "ORDER BY time LIMIT %s",
        (since_epoch, HEALTH_MAX_ROWS),
    )
    return [_stats_row(r) for r in await cur.fetchall()]


async def chunks(conn: psycopg.AsyncConnection, settings: Settings) -> list[dict[str, Any]]:
    """Per table retention manages: chunks, bytes, the window, and the chunk retention drops next.

    The same rule as ``tickvault.jobs.retention`` (a chunk goes once its whole range is older than the
    window), read from the catalog without the purge lock, so a page never waits on a running purge.
    """
    from tickvault.jobs.retention import retention_plan

    out = []
    now = datetime.now(UTC)
    for table, setting, days in retention_plan(settings):
        cur = await conn.execute(
            "SELECT h.hypertable_name, count(c.chunk_name), coalesce(hypertable_size(format('%%I.%%I', "
            "h.hypertable_schema, h.hypertable_name)::regclass), 0), min(c.range_start), min(c.range_end) "
            "FROM timescaledb_information.hypertables h LEFT JOIN timescaledb_information.chunks c "
            "USING (hypertable_schema, hypertable_name) "
            "WHERE h.hypertable_name IN (%s, %s) "
            "OR (h.hypertable_schema, h.hypertable_name) IN (SELECT materialization_hypertable_schema, "
            "materialization_hypertable_name FROM timescaledb_information.continuous_aggregates WHERE view_name = %s) "
            "GROUP BY h.hypertable_schema, h.hypertable_name LIMIT 1",
            (table, f"{table}_rollup", table),
        )
        row = await cur.fetchone()
        if row is None:
            continue
        relation, n, size, oldest_start, oldest_end = row
        next_drop = None if days == 0 or oldest_end is None else oldest_end + timedelta(days=days)
        out.append({
            "table": table, "relation": relation, "chunks": n, "bytes": size, "window_days": days,
            "setting": "TICKVAULT_" + setting.upper(),
            "oldest": oldest_start.isoformat() if oldest_start else None,
            "next_drop_at": next_drop.isoformat() if next_drop else None,
            "droppable_now": bool(next_drop and next_drop <= now),
        })
    return out


async def job_health(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    """TimescaleDB background jobs (:mod:`tickvault.db.jobs`) on one of the dashboard's pooled
    connections: a Health page polling every few seconds opens no connection of its own."""
    from tickvault.db.jobs import job_health_async

    return [
        {"job_id": j.job_id, "what": j.what, "state": j.state, "failing": j.failing,
         "last_success": j.last_success.isoformat() if j.last_success else None,
         "runs": j.total_runs, "failures": j.total_failures, "last_error": j.last_error}
        for j in await job_health_async(conn)
    ]


# --- trading -----------------------------------------------------------------------------------

def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, Decimal):
            v = format(v.normalize(), "f") if v == v else None
        elif v is not None and not isinstance(v, (str, int, float, bool, list, dict)):
            v = str(v)
        out[k] = v
    return out


async def _dicts(conn: psycopg.AsyncConnection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    cur = await conn.execute(sql, params)
    names = [d.name for d in cur.description or ()]
    return [_jsonable(dict(zip(names, r))) for r in await cur.fetchmany(MAX_ROWS)]


async def _realized_pnl(conn: psycopg.AsyncConnection, today: date) -> dict[str, Any]:
    """The last 30 days' realized P&L, or (``pnl_error``) why an option event makes it impossible to value:
    the function refuses a bad option_events row rather than give a wrong figure, and the rest of the
    page must still show."""
    try:
        rows = await _dicts(conn, recipe_sql("daily_realized_pnl"),
                            {"from_day": today - timedelta(days=30), "to_day": today})
    except psycopg.errors.DataException as exc:
        return {"pnl": [], "pnl_error": exc.diag.message_primary or str(exc)}
    return {"pnl": rows, "pnl_error": None}


async def trading(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    """Orders, fills, positions, realized P&L, open reconciliation diffs, profiles."""
    today = datetime.now(UTC).date()
    return {
        "open_orders": await _dicts(conn, recipe_sql("open_orders")),
        "orders": await _dicts(conn, "SELECT client_order_id, symbol, side, order_type, qty, filled_qty, "
                               "filled_avg_price, status, strategy, submitted_at, submit_latency_ms FROM orders "
                               "ORDER BY created_at DESC LIMIT %s", (MAX_ROWS,)),
        "fills": await _dicts(conn, "SELECT transaction_time, symbol, side, qty, price, fill_type, source FROM fills "
                              "ORDER BY transaction_time DESC LIMIT %s", (MAX_ROWS,)),
        "positions": await _dicts(conn, "SELECT DISTINCT ON (symbol) symbol, time, qty, side, avg_entry_price, "
                                  "market_value, unrealized_pl FROM position_snapshots "
                                  "WHERE time > now() - interval '7 days' ORDER BY symbol, time DESC"),
        **await _realized_pnl(conn, today),
        "diffs": await _dicts(conn, "SELECT d.detected_at, d.kind, d.symbol, d.client_order_id, d.db_value, "
                              "d.broker_value, d.run_id FROM reconciliation_diffs d "
                              "WHERE NOT d.repaired AND d.run_id = (SELECT max(id) FROM reconciliation_runs "
                              "WHERE status = 'completed') ORDER BY d.id LIMIT %s", (MAX_ROWS,)),
        "last_reconcile": (await _dicts(conn, "SELECT id, started_at, status, diffs, repaired, error "
                                        "FROM reconciliation_runs ORDER BY started_at DESC LIMIT 1") or [None])[0],
        "profiles": await _dicts(conn, "SELECT id, time, worker, duration_s, location, flamegraph_key, "
                                 "speedscope_key, cpu_percent, rss_mb, regressions FROM profiles "
                                 "ORDER BY time DESC LIMIT 20"),
        "halt": (await _dicts(conn, "SELECT halted_at, reason FROM trading_halts WHERE lifted_at IS NULL "
                              "ORDER BY halted_at DESC LIMIT 1") or [None])[0],
        "audit": await _dicts(conn, "SELECT time, action, client, allowed, outcome FROM ui_audit "
                              "ORDER BY time DESC LIMIT 20"),
    }
