"""tickvault_realized_pnl (migration 016) on the real database: average cost per symbol over fills and
option events, per New York day, exact to the last decimal.

Each test writes its trade history inside a transaction it rolls back, so tests never see each other's
rows. Days are in March 2026 (EDT: New York is UTC−4). Option contracts are AAPL's 2026-03-20 expiry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from uuid import uuid4
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tickvault.alpaca.options import OccSymbolError, parse_occ
from tickvault.db.migrate import sql_dir
from tickvault.db.recipes import run_recipe

pytestmark = pytest.mark.db

NY = ZoneInfo("America/New_York")
CALL_100 = "AAPL260320C00100000"
CALL_150 = "AAPL260320C00150000"
PUT_100 = "AAPL260320P00100000"
EXPIRY = date(2026, 3, 20)  # a Friday


@pytest.fixture(scope="module")
def pnl_db(fresh_database) -> str:
    return fresh_database()


@pytest.fixture
def conn(pnl_db: str):
    """A connection inside a transaction that is rolled back when the test ends."""
    with psycopg.connect(pnl_db, autocommit=True) as c, c.transaction(force_rollback=True):
        yield c


def ny(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), NY)


@dataclass
class History:
    """Writes fills and option events the way the worker and reconciliation store them."""

    conn: psycopg.Connection

    def fill(self, symbol: str, side: str, qty: str, price: str, at: datetime) -> None:
        """One fill of its own order (cum_qty = qty)."""
        self.conn.execute(
            "INSERT INTO fills (order_id, cum_qty, symbol, side, qty, price, transaction_time) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (uuid4(), Decimal(qty), symbol, side, Decimal(qty), Decimal(price), at),
        )

    def event(self, kind: str, symbol: str, qty: str, day: date, *, price: str | None = None,
              at: datetime | None = None) -> str:
        """An option event; ``at`` its id's stamp, by default the date alone (midnight in New York, the
        zone of Alpaca's id stamps), as Alpaca often sends it. Returns its activity id."""
        stamp = at or datetime.combine(day, time(0), NY)
        activity_id = f"{stamp.astimezone(NY):%Y%m%d%H%M%S}000::{uuid4()}"
        net = -Decimal(qty) * Decimal(price) if kind == "OPTRD" and price else Decimal(0)
        self.conn.execute(
            "INSERT INTO option_events (activity_id, activity_type, symbol, qty, price, net_amount, "
            "trade_date, time) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (activity_id, kind, symbol, Decimal(qty), Decimal(price) if price else None, net, day, stamp),
        )
        return activity_id

    def pnl(self, lo: date | None = None, hi: date | None = None) -> dict[tuple[str, str], tuple]:
        """(day, symbol) → (realized_pnl, sold_qty, bought_qty, fills)."""
        rows = self.conn.execute("SELECT * FROM tickvault_realized_pnl(%s, %s)", (lo, hi)).fetchall()
        assert all(isinstance(r[2], Decimal) for r in rows)
        return {(str(r[0]), r[1]): tuple(r[2:]) for r in rows}


@pytest.fixture
def history(conn) -> History:
    return History(conn)


def D(value: str | int) -> Decimal:
    return Decimal(value)


# ------------------------------------------------------------------------------------ stocks unchanged


