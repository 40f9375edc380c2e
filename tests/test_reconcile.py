"""Reconciliation against the real simulator over HTTP and a real, freshly migrated TimescaleDB.

The module has its own database, emptied before each test (planted drift must not meet another
test's rows), and each test its own simulator. The simulator runs with ``rate=None`` and no
market-data subscriber, so prices stand still: a resting limit order far below the price stays
open for the whole test.

Planted drift (one of each kind):
  missing_fill        a fill row deleted
  order_status_drift  a filled order set back to 'new' with filled_qty 0
  position_mismatch   a newer snapshot with a wrong quantity
  unknown_order       an order submitted at the broker and never recorded
  missing_position    a position planted at the broker, never snapshotted
  stale_position      a snapshot of a symbol the broker holds no position in
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import pytest_asyncio

from tests.support.option_expiry import close_expiry, plant_expiring_book
from tests.support.waiting import wait_until
from tickvault.alpaca.options import parse_occ
from tickvault.alpaca.models import Order, OrderRequest
from tickvault.alpaca.rest import AlpacaREST, RetryPolicy, collect
from tickvault.config import Settings, load_settings
from tickvault.http import aclose_http_client
from tickvault.jobs.reconcile import DIFF_KINDS, ReconcileError, fetch_broker_state, reconcile
from tickvault.sim import Simulator
from tickvault.db.tables import INSERT_FILL, record_order

pytestmark = pytest.mark.db

KEY_ID = "PKRECONCILE0001"
SECRET = "reconcile-secret-never-logged-0001"
# Fast backoff keeps fault tests short; Retry-After from the server is still honoured.
FAST_RETRY = RetryPolicy(max_retries=4, backoff_base_s=0.01, backoff_cap_s=0.05)
STALE_SYMBOL = "GONECO"


@dataclass
class Env:
    sim: Simulator
    settings: Settings
    rest: AlpacaREST
    db_url: str


@pytest.fixture(scope="module")
def reconcile_db(fresh_database) -> str:
    """One fresh database for this module; each test empties the tables reconciliation reads."""
    return fresh_database()


@asynccontextmanager
async def _env(url: str, **sim_args: Any) -> AsyncIterator[Env]:
    """The emptied database and a simulator of ``sim_args``, and a client to it."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "TRUNCATE orders, fills, option_events, position_snapshots, account_snapshots, reconciliation_runs "
            "CASCADE"
        )
    async with Simulator(rate=None, key=KEY_ID, secret=SECRET, **sim_args) as sim:
        settings = load_settings(
            database_url=url, alpaca_key_id=KEY_ID, alpaca_secret_key=SECRET,
            alpaca_trading_url=sim.rest_url, alpaca_data_url=sim.rest_url, http_timeout_s=5.0,
        )  # fmt: skip
        try:
            yield Env(sim, settings, AlpacaREST(settings, retry=FAST_RETRY), url)
        finally:
            await aclose_http_client()


# The simulator must run on the test's own loop (fixtures default to the session loop here).
@pytest_asyncio.fixture(loop_scope="function")
async def env(reconcile_db: str) -> AsyncIterator[Env]:
    async with _env(reconcile_db, symbols=6, seed=11) as e:
        yield e


@pytest_asyncio.fixture(loop_scope="function")
async def options_env(reconcile_db: str) -> AsyncIterator[Env]:
    """A simulator whose AAPL (seed 4) stands above $150, with AAPL and MSFT option contracts."""
    async with _env(reconcile_db, symbols=["AAPL", "MSFT", "NVDA"], seed=4) as e:
        yield e


@dataclass
class Planted:
    missing_fill: Order
    drifted: Order
    unknown: Order
    mismatch_symbol: str
    missing_symbol: str


async def _buy(rest: AlpacaREST, symbol: str, qty: int, **extra: Any) -> Order:
    return await rest.submit_order(
        OrderRequest(
            symbol=symbol,
            side="buy",
            qty=Decimal(qty),
            client_order_id=OrderRequest.new_client_order_id("test"),
            **extra,
        )
    )


