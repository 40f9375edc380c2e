"""Every SQL recipe a trader uses runs against the real database and returns the expected rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import psycopg
import pytest

from tickvault.db.recipes import recipe_names, run_recipe

NY_DAY = "2026-03-10"  # a Tuesday; 14:30 UTC is 10:30 in New York (EDT)


@pytest.fixture(scope="module")
def rconn(fresh_database):
    with psycopg.connect(fresh_database(), autocommit=True) as c:
        t0 = datetime(2026, 3, 10, 14, 30, tzinfo=timezone.utc)
        trades = [
            (t0, "AAPL", 1, "V", 100.0, 10, False),
            (t0 + timedelta(seconds=1), "AAPL", 2, "V", 101.0, 5, True),    # canceled: excluded
            (t0 + timedelta(seconds=2), "AAPL", 3, "Q", 102.0, 7, False),
            (t0 + timedelta(days=1), "AAPL", 4, "V", 110.0, 1, False),      # next day
            (datetime(2026, 3, 10, 3, 0, tzinfo=timezone.utc), "AAPL", 5, "V", 90.0, 1, False),  # 23:00 NY the day before
            (t0, "MSFT", 1, "V", 300.0, 3, False),
        ]
        for t, s, i, x, p, sz, canceled in trades:
            c.execute(
                "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns, canceled) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (t, s, i, x, p, sz, int(t.timestamp()) * 10**9 + i, canceled),
            )
        orders = [("c-open", "AAPL", "new"), ("c-part", "MSFT", "partially_filled"), ("c-done", "AAPL", "filled"),
                  ("c-cxl", "AAPL", "canceled")]
        for k, (cid, sym, status) in enumerate(orders):
            c.execute(
                "INSERT INTO orders (client_order_id, id, symbol, side, order_type, time_in_force, qty, status, submitted_at) "
                "VALUES (%s, %s, %s, 'buy', 'limit', 'day', 10, %s, %s)",
                (cid, uuid4(), sym, status, t0 + timedelta(minutes=k)),
            )
        oid = uuid4()
        fills = [  # buy 10 @ 100, buy 10 @ 110 (avg 105), sell 5 @ 120 → +75; next day sell 15 @ 100 → -75
            ("buy", "10", "100", "10", t0), ("buy", "10", "110", "20", t0 + timedelta(minutes=1)),
            ("sell", "5", "120", "25", t0 + timedelta(minutes=2)),
            ("sell", "15", "100", "40", t0 + timedelta(days=1)),
        ]
        for side, qty, price, cum, when in fills:
            c.execute(
                "INSERT INTO fills (order_id, cum_qty, symbol, side, qty, price, transaction_time) "
                "VALUES (%s, %s, 'AAPL', %s, %s, %s, %s)",
                (oid, Decimal(cum), side, Decimal(qty), Decimal(price), when),
            )
        for k, q in enumerate(["10", "20", "15"]):
            c.execute(
                "INSERT INTO position_snapshots (time, symbol, qty, avg_entry_price) VALUES (%s, 'AAPL', %s, 105)",
                (t0 + timedelta(minutes=10 * k), Decimal(q)),
            )
        c.execute(
            "INSERT INTO indicators (time, symbol, timeframe, rsi_14, sma_20) VALUES (%s, 'AAPL', '1m', 55.5, 101.0)",
            (t0,),
        )
        yield c


def test_every_recipe_is_tested():
    assert set(recipe_names()) == {
        "trade_history", "open_orders", "daily_realized_pnl", "position_history", "last_price", "bars_with_indicators",
        "crypto_vwap", "crypto_vwap_1h", "crypto_candles", "news_with_bars", "option_trades_by_expiry",
        "option_events",
    }


def test_trade_history_for_symbol_and_new_york_day(rconn):
    rows = run_recipe(rconn, "trade_history", symbol="AAPL", day=NY_DAY)
    assert [r[5] for r in rows] == [1, 3]  # not the canceled one, not the next day, not the previous NY day


def test_open_orders(rconn):
    rows = run_recipe(rconn, "open_orders")
    assert sorted(r[0] for r in rows) == ["c-open", "c-part"]


def test_daily_realized_pnl_average_cost(rconn):
    rows = run_recipe(rconn, "daily_realized_pnl", from_day="2026-03-01", to_day="2026-03-31")
    by_day = {str(r[0]): r[2] for r in rows}
    assert by_day == {"2026-03-10": Decimal("75"), "2026-03-11": Decimal("-75")}
    assert all(isinstance(r[2], Decimal) for r in rows)


def test_position_history(rconn):
    t0 = datetime(2026, 3, 10, 14, 30, tzinfo=timezone.utc)
    rows = run_recipe(rconn, "position_history", symbol="AAPL", start=t0, end=t0 + timedelta(hours=1))
    assert [r[1] for r in rows] == [Decimal("10"), Decimal("20"), Decimal("15")]


def test_last_price_per_symbol(rconn):
    rows = run_recipe(rconn, "last_price", symbols=["AAPL", "MSFT", "NONE"])
    assert [(r[0], r[2]) for r in rows] == [("AAPL", 110.0), ("MSFT", 300.0)]


def test_bars_with_indicators(rconn):
    t0 = datetime(2026, 3, 10, 14, 30, tzinfo=timezone.utc)
    rows = run_recipe(rconn, "bars_with_indicators", symbol="AAPL", start=t0, end=t0 + timedelta(minutes=5))
    assert len(rows) == 1
    bucket, o, h, low, close, volume, count, vwap, rsi, *_ = rows[0]
    assert (o, h, low, close, volume, count) == (100.0, 102.0, 100.0, 102.0, 17, 2)
    assert rsi == 55.5


def test_trade_history_uses_the_symbol_time_index(rconn):
    rconn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in rconn.execute(
        "EXPLAIN SELECT time, price FROM trades WHERE symbol = 'AAPL' AND time >= '2026-03-10' AND time < '2026-03-11'"
    ))
    rconn.execute("RESET enable_seqscan")
    assert "trades_symbol_time_key" in plan or "_hyper_" in plan and "Index" in plan


def test_crypto_vwap_over_the_last_hour_sums_fractional_sizes_exactly(rconn):
    until = datetime(2026, 3, 10, 15, 0, tzinfo=timezone.utc)
    trades = [  # (minutes before `until`, pair, id, price, size)
        (5, "BTC/USD", 1, 90_000.0, "0.1"), (10, "BTC/USD", 2, 91_000.0, "0.2"),
        (59, "BTC/USD", 3, 92_000.0, "0.0012"),
        (61, "BTC/USD", 4, 1.0, "100"),  # older than the hour: left out
        (1, "ETH/USD", 1, 3_000.0, "1.5"),
    ]
    with rconn.transaction(force_rollback=True):
        for minutes, pair, tid, price, size in trades:
            t = until - timedelta(minutes=minutes)
            rconn.execute("INSERT INTO crypto_trades (time, symbol, trade_id, price, size, taker_side, time_ns) "
                          "VALUES (%s, %s, %s, %s, %s, 'B', %s)",
                          (t, pair, tid, price, Decimal(size), int(t.timestamp()) * 10**9))
        rows = run_recipe(rconn, "crypto_vwap", symbols=["BTC/USD", "ETH/USD", "SOL/USD"], until=until)
    by_pair = {r[0]: r[1:] for r in rows}
    volume = Decimal("0.3012")
    assert by_pair["BTC/USD"][1:] == (volume, 3)  # exact: 0.1 + 0.2 + 0.0012, no float residue
    expected = (Decimal(90_000) * Decimal("0.1") + Decimal(91_000) * Decimal("0.2")
                + Decimal(92_000) * Decimal("0.0012")) / volume
    assert abs(by_pair["BTC/USD"][0] - expected) < Decimal("1e-9")
    assert by_pair["ETH/USD"] == (Decimal(3000), Decimal("1.5"), 1)
    assert by_pair["SOL/USD"] == (None, 0, 0)


def test_news_for_a_symbol_next_to_its_one_minute_bars(rconn):
    t0 = datetime(2026, 3, 10, 14, 30, tzinfo=timezone.utc)  # AAPL traded at 14:30:00-02 (see rconn)
    articles = [  # (id, published, symbols, headline)
        (1, t0 + timedelta(seconds=30), ["AAPL", "MSFT"], "AAPL beats"),   # in the minute with a bar
        (2, t0 + timedelta(minutes=3), ["AAPL"], "AAPL names CFO"),          # a minute without trades
        (3, t0 + timedelta(seconds=40), ["MSFT"], "MSFT only"),              # another symbol
        (4, t0 + timedelta(hours=2), ["AAPL"], "later"),                     # outside the window
    ]
    with rconn.transaction(force_rollback=True):
        for aid, when, symbols, headline in articles:
            rconn.execute("INSERT INTO news (id, headline, symbols, created_at, updated_at) VALUES (%s,%s,%s,%s,%s)",
                          (aid, headline, symbols, when, when))
        rows = run_recipe(rconn, "news_with_bars", symbol="AAPL", start=t0, end=t0 + timedelta(minutes=10))
    assert [(r[0], r[1], r[4], r[5], r[7], r[8]) for r in rows] == [
        (t0, 100.0, 102.0, 17, 1, "AAPL beats"),
        (t0 + timedelta(minutes=3), None, None, None, 2, "AAPL names CFO"),
    ]


def test_option_trades_by_underlying_and_expiry(rconn):
    from tickvault.alpaca.options import parse_occ

    t0 = datetime(2026, 3, 10, 14, 30, tzinfo=timezone.utc)
    prints = [  # (seconds after t0, OCC symbol, price, contracts)
        (0, "AAPL260320C00200000", 4.0, 10), (5, "AAPL260320C00200000", 5.0, 30),
        (7, "AAPL260320P00180000", 1.5, 2), (9, "AAPL261218C00250000", 9.0, 1),
        (11, "MSFT260320C00400000", 3.0, 5),                  # another underlying
        (-3600, "AAPL260320C00200000", 1.0, 100),             # before `since`
    ]
    with rconn.transaction(force_rollback=True):
        for sec, symbol, price, size in prints:
            occ, t = parse_occ(symbol), t0 + timedelta(seconds=sec)
            rconn.execute(
                "INSERT INTO option_trades (time, symbol, underlying, expiration, option_type, strike, price, size, "
                "time_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (t, symbol, occ.underlying, occ.expiration, occ.option_type, occ.strike, price, size,
                 int(t.timestamp()) * 10**9))
        rows = run_recipe(rconn, "option_trades_by_expiry", underlying="AAPL", since=t0)
    assert [(str(r[0]), r[1], r[2], r[4], r[5], r[6], r[7]) for r in rows] == [
        ("2026-03-20", "C", Decimal("200.000"), 40, 2, 4.75, 5.0),
        ("2026-03-20", "P", Decimal("180.000"), 2, 1, 1.5, 1.5),
        ("2026-12-18", "C", Decimal("250.000"), 1, 1, 9.0, 9.0),
    ]


def test_option_events_of_an_underlying_with_the_shares_they_delivered(rconn):
    events = [  # (id, type, symbol, qty, price, net_amount, day)
        ("20260320200000000::a", "OPEXC", "AAPL260320C00200000", -2, None, 0, "2026-03-20"),
        ("20260320200000000::b", "OPTRD", "AAPL", 200, "200", -40_000, "2026-03-20"),
        ("20260320200000000::c", "OPEXP", "AAPL260320P00180000", -1, None, 0, "2026-03-20"),
        ("20260320200000000::d", "OPEXP", "AAPLX260320C00010000", -1, None, 0, "2026-03-20"),  # another root
        ("20260320200000000::e", "OPTRD", "MSFT", 100, "300", -30_000, "2026-03-20"),
        ("20260417200000000::f", "OPEXP", "AAPL260417C00250000", -1, None, 0, "2026-04-17"),  # after the range
    ]
    with rconn.transaction():
        for aid, kind, symbol, qty, price, net, day in events:
            rconn.execute(
                "INSERT INTO option_events (activity_id, activity_type, symbol, qty, price, net_amount, trade_date, "
                "time) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::date + time '20:00' AT TIME ZONE 'UTC')",
                (aid, kind, symbol, qty, price, net, day, day))
        rows = run_recipe(rconn, "option_events", underlying="AAPL", from_day="2026-03-01", to_day="2026-03-31")
    assert [(r[2], r[3], r[4], r[5], r[6]) for r in rows] == [
        ("OPEXC", "AAPL260320C00200000", Decimal(-2), None, Decimal(0)),
        ("OPTRD", "AAPL", Decimal(200), Decimal(200), Decimal(-40_000)),
        ("OPEXP", "AAPL260320P00180000", Decimal(-1), None, Decimal(0)),
    ]
    assert rows[0][1] == datetime(2026, 3, 20, 20, 0, tzinfo=timezone.utc)


CRYPTO_UNTIL = datetime(2026, 3, 10, 15, 0, 30, tzinfo=timezone.utc)  # 30 s into the 15:00 minute
CRYPTO_TRADES = [  # (seconds before CRYPTO_UNTIL, pair, id, price, size)
    (40, "BTC/USD", 1, 90_000.0, "0.1"), (50, "BTC/USD", 2, 91_000.0, "0.2"),  # the 14:59 minute
    (95, "BTC/USD", 3, 89_000.0, "0.0012"),  # 14:58
    (3590, "BTC/USD", 4, 92_000.0, "0.5"),  # 14:00:40: the first minute of the hour
    (3650, "BTC/USD", 5, 1.0, "100"),  # 13:59:40: before the hour, left out of the VWAP
    (10, "BTC/USD", 6, 2.0, "7"),  # 15:00:20: the open minute, left out of the VWAP
    (45, "ETH/USD", 1, 3_000.0, "1.5"),
]


def _insert_crypto_trades(conn) -> None:
    for seconds, pair, tid, price, size in CRYPTO_TRADES:
        t = CRYPTO_UNTIL - timedelta(seconds=seconds)
        conn.execute("INSERT INTO crypto_trades (time, symbol, trade_id, price, size, taker_side, time_ns) "
                     "VALUES (%s, %s, %s, %s, %s, 'S', %s)", (t, pair, tid, price, Decimal(size),
                                                           int(t.timestamp()) * 10**9 + tid))


def test_crypto_vwap_1h_from_the_one_minute_aggregate(rconn):
    with rconn.transaction(force_rollback=True):
        _insert_crypto_trades(rconn)
        rows = run_recipe(rconn, "crypto_vwap_1h", symbols=["BTC/USD", "ETH/USD", "SOL/USD"], until=CRYPTO_UNTIL)
    by_pair = {r[0]: r[1:] for r in rows}
    volume = Decimal("0.8012")  # 0.1 + 0.2 + 0.0012 + 0.5: exact, no float residue
    assert by_pair["BTC/USD"][1:] == (volume, 4)
    expected = (Decimal(90_000) * Decimal("0.1") + Decimal(91_000) * Decimal("0.2")
                + Decimal(89_000) * Decimal("0.0012") + Decimal(92_000) * Decimal("0.5")) / volume
    assert abs(by_pair["BTC/USD"][0] - expected) < Decimal("1e-6")
    assert by_pair["ETH/USD"] == (Decimal("3000"), Decimal("1.5"), 1)
    assert by_pair["SOL/USD"] == (None, 0, 0)  # a pair without trades still has its row


def test_crypto_candles_are_one_minute_ohlcv_with_exact_volume(rconn):
    with rconn.transaction(force_rollback=True):
        _insert_crypto_trades(rconn)
        rows = run_recipe(rconn, "crypto_candles", symbol="BTC/USD", start=CRYPTO_UNTIL - timedelta(minutes=3),
                          end=CRYPTO_UNTIL)
    minute = CRYPTO_UNTIL.replace(second=0)
    assert [r[:7] for r in rows] == [
        (minute - timedelta(minutes=2), 89_000.0, 89_000.0, 89_000.0, 89_000.0, Decimal("0.0012"), 1),
        (minute - timedelta(minutes=1), 91_000.0, 91_000.0, 90_000.0, 90_000.0, Decimal("0.3"), 2),  # 14:59:40, :50
        (minute, 2.0, 2.0, 2.0, 2.0, Decimal("7"), 1),  # the open minute, computed live
    ]
    assert rows[1][7] == pytest.approx((90_000 * 0.1 + 91_000 * 0.2) / 0.3, rel=1e-12)