def test_stock_round_trips_are_unchanged(history: History):
    d1, d2 = date(2026, 3, 10), date(2026, 3, 11)
    h = history
    h.fill("AAPL", "buy", "10", "100", ny(d1, 10))   # buy 10 @ 100, 10 @ 110: average 105
    h.fill("AAPL", "buy", "10", "110", ny(d1, 11))
    h.fill("AAPL", "sell", "5", "120", ny(d1, 12))   # +75
    h.fill("AAPL", "sell", "15", "100", ny(d2, 10))  # −75, flat
    h.fill("MSFT", "sell", "3", "300", ny(d1, 10))   # a short: sold 3 @ 300
    h.fill("MSFT", "buy", "5", "290.50", ny(d1, 15))  # +28.50 on 3, then long 2 @ 290.50
    h.fill("MSFT", "sell", "2", "291", ny(d1, 23, 30))  # 23:30 New York is still d1: +1.00
    assert h.pnl() == {
        ("2026-03-10", "AAPL"): (D(75), D(5), D(20), 3),
        ("2026-03-10", "MSFT"): (D("29.50"), D(5), D(5), 3),
        ("2026-03-11", "AAPL"): (D(-75), D(15), D(0), 1),
    }
    assert h.pnl(d2, d2) == {("2026-03-11", "AAPL"): (D(-75), D(15), D(0), 1)}


def test_stock_history_gives_exactly_what_migration_005_gave(history: History, conn):
    """Migration 005's function, installed beside the new one under another name, over a few hundred
    fills in three symbols (buys, sells, flips across zero, fractional quantities): the same rows."""
    old = (sql_dir() / "005_trader_functions.sql").read_text()
    conn.execute(old.replace("FUNCTION tickvault_realized_pnl(", "FUNCTION tv_realized_pnl_005("))
    rnd = random.Random(16)
    t = ny(date(2026, 3, 2), 9, 30)
    for _ in range(300):
        t += timedelta(minutes=rnd.choice([1, 7, 45, 600]))
        price = f"{rnd.randint(9_000, 11_000) / 100:.2f}"
        qty = rnd.choice(["1", "3", "10", "0.5", "2.25"])
        history.fill(rnd.choice(["AAPL", "MSFT", "BTC/USD"]), rnd.choice(["buy", "sell"]), qty, price, t)
    new = conn.execute("SELECT * FROM tickvault_realized_pnl()").fetchall()
    assert len(new) > 20
    assert new == conn.execute("SELECT * FROM tv_realized_pnl_005()").fetchall()


# ------------------------------------------------------------------------------------ the multiplier


def test_an_option_round_trip_realizes_100_shares_a_contract(history: History):
    d = date(2026, 3, 10)
    history.fill(CALL_100, "buy", "1", "2.00", ny(d, 10))
    history.fill(CALL_100, "sell", "1", "3.00", ny(d, 11))   # +1.00 × 100 = +100, not +1
    history.fill(PUT_100, "buy", "3", "1.50", ny(d, 10))
    history.fill(PUT_100, "sell", "2", "2.25", ny(d, 12))    # +0.75 × 2 × 100
    assert history.pnl() == {
        ("2026-03-10", CALL_100): (D(100), D(1), D(1), 2),
        ("2026-03-10", PUT_100): (D(150), D(2), D(3), 2),
    }


@pytest.mark.parametrize("symbol", [
    CALL_100, "SPY260320P00500000", "BRKB260320C00450000", "ABCDEF260320C00001500", "F260320P00012500",
    "AAPL", "BRK.B", "BTC/USD", "BTCUSD", "AAPL260320X00100000", "AAPL26032C00100000", "aapl260320c00100000",
    "AAPL260320C0010000", "ABCDEFG260320C00100000", "",
])
def test_the_multiplier_agrees_with_the_projects_occ_parsing(conn, symbol: str):
    try:
        parse_occ(symbol)
        expected = 100
    except OccSymbolError:
        expected = 1
    assert conn.execute("SELECT tickvault_contract_multiplier(%s)", (symbol,)).fetchone()[0] == expected


# ------------------------------------------------------------------------------------ option events


def test_a_long_that_expires_worthless_realizes_minus_the_premium(history: History):
    history.fill(PUT_100, "buy", "2", "1.25", ny(date(2026, 3, 16), 10))
    history.event("OPEXP", PUT_100, "-2", EXPIRY)
    assert history.pnl() == {
        ("2026-03-16", PUT_100): (D(0), D(0), D(2), 1),
        ("2026-03-20", PUT_100): (D(-250), D(2), D(0), 0),  # no fill that day: the expiry alone
    }