async def _record_worker_view(env: Env, orders: list[Order]) -> None:
    """What a healthy worker would have stored: the orders, their fills, a snapshot of positions."""
    fills = await collect(env.rest.fill_activities())
    positions = await env.rest.get_positions()
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        for order in orders:
            await record_order(conn, order, source="stream")
        for f in fills:
            await conn.execute(
                INSERT_FILL,
                (
                    f.order_id,
                    f.cum_qty,
                    f.id,
                    None,
                    f.symbol,
                    f.side,
                    f.qty,
                    f.price,
                    f.leaves_qty,
                    f.type,
                    f.transaction_time,
                    "stream",
                ),
            )
        for p in positions:
            await conn.execute(
                "INSERT INTO position_snapshots (time, symbol, qty, avg_entry_price) VALUES (%s, %s, %s, %s)",
                (earlier, p.symbol, p.qty, p.avg_entry_price),
            )


async def _plant_drift(env: Env) -> Planted:
    s = env.sim.symbols
    orders = [await _buy(env.rest, s[0], 10), await _buy(env.rest, s[1], 5), await _buy(env.rest, s[2], 3)]
    assert all(o.status == "filled" for o in orders)
    await _record_worker_view(env, orders)
    # A resting limit far below the price: open at the broker, never recorded here.
    unknown = await _buy(env.rest, s[3], 1, type="limit", limit_price=Decimal("0.01"), time_in_force="gtc")
    assert unknown.status == "new"
    env.sim.broker.set_position(s[4], 7, "50")
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM fills WHERE order_id = %s", (orders[0].id,))
        await conn.execute("UPDATE orders SET status = 'new', filled_qty = 0 WHERE id = %s", (orders[1].id,))
        await conn.execute(
            "INSERT INTO position_snapshots (time, symbol, qty) "
            "VALUES (now() - interval '10 seconds', %s, 999)",
            (s[2],),
        )
        await conn.execute(
            "INSERT INTO position_snapshots (time, symbol, qty) VALUES (now() - interval '1 hour', %s, 4)",
            (STALE_SYMBOL,),
        )
    return Planted(orders[0], orders[1], unknown, s[2], s[4])


async def _one(conn: psycopg.AsyncConnection, sql: str, *params: Any) -> Any:
    row = await (await conn.execute(sql, params)).fetchone()
    return row[0] if row and len(row) == 1 else row


async def _assert_database_agrees_with_broker(env: Env, planted: Planted) -> None:
    positions = {p.symbol: p.qty for p in await env.rest.get_positions()}
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        assert (
            await _one(conn, "SELECT count(*) FROM fills WHERE order_id = %s", planted.missing_fill.id) == 1
        )
        assert (
            await _one(conn, "SELECT source FROM fills WHERE order_id = %s", planted.missing_fill.id)
            == "reconcile"
        )
        assert await _one(
            conn, "SELECT status, filled_qty FROM orders WHERE id = %s", planted.drifted.id
        ) == ("filled", planted.drifted.filled_qty)
        assert await _one(
            conn,
            "SELECT status, source FROM orders WHERE client_order_id = %s",
            planted.unknown.client_order_id,
        ) == ("new", "reconcile")
        cur = await conn.execute(
            "SELECT DISTINCT ON (symbol) symbol, qty FROM position_snapshots ORDER BY symbol, time DESC"
        )
        latest = {sym: qty for sym, qty in await cur.fetchall() if qty != 0}
        assert latest == positions
        assert await _one(conn, "SELECT count(*) FROM account_snapshots") >= 1


def _kinds(summary) -> dict[str, int]:
    return {k: v for k, v in summary.counts.items() if v}


