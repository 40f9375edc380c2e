"""Reconciliation: make the database agree with the broker, which is the truth for what happened.

One run (:func:`reconcile`) does, in order:

1. opens a row in ``reconciliation_runs`` (status ``running``, committed at once so a person sees it);
2. picks the window: fills since the last *completed* run's start (minus :data:`WINDOW_OVERLAP`),
   or the last :data:`DEFAULT_LOOKBACK` on a first run;
3. fetches the broker's account, positions, open orders, recent closed orders, fill activities and
   option events (exercises, assignments, expiries: :data:`OPTION_EVENTS_LOOKBACK` further back)
   **concurrently** (:func:`fetch_broker_state`, one ``asyncio.gather`` on the process's pooled
   HTTP client), then looks up one by one — again concurrently — any order the database still
   believes open that neither list returned (it closed before the window);
4. in one transaction holding :data:`REPAIR_LOCK_KEY` (``pg_advisory_xact_lock``) compares that
   state with ``orders``, ``fills`` and the latest ``position_snapshots``, records the option events
   in ``option_events``, repairs the database, writes one ``reconciliation_diffs`` row per
   difference and fresh broker snapshots;
5. closes the run row with counts and timings (or marks it ``failed`` with the error).

Diff kinds (:data:`DIFF_KINDS`):

* ``missing_fill`` — a fill activity at the broker with no ``fills`` row of the same
  ``(order_id, cum_qty)``. Repair: insert it (``source = 'reconcile'``).
* ``order_status_drift`` — an order known to both whose status or filled quantity differs, or a
  row with no broker id yet. Repair: upsert the broker's order. A database row newer than the
  broker's answer (``updated_at``) is not drift: the broker answer is the stale one. An order the
  database thinks open that the broker says does not exist is recorded with broker status
  ``not_found`` and left alone (a person must decide; reconciliation never sends orders).
* ``unknown_order`` — an order at the broker absent from ``orders``. Repair: insert it
  (``source = 'reconcile'``).
* ``position_mismatch`` — the latest snapshot's quantity differs from the broker's position.
* ``missing_position`` — the broker holds a position the snapshots have never seen.
* ``stale_position`` — the latest snapshot holds a non-zero quantity the broker no longer has.
  Repair of the three position kinds: a fresh ``position_snapshots`` row (``source = 'broker'``;
  quantity 0 for a stale one). Every run also writes a snapshot of every broker position and of
  the account, so the snapshot tables are a history of what the broker said.

Not drift (:data:`EXPLAINED_KIND`, counted apart from :data:`DIFF_KINDS`):

* ``option_event`` — a position difference of one of the three kinds above that the option events
  this run recorded account for exactly: the broker's quantity minus the snapshot's (0 for a
  position never seen or gone) equals the sum of the events' changes to that symbol (an exercised
  long call: the contracts ``-2``, the underlying ``+200`` shares at the strike). Only events new to
  ``option_events`` count: an event recorded by an earlier run is already behind that run's
  snapshots. Repaired like the position kinds; the run row counts it in ``explained``, not in
  ``diffs``/``repaired``, so no "drift not repaired" alert comes of it. A difference the events
  account for only in part stays drift, the events' share named beside it.

Concurrency: two runs at once fetch independently but compare and repair one after the other
(the advisory lock is held for the compare *and* the repair), so the second sees the first's
repairs and finds nothing left to do. A diff counts as repaired only if this run's statement
changed a row (its rowcount, or a ``RETURNING`` row). Together two concurrent runs therefore
report each drift repaired exactly once.

What this module must never do: send, replace or cancel an order; write a secret into a run row,
a diff or a log line; hold a database connection outside an ``async with``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from tickvault.alpaca.errors import NotFoundError
from tickvault.alpaca.models import Account, FillActivity, OptionActivity, Order, Position
from tickvault.alpaca.options import OccSymbolError, parse_occ
from tickvault.alpaca.rest import AlpacaREST, collect
from tickvault.config import Settings, redact, secret_values
from tickvault.market_time import MarketClock
from tickvault.db.tables import (
    COMPLETE_RECONCILIATION_RUN,
    FAIL_RECONCILIATION_RUN,
    INSERT_ACCOUNT_SNAPSHOT,
    INSERT_FILL,
    INSERT_OPTION_EVENT,
    INSERT_POSITION_SNAPSHOT,
    INSERT_RECONCILIATION_DIFF,
    LAST_COMPLETED_RECONCILIATION,
    OPEN_RECONCILIATION_RUN,
    UPSERT_ORDER,
    order_params,
)
from tickvault.jobs.markdown import cell, table

__all__ = [
    "DIFF_KINDS",
    "EXPLAINED_KIND",
    "BrokerState",
    "Diff",
    "ReconcileError",
    "ReconcileSummary",
    "compare_and_repair",
    "count_diffs",
    "diff_orders",
    "diff_positions",
    "explain_positions",
    "fetch_broker_state",
    "fill_rows",
    "missing_fill_diffs",
    "not_found_diffs",
    "reconcile",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DIFF_KINDS = (
    "missing_fill",
    "order_status_drift",
    "unknown_order",
    "position_mismatch",
    "missing_position",
    "stale_position",
)

# A position difference the option events recorded by a run account for exactly: no drift (module doc).
EXPLAINED_KIND = "option_event"

# First run (or fills_after=None): a trading day and a bit; older history is a backfill's job.
DEFAULT_LOOKBACK = timedelta(hours=24)
# The next window starts this long before the previous run's start: a fill the broker reports a
# little late (or stamped by a skewed clock) is still seen. Re-seeing a fill costs nothing: it is keyed.
WINDOW_OVERLAP = timedelta(minutes=5)
# Option events are fetched from this long before the window: Alpaca books an expiry's events after the
# close, often the next morning, dated the expiration day; a Friday's may appear by Monday. Re-fetching an
# event costs one keyed insert that writes nothing.
OPTION_EVENTS_LOOKBACK = timedelta(days=4)
SHARES_PER_CONTRACT = 100  # the deliverable of a standard US equity option: pairs an OPTRD with its exercise
# Alpaca returns at most 500 orders per call; 20 pages bound one run's order list to 10,000
# (a few MB of models). Past that a warning says the window was truncated.
ORDERS_PAGE_LIMIT = 500
MAX_ORDER_PAGES = 20
# Orders open in the database but absent from the broker's lists are fetched one by one, at most
# this many per run (the rest wait for the next run) and this many at once (under the HTTP pool size).
MAX_ORDER_LOOKUPS = 200
LOOKUP_CONCURRENCY = 8
# A pending_submit row younger than this may be an order the gateway is submitting right now.
PENDING_GRACE = timedelta(minutes=2)
# Key of the transaction-scoped advisory lock serialising compare+repair across processes.
REPAIR_LOCK_KEY = 0x7469636B_7265636E  # "tick" "recn"
# Markdown artifacts list at most this many diffs (the table in the database has all of them),
# and this many positions (the largest; position_snapshots has them all).
MARKDOWN_MAX_DIFFS = 200
MARKDOWN_MAX_POSITIONS = 50
# Open statuses as tickvault stores them (same list as orders_open_idx, so the lookup uses it).
OPEN_STATUSES = (
    "pending_submit", "new", "accepted", "pending_new", "partially_filled",
    "pending_cancel", "pending_replace", "accepted_for_bidding", "held",
)  # fmt: skip


class ReconcileError(RuntimeError):
    """A reconciliation run failed; ``run_id`` names its ``reconciliation_runs`` row."""

    def __init__(self, message: str, run_id: int | None) -> None:
        super().__init__(message)
        self.run_id = run_id


# --------------------------------------------------------------------------------------------- types


@dataclass(slots=True)
class BrokerState:
    """What the broker said, and how long each call took (seconds, ``time.perf_counter``)."""

    account: Account
    positions: list[Position]
    open_orders: list[Order]
    closed_orders: list[Order]
    fills: list[FillActivity]
    fills_after: datetime
    observed_at: datetime  # when the fetch completed (UTC); snapshots are stamped with it
    timings: dict[str, float] = field(default_factory=dict)  # call name → seconds
    fetch_s: float = 0.0  # wall time of the whole concurrent fetch
    looked_up: list[Order] = field(default_factory=list)  # orders fetched one by one (see module doc)
    not_found: list[tuple[str, str | None]] = field(default_factory=list)  # (client_order_id, id)
    option_events: list[OptionActivity] = field(default_factory=list)  # OPEXC/OPASN/OPEXP/OPTRD, oldest first

    def orders(self) -> dict[str, Order]:
        """Every order the broker returned, by broker id (an order in two lists appears once)."""
        out: dict[str, Order] = {}
        for order in (*self.closed_orders, *self.open_orders, *self.looked_up):
            seen = out.get(order.id)
            if seen is None or _newer(order, seen):
                out[order.id] = order
        return out


@dataclass(slots=True, frozen=True)
class Diff:
    """One difference between the database and the broker, as stored in ``reconciliation_diffs``."""

    kind: str
    symbol: str | None = None
    order_id: str | None = None
    client_order_id: str | None = None
    db_value: dict[str, Any] | None = None
    broker_value: dict[str, Any] | None = None
    repaired: bool = False


@dataclass(slots=True)
class ReconcileSummary:
    """The typed result of one run (also what the markdown artifact shows)."""

    run_id: int
    status: str
    fills_after: datetime
    counts: dict[str, int]  # every kind of DIFF_KINDS, 0 included
    diffs: list[Diff]
    repaired: int
    orders_checked: int
    fills_checked: int
    positions_checked: int
    fetch_s: float
    duration_s: float
    timings: dict[str, float]  # broker calls (account, positions, ...) and run phases (phase:*)
    # What the broker said (what a trader reads first) and when; None/empty in runs built by hand.
    account: Account | None = None
    positions: list[Position] = field(default_factory=list)
    observed_at: datetime | None = None
    lookups: int = 0  # orders fetched one by one (open here, absent from the broker's lists)
    option_events_checked: int = 0  # option events the broker listed
    option_events_recorded: int = 0  # of them, new to option_events (this run wrote them)

    @property
    def drift(self) -> list[Diff]:
        """The differences that are drift: every diff but the ones option events explain."""
        return [d for d in self.diffs if d.kind != EXPLAINED_KIND]

    @property
    def explained(self) -> list[Diff]:
        """Position differences the option events this run recorded account for (not drift)."""
        return [d for d in self.diffs if d.kind == EXPLAINED_KIND]

    @property
    def total_diffs(self) -> int:
        return len(self.drift)

    @property
    def unrealized_pl(self) -> Decimal | None:
        values = [p.unrealized_pl for p in self.positions if p.unrealized_pl is not None]
        return sum(values, Decimal(0)) if values else None

    def account_line(self, clock: MarketClock | None = None) -> str:
        """The artifact's first heading: the account as a trader checks it, at the market's time."""
        clock = clock or MarketClock()
        if self.account is None:
            return f"Reconciliation run {self.run_id} at {clock.time(self.observed_at)}"
        pl = self.unrealized_pl
        return (
            f"Account at {clock.time(self.observed_at)}: equity {_money(self.account.equity)}, "
            f"{_count(len(self.positions), 'position')}"
            + (f", unrealized P&L {_money(pl, signed=True)}" if pl is not None else "")
        )

    def drift_line(self) -> str:
        """``3 differences, 3 repaired`` / ``no differences``: the drift alone."""
        if not self.drift:
            return "no differences"
        return f"{_count(self.total_diffs, 'difference')}, {self.repaired} repaired"

    def outcome_line(self) -> str:
        """The drift line, and the position changes option events explain when there are any: for logs
        and the artifact's description."""
        explained = len(self.explained)
        if not explained:
            return self.drift_line()
        return f"{self.drift_line()}; {_count(explained, 'position change')} explained by option events"

    def log_line(self) -> str:
        """The run's summary for its log, with the figures a reader needs."""
        parts = [f"reconcile run {self.run_id}: {self.outcome_line()}"]
        if self.lookups:
            parts.append(f"{self.lookups} open order(s) looked up one by one")
        if self.account is not None:
            parts.append(f"equity {_money(self.account.equity)}, {_count(len(self.positions), 'position')}")
        parts.append(f"broker fetch {self.fetch_s * 1000:.0f} ms, whole run {self.duration_s * 1000:.0f} ms")
        return "; ".join(parts)

    def to_markdown(self, clock: MarketClock | None = None) -> str:
        """Account and positions first, then the differences in words, then what was checked and
        the timings. Times in the market's timezone (``clock``), UTC beside the run's time."""
        clock = clock or MarketClock()
        lines = [
            f"# {self.account_line(clock)}",
            "",
            (
                f"Reconciliation run {self.run_id}: {self.status}, {self.outcome_line()} "
                f"(the broker is the truth; no order was sent or cancelled). "
                f"Broker state as of {clock.stamp(self.observed_at)}."
            ),
            "",
        ]
        a = self.account
        if a is not None:
            pl = self.unrealized_pl
            lines += table(
                ("equity", "cash", "buying power", "positions", "unrealized P&L"),
                [(_money(a.equity), _money(a.cash), _money(a.buying_power), len(self.positions),
                  _money(pl, signed=True) if pl is not None else "-")],
                right=range(5),
            ) + [""]
            if a.status != "ACTIVE" or a.trading_blocked or a.account_blocked:
                lines += [f"**Account status {a.status}**"
                          + (", trading blocked" if a.trading_blocked else "")
                          + (", account blocked" if a.account_blocked else ""), ""]
        if self.positions:
            ordered = sorted(self.positions, key=lambda p: abs(p.market_value or p.cost_basis), reverse=True)
            lines += ["## Positions", ""] + table(
                ("symbol", "qty", "avg entry", "price", "market value", "unrealized P&L"),
                [_position_cells(p) for p in ordered[:MARKDOWN_MAX_POSITIONS]],
                right=range(1, 6),
            )
            if len(ordered) > MARKDOWN_MAX_POSITIONS:
                lines.append(f"\n… and {len(ordered) - MARKDOWN_MAX_POSITIONS} smaller positions.")
            lines.append("")
        lines += [f"## {self.drift_line().capitalize()}", ""]
        if self.drift:
            lines += self._diff_lines(self.drift)
        else:
            lines.append("No differences: the database agrees with the broker.")
        if self.explained:
            lines += ["", f"## {_count(len(self.explained), 'position change').capitalize()} explained by "
                      "option events", "",
                      "Exercises, assignments and expiries the broker reported (recorded in `option_events`): "
                      "not drift.", ""]
            lines += self._diff_lines(self.explained)
        lines += [
            "",
            "## Checked and timings",
            "",
            (
                f"Checked {_count(self.orders_checked, 'order')}, {_count(self.fills_checked, 'fill')}, "
                f"{_count(self.option_events_checked, 'option event')} ({self.option_events_recorded} new) and "
                f"{_count(self.positions_checked, 'position')}; fills and closed orders since "
                f"{clock.stamp(self.fills_after)}."
            ),
            "",
        ]
        calls = {k: v for k, v in self.timings.items() if not k.startswith("phase:")}
        phases = {k.removeprefix("phase:"): v for k, v in self.timings.items() if k.startswith("phase:")}
        steps: list[tuple[str, float]] = []
        if calls:
            slowest = max(calls, key=calls.__getitem__)
            steps.append((f"broker fetch, {len(calls)} calls at once (slowest: {slowest.replace('_', ' ')})", self.fetch_s))
        else:
            steps.append(("broker fetch", self.fetch_s))
        if "order_lookups" in phases:
            steps.append((f"{_count(self.lookups, 'order')} looked up one by one", phases["order_lookups"]))
        if "compare_repair" in phases:
            wait = phases.get("lock_wait", 0.0) * 1000
            steps.append((f"compare and repair (waited {wait:.0f} ms for the lock)", phases["compare_repair"]))
        steps.append(("whole run", self.duration_s))
        lines += table(("step", "ms"), [(name, f"{secs * 1000:.0f}") for name, secs in steps], right=(1,))
        if calls:
            lines += ["", "Per broker call: " + ", ".join(
                f"{name.replace('_', ' ')} {secs * 1000:.0f} ms" for name, secs in calls.items()) + "."]
        return "\n".join(lines) + "\n"

    def _diff_lines(self, diffs: list[Diff]) -> list[str]:
        lines = [f"- {describe_diff(d)}" for d in diffs[:MARKDOWN_MAX_DIFFS]]
        if len(diffs) > MARKDOWN_MAX_DIFFS:
            lines.append(f"\n… and {len(diffs) - MARKDOWN_MAX_DIFFS} more in `reconciliation_diffs` "
                         f"(run_id = {self.run_id}).")
        return lines


