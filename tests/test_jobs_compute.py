"""The jobs' pure computation on plain data: no database, no network, no Prefect.

Each job keeps compute, store and report apart (``tickvault.jobs``); these tests pin the compute
steps the stores feed (what counts as drift, which incident opens, which rows an indicator refresh
writes) and the shared markdown every artifact table goes through.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from tickvault.alpaca.models import FillActivity, OptionActivity, Order, Position
from tickvault.config import Settings
from tickvault.db.jobs import JobHealth
from tickvault.indicators import COLUMNS, IndicatorSet
from tickvault.indicators.sessions import SessionCalendar
from tickvault.jobs import alerts, indicators, reconcile, retention
from tickvault.jobs.markdown import cell, human_bytes, table
from tickvault.jobs.reconcile import Diff

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def _order(oid: str, cid: str, status: str = "filled", filled: str = "10", updated: datetime = T0) -> Order:
    return Order(id=oid, client_order_id=cid, created_at=T0 - timedelta(minutes=5), updated_at=updated,
                 symbol="AAPL", side="buy", time_in_force="day", type="market", status=status,
                 qty=Decimal(10), filled_qty=Decimal(filled))


def _position(symbol: str, qty: str) -> Position:
    return Position(asset_id=f"asset-{symbol}", symbol=symbol, avg_entry_price=Decimal("100"), qty=Decimal(qty),
                    side="long", cost_basis=Decimal(qty) * 100, market_value=Decimal(qty) * 101)


def _fill(oid: str, cum: str) -> FillActivity:
    return FillActivity(id=f"act-{oid}-{cum}", transaction_time=T0, type="fill", price=Decimal("100.5"),
                        qty=Decimal(cum), side="buy", symbol="AAPL", leaves_qty=Decimal(0), order_id=oid,
                        cum_qty=Decimal(cum))


# --- reconcile ----------------------------------------------------------------------------------


def test_diff_orders_finds_unknown_and_drifted_orders_and_leaves_agreeing_ones():
    known = _order("00000000-0000-0000-0000-000000000001", "known")
    drifted = _order("00000000-0000-0000-0000-000000000002", "drifted", status="filled", filled="10")
    unknown = _order("00000000-0000-0000-0000-000000000003", "unknown")
    rows = [
        ("known", known.id, "filled", Decimal(10), T0, "AAPL"),
        ("drifted", drifted.id, "partially_filled", Decimal(4), T0 - timedelta(seconds=1), "AAPL"),
    ]
    diffs, repairs = reconcile.diff_orders({o.id: o for o in (known, drifted, unknown)}, rows)
    assert [(d.kind, d.client_order_id, d.repaired) for d in diffs] == [
        ("order_status_drift", "drifted", False), ("unknown_order", "unknown", False)]
    assert [o.client_order_id for o in repairs] == ["drifted", "unknown"]
    assert diffs[0].db_value == {"status": "partially_filled", "filled_qty": "4",
                                 "updated_at": (T0 - timedelta(seconds=1)).isoformat(), "id": drifted.id}
    assert diffs[0].broker_value["filled_qty"] == "10"


def test_diff_orders_ignores_a_broker_answer_older_than_the_database_row():
    stale = _order("00000000-0000-0000-0000-000000000004", "stale", status="new", filled="0",
                   updated=T0 - timedelta(minutes=1))
    rows = [("stale", stale.id, "filled", Decimal(10), T0, "AAPL")]
    assert reconcile.diff_orders({stale.id: stale}, rows) == ([], [])


def test_not_found_orders_are_recorded_never_repaired():
    rows = [("gone", None, "new", Decimal(0), T0, "MSFT")]
    d = reconcile.not_found_diffs([("gone", None), ("never-seen", "x")], rows)[0]
    assert (d.kind, d.symbol, d.db_value, d.broker_value, d.repaired) == (
        "order_status_drift", "MSFT", {"status": "new"}, {"status": "not_found"}, False)
    assert reconcile.not_found_diffs([("never-seen", "x")], rows)[0].symbol is None


def test_fill_rows_and_missing_fill_diffs_follow_what_the_insert_wrote():
    oid = "0000000A-0000-0000-0000-000000000001"
    fills = [_fill(oid, "4"), _fill(oid, "10")]
    rows = reconcile.fill_rows(fills, {oid: "cid-1"})
    assert rows[0][:4] == (oid, Decimal(4), fills[0].id, "cid-1")
    assert rows[0][9:] == ("fill", T0, "reconcile")
    # PostgreSQL returns the uuid in lower case: matching is case-insensitive on the order id.
    diffs = reconcile.missing_fill_diffs(fills, {(oid.lower(), Decimal(10))}, {oid: "cid-1"})
    assert [(d.kind, d.broker_value["cum_qty"], d.repaired) for d in diffs] == [("missing_fill", "10", True)]


def test_diff_positions_mismatch_missing_stale_and_snapshot_rows():
    at = T0
    latest = {
        "AAPL": (Decimal(5), at - timedelta(hours=1)),  # broker says 10: mismatch
        "MSFT": (Decimal(3), at - timedelta(hours=1)),  # broker has none: stale
        "TSLA": (Decimal(0), at - timedelta(hours=1)),  # closed already: nothing to say
        "NVDA": (Decimal(1), at + timedelta(seconds=1)),  # newer than this answer: compared with nothing
    }
    diffs, snapshots = reconcile.diff_positions([_position("AAPL", "10"), _position("AMZN", "2")], latest, at)
    assert [(d.kind, d.symbol) for d in diffs] == [
        ("position_mismatch", "AAPL"), ("missing_position", "AMZN"), ("stale_position", "MSFT")]
    assert [(s[1], s[2]) for s in snapshots] == [("AAPL", Decimal(10)), ("AMZN", Decimal(2)), ("MSFT", Decimal(0))]
    assert all(s[0] == at for s in snapshots)


def test_counts_and_repaired_marks():
    diffs = [Diff("missing_fill"), Diff("stale_position", "MSFT"), Diff("stale_position", "AAPL")]
    counts = reconcile.count_diffs(diffs)
    assert counts["stale_position"] == 2 and counts["missing_fill"] == 1 and set(counts) == set(reconcile.DIFF_KINDS)
    marked = reconcile.mark_repaired(diffs, lambda d: d.symbol == "MSFT")
    assert [d.repaired for d in marked] == [False, True, False]


def _event(kind: str, symbol: str, qty: int, price: str | None = None, day: str = "2026-03-20") -> OptionActivity:
    return OptionActivity(id=f"{day.replace('-', '')}200000000::{kind}-{symbol}", activity_type=kind, date=day,
                          net_amount=Decimal(0), symbol=symbol, qty=Decimal(qty),
                          price=Decimal(price) if price is not None else None)


def test_explain_positions_exactly_in_part_or_not_at_all():
    call = "AAPL260320C00200000"
    exercised = _event("OPEXC", call, -2)
    delivered = _event("OPTRD", "AAPL", 200, "200")
    stray = _event("OPTRD", "MSFT", 100, "300")  # no exercise or assignment of a MSFT contract behind it
    diffs = [
        Diff("stale_position", call, db_value={"qty": "2"}, broker_value={"qty": "0"}),
        Diff("position_mismatch", "AAPL", db_value={"qty": "50"}, broker_value={"qty": "250"}),
        Diff("missing_position", "MSFT", broker_value={"qty": "150"}),  # +150, the events +100
        Diff("missing_position", "NVDA", broker_value={"qty": "1"}),  # no events at all
        Diff("missing_fill", "AAPL", order_id="o-1"),  # not a position kind
    ]
    out = reconcile.explain_positions(diffs, [exercised, delivered, stray], [exercised, delivered, stray])
    assert [d.kind for d in out] == ["option_event", "option_event", "missing_position", "missing_position",
                                     "missing_fill"]
    assert out[0].broker_value["change"] == "−2 contracts" and out[0].broker_value["drift_kind"] == "stale_position"
    assert reconcile.describe_diff(out[1]) == (
        f"AAPL +200 shares: 2 {call} exercised at $200.00: another run had already updated the snapshot")
    assert out[2].broker_value["option_change"] == "+100 shares"
    assert reconcile.describe_diff(out[2]) == (
        "MSFT: 150 at the broker, never seen here (option events account for +100 shares of it: "
        f"+100 shares delivered at $300.00 (option trade {stray.id})): not repaired by this run "
        "(another run had already changed it)")
    assert out[3] is diffs[3] and out[4] is diffs[4]
    # Only the events this run recorded count: none recorded, nothing explained.
    assert reconcile.explain_positions(diffs, [], [exercised, delivered, stray]) == diffs


# --- indicators -------------------------------------------------------------------------------


def _bars(n: int, start: datetime) -> list[tuple]:
    rng = np.random.default_rng(7)
    close = 100 + np.cumsum(rng.normal(0, 0.2, n))
    # Every third bar without its own vwap: the typical price stands in, as in the worker.
    return [(start + timedelta(minutes=i), float(c + 0.3), float(c - 0.3), float(c), float(100 + i % 7),
             None if i % 3 == 0 else float(c + 0.01)) for i, c in enumerate(close)]


def test_indicator_rows_equal_the_incremental_indicators_for_the_new_bars_only():
    # A crypto pair: its sessions are UTC days, and 300 bars cross a UTC midnight, where VWAP restarts.
    symbol, calendar = "BTC/USD", SessionCalendar(warned=True)
    bars = _bars(300, T0.replace(hour=22))
    start = bars[200][0]
    rows, refreshed = indicators.indicator_rows(symbol, bars, start, calendar)
    assert len(rows) == 100 and rows[0][0] == start and rows[-1][0] == bars[-1][0]
    assert (refreshed.history_bars, refreshed.rows_upserted, refreshed.first, refreshed.last) == (
        300, 100, start, bars[-1][0])
    incremental, day, expected = IndicatorSet(), None, []
    for bucket, high, low, close, volume, vwap in bars:
        if bucket.date() != day:
            day = bucket.date()
            incremental.reset_session()
        incremental.update(high, low, close, volume, vwap, in_session=True)
        expected.append(incremental.values())
    for row, bar, values in zip(rows, bars[200:], expected[200:], strict=True):
        assert row[1:4] == (symbol, "1m", bar[3]) and row[-1] == "flow"
        for name, got in zip(COLUMNS, row[4:-1], strict=True):
            want = values[name]
            if math.isnan(want):
                assert got is None, name
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9), name
    assert refreshed.last_rsi == pytest.approx(expected[-1]["rsi_14"])
    assert refreshed.last_close == bars[-1][3]


def test_indicator_rows_of_no_bars_is_an_empty_refresh():
    assert indicators.indicator_rows("AAPL", [], T0, SessionCalendar(warned=True)) == (
        [], indicators.SymbolRefresh("AAPL", 0, 0, None, None, None, None))


def test_history_starts_at_the_warmup_or_the_session_whichever_is_earlier():
    new = indicators.NewBars("BTC/USD", T0, T0 + timedelta(minutes=5), 6)
    session = indicators.session_start_of(new, SessionCalendar(warned=True))
    assert session == T0.replace(hour=0)  # a crypto session: the UTC day
    assert indicators.history_start(new, T0 - timedelta(hours=2), session) == session
    assert indicators.history_start(new, session - timedelta(days=2), session) == session - timedelta(days=2)
    assert indicators.history_start(new, None, session) == T0 - indicators.MAX_HISTORY


# --- retention ----------------------------------------------------------------------------------


def test_plan_purge_cutoffs_and_tables_kept_forever():
    settings = Settings(retention_quotes_days=0, retention_trades_days=30)
    plan = {t.table: (t, cutoff) for t, cutoff in retention.plan_purge(settings, T0)}
    assert plan["trades"][1] == T0 - timedelta(days=30) and plan["trades"][0].skipped is None
    quotes, cutoff = plan["quotes"]
    assert cutoff is None and quotes.skipped == "kept forever (retention_quotes_days=0)"
    assert [t for t, _ in retention.plan_purge(settings, T0)][0].table == retention.retention_plan(settings)[0][0]


# --- alerts -------------------------------------------------------------------------------------


def test_conditions_from_plain_rows():
    silent = alerts.silent_workers([("w1", T0, 600.0), ("w2", T0, 30.0)], silence_min=5)
    assert [c.key for c in silent] == ["ingest_silent:w1"] and "10 min" in silent[0].detail
    assert alerts.unrepaired_drift(None) == [] and alerts.unrepaired_drift((3, T0, 0, None)) == []
    [drift] = alerts.unrepaired_drift((3, T0, 2, "missing_fill, stale_position"))
    assert drift.key == "reconcile_drift" and "run 3" in drift.detail and "missing_fill" in drift.detail
    failing = JobHealth(1000, "Refresh Continuous Aggregate Policy [1000]", "policy_refresh_continuous_aggregate",
                        "ohlcv_1m", True, "Failed", T0, None, 5, 3, None, 3, "boom", "XX000", T0, "timescale")
    healthy = JobHealth(1001, "Retention", "proc", None, True, "Success", T0, T0, 5, 0, None, 0, None, None, None,
                        "timescale")
    [job] = alerts.failing_job_conditions([failing, healthy])
    assert job.key == "timescaledb_job:1000" and "3 failure(s) in a row; last error: boom" in job.detail


def test_incident_changes_open_new_conditions_and_resolve_gone_ones():
    a, b, c = (alerts.Condition(k, "ingest_silent", k, "") for k in ("a", "b", "c"))
    opened, resolved = alerts.incident_changes([a, b], [b, c])
    assert (opened, resolved) == ([a], [c])
    assert alerts.incident_changes([a], [a]) == ([], [])


# --- markdown -------------------------------------------------------------------------------------


def test_every_table_cell_is_escaped_and_aligned():
    lines = table(("name", "n"), [("a|b", 1), (None, "x\ny")], right=(1,))
    assert lines == ["| name | n |", "|---|---:|", "| a\\|b | 1 |", "| - | x y |"]
    assert cell("abcdef", 4) == "abc…" and human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 kB"