async def test_reconcile_finds_and_repairs_exactly_the_planted_drift(env: Env):
    planted = await _plant_drift(env)

    first = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)

    assert _kinds(first) == {kind: 1 for kind in DIFF_KINDS}
    assert first.repaired == 6 and all(d.repaired for d in first.diffs)
    by_kind = {d.kind: d for d in first.diffs}
    assert by_kind["missing_fill"].order_id == planted.missing_fill.id
    assert by_kind["order_status_drift"].order_id == planted.drifted.id
    assert by_kind["order_status_drift"].db_value["status"] == "new"
    assert by_kind["order_status_drift"].broker_value["status"] == "filled"
    assert by_kind["unknown_order"].client_order_id == planted.unknown.client_order_id
    assert by_kind["position_mismatch"].symbol == planted.mismatch_symbol
    assert by_kind["position_mismatch"].db_value["qty"] == "999"
    assert by_kind["missing_position"].symbol == planted.missing_symbol
    assert by_kind["stale_position"].symbol == STALE_SYMBOL
    assert first.orders_checked == 4 and first.fills_checked == 3 and first.positions_checked == 5
    assert set(first.timings) >= {"account", "positions", "open_orders", "closed_orders", "fills", "option_events"}
    await _assert_database_agrees_with_broker(env, planted)

    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        run = await _one(
            conn,
            "SELECT status, diffs, repaired, orders_checked, fills_checked, error, "
            "fetch_ms > 0, duration_ms >= fetch_ms, finished_at IS NOT NULL "
            "FROM reconciliation_runs WHERE id = %s",
            first.run_id,
        )
        assert run == ("completed", 6, 6, 4, 3, None, True, True, True)
        cur = await conn.execute(
            "SELECT kind, repaired FROM reconciliation_diffs WHERE run_id = %s ORDER BY kind", (first.run_id,)
        )
        assert await cur.fetchall() == [(k, True) for k in sorted(DIFF_KINDS)]

    md = first.to_markdown()
    assert f"Reconciliation run {first.run_id}: completed" in md
    assert md.startswith("# Account at ") and "equity $" in md
    differences = md.split("## 6 differences, 6 repaired", 1)[1].split("## Checked", 1)[0]
    assert differences.count("\n- ") == 6 and "_" not in differences.replace(planted.unknown.client_order_id, "")
    assert "filled at the broker" in differences and "missing here: repaired" in differences  # words, not codes
    assert md.index("## Positions") < md.index("## 6 differences") < md.index("## Checked and timings")
    assert planted.unknown.client_order_id in md and STALE_SYMBOL in md
    assert SECRET not in md and KEY_ID not in md

    second = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    assert second.total_diffs == 0 and second.repaired == 0 and _kinds(second) == {}
    assert second.fills_after < datetime.now(UTC)  # window from the first run, with the overlap
    assert "No differences" in second.to_markdown()


async def test_reconcile_completes_under_rest_faults_and_a_failed_run_is_recorded(env: Env):
    planted = await _plant_drift(env)
    env.sim.rest_latency(50)
    faults_before = env.sim.stats["rest_faults"]
    env.sim.rest_fail(429, 2, retry_after=0.1)
    first = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    assert env.sim.stats["rest_faults"] == faults_before + 2
    assert _kinds(first) == {kind: 1 for kind in DIFF_KINDS} and first.repaired == 6
    await _assert_database_agrees_with_broker(env, planted)

    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM fills WHERE order_id = %s", (planted.drifted.id,))
    env.sim.rest_fail(500, 2)
    second = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    assert env.sim.stats["rest_faults"] == faults_before + 4
    assert _kinds(second) == {"missing_fill": 1} and second.repaired == 1

    # More failures than retries: the run fails, and its row says so without a secret in it.
    env.sim.rest_latency(0)
    env.sim.rest_fail(500, 1000)
    with pytest.raises(ReconcileError) as caught:
        await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    env.sim.rest_fail(500, 0)
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        status, error = await _one(
            conn, "SELECT status, error FROM reconciliation_runs WHERE id = %s", caught.value.run_id
        )
    assert status == "failed" and "500" in error
    assert SECRET not in error and KEY_ID not in error and SECRET not in str(caught.value)


async def test_two_concurrent_runs_repair_each_drift_exactly_once(env: Env):
    planted = await _plant_drift(env)
    env.sim.rest_latency(20)  # both fetches in flight at the same time

    a, b = await asyncio.gather(
        reconcile(env.settings, rest=env.rest, db_url=env.db_url),
        reconcile(env.settings, rest=env.rest, db_url=env.db_url),
    )

    assert a.run_id != b.run_id
    combined = {kind: a.counts[kind] + b.counts[kind] for kind in DIFF_KINDS}
    assert combined == {kind: 1 for kind in DIFF_KINDS}
    assert a.repaired + b.repaired == 6
    repaired = [d for d in (*a.diffs, *b.diffs) if d.repaired]
    assert sorted(d.kind for d in repaired) == sorted(DIFF_KINDS)
    await _assert_database_agrees_with_broker(env, planted)
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        assert await _one(conn, "SELECT count(*) FROM reconciliation_diffs WHERE repaired") == 6
        assert await _one(conn, "SELECT count(*) FROM reconciliation_runs WHERE status = 'completed'") == 2