def describe_diff(d: Diff) -> str:
    """One difference in words, as a trader reads it: what the broker says, what the database
    said, and what this run did about it."""
    order = f"order `{cell(d.client_order_id or d.order_id or '?')}`" + (f" ({d.symbol})" if d.symbol else "")
    db, broker = d.db_value or {}, d.broker_value or {}
    done = "repaired" if d.repaired else "not repaired by this run (another run had already changed it)"
    if d.kind == "missing_fill":
        side = f"{broker['side']} " if broker.get("side") else ""
        return (
            f"{order} filled at the broker ({side}{_qty(broker.get('qty'))} @ {broker.get('price')}, "
            f"{_qty(broker.get('cum_qty'))} filled in all), missing here: {done}"
        )
    if d.kind == "unknown_order":
        return (
            f"{order} is {broker.get('status')} at the broker ({_qty(broker.get('filled_qty'))} filled), "
            f"missing here: {done}"
        )
    if d.kind == "order_status_drift":
        if broker.get("status") == "not_found":
            return (
                f"{order} is {db.get('status')} here, but the broker has no such order: left for you to "
                "check (reconciliation never sends or cancels orders)"
            )
        return (
            f"{order} is {db.get('status')} here ({_qty(db.get('filled_qty'))} filled), "
            f"{broker.get('status')} at the broker ({_qty(broker.get('filled_qty'))} filled): {done}"
        )
    if d.kind == EXPLAINED_KIND:
        done = "snapshot updated" if d.repaired else "another run had already updated the snapshot"
        return f"{d.symbol} {broker.get('change')}: {', '.join(broker.get('option_events', ()))}: {done}"
    # Option events that account for part of a position's difference are named beside it.
    part = (f" (option events account for {broker['option_change']} of it: "
            f"{', '.join(broker['option_events'])})" if broker.get("option_events") else "")
    if d.kind == "position_mismatch":
        return f"{d.symbol}: {_qty(db.get('qty'))} here, {_qty(broker.get('qty'))} at the broker{part}: {done}"
    if d.kind == "missing_position":
        return f"{d.symbol}: {_qty(broker.get('qty'))} at the broker, never seen here{part}: {done}"
    if d.kind == "stale_position":
        return f"{d.symbol}: {_qty(db.get('qty'))} here, none at the broker{part}: {done}"
    return f"{d.kind} {order}: database {_brief(d.db_value)}, broker {_brief(d.broker_value)}: {done}"