def test_a_short_that_expires_keeps_the_premium(history: History):
    history.fill(CALL_150, "sell", "1", "0.80", ny(date(2026, 3, 16), 10))  # sold to open
    history.event("OPEXP", CALL_150, "1", EXPIRY)
    assert history.pnl(EXPIRY, EXPIRY) == {("2026-03-20", CALL_150): (D(80), D(0), D(1), 0)}


def test_an_exercise_realizes_the_premium_and_the_delivered_shares_sell_against_the_strike(history: History):
    """Long 2 calls at $100 bought for 2.50, exercised at expiry: −500 on the contracts; 200 AAPL enter at
    the strike beside 100 held at 94 (average 98); the next trading day's sale of all 300 at 104: +1800."""
    h = history
    h.fill("AAPL", "buy", "100", "94", ny(date(2026, 3, 2), 10))
    h.fill(CALL_100, "buy", "2", "2.50", ny(date(2026, 3, 16), 10))
    h.event("OPEXC", CALL_100, "-2", EXPIRY)
    h.event("OPTRD", "AAPL", "200", EXPIRY, price="100")
    h.fill("AAPL", "sell", "300", "104", ny(date(2026, 3, 23), 10))
    assert h.pnl(EXPIRY) == {
        ("2026-03-20", CALL_100): (D(-500), D(2), D(0), 0),
        ("2026-03-20", "AAPL"): (D(0), D(0), D(200), 0),
        ("2026-03-23", "AAPL"): (D(1800), D(300), D(0), 1),
    }


def test_an_assignment_keeps_the_premium_and_sells_the_shares_at_the_strike(history: History):
    """Short 1 call at $150 sold for 3.00, assigned: +300 on the contract; the 100 AAPL held at 140 are
    called away at 150: +1000."""
    h = history
    h.fill("AAPL", "buy", "100", "140", ny(date(2026, 3, 2), 10))
    h.fill(CALL_150, "sell", "1", "3.00", ny(date(2026, 3, 3), 10))
    h.event("OPASN", CALL_150, "1", EXPIRY)
    h.event("OPTRD", "AAPL", "-100", EXPIRY, price="150")
    assert h.pnl(EXPIRY) == {
        ("2026-03-20", CALL_150): (D(300), D(0), D(1), 0),
        ("2026-03-20", "AAPL"): (D(1000), D(100), D(0), 0),
    }


def test_a_day_of_fills_and_events_walks_the_fills_first(history: History):
    """Expiry day: shares bought at 10:00 and sold at 15:59 New York, one of three calls sold at 11:00, and
    after-hours at 18:00 half a new lot sold; the exercise's events carry the date alone (midnight, before
    the session) yet count on their trade_date, after the day's fills. Were the delivery
    (200 at the strike, 100) walked first, the 15:59 sale would realize against an average of 116."""
    h = history
    h.fill(CALL_100, "buy", "3", "2.00", ny(date(2026, 3, 19), 10))
    h.fill("AAPL", "buy", "100", "148", ny(EXPIRY, 10))
    h.fill(CALL_100, "sell", "1", "1.50", ny(EXPIRY, 11))         # −0.50 × 100
    h.fill("AAPL", "sell", "100", "152", ny(EXPIRY, 15, 59))      # +400 against 148
    h.fill("AAPL", "buy", "10", "151", ny(EXPIRY, 17))
    h.fill("AAPL", "sell", "5", "153", ny(EXPIRY, 18))            # +10 against 151
    h.event("OPEXC", CALL_100, "-2", EXPIRY)                      # −2.00 × 2 × 100
    h.event("OPTRD", "AAPL", "200", EXPIRY, price="100")          # 5 @ 151 + 200 @ 100: 205 @ 101.2439…
    h.fill("AAPL", "sell", "5", "151", ny(date(2026, 3, 23), 9, 30))
    h.fill("AAPL", "sell", "200", "105", ny(date(2026, 3, 23), 10))
    rows = h.pnl(date(2026, 3, 19))
    assert rows == {
        ("2026-03-19", CALL_100): (D(0), D(0), D(3), 1),
        ("2026-03-20", CALL_100): (D(-450), D(3), D(0), 1),
        ("2026-03-20", "AAPL"): (D(410), D(105), D(310), 4),
        ("2026-03-23", "AAPL"): rows["2026-03-23", "AAPL"],
    }
    # The last 205 shares closed: 5 × 151 + 200 × 105 − (5 × 151 + 200 × 100) = +1000, to numeric's
    # precision of an average cost that does not divide evenly (20755 / 205).
    assert abs(rows["2026-03-23", "AAPL"][0] - D(1000)) < D("1e-12")
    assert rows["2026-03-23", "AAPL"][1:] == (D(205), D(0), 2)