async def test_orders_closed_before_the_window_are_looked_up_one_by_one(env: Env):
    """An order the database still holds open but the broker closed before the window is fetched by
    id and repaired; an open order the broker never heard of is reported, not repaired (reconciliation
    never sends orders)."""
    s = env.sim.symbols
    filled = await _buy(env.rest, s[0], 2)
    await _record_worker_view(env, [filled])
    ghost_cid = "tv-ghost-order"
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE orders SET status = 'accepted', filled_qty = 0 WHERE id = %s", (filled.id,)
        )
        await conn.execute(
            "INSERT INTO orders (client_order_id, symbol, side, order_type, time_in_force, qty, status, "
            "created_at) "
            "VALUES (%s, %s, 'buy', 'market', 'day', 1, 'pending_submit', now() - interval '1 hour')",
            (ghost_cid, s[1]),
        )
        # A completed run "in the future": the window then excludes every closed order and fill.
        await conn.execute(
            "INSERT INTO reconciliation_runs (started_at, status) "
            "VALUES (now() + interval '1 hour', 'completed')"
        )

    summary = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)

    assert summary.fills_checked == 0
    drift = {d.client_order_id: d for d in summary.diffs if d.kind == "order_status_drift"}
    assert set(drift) == {filled.client_order_id, ghost_cid}
    assert (
        drift[filled.client_order_id].repaired
        and drift[filled.client_order_id].broker_value["status"] == "filled"
    )
    ghost = drift[ghost_cid]
    assert not ghost.repaired and ghost.broker_value == {"status": "not_found"} and ghost.symbol == s[1]
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        assert await _one(conn, "SELECT status FROM orders WHERE id = %s", filled.id) == "filled"
        assert (
            await _one(conn, "SELECT status FROM orders WHERE client_order_id = %s", ghost_cid)
            == "pending_submit"
        )
    assert env.sim.broker.open_count == 0 and len(env.sim.broker.orders) == 1  # nothing was sent


async def test_broker_calls_go_out_concurrently(env: Env):
    env.sim.rest_latency(200)  # each call is held at the broker long enough for the others to arrive
    before = env.sim.stats["rest_in_flight_max"]
    state = await fetch_broker_state(env.rest, fills_after=None)
    calls = ("account", "positions", "open_orders", "closed_orders", "fills", "option_events")
    assert set(state.timings) == set(calls)
    assert all(state.timings[c] >= 0.2 for c in calls)
    # Observed at the broker, not inferred from timings (a busy machine stretches those): one after
    # another, at most one call would be in flight; together, all six are.
    assert before <= 1 and env.sim.stats["rest_in_flight_max"] == len(calls)
    assert state.fills_after < state.observed_at


# ------------------------------------------------------------------------------- option events


async def _expire_book(env: Env, **also_at_broker: int):
    """A worker's snapshots of the planted option book (tests/support/option_expiry.py), positions in
    ``also_at_broker`` planted at the broker only (never snapshotted), then the expiry close."""
    book = plant_expiring_book(env.sim)
    await _record_worker_view(env, [])
    for symbol, qty in also_at_broker.items():
        env.sim.broker.set_position(symbol, qty, "50")
    expiry_ns = close_expiry(env.sim, book)
    return book, datetime.fromtimestamp(expiry_ns / 1e9, UTC)


def _explained(summary) -> dict[str, tuple[str, str]]:
    """Each explained symbol: (the drift kind it would have been, the change in words)."""
    return {d.symbol: (d.broker_value["drift_kind"], d.broker_value["change"]) for d in summary.explained}