# --------------------------------------------------------------------------------------------- fetch


async def _timed(timings: dict[str, float], name: str, call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    finally:
        timings[name] = time.perf_counter() - started


async def _gather_or_cancel(*calls: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` that cancels the siblings when one call fails (no orphan requests)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _all_orders(rest: AlpacaREST, status: str, after: datetime | None) -> list[Order]:
    """Every order of ``status`` submitted after ``after``, oldest first, paging past Alpaca's 500.

    ``after`` is exclusive at the broker, so each next page starts 1 µs before the last order seen
    (orders sharing a timestamp are not skipped) and repeats are dropped by id.
    """
    out: dict[str, Order] = {}
    cursor = after
    for _ in range(MAX_ORDER_PAGES):
        page = await rest.list_orders(
            status=status,
            limit=ORDERS_PAGE_LIMIT,
            after=cursor,
            direction="asc",  # type: ignore[arg-type]
        )
        fresh = [o for o in page if o.id not in out]
        for order in fresh:
            out[order.id] = order
        if len(page) < ORDERS_PAGE_LIMIT or not fresh:
            return list(out.values())
        last = page[-1]
        cursor = (last.submitted_at or last.created_at) - timedelta(microseconds=1)
    log.warning(
        "reconcile: more than %d %s orders in the window; the rest wait for the next run", len(out), status
    )
    return list(out.values())


async def fetch_broker_state(rest: AlpacaREST, *, fills_after: datetime | None) -> BrokerState:
    """Account, positions, open orders, closed orders and fill activities since ``fills_after``
    (None: the last :data:`DEFAULT_LOOKBACK`) and option events since :data:`OPTION_EVENTS_LOOKBACK`
    before that, all six requests in flight at once.

    ``timings`` holds each call's own seconds (``account``, ``positions``, ``open_orders``,
    ``closed_orders``, ``fills``, ``option_events``; a paged call counts all its pages); ``fetch_s``
    the wall time of the whole fetch, which with the calls concurrent is about the slowest one.
    """
    since = fills_after if fills_after is not None else datetime.now(UTC) - DEFAULT_LOOKBACK
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    account, positions, open_orders, closed_orders, fills, option_events = await _gather_or_cancel(
        _timed(timings, "account", rest.get_account()),
        _timed(timings, "positions", rest.get_positions()),
        _timed(timings, "open_orders", _all_orders(rest, "open", None)),
        _timed(timings, "closed_orders", _all_orders(rest, "closed", since)),
        _timed(timings, "fills", collect(rest.fill_activities(after=since, page_size=100))),
        _timed(timings, "option_events",
               collect(rest.option_activities(after=since - OPTION_EVENTS_LOOKBACK, page_size=100))),
    )
    fetch_s = time.perf_counter() - started
    return BrokerState(
        account=account,
        positions=positions,
        open_orders=open_orders,
        closed_orders=closed_orders,
        fills=fills,
        fills_after=since,
        observed_at=datetime.now(UTC),
        timings=dict(timings),
        fetch_s=fetch_s,
        option_events=option_events,
    )


async def _look_up_db_open_orders(conn: psycopg.AsyncConnection, rest: AlpacaREST, state: BrokerState) -> int:
    """Fetch, one by one, orders the database holds open that the broker's lists did not return
    (they closed before the window). Fills ``state.looked_up`` / ``state.not_found``; returns how many."""
    known = state.orders()
    known_cids = {o.client_order_id for o in known.values()}
    cur = await conn.execute(
        "SELECT client_order_id, id::text FROM orders WHERE status = ANY(%s) "
        "AND (id IS NULL OR id <> ALL(%s::uuid[])) AND client_order_id <> ALL(%s) "
        "AND NOT (status = 'pending_submit' AND created_at > %s) ORDER BY created_at LIMIT %s",
        (
            list(OPEN_STATUSES),
            list(known),
            list(known_cids),
            state.observed_at - PENDING_GRACE,
            MAX_ORDER_LOOKUPS,
        ),
    )
    wanted: list[tuple[str, str | None]] = [(cid, oid) for cid, oid in await cur.fetchall()]
    if not wanted:
        return 0
    gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(cid: str, oid: str | None) -> Order | None:
        async with gate:
            try:
                return await (rest.get_order(oid) if oid else rest.get_order_by_client_id(cid))
            except NotFoundError:
                return None

    found = await _gather_or_cancel(*(one(cid, oid) for cid, oid in wanted))
    for (cid, oid), order in zip(wanted, found, strict=True):
        if order is None:
            state.not_found.append((cid, oid))
        else:
            state.looked_up.append(order)
    return len(wanted)


# ------------------------------------------------------------------------------- compute (pure)
# Plain data in, plain data out: no connection, no network. The store steps below feed them what
# the database holds and write what they decide.


def _newer(a: Order, b: Order) -> bool:
    return (a.updated_at or a.created_at) >= (b.updated_at or b.created_at)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _values(**fields: Any) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in fields.items()}


#: an ``orders`` row as :func:`read_orders` returns it.
OrderRow = tuple[str, str | None, str, Decimal | None, datetime | None, str | None]  # cid, id, status, filled, updated, symbol


def diff_orders(broker: dict[str, Order], rows: list[OrderRow]) -> tuple[list[Diff], list[Order]]:
    """The broker's orders against the database's rows: one :class:`Diff` (not yet repaired) and
    one order to upsert per ``unknown_order`` or ``order_status_drift`` (see the module docstring)."""
    by_id = {row[1]: row for row in rows if row[1] is not None}
    by_cid = {row[0]: row for row in rows}
    diffs: list[Diff] = []
    repairs: list[Order] = []
    for order in broker.values():
        row = by_id.get(order.id) or by_cid.get(order.client_order_id)
        broker_value = _values(
            status=order.status,
            filled_qty=order.filled_qty,
            filled_avg_price=order.filled_avg_price,
            updated_at=order.updated_at,
        )
        if row is None:
            kind, db_value = "unknown_order", None
        else:
            _, db_id, status, filled_qty, updated_at, _ = row
            if db_id == order.id and status == order.status and filled_qty == order.filled_qty:
                continue
            if updated_at is not None and order.updated_at is not None and order.updated_at < updated_at:
                continue  # the database heard of a later update than this answer: not drift
            kind = "order_status_drift"
            db_value = _values(status=status, filled_qty=filled_qty, updated_at=updated_at, id=db_id)
        repairs.append(order)
        diffs.append(Diff(kind, order.symbol, order.id, order.client_order_id, db_value, broker_value))
    return diffs, repairs


def not_found_diffs(not_found: list[tuple[str, str | None]], rows: list[OrderRow]) -> list[Diff]:
    """Orders open here that the broker says do not exist: recorded, never repaired (a person decides)."""
    by_cid = {row[0]: row for row in rows}
    diffs = []
    for cid, oid in not_found:
        row = by_cid.get(cid)
        diffs.append(Diff("order_status_drift", row[5] if row else None, oid, cid,
                          _values(status=row[2] if row else None), {"status": "not_found"}, repaired=False))
    return diffs


def fill_order_ids(state: BrokerState) -> dict[str, str]:
    """Broker order id → client order id, for every order the broker returned."""
    return {o.id: o.client_order_id for o in state.orders().values()}


def fill_rows(fills: list[FillActivity], cids: dict[str, str]) -> list[tuple]:
    """Fill activities as :data:`~tickvault.db.tables.INSERT_FILL` parameters (``source = 'reconcile'``)."""
    return [
        (f.order_id, f.cum_qty, f.id, cids.get(f.order_id), f.symbol, f.side, f.qty, f.price, f.leaves_qty,
         "partial_fill" if f.type == "partial_fill" else "fill", f.transaction_time, "reconcile")
        for f in fills
    ]


def missing_fill_diffs(fills: list[FillActivity], inserted: set[tuple[str, Decimal]],
                       cids: dict[str, str]) -> list[Diff]:
    """One repaired ``missing_fill`` per fill whose ``(order_id, cum_qty)`` the insert wrote."""
    written = {(oid.lower(), cum) for oid, cum in inserted}
    return [
        Diff("missing_fill", f.symbol, f.order_id, cids.get(f.order_id), None,
             _values(qty=f.qty, price=f.price, cum_qty=f.cum_qty, side=f.side,
                     transaction_time=f.transaction_time, activity_id=f.id),
             repaired=True)
        for f in fills
        if (f.order_id.lower(), f.cum_qty) in written
    ]


def diff_positions(
    positions: list[Position], latest: dict[str, tuple[Decimal, datetime]], at: datetime
) -> tuple[list[Diff], list[tuple]]:
    """The broker's positions against each symbol's latest snapshot ``(qty, time)``: the diffs (not
    yet repaired) and the snapshot rows to write (every broker position, plus a zero for each stale one)."""
    diffs: list[Diff] = []
    snapshots: list[tuple] = []
    broker = {p.symbol for p in positions}
    for p in positions:
        snapshots.append(
            (at, p.symbol, p.qty, p.side, p.avg_entry_price, p.cost_basis, p.market_value, p.unrealized_pl)
        )
        seen = latest.get(p.symbol)
        if seen is not None and seen[1] > at:
            continue  # a snapshot newer than this answer exists: compare nothing against it
        bval = _values(qty=p.qty, avg_entry_price=p.avg_entry_price, side=p.side)
        if seen is None:
            diffs.append(Diff("missing_position", p.symbol, broker_value=bval))
        elif seen[0] != p.qty:
            diffs.append(Diff("position_mismatch", p.symbol, db_value=_values(qty=seen[0], time=seen[1]),
                              broker_value=bval))
    for symbol, (qty, when) in latest.items():
        if symbol in broker or qty == 0 or when > at:
            continue
        snapshots.append((at, symbol, Decimal(0), None, None, Decimal(0), Decimal(0), Decimal(0)))
        diffs.append(Diff("stale_position", symbol, db_value=_values(qty=qty, time=when), broker_value={"qty": "0"}))
    return diffs, snapshots


def _sign(value: Decimal) -> str:
    """``+200``, ``−100``, ``0``."""
    return ("+" if value > 0 else "−" if value < 0 else "") + _qty(abs(value))


def _signed(value: Decimal, unit: str) -> str:
    """``+100 shares``, ``−2 contracts``, ``−1 contract``."""
    return f"{_sign(value)} {unit}" + ("" if abs(value) == 1 else "s")


def _is_contract(symbol: str) -> bool:
    try:
        parse_occ(symbol)
    except OccSymbolError:
        return False
    return True


def _delivered_by(delivery: OptionActivity, events: list[OptionActivity]) -> OptionActivity | None:
    """The exercise or assignment whose shares an ``OPTRD`` delivered: same day, the contract's underlying
    and strike, 100 shares a contract."""
    for e in events:
        if e.activity_type not in ("OPEXC", "OPASN") or e.date != delivery.date or not _is_contract(e.symbol):
            continue
        occ = parse_occ(e.symbol)
        if (occ.underlying == delivery.symbol and occ.strike == delivery.price
                and abs(e.qty) * SHARES_PER_CONTRACT == abs(delivery.qty)):
            return e
    return None


_EVENT_VERBS = {"OPEXC": "exercised", "OPASN": "assigned", "OPEXP": "expired worthless"}


def describe_option_event(event: OptionActivity, events: list[OptionActivity]) -> str:
    """One event in words, as it touches its own symbol: ``2 exercised on 2027-01-15`` for a contract,
    ``2 AAPL270115C00100000 exercised at $100.00`` for the shares an exercise delivered."""
    if event.activity_type != "OPTRD":
        verb = _EVENT_VERBS.get(event.activity_type, event.activity_type)
        return f"{_qty(abs(event.qty))} {verb} on {event.date}"
    source = _delivered_by(event, events)
    if source is None:
        return f"{_signed(event.qty, 'share')} delivered at {_money(event.price)} (option trade {event.id})"
    verb = _EVENT_VERBS[source.activity_type]
    return f"{_qty(abs(source.qty))} {source.symbol} {verb} at {_money(event.price)}"


def explain_positions(
    diffs: list[Diff], recorded: list[OptionActivity], fetched: list[OptionActivity]
) -> list[Diff]:
    """Position diffs (not yet repaired) against the option events this run ``recorded`` (``fetched``:
    every event listed, to find the exercise behind a share delivery): a difference the events account
    for exactly becomes :data:`EXPLAINED_KIND`; one they account for in part keeps its kind, the events
    named in ``broker_value`` (see the module docstring)."""
    by_symbol: dict[str, list[OptionActivity]] = {}
    for e in recorded:
        by_symbol.setdefault(e.symbol, []).append(e)
    out = []
    for d in diffs:
        events = by_symbol.get(d.symbol or "")
        if d.kind not in ("position_mismatch", "missing_position", "stale_position") or not events:
            out.append(d)
            continue
        db, broker = d.db_value or {}, d.broker_value or {}
        change = Decimal(broker.get("qty", "0")) - Decimal(db.get("qty", "0"))
        by_events = sum((e.qty for e in events), Decimal(0))
        words = [describe_option_event(e, fetched) for e in events]
        if len(events) > 1:
            words = [f"{w} ({_sign(e.qty)})" for w, e in zip(words, events, strict=True)]
        unit = "contract" if _is_contract(d.symbol or "") else "share"
        noted = {"option_change": _signed(by_events, unit), "option_events": words,
                 "activity_ids": [e.id for e in events]}
        if by_events == change:
            explained = {**broker, "change": _signed(change, unit), "drift_kind": d.kind, **noted}
            out.append(replace(d, kind=EXPLAINED_KIND, broker_value=explained))
        else:
            out.append(replace(d, broker_value={**broker, **noted}))
    return out


def option_event_rows(events: list[OptionActivity]) -> list[tuple]:
    """Option events as :data:`~tickvault.db.tables.INSERT_OPTION_EVENT` parameters."""
    return [
        (e.id, e.activity_type, e.symbol, e.qty, e.price, e.net_amount, e.date, e.time, e.description, e.status,
         Jsonb(e.model_dump(mode="json")))
        for e in events
    ]


def mark_repaired(diffs: list[Diff], repaired: Callable[[Diff], bool]) -> list[Diff]:
    return [replace(d, repaired=repaired(d)) for d in diffs]


def count_diffs(diffs: list[Diff]) -> dict[str, int]:
    """Differences per kind, every kind of :data:`DIFF_KINDS` present (0 included)."""
    counts = {kind: 0 for kind in DIFF_KINDS}
    for d in diffs:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    return counts


def positions_checked(state: BrokerState, diffs: list[Diff]) -> int:
    """Symbols compared: the broker's positions and the stale ones only the database held."""
    stale = {d.symbol for d in diffs
             if d.kind == "stale_position" or (d.broker_value or {}).get("drift_kind") == "stale_position"}
    return len({p.symbol for p in state.positions} | stale)


def _error_text(exc: BaseException, secrets: list[str]) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redact(text, secrets)[:2000]


# --------------------------------------------------------------------------------------- store (SQL)
# Statements from tickvault.db.tables; each step reads or writes one thing.


async def _returned(conn: psycopg.AsyncConnection, query: str, params: list[Any]) -> set[Any]:
    """Run ``query`` (one ``RETURNING`` column or several) for each parameter set, pipelined; the set
    of returned values (tuples when several columns): what this statement actually wrote."""
    out: set[Any] = set()
    if not params:
        return out
    async with conn.cursor() as cur:
        await cur.executemany(query, params, returning=True)
        while True:
            for row in await cur.fetchall():
                out.add(row[0] if len(row) == 1 else tuple(row))
            if not cur.nextset():
                break
    return out


async def read_orders(conn: psycopg.AsyncConnection, ids: list[str], cids: list[str]) -> list[OrderRow]:
    cur = await conn.execute(
        "SELECT client_order_id, id::text, status, filled_qty, updated_at, symbol FROM orders "
        "WHERE id = ANY(%s::uuid[]) OR client_order_id = ANY(%s)",
        (ids, cids),
    )
    return list(await cur.fetchall())


async def upsert_orders(conn: psycopg.AsyncConnection, orders: list[Order]) -> set[str]:
    """The worker's own upsert (a newer broker update wins, an older one changes nothing), pipelined;
    the client order ids of rows this statement inserted or changed."""
    return await _returned(conn, UPSERT_ORDER.rstrip() + " RETURNING client_order_id",
                           [order_params(o, source="reconcile") for o in orders])


async def insert_fills(conn: psycopg.AsyncConnection, rows: list[tuple]) -> set[tuple[str, Decimal]]:
    """Insert-if-absent IS the comparison: the ``(order_id, cum_qty)`` returned are fills the database lacked."""
    return await _returned(conn, INSERT_FILL.rstrip() + " RETURNING order_id::text, cum_qty", rows)


async def insert_option_events(conn: psycopg.AsyncConnection, events: list[OptionActivity]) -> set[str]:
    """Insert-if-absent, keyed by Alpaca's activity id: the ids returned are events the database lacked."""
    return await _returned(conn, INSERT_OPTION_EVENT, option_event_rows(events))


async def read_latest_positions(conn: psycopg.AsyncConnection) -> dict[str, tuple[Decimal, datetime]]:
    cur = await conn.execute(
        "SELECT DISTINCT ON (symbol) symbol, qty, time FROM position_snapshots ORDER BY symbol, time DESC"
    )
    return {symbol: (qty, when) for symbol, qty, when in await cur.fetchall()}


async def insert_position_snapshots(conn: psycopg.AsyncConnection, rows: list[tuple]) -> set[str]:
    """The symbols whose snapshot row was written."""
    return await _returned(conn, INSERT_POSITION_SNAPSHOT, rows)


async def record_account(conn: psycopg.AsyncConnection, state: BrokerState) -> None:
    a = state.account
    await conn.execute(
        INSERT_ACCOUNT_SNAPSHOT,
        (state.observed_at, a.id, a.status, a.currency, a.cash, a.equity, a.buying_power,
         Jsonb(a.model_dump(mode="json"))),
    )


async def record_diffs(conn: psycopg.AsyncConnection, run_id: int, diffs: list[Diff]) -> None:
    if not diffs:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            INSERT_RECONCILIATION_DIFF,
            [
                (run_id, d.kind, d.symbol, d.order_id, d.client_order_id,
                 Jsonb(d.db_value) if d.db_value is not None else None,
                 Jsonb(d.broker_value) if d.broker_value is not None else None, d.repaired)
                for d in diffs
            ],
        )


async def compare_and_repair(conn: psycopg.AsyncConnection, state: BrokerState) -> tuple[list[Diff], int]:
    """Orders, fills, option events, positions: read, compare (pure), repair, in that order; the account
    snapshot. The diffs, and how many option events this call recorded. Call inside the transaction
    holding :data:`REPAIR_LOCK_KEY`."""
    broker = state.orders()
    diffs: list[Diff] = []
    if broker or state.not_found:
        rows = await read_orders(conn, list(broker), [o.client_order_id for o in broker.values()]
                                 + [cid for cid, _ in state.not_found])
        order_diffs, repairs = diff_orders(broker, rows)
        if repairs:
            changed = await upsert_orders(conn, repairs)
            order_diffs = mark_repaired(order_diffs, lambda d: d.client_order_id in changed)
        diffs += order_diffs + not_found_diffs(state.not_found, rows)
    if state.fills:
        cids = fill_order_ids(state)
        inserted = await insert_fills(conn, fill_rows(state.fills, cids))
        diffs += missing_fill_diffs(state.fills, inserted, cids)
    recorded_ids = await insert_option_events(conn, state.option_events)
    recorded = [e for e in state.option_events if e.id in recorded_ids]
    position_diffs, snapshots = diff_positions(state.positions, await read_latest_positions(conn), state.observed_at)
    position_diffs = explain_positions(position_diffs, recorded, state.option_events)
    written = await insert_position_snapshots(conn, snapshots)
    diffs += mark_repaired(position_diffs, lambda d: d.symbol in written)
    await record_account(conn, state)
    return diffs, len(recorded)


async def open_run(conn: psycopg.AsyncConnection) -> tuple[int, datetime | None]:
    """A ``running`` row, and the start of the window (the last completed run's start, less the overlap)."""
    row = await (await conn.execute(LAST_COMPLETED_RECONCILIATION)).fetchone()
    last = row[0] if row else None
    run_id = (await (await conn.execute(OPEN_RECONCILIATION_RUN)).fetchone())[0]  # type: ignore[index]
    return run_id, (last - WINDOW_OVERLAP if last is not None else None)


async def fail_run(url: str, run_id: int, error: str, duration_s: float) -> None:
    """Mark the run failed on a fresh connection (the run's own may be what broke)."""
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10) as conn:
            await conn.execute(FAIL_RECONCILIATION_RUN, (error, duration_s * 1000, run_id))
    except Exception:
        log.exception("reconcile: could not mark run %s failed", run_id)


# --------------------------------------------------------------------------------------------- the run


async def reconcile(
    settings: Settings, *, rest: AlpacaREST | None = None, db_url: str | None = None
) -> ReconcileSummary:
    """One reconciliation run (see the module docstring). Raises :class:`ReconcileError` (with the
    run id; the cause chained) after marking the run ``failed``; never sends or cancels an order."""
    if db_url is None:
        from tickvault.db import database_url

        db_url = database_url(settings)
    rest = rest or AlpacaREST(settings)
    started = time.perf_counter()
    phases: dict[str, float] = {}
    run_id: int | None = None
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            t = time.perf_counter()
            run_id, fills_after = await open_run(conn)
            phases["phase:open_run"] = time.perf_counter() - t

            state = await fetch_broker_state(rest, fills_after=fills_after)
            phases["phase:fetch"] = state.fetch_s

            t = time.perf_counter()
            lookups = await _look_up_db_open_orders(conn, rest, state)
            phases["phase:order_lookups"] = time.perf_counter() - t

            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (REPAIR_LOCK_KEY,))
                t_locked = time.perf_counter()
                phases["phase:lock_wait"] = t_locked - t
                diffs, events_recorded = await compare_and_repair(conn, state)
                await record_diffs(conn, run_id, diffs)
            phases["phase:compare_repair"] = time.perf_counter() - t_locked

            counts = count_diffs(diffs)
            drift = [d for d in diffs if d.kind != EXPLAINED_KIND]
            repaired = sum(d.repaired for d in drift)
            orders_checked = len(state.orders()) + len(state.not_found)
            checked_positions = positions_checked(state, diffs)
            duration_s = time.perf_counter() - started
            await conn.execute(
                COMPLETE_RECONCILIATION_RUN,
                (orders_checked, len(state.fills), checked_positions, len(drift), repaired,
                 len(diffs) - len(drift), state.fetch_s * 1000, duration_s * 1000, run_id),
            )
    except BaseException as exc:
        duration_s = time.perf_counter() - started
        error = _error_text(exc, secret_values(settings, db_url))
        if run_id is not None:
            await asyncio.shield(fail_run(db_url, run_id, error, duration_s))
        log.error("reconcile run %s failed after %.3fs: %s", run_id, duration_s, error)
        if isinstance(exc, Exception):
            raise ReconcileError(f"reconciliation run {run_id} failed: {error}", run_id) from exc
        raise
    summary = ReconcileSummary(
        run_id=run_id,
        status="completed",
        fills_after=state.fills_after,
        counts=counts,
        diffs=diffs,
        repaired=repaired,
        orders_checked=orders_checked,
        fills_checked=len(state.fills),
        positions_checked=checked_positions,
        fetch_s=state.fetch_s,
        duration_s=duration_s,
        timings={**state.timings, **phases},
        account=state.account,
        positions=list(state.positions),
        observed_at=state.observed_at,
        lookups=lookups,
        option_events_checked=len(state.option_events),
        option_events_recorded=events_recorded,
    )
    log.info("%s", summary.log_line())
    return summary


# --------------------------------------------------------------------------------------------- markdown


def _position_cells(p: Position) -> tuple[str, ...]:
    pct = f" ({p.unrealized_plpc * 100:+.2f} %)" if p.unrealized_plpc is not None else ""
    return (
        p.symbol, _qty(p.qty), _money(p.avg_entry_price),
        _money(p.current_price) if p.current_price is not None else "-",
        _money(p.market_value) if p.market_value is not None else "-",
        (_money(p.unrealized_pl, signed=True) if p.unrealized_pl is not None else "-") + pct,
    )


def _brief(value: dict[str, Any] | None) -> str:
    if not value:
        return "—"
    return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)


def _money(value: Decimal | float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    value = Decimal(value)
    sign = ("+" if value > 0 else "−" if value < 0 else "") if signed else ("−" if value < 0 else "")
    return f"{sign}${abs(value):,.2f}"


def _qty(value: Any) -> str:
    """A quantity without trailing zeros: ``10``, ``0.5``; ``?`` when unknown."""
    if value is None:
        return "?"
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return f"{d.normalize():f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