def test_events_of_one_day_keep_the_position_whatever_their_stamps(history: History):
    """Two events on the same contract and day, one stamped with a time, one with the date alone: each
    closes what is open at 0, and bought − sold over the days is the position left (none)."""
    h = history
    h.fill(CALL_100, "buy", "3", "1.00", ny(date(2026, 3, 19), 10))
    h.event("OPEXC", CALL_100, "-1", EXPIRY, at=datetime(2026, 3, 20, 20, 0, tzinfo=UTC))
    h.event("OPEXP", CALL_100, "-2", EXPIRY)
    total = h.conn.execute("SELECT sum(realized_pnl), sum(bought_qty) - sum(sold_qty), sum(fills) "
                           "FROM tickvault_realized_pnl() WHERE symbol = %s", (CALL_100,)).fetchone()
    assert total == (D(-300), D(0), 1)


# ------------------------------------------------------------------------------------ bad input


def test_a_delivery_without_its_strike_is_a_clear_error_and_nothing_is_lost(history: History, conn):
    history.fill(CALL_100, "buy", "1", "2.00", ny(date(2026, 3, 16), 10))
    history.event("OPEXC", CALL_100, "-1", EXPIRY)
    bad = history.event("OPTRD", "AAPL", "100", EXPIRY, price=None)
    with pytest.raises(psycopg.errors.DataException) as caught:
        with conn.transaction():  # a savepoint: the error rolls back the call alone
            history.pnl()
    message = str(caught.value)
    assert f"option event {bad} (OPTRD AAPL) cannot be valued: a share delivery without its price" in message
    assert caught.value.diag.message_hint.startswith("Correct or delete that option_events row")
    assert conn.execute("SELECT count(*) FROM option_events").fetchone()[0] == 2
    conn.execute("UPDATE option_events SET price = 100 WHERE activity_id = %s", (bad,))
    assert history.pnl()[str(EXPIRY), "AAPL"] == (D(0), D(0), D(100), 0)


def test_a_contract_event_on_a_symbol_that_is_no_contract_is_a_clear_error(history: History, conn):
    bad = history.event("OPEXP", "AAPL", "-1", EXPIRY)
    expected = f"option event {bad} \\(OPEXP AAPL\\) cannot be valued: its symbol is not an OCC option"
    with pytest.raises(psycopg.errors.DataException, match=expected):
        with conn.transaction():
            history.pnl()


def test_the_recipe_reports_option_pnl(history: History, conn):
    history.fill(CALL_150, "sell", "2", "1.10", ny(date(2026, 3, 16), 10))
    history.event("OPASN", CALL_150, "2", EXPIRY)
    rows = run_recipe(conn, "daily_realized_pnl", from_day="2026-03-20", to_day="2026-03-20")
    assert [tuple(r) for r in rows] == [(EXPIRY, CALL_150, D(220), D(0), D(2), 0)]