async def test_option_events_at_an_expiry_close_are_recorded_once_and_explain_the_positions(options_env: Env):
    """An ITM long call exercised, an OTM long put expired and an ITM short call assigned, beside an
    unrelated position nobody recorded: the five events land in option_events once, the four position
    changes they make are explained (not drift, not alerted), the unrelated one is still drift."""
    env = options_env
    book, closed_at = await _expire_book(env, MSFT=7)
    assert {p.symbol: p.qty for p in await env.rest.get_positions()} == {"AAPL": 100, "MSFT": 7}

    first = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)

    assert _kinds(first) == {"missing_position": 1, "option_event": 4}
    assert [(d.kind, d.symbol, d.repaired) for d in first.drift] == [("missing_position", "MSFT", True)]
    assert first.total_diffs == 1 and first.repaired == 1 and all(d.repaired for d in first.explained)
    assert _explained(first) == {
        book.exercised: ("stale_position", "−2 contracts"),
        book.expired: ("stale_position", "−1 contract"),
        book.assigned: ("stale_position", "+1 contract"),
        "AAPL": ("missing_position", "+100 shares"),
    }
    assert first.outcome_line() == "1 difference, 1 repaired; 4 position changes explained by option events"
    assert first.option_events_checked == 5 and first.option_events_recorded == 5
    assert first.positions_checked == 5  # AAPL, MSFT and the three contracts gone

    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT activity_type, symbol, qty, price, net_amount, trade_date, time, source "
            "FROM option_events ORDER BY activity_id, activity_type"
        )
        rows = await cur.fetchall()
        assert sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows) == sorted([
            ("OPEXC", book.exercised, Decimal(-2), None, Decimal(0)),
            ("OPTRD", "AAPL", Decimal(200), Decimal(100), Decimal(-20_000)),
            ("OPASN", book.assigned, Decimal(1), None, Decimal(0)),
            ("OPTRD", "AAPL", Decimal(-100), Decimal(150), Decimal(15_000)),
            ("OPEXP", book.expired, Decimal(-1), None, Decimal(0)),
        ])
        assert {(r[5], r[6], r[7]) for r in rows} == {(closed_at.date(), closed_at, "reconcile")}
        # Plain SQL on the trade history: the shares an exercise bought and their cost, exactly.
        assert await _one(conn, "SELECT sum(qty), sum(net_amount) FROM option_events "
                                "WHERE activity_type = 'OPTRD' AND symbol = 'AAPL'") == (100, -5000)
        assert await _one(conn, "SELECT diffs, repaired, explained FROM reconciliation_runs WHERE id = %s",
                          first.run_id) == (1, 1, 4)
        cur = await conn.execute("SELECT kind, count(*) FROM reconciliation_diffs WHERE run_id = %s GROUP BY kind "
                                 "ORDER BY kind", (first.run_id,))
        assert await cur.fetchall() == [("missing_position", 1), ("option_event", 4)]
        cur = await conn.execute(
            "SELECT DISTINCT ON (symbol) symbol, qty FROM position_snapshots ORDER BY symbol, time DESC"
        )
        assert {sym: qty for sym, qty in await cur.fetchall() if qty != 0} == {"AAPL": 100, "MSFT": 7}

    md = first.to_markdown()
    drift, explained = md.split("## 1 difference, 1 repaired", 1)[1].split(
        "## 4 position changes explained by option events", 1)
    assert drift.count("\n- ") == 1 and "MSFT: 7 at the broker, never seen here: repaired" in drift
    explained = explained.split("## Checked", 1)[0]
    assert explained.count("\n- ") == 4
    assert (f"AAPL +100 shares: 2 {book.exercised} exercised at $100.00 (+200), "
            f"1 {book.assigned} assigned at $150.00 (−100): snapshot updated") in explained
    day = closed_at.date()
    assert f"{book.exercised} −2 contracts: 2 exercised on {day}: snapshot updated" in explained
    assert f"{book.expired} −1 contract: 1 expired worthless on {day}: snapshot updated" in explained
    assert f"{book.assigned} +1 contract: 1 assigned on {day}: snapshot updated" in explained
    assert "5 option events (5 new)" in md

    second = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    assert second.diffs == [] and second.option_events_checked == 5 and second.option_events_recorded == 0
    assert second.outcome_line() == "no differences"
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        assert await _one(conn, "SELECT count(*) FROM option_events") == 5
        assert await _one(conn, "SELECT diffs, repaired, explained FROM reconciliation_runs WHERE id = %s",
                          second.run_id) == (0, 0, 0)


async def test_a_difference_option_events_explain_only_in_part_stays_drift(options_env: Env):
    """AAPL shares at the broker before the expiry that no snapshot saw: the exercise and assignment
    account for +100 of the +130, so AAPL is drift (the events named beside it); the contracts' own
    changes are still explained."""
    env = options_env
    book, _ = await _expire_book(env, AAPL=30)

    summary = await reconcile(env.settings, rest=env.rest, db_url=env.db_url)

    assert _kinds(summary) == {"missing_position": 1, "option_event": 3}
    (aapl,) = summary.drift
    assert aapl.symbol == "AAPL" and aapl.broker_value["qty"] == "130" and aapl.repaired
    assert aapl.broker_value["option_change"] == "+100 shares" and len(aapl.broker_value["activity_ids"]) == 2
    assert set(_explained(summary)) == set(book.contracts)
    assert ("AAPL: 130 at the broker, never seen here (option events account for +100 shares of it: "
            f"2 {book.exercised} exercised at $100.00 (+200), 1 {book.assigned} assigned at $150.00 (−100)): "
            "repaired") in summary.to_markdown()


