"""One spec per table: the columns, binary COPY types and upsert statements every writer shares.

The schema itself lives in the migrations (``src/tickvault/sql``); this module is the one place
Python code names a table's columns in the order it writes them. The worker's writer, the columnar
decoder (its COPY data follows :data:`TRADES` and :data:`QUOTES` column for column), the indicator
refresh flow, reconciliation, the tests and the benchmarks all take them from here, so a column
added to a table is added once.

Times: ``timestamptz`` columns are written from int nanoseconds by the writer's dumper (no
``datetime`` per row); ``time_ns`` keeps the feed's exact stamp beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tickvault.indicators.definitions import COLUMNS as INDICATOR_VALUES

if TYPE_CHECKING:
    import psycopg

    from tickvault.alpaca.models import Order

__all__ = [
    "ACCOUNT_SNAPSHOTS",
    "ALERT_INCIDENTS",
    "COMPLETE_RECONCILIATION_RUN",
    "FAIL_RECONCILIATION_RUN",
    "INSERT_ACCOUNT_SNAPSHOT",
    "INSERT_POSITION_SNAPSHOT",
    "INSERT_PROFILE",
    "INSERT_RECONCILIATION_DIFF",
    "LAST_COMPLETED_RECONCILIATION",
    "OPEN_ALERT_INCIDENT",
    "OPEN_ALERT_INCIDENTS",
    "OPEN_RECONCILIATION_RUN",
    "POSITION_SNAPSHOTS",
    "PROFILES",
    "RECONCILIATION_DIFFS",
    "RESOLVE_ALERT_INCIDENT",
    "insert_statement",
    "BAD_MESSAGES",
    "CRYPTO_BARS_STAGE",
    "CRYPTO_ORDERBOOKS",
    "CRYPTO_QUOTES",
    "CRYPTO_TRADES",
    "UPSERT_CRYPTO_BARS_FROM_STAGE",
    "UPSERT_NEWS",
    "BARS_STAGE",
    "CopySpec",
    "INDICATORS",
    "INDICATOR_VALUES",
    "INSERT_FILL",
    "INSERT_OPTION_EVENT",
    "OPTION_EVENTS",
    "LULDS",
    "OPTION_QUOTES",
    "OPTION_TRADES",
    "QUOTES",
    "TRADES",
    "TRADING_STATUSES",
    "UPSERT_BARS_FROM_STAGE",
    "UPSERT_ORDER",
    "bars_upsert",
    "indicators_upsert",
    "order_params",
    "record_order",
]


@dataclass(frozen=True)
class CopySpec:
    """A table written by binary COPY: its columns in write order and their PostgreSQL types."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.types):
            raise ValueError(f"{self.table}: {len(self.columns)} columns but {len(self.types)} types")

    def copy_statement(self, table: str | None = None) -> str:
        """``COPY <table> (<columns>) FROM STDIN (FORMAT BINARY)``; ``table`` names a staging twin."""
        return f"COPY {table or self.table} ({', '.join(self.columns)}) FROM STDIN (FORMAT BINARY)"

    @property
    def stage(self) -> str:
        """The name of this table's staging twin (a temp table, rows deleted at commit)."""
        return f"{self.table}_stage"

    def create_stage(self) -> str:
        """Creates the staging twin for this session if it does not exist yet."""
        return (f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} (LIKE {self.table} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")

    def dedupe_insert(self) -> str:
        """Staged rows into the table, skipping any whose unique key is already stored (a re-delivery,
        a backfill overlapping the stream); duplicates within the stage are skipped the same way."""
        cols = ", ".join(self.columns)
        return f"INSERT INTO {self.table} ({cols}) SELECT {cols} FROM {self.stage} ON CONFLICT DO NOTHING"


TRADES = CopySpec(
    "trades",
    ("time", "symbol", "trade_id", "exchange", "price", "size", "conditions", "tape", "time_ns"),
    ("timestamptz", "text", "int8", "text", "float8", "int8", "text[]", "text", "int8"),
)
QUOTES = CopySpec(
    "quotes",
    ("time", "symbol", "bid_exchange", "bid_price", "bid_size", "ask_exchange", "ask_price", "ask_size",
     "conditions", "tape", "time_ns"),
    ("timestamptz", "text", "text", "float8", "int8", "text", "float8", "int8", "text[]", "text", "int8"),
)
# Bars go through a staging twin so that an updated bar ('u') and a backfilled one upsert.
BARS_STAGE = CopySpec(
    "bars_stage",
    ("time", "symbol", "timeframe", "open", "high", "low", "close", "volume", "trade_count", "vwap", "updated",
     "source"),
    ("timestamptz", "text", "text", "float8", "float8", "float8", "float8", "int8", "int8", "float8", "bool", "text"),
)
TRADING_STATUSES = CopySpec(
    "trading_statuses",
    ("time", "symbol", "status_code", "status_message", "reason_code", "reason_message", "tape", "time_ns"),
    ("timestamptz", "text", "text", "text", "text", "text", "text", "int8"),
)
LULDS = CopySpec(
    "lulds",
    ("time", "symbol", "limit_up", "limit_down", "indicator", "tape", "time_ns"),
    ("timestamptz", "text", "float8", "float8", "text", "text", "int8"),
)
# --- crypto (migration 009): sizes are numeric, see alpaca/crypto.py for why ------------------------
CRYPTO_TRADES = CopySpec(
    "crypto_trades",
    ("time", "symbol", "trade_id", "price", "size", "taker_side", "time_ns"),
    ("timestamptz", "text", "int8", "float8", "numeric", "text", "int8"),
)
CRYPTO_QUOTES = CopySpec(
    "crypto_quotes",
    ("time", "symbol", "bid_price", "bid_size", "ask_price", "ask_size", "time_ns"),
    ("timestamptz", "text", "float8", "float8", "float8", "float8", "int8"),
)
CRYPTO_BARS_STAGE = CopySpec(
    "crypto_bars_stage",
    BARS_STAGE.columns,
    ("timestamptz", "text", "text", "float8", "float8", "float8", "float8", "numeric", "int8", "float8", "bool",
     "text"),
)
CRYPTO_ORDERBOOKS = CopySpec(
    "crypto_orderbooks",
    ("time", "symbol", "reset", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes", "time_ns"),
    ("timestamptz", "text", "bool", "float8[]", "float8[]", "float8[]", "float8[]", "int8"),
)
# --- options (migration 011): the OCC symbol's parts beside it (alpaca/options.py) -------------------
_OCC_COLUMNS = ("time", "symbol", "underlying", "expiration", "option_type", "strike")
_OCC_TYPES = ("timestamptz", "text", "text", "date", "text", "numeric")
OPTION_TRADES = CopySpec(
    "option_trades",
    (*_OCC_COLUMNS, "price", "size", "exchange", "condition", "time_ns"),
    (*_OCC_TYPES, "float8", "int8", "text", "text", "int8"),
)
OPTION_QUOTES = CopySpec(
    "option_quotes",
    (*_OCC_COLUMNS, "bid_exchange", "bid_price", "bid_size", "ask_exchange", "ask_price", "ask_size", "condition",
     "time_ns"),
    (*_OCC_TYPES, "text", "float8", "int8", "text", "float8", "int8", "text", "int8"),
)
BAD_MESSAGES = CopySpec(
    "bad_messages",
    ("source", "reason", "payload", "worker"),
    ("text", "text", "bytea", "text"),
)

_BAR_KEY = ("symbol", "time", "timeframe")


def bars_upsert(table: str, stage: CopySpec) -> str:
    """Upsert ``table`` from its staging twin ``stage`` (one row per key: an updated bar over the bar it
    replaces). An updated bar replaces its bar's values and marks it; a backfilled bar never hides that
    mark. Every column of ``stage`` is written; the values (all but the key, ``updated``, ``source``) are
    replaced on a conflict."""
    columns = ", ".join(stage.columns)
    key = ", ".join(_BAR_KEY)
    values = [c for c in stage.columns if c not in (*_BAR_KEY, "updated", "source")]
    return (
        f"INSERT INTO {table} ({columns}) "
        f"SELECT DISTINCT ON ({key}) {columns} FROM {stage.table} "
        f"ORDER BY {key}, updated DESC "
        f"ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in values) + ", "
        f"updated = {table}.updated OR excluded.updated, "
        f"source = CASE WHEN excluded.updated THEN {table}.source ELSE excluded.source END"
    )


UPSERT_BARS_FROM_STAGE = bars_upsert("bars", BARS_STAGE)
UPSERT_CRYPTO_BARS_FROM_STAGE = bars_upsert("crypto_bars", CRYPTO_BARS_STAGE)

# News (migration 010): a newer version of an article replaces the stored one, never the reverse.
UPSERT_NEWS = (
    "INSERT INTO news (id, headline, summary, author, source, url, content, symbols, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (id, created_at) DO UPDATE SET headline = excluded.headline, summary = excluded.summary, "
    "author = excluded.author, source = excluded.source, url = excluded.url, content = excluded.content, "
    "symbols = excluded.symbols, updated_at = excluded.updated_at, received_at = now() "
    "WHERE excluded.updated_at >= news.updated_at"
)

#: indicators rows as both writers build them: (time, symbol, timeframe, close, *INDICATOR_VALUES).
INDICATORS = ("time", "symbol", "timeframe", "close", *INDICATOR_VALUES)


def indicators_upsert(*, time_from_ns: bool, source: str | None) -> str:
    """The upsert of one :data:`INDICATORS` row keyed by (symbol, timeframe, time).

    ``time_from_ns``: the first value is int nanoseconds (the worker) rather than a timestamptz (the
    flow). ``source``: written as a parameter after the values (``'flow'``), or left to the column's
    default (``None``: the worker's rows).
    """
    time_value = "to_timestamp(%s::float8 / 1e9)" if time_from_ns else "%s"
    columns = list(INDICATORS) + (["source"] if source else [])
    values = [time_value] + ["%s"] * (len(columns) - 1)
    updates = [f"{c} = excluded.{c}" for c in INDICATORS[3:]] + (["source = excluded.source"] if source else [])
    return (
        f"INSERT INTO indicators ({', '.join(columns)}, computed_at) VALUES ({', '.join(values)}, now()) "
        f"ON CONFLICT (symbol, timeframe, time) DO UPDATE SET {', '.join(updates)}, computed_at = excluded.computed_at"
    )


# --- trade history: orders and fills, from any source (worker, trade updates, reconciliation) ------
UPSERT_ORDER = """
INSERT INTO orders (client_order_id, id, symbol, side, order_type, time_in_force, order_class, qty, notional,
                    limit_price, stop_price, filled_qty, filled_avg_price, status, extended_hours, created_at,
                    submitted_at, updated_at, filled_at, canceled_at, source, raw)
VALUES (%(client_order_id)s, %(id)s, %(symbol)s, %(side)s, %(order_type)s, %(time_in_force)s, %(order_class)s,
        %(qty)s, %(notional)s, %(limit_price)s, %(stop_price)s, %(filled_qty)s, %(filled_avg_price)s, %(status)s,
        %(extended_hours)s, %(created_at)s, %(submitted_at)s, %(updated_at)s, %(filled_at)s, %(canceled_at)s,
        %(source)s, %(raw)s)
ON CONFLICT (client_order_id) DO UPDATE SET
    id = excluded.id, status = excluded.status, filled_qty = excluded.filled_qty,
    filled_avg_price = excluded.filled_avg_price, updated_at = excluded.updated_at,
    submitted_at = coalesce(orders.submitted_at, excluded.submitted_at), filled_at = excluded.filled_at,
    canceled_at = excluded.canceled_at, raw = excluded.raw
WHERE orders.updated_at IS NULL OR excluded.updated_at IS NULL OR excluded.updated_at >= orders.updated_at
"""

INSERT_FILL = """
INSERT INTO fills (order_id, cum_qty, fill_id, client_order_id, symbol, side, qty, price, leaves_qty, fill_type,
                   transaction_time, source)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (order_id, cum_qty) DO NOTHING
"""


def order_params(order: Order, source: str = "worker") -> dict:
    """The broker's order as :data:`UPSERT_ORDER` parameters (``raw`` keeps the whole JSON)."""
    return {
        "client_order_id": order.client_order_id, "id": order.id, "symbol": order.symbol, "side": order.side,
        "order_type": order.order_type or order.type or "market", "time_in_force": order.time_in_force,
        "order_class": order.order_class, "qty": order.qty, "notional": order.notional,
        "limit_price": order.limit_price, "stop_price": order.stop_price, "filled_qty": order.filled_qty,
        "filled_avg_price": order.filled_avg_price, "status": order.status, "extended_hours": order.extended_hours,
        "created_at": order.created_at, "submitted_at": order.submitted_at, "updated_at": order.updated_at,
        "filled_at": order.filled_at, "canceled_at": order.canceled_at, "source": source,
        "raw": json.dumps(order.model_dump(mode="json")),
    }


async def record_order(conn: psycopg.AsyncConnection, order: Order, source: str = "worker") -> None:
    """Upsert the broker's view of an order (a newer update never loses to an older one)."""
    await conn.execute(UPSERT_ORDER, order_params(order, source))


# --- the jobs' own records: reconciliation, profiles, alert incidents ------------------------------


def insert_statement(table: str, columns: tuple[str, ...], *, casts: dict[str, str] | None = None,
                     constants: dict[str, str] | None = None, tail: str = "") -> str:
    """``INSERT INTO table (columns…) VALUES (%s…)`` with ``::type`` casts on the named columns,
    SQL ``constants`` after them (literals, never request data) and ``tail`` (``ON CONFLICT``, ``RETURNING``)."""
    casts, constants = casts or {}, constants or {}
    values = [f"%s::{casts[c]}" if c in casts else "%s" for c in columns] + list(constants.values())
    sql = f"INSERT INTO {table} ({', '.join((*columns, *constants))}) VALUES ({', '.join(values)})"
    return f"{sql} {tail}".rstrip()


#: position_snapshots rows as reconciliation writes them (source 'broker'); a row returned was written.
POSITION_SNAPSHOTS = ("time", "symbol", "qty", "side", "avg_entry_price", "cost_basis", "market_value",
                      "unrealized_pl")
INSERT_POSITION_SNAPSHOT = insert_statement(
    "position_snapshots", POSITION_SNAPSHOTS, constants={"source": "'broker'"},
    tail="ON CONFLICT DO NOTHING RETURNING symbol",
)
ACCOUNT_SNAPSHOTS = ("time", "account_id", "status", "currency", "cash", "equity", "buying_power", "raw")
INSERT_ACCOUNT_SNAPSHOT = insert_statement("account_snapshots", ACCOUNT_SNAPSHOTS)
RECONCILIATION_DIFFS = ("run_id", "kind", "symbol", "order_id", "client_order_id", "db_value", "broker_value",
                        "repaired")
INSERT_RECONCILIATION_DIFF = insert_statement("reconciliation_diffs", RECONCILIATION_DIFFS,
                                              casts={"order_id": "uuid"})
#: option_events rows (Alpaca's OPEXC/OPASN/OPEXP/OPTRD activities); a returned id is a row this statement wrote.
OPTION_EVENTS = ("activity_id", "activity_type", "symbol", "qty", "price", "net_amount", "trade_date", "time",
                 "description", "status", "raw")
INSERT_OPTION_EVENT = insert_statement("option_events", OPTION_EVENTS, constants={"source": "'reconcile'"},
                                       tail="ON CONFLICT (activity_id) DO NOTHING RETURNING activity_id")
OPEN_RECONCILIATION_RUN = "INSERT INTO reconciliation_runs (status) VALUES ('running') RETURNING id"
LAST_COMPLETED_RECONCILIATION = (
    "SELECT started_at FROM reconciliation_runs WHERE status = 'completed' ORDER BY started_at DESC LIMIT 1"
)
COMPLETE_RECONCILIATION_RUN = (
    "UPDATE reconciliation_runs SET status = 'completed', finished_at = now(), orders_checked = %s, "
    "fills_checked = %s, positions_checked = %s, diffs = %s, repaired = %s, explained = %s, fetch_ms = %s, "
    "duration_ms = %s "
    "WHERE id = %s"
)
FAIL_RECONCILIATION_RUN = (
    "UPDATE reconciliation_runs SET status = 'failed', finished_at = now(), error = %s, duration_ms = %s "
    "WHERE id = %s"
)

#: profiles rows (one per profile-worker run).
PROFILES = ("time", "worker", "pid", "duration_s", "location", "speedscope_key", "flamegraph_key", "dump_key",
            "summary_key", "cpu_percent", "rss_mb", "summary", "regressions")
INSERT_PROFILE = insert_statement("profiles", PROFILES, tail="RETURNING id")

#: alert_incidents: opened once per condition, resolved once when it ends.
ALERT_INCIDENTS = ("key", "kind", "title", "detail")
OPEN_ALERT_INCIDENT = insert_statement("alert_incidents", ALERT_INCIDENTS)
OPEN_ALERT_INCIDENTS = "SELECT key, kind, title, detail FROM alert_incidents WHERE resolved_at IS NULL"
RESOLVE_ALERT_INCIDENT = "UPDATE alert_incidents SET resolved_at = now() WHERE key = %s AND resolved_at IS NULL"


def recent_symbols_sql(table: str, *, where: str = "") -> str:
    """Symbols of ``table`` with a row newer than ``now() - %(window)s`` (an interval), at most
    ``%(limit)s``, sorted; ``where`` adds a condition on the table's columns (e.g. a timeframe).

    A loose index scan over the ``(symbol, time DESC, ...)`` key: one index probe per symbol, not a
    scan of every row in the window (a plain DISTINCT reads them all on the Apache edition, which has
    no SkipScan). In the recursive step ``stored`` has only ``symbol``, so the condition's columns are
    the table's (``t``) unqualified."""
    cond = f"time > now() - %(window)s::interval{f' AND {where}' if where else ''}"
    return f"""WITH RECURSIVE stored(symbol) AS (
          (SELECT symbol FROM {table} WHERE {cond} ORDER BY symbol LIMIT 1)
          UNION ALL
          SELECT (SELECT t.symbol FROM {table} t WHERE t.symbol > stored.symbol AND {cond}
                   ORDER BY t.symbol LIMIT 1)
            FROM stored WHERE stored.symbol IS NOT NULL)
        SELECT symbol FROM stored WHERE symbol IS NOT NULL LIMIT %(limit)s"""

