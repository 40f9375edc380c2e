"""The dashboard's HTTP API, settings, live fan-out, kill switch and order-gateway halt, against the
real database, the simulator and the app served by uvicorn (no browser: see test_ui_browser.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.dashboard import plant_minute_trades, serve_dashboard, settings_for_sim
from tests.support.net import free_port
from tests.support.pipes import read_lines
from tickvault.config import ConfigError, load_settings
from tickvault.sim.server import Simulator

pytestmark = pytest.mark.db

TOKEN = "api-test-token-0123456789"
VENDOR = Path(__file__).resolve().parents[1] / "src" / "tickvault" / "ui" / "static" / "vendor"


def test_vendored_chart_library_is_the_recorded_file_with_its_license():
    readme = (VENDOR / "README.md").read_text()
    recorded = re.search(r"this file's sha256: `([0-9a-f]{64})`", readme).group(1)
    actual = hashlib.sha256((VENDOR / "lightweight-charts.standalone.production.js").read_bytes()).hexdigest()
    assert actual == recorded
    assert "Apache License" in (VENDOR / "lightweight-charts.LICENSE").read_text()


def test_kill_switch_cannot_be_enabled_without_a_long_token():
    with pytest.raises(ConfigError, match="TICKVAULT_UI_KILL_SWITCH_TOKEN"):
        load_settings(ui_kill_switch=True)
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings(ui_kill_switch=True, ui_kill_switch_token="short")
    assert load_settings(ui_kill_switch=True, ui_kill_switch_token=TOKEN).ui_kill_switch


def test_a_slow_page_is_resynced_instead_of_growing_its_queue():
    from tickvault.ui.live import PAGE_QUEUE_MAX, Page

    page = Page("AAPL")
    for i in range(PAGE_QUEUE_MAX + 5):
        page.offer("bars", {"i": i})
    assert page.queue.qsize() <= PAGE_QUEUE_MAX and page.resyncs == 1
    first = page.queue.get_nowait()
    assert first == ("resync", {})


@pytest.fixture
def planted(fresh_database):
    """A database with 30 minutes of AAPL trades, indicators for them, and a worker's ingest_stats."""
    url = fresh_database()
    start = (datetime.now(UTC) - timedelta(minutes=40)).replace(second=0, microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        plant_minute_trades(conn, "AAPL", start, minutes=30)
        conn.execute(
            "INSERT INTO indicators (time, symbol, timeframe, close, ema_12, sma_20, rsi_14, macd) "
            "SELECT bucket, symbol, '1m', close, close - 1, close - 2, 55, 0.5 FROM ohlcv_1m WHERE symbol = 'AAPL'")
        for i in range(5):
            conn.execute(
                "INSERT INTO ingest_stats (time, worker, interval_s, trades, rows_committed, queue_depth, queue_max, "
                "received_to_processed_p99_ms, received_to_committed_p99_ms, rss_mb, cpu_percent, reconnects) "
                "VALUES (now() - make_interval(secs => %s), 'w-api', 10, 5000, 6000, 3, 256, 0.4, 80, 120, 35, %s)",
                (10 * (5 - i), i))
    return url, start


async def test_bars_api_serves_candles_with_indicators_from_the_views(planted):
    url, start = planted
    settings = load_settings(database_url=url, ui_port=free_port())
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.get("/api/bars", params={"symbol": "aapl", "tf": "1m"})
        assert r.status_code == 200 and "db;dur=" in r.headers["server-timing"]
        assert "default-src 'self'" in r.headers["content-security-policy"]
        d = r.json()
        with psycopg.connect(url) as conn:
            direct = conn.execute(
                "SELECT extract(epoch FROM time_bucket('1 minute', time))::bigint b, first(price, time_ns), max(price), "
                "min(price), last(price, time_ns), sum(size) FROM trades WHERE symbol = 'AAPL' GROUP BY b ORDER BY b"
            ).fetchall()
        assert d["t"] == [r[0] for r in direct] and len(d["t"]) == 30
        assert list(zip(d["o"], d["h"], d["l"], d["c"], d["v"])) == [tuple(float(x) for x in r[1:]) for r in direct]
        assert d["ind"]["ema_12"] == [c - 1 for c in d["c"]] and set(d["ind"]["rsi_14"]) == {55.0}
        assert d["ind"]["bb_upper"] == [None] * 30  # not planted: null, never NaN
        five = (await client.get("/api/bars", params={"symbol": "AAPL", "tf": "5m"})).json()
        assert sum(five["v"]) == sum(d["v"]) and len(five["t"]) in (6, 7)
        assert (await client.get("/api/bars", params={"symbol": "AAPL", "tf": "2m"})).status_code == 400
        assert (await client.get("/api/bars", params={"symbol": "AAPL", "days": "-1"})).status_code == 400
        cfg = (await client.get("/api/config")).json()
        assert "AAPL" in cfg["symbols"] and cfg["kill_switch"] is False
        for path in ("/market", "/health", "/trading", "/static/vendor/lightweight-charts.standalone.production.js"):
            assert (await client.get(path)).status_code == 200, path


async def test_market_page_serves_a_crypto_pairs_candles_and_live_bars(fresh_database):
    """A crypto pair (a slash in its name) is listed, charted from crypto_ohlcv_* with its exact
    fractional volume, and pushed live like a stock."""
    url = fresh_database()
    start = (datetime.now(UTC) - timedelta(minutes=15)).replace(second=0, microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        for m in range(10):
            for k in range(3):
                when = start + timedelta(minutes=m, seconds=10 * k)
                conn.execute("INSERT INTO crypto_trades (time, symbol, trade_id, price, size, taker_side, time_ns) "
                             "VALUES (%s, 'BTC/USD', %s, %s, %s, 'B', %s)",
                             (when, 3 * m + k, 90_000.0 + m + k, Decimal("0.0012") * (k + 1),
                              int(when.timestamp()) * 10**9))
        direct = conn.execute(
            "SELECT extract(epoch FROM time_bucket('1 minute', time))::bigint b, first(price, time_ns), max(price), "
            "min(price), last(price, time_ns), sum(size) FROM crypto_trades GROUP BY b ORDER BY b").fetchall()
    settings = load_settings(database_url=url, ui_port=free_port(), ui_live_interval_s=0.2)
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert "BTC/USD" in (await client.get("/api/config")).json()["symbols"]
        d = (await client.get("/api/bars", params={"symbol": "btc/usd", "tf": "1m"})).json()
        assert d["symbol"] == "BTC/USD" and d["t"] == [r[0] for r in direct] and len(d["t"]) == 10
        assert list(zip(d["o"], d["h"], d["l"], d["c"], d["v"])) == [tuple(float(x) for x in r[1:]) for r in direct]
        assert d["v"][0] == 0.0072  # 0.0012 + 0.0024 + 0.0036, summed exactly as numeric
        async with client.stream("GET", "/api/live/BTC%2FUSD") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    pushed = httpx.Response(200, content=line[6:]).json()
                    break
        assert pushed["symbol"] == "BTC/USD" and pushed["t"][-1] == d["t"][-1]


async def test_live_bars_of_a_feed_behind_our_clock_carry_the_closed_bars_indicators(fresh_database):
    """A feed whose newest trade is minutes behind our clock (a delayed feed, a simulator started in
    the past): each live push holds the newest bar and the whole one before it, so that bar's
    indicators, stored just after it closed, reach the chart. The push once began a minute before
    the newest trade and left the previous bar out, its indicators blank until a reload."""
    from tickvault.ui import queries

    url = fresh_database()
    start = (datetime.now(UTC) - timedelta(minutes=30)).replace(second=0, microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        plant_minute_trades(conn, "AAPL", start, minutes=5)  # the newest trade 45 s into the fifth minute
        conn.execute("INSERT INTO indicators (time, symbol, timeframe, close, ema_12) "
                     "SELECT bucket, symbol, '1m', close, close - 1 FROM ohlcv_1m "
                     "WHERE symbol = 'AAPL' AND bucket < %s", (start + timedelta(minutes=4),))
    async with await psycopg.AsyncConnection.connect(url) as conn:
        pushed = json.loads((await queries.latest_bars(conn, "AAPL")).json)
    fourth, fifth = (int((start + timedelta(minutes=m)).timestamp()) for m in (3, 4))
    assert pushed["t"] == [fourth, fifth]
    assert pushed["ind"]["ema_12"] == [pushed["c"][0] - 1, None]  # the open bar has none yet


def _f64_bars(body: bytes) -> tuple[dict, dict[str, list[float]]]:
    """Decode ``/api/bars?format=f64`` as the page does (app.py's layout)."""
    import struct

    (n,) = struct.unpack_from("<I", body)
    meta = json.loads(body[4:4 + n])
    offset, count = -(-(4 + n) // 8) * 8, meta["count"]
    columns = {}
    for name in meta["columns"]:
        columns[name] = list(struct.unpack_from(f">{count}d", body, offset))
        offset += 8 * count
    assert offset == len(body)
    return meta, columns


async def test_binary_bars_are_the_json_bars_exactly_and_before_splits_the_window_without_loss(planted):
    url, start = planted
    settings = load_settings(database_url=url, ui_port=free_port())
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base) as client:
        d = (await client.get("/api/bars", params={"symbol": "AAPL", "tf": "1m"})).json()
        r = await client.get("/api/bars", params={"symbol": "AAPL", "tf": "1m", "format": "f64"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        meta, cols = _f64_bars(r.content)
        assert meta["count"] == len(d["t"]) == 30 and meta["symbol"] == "AAPL" and meta["markers"] == []
        for name in ("t", "o", "h", "l", "c", "v"):
            assert cols[name] == d[name], name  # the same doubles, bit for bit
        for name, values in d["ind"].items():
            assert [None if math.isnan(x) else x for x in cols[name]] == values, name  # NaN: no value (null)

        # Older bars by `before`: two halves of the window hold every bar once.
        middle = int(d["t"][15])
        newer = _f64_bars((await client.get("/api/bars", params={
            "symbol": "AAPL", "tf": "1m", "format": "f64", "before": str(middle + 3600), "days": str(1 / 24)})).content)[1]
        older = _f64_bars((await client.get("/api/bars", params={
            "symbol": "AAPL", "tf": "1m", "format": "f64", "before": str(middle), "days": "1"})).content)[1]
        assert older["t"] + newer["t"] == d["t"] and older["c"] + newer["c"] == d["c"]
        bad = await client.get("/api/bars", params={"symbol": "AAPL", "format": "f64", "before": "1e300"})
        assert bad.status_code == 400 and "error" in bad.json()


async def test_health_api_lists_workers_jobs_and_what_retention_drops_next(planted):
    url, _ = planted
    settings = load_settings(database_url=url, ui_port=free_port(), retention_trades_days=30)
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base) as client:
        h = (await client.get("/api/health")).json()
        (w,) = [w for w in h["workers"] if w["worker"] == "w-api"]
        assert w["trades_per_s"] == 500.0 and w["rows_committed_per_s"] == 600.0 and w["rss_mb"] == 120
        assert w["received_to_committed_p99_ms"] == 80 and 0 <= w["age_s"] < 60
        trades = next(c for c in h["chunks"] if c["table"] == "trades")
        assert trades["chunks"] >= 1 and trades["bytes"] > 0 and trades["window_days"] == 30
        assert datetime.fromisoformat(trades["next_drop_at"]) > datetime.now(UTC) + timedelta(days=28)
        assert {c["table"] for c in h["chunks"]} >= {"trades", "quotes", "ingest_stats", "indicators"}
        assert isinstance(h["jobs"], list)
        hist = (await client.get("/api/health/history", params={"worker": "w-api", "minutes": 5})).json()["rows"]
        assert [r["reconnects"] for r in hist] == [0, 1, 2, 3, 4]  # oldest first
        trading = (await client.get("/api/trading")).json()
        assert trading["halt"] is None and trading["open_orders"] == [] and trading["pnl"] == []
        prefect = (await client.get("/api/prefect")).json()  # nothing listens there: said, not an error
        assert prefect["reachable"] is False


async def test_live_updates_push_new_bars_over_sse(planted):
    url, start = planted
    settings = load_settings(database_url=url, ui_port=free_port(), ui_live_interval_s=0.2)
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", "/api/live/AAPL") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            newest = None
            async for line in lines:
                if line.startswith("data: "):
                    newest = httpx.Response(200, content=line[6:]).json()
                    break
            # a trade in a new minute becomes a new bar in the next push
            with psycopg.connect(url, autocommit=True) as conn:
                plant_minute_trades(conn, "AAPL", start + timedelta(minutes=30), minutes=1, first_id=10_000)
            async for line in lines:
                if line.startswith("data: "):
                    pushed = httpx.Response(200, content=line[6:]).json()
                    if pushed["t"][-1] > newest["t"][-1]:
                        break
            assert pushed["t"][-1] == newest["t"][-1] + 60


async def test_kill_switch_refuses_without_the_setting_or_token_and_records_every_attempt(fresh_database, tmp_path):
    url = fresh_database()
    async with Simulator(symbols=["AAPL"], rate=200, seed=1) as sim:
        off = settings_for_sim(sim, url, tmp_path / "run")
        async with serve_dashboard(off, url) as base, httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/api/kill-switch", json={"token": TOKEN})
            assert r.status_code == 403 and "disabled" in r.json()["error"]
        on = settings_for_sim(sim, url, tmp_path / "run", ui_kill_switch=True, ui_kill_switch_token=TOKEN)
        async with serve_dashboard(on, url) as base, httpx.AsyncClient(base_url=base) as client:
            assert (await client.post("/api/kill-switch", json={"token": TOKEN[:-1]})).status_code == 403
            assert (await client.post("/api/kill-switch/lift", json={})).status_code == 403
            r = await client.post("/api/kill-switch", json={"token": TOKEN, "reason": "api test"})
            assert r.status_code == 200 and r.json()["halted"] is True
            assert (await client.get("/api/trading")).json()["halt"]["reason"] == "api test"
            assert (await client.post("/api/kill-switch/lift", json={"token": TOKEN})).json() == {"lifted": 1}
    with psycopg.connect(url) as conn:
        audit = conn.execute("SELECT action, allowed, outcome, detail::text FROM ui_audit ORDER BY id").fetchall()
        halts = conn.execute("SELECT reason, lifted_at IS NOT NULL FROM trading_halts").fetchall()
    assert [(a, ok) for a, ok, *_ in audit] == [
        ("kill_switch", False), ("kill_switch", False), ("lift_halt", False), ("kill_switch", True), ("lift_halt", True)]
    assert "disabled" in audit[0][2] and "token" in audit[1][2]
    assert all(TOKEN not in (o + (d or "")) for _a, _ok, o, d in audit)  # never the token
    assert halts == [("api test", True)]


async def test_order_gateway_submits_nothing_while_halted(fresh_database):
    from tickvault.alpaca.rest import AlpacaREST
    from tickvault.stream.metrics import Metrics
    from tickvault.stream.orders import OrderGateway
    from tickvault.stream.strategy import Bar, OrderIntent
    from tickvault.db.pool import open_pool

    url = fresh_database()
    async with Simulator(symbols=["AAPL"], rate=200, seed=1) as sim:
        settings = load_settings(database_url=url, alpaca_key_id=sim.key, alpaca_secret_key=sim.secret,
                                 alpaca_trading_url=sim.rest_url, alpaca_data_url=sim.rest_url)
        pool = await open_pool(settings, url=url)
        try:
            metrics = Metrics()
            gateway = OrderGateway(AlpacaREST(settings), pool, metrics)
            bar = Bar("AAPL", 1_700_000_000_000_000_000, 1, 1, 1, 1, 1, 1, 1)
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO trading_halts (reason) VALUES ('test halt')")
            assert await gateway.submit("s", bar, OrderIntent("AAPL", "buy", Decimal("1"))) is None
            assert metrics.totals["drops"] == 1
            async with pool.connection() as conn:
                assert (await (await conn.execute("SELECT count(*) FROM orders")).fetchone())[0] == 0
                await conn.execute("UPDATE trading_halts SET lifted_at = now()")
            order = await gateway.submit("s", bar, OrderIntent("AAPL", "buy", Decimal("1")))
            assert order is not None and order.client_order_id in sim.broker.by_client_id
        finally:
            await pool.close()


def test_tickvault_ui_serves_on_loopback_and_stops_on_sigterm(planted):
    url, _ = planted
    port = free_port()
    env = {**os.environ, "TICKVAULT_DATABASE_URL": url, "TICKVAULT_UI_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "ui"], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        (line,) = read_lines(proc, 60, "the dashboard's address", count=1)
        assert line.strip() == f"dashboard    http://127.0.0.1:{port}"
        r = httpx.get(f"http://127.0.0.1:{port}/market", timeout=10)
        assert r.status_code == 200 and "lightweight-charts" in r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


async def test_health_adds_up_a_workers_feeds_into_one_row_per_interval(fresh_database):
    from tickvault.ui import queries

    url = fresh_database()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():  # the worker writes its feeds' rows in one transaction: one time
            for feed, trades, p99 in (("stocks:iex", 1000, 5.0), ("crypto:us", 200, 9.0)):
                await conn.execute(
                    "INSERT INTO ingest_stats (time, worker, feed, interval_s, trades, reconnects, "
                    "received_to_committed_p99_ms) VALUES (now(), 'multi', %s, 10, %s, 1, %s)", (feed, trades, p99))
        history = await queries.ingest_history(conn, "multi")
        latest = await queries.workers(conn)
        plan = "\n".join(r[0] for r in await (await conn.execute(
            "EXPLAIN SELECT * FROM " + queries._STATS_BY_WORKER + " WHERE worker = 'multi'")).fetchall())
    assert len(history) == 1
    assert history[0]["trades_per_s"] == 120.0 and history[0]["reconnects"] == 2
    assert history[0]["received_to_committed_p99_ms"] == 9.0  # the worst feed's
    assert [w["worker"] for w in latest] == ["multi"] and latest[0]["trades_per_s"] == 120.0
    assert "worker = 'multi'" in plan or "(worker = 'multi'::text)" in plan  # filtered before grouping


async def test_trading_page_values_option_pnl_and_names_an_event_it_cannot_value(fresh_database):
    """Realized P&L on the Trading page counts a contract as 100 shares and an expiry as a close at 0;
    an option event the function refuses (a share delivery without its strike) leaves the P&L table
    empty with the reason beside it, and the rest of the page still loads."""
    url = fresh_database()
    today = datetime.now(UTC).date()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO fills (order_id, cum_qty, symbol, side, qty, price, transaction_time) "
                     "VALUES (gen_random_uuid(), 2, 'AAPL991231C00100000', 'buy', 2, 1.25, "
                     "now() - interval '2 days')")
        events = ("INSERT INTO option_events (activity_id, activity_type, symbol, qty, net_amount, "
                  "trade_date, time) ")
        conn.execute(events + "VALUES ('e1', 'OPEXP', 'AAPL991231C00100000', -2, 0, %s, %s::date)",
                     (today, today))
        conn.execute(events + "VALUES ('e2', 'OPTRD', 'AAPL', 100, -10000, %s, %s::date)", (today, today))
    settings = load_settings(database_url=url, ui_port=free_port())
    async with serve_dashboard(settings, url) as base, httpx.AsyncClient(base_url=base) as client:
        trading = (await client.get("/api/trading")).json()
        assert trading["pnl"] == [] and trading["halt"] is None and len(trading["fills"]) == 1
        assert trading["pnl_error"] == ("option event e2 (OPTRD AAPL) cannot be valued: "
                                        "a share delivery without its price (the strike)")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE option_events SET price = 100 WHERE activity_id = 'e2'")
        trading = (await client.get("/api/trading")).json()
        assert trading["pnl_error"] is None
        pnl = {(r["symbol"], r["realized_pnl"], r["fills"]) for r in trading["pnl"]
               if r["day"] == today.isoformat()}
        assert pnl == {("AAPL991231C00100000", "-250", 0), ("AAPL", "0", 0)}  # Decimals as exact strings