async def test_two_concurrent_runs_record_and_explain_each_option_event_once(options_env: Env):
    env = options_env
    await _expire_book(env)
    env.sim.rest_latency(20)  # both fetches in flight at the same time

    a, b = await asyncio.gather(
        reconcile(env.settings, rest=env.rest, db_url=env.db_url),
        reconcile(env.settings, rest=env.rest, db_url=env.db_url),
    )

    assert a.option_events_recorded + b.option_events_recorded == 5
    assert len(a.explained) + len(b.explained) == 4 and a.drift == b.drift == []
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        assert await _one(conn, "SELECT count(*) FROM option_events") == 5
        assert await _one(conn, "SELECT count(*) FROM reconciliation_diffs WHERE kind = 'option_event'") == 4


async def test_realized_pnl_of_contracts_traded_at_the_simulator_and_settled_at_its_expiry(options_env: Env):
    """The whole path on real components: 2 in-the-money AAPL calls and 1 out-of-the-money put bought at the
    simulator (fills at the ask, recorded as the worker records them), the expiry close (exercise and
    expiry), reconciliation recording the option events, the next day's sale of 100 of the 200 delivered
    shares; tickvault_realized_pnl then gives, exactly: −premium × 100 a contract, the sale against
    the strike."""
    env = options_env
    expiration = min(parse_occ(s).expiration for s in env.sim.option_symbols if s.startswith("AAPL"))
    call, put = (f"AAPL{expiration:%y%m%d}{kind}00100000" for kind in ("C", "P"))
    await wait_until(lambda: all(env.sim.options_market.last_quote(c) for c in (call, put)), 10,
                     "the contracts' quotes")
    bought = [await _buy(env.rest, call, 2), await _buy(env.rest, put, 1)]
    await _record_worker_view(env, bought)
    expiry_ns = env.sim.broker.contract_expiry_ns(call)
    env.sim.clock.set(expiry_ns)  # type: ignore[attr-defined]  # the expiry close: exercise and expiry
    env.sim.broker.advance()
    await reconcile(env.settings, rest=env.rest, db_url=env.db_url)
    env.sim.clock.set(expiry_ns + 18 * 3600 * 10**9)  # type: ignore[attr-defined]  # 10:00 the next day
    sale = await env.rest.submit_order(OrderRequest(symbol="AAPL", side="sell", qty=Decimal(100),
                                                    client_order_id=OrderRequest.new_client_order_id("test")))
    assert sale.status == "filled"
    await _record_worker_view(env, [sale])

    fills = {f.symbol: f for f in await collect(env.rest.fill_activities())}
    async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT activity_type, symbol, qty, price FROM option_events "
                                 "ORDER BY activity_type")
        assert await cur.fetchall() == [("OPEXC", call, -2, None), ("OPEXP", put, -1, None),
                                        ("OPTRD", "AAPL", 200, 100)]
        cur = await conn.execute("SELECT day, symbol, realized_pnl, sold_qty, bought_qty, fills "
                                 "FROM tickvault_realized_pnl() ORDER BY day, symbol")
        rows = await cur.fetchall()
    day = datetime.fromtimestamp(expiry_ns / 1e9, UTC).date()  # 16:00 New York: 20:00 or 21:00 UTC, same date
    sale_day = fills["AAPL"].transaction_time.astimezone(ZoneInfo("America/New_York")).date()
    bought_on = fills[call].transaction_time.astimezone(ZoneInfo("America/New_York")).date()
    assert sale_day > day and fills["AAPL"].side == "sell"
    assert [r for r in rows if r[0] == day or r[0] == sale_day] == [
        (day, "AAPL", 0, 0, 200, 0),
        (day, call, -2 * fills[call].price * 100, 2, 0, 0),
        (day, put, -fills[put].price * 100, 1, 0, 0),
        (sale_day, "AAPL", (fills["AAPL"].price - 100) * 100, 100, 0, 1),
    ]
    assert [r[1:] for r in rows if r[0] == bought_on] == [(call, 0, 0, 2, 1), (put, 0, 0, 1, 1)]
