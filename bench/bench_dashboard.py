"""Dashboard benchmark: the Market page with 30 days of 1-minute bars, the query plans behind it,
the dashboard process's memory, and the worker's figures with and without the dashboard open.

Run from the repo root: ``python -m bench.bench_dashboard`` (~6 min). Writes
``bench/results/dashboard.json`` and prints a table. Needs ``/usr/bin/chromium`` (``make install``).

Set-up, in a scratch database: :data:`DAYS` days of trades for :data:`SYMBOL` (one every
:data:`TRADE_EVERY_S` s: every minute has a bar) and for :data:`OTHER_SYMBOLS` more symbols (so the
indexes have to choose), the OHLCV rollups refreshed as the ``refresh-indicators`` deployment keeps
them, indicator rows for every bar. ``tickvault ui`` runs as its own process, as ``make run`` starts it.

* ``page_load_s``: headless chromium, from ``goto`` to the chart holding its candles (the page's
  ``tv.loaded``), a fresh browser context each round (no cache), :data:`ROUNDS` rounds, for the
  page as it opens (its default window: 1 day of 1-minute bars, out of the 30 stored) and for the
  30-day window (``?days=30``), which opens with its newest day and loads older bars as the user
  scrolls back; ``all_30d.scroll_back``: from there to all 43,200 candles and 11 indicator series
  drawn (``tv.loadOlder`` until ``tv.history.complete``, what scrolling to the first bar does), with
  each step's time. The goal (< 1 s) applies to the worst round of both page loads.
* ``api_bars_30d_s`` / ``api_bars_1d_unrefreshed_s``: ``/api/bars`` alone, as JSON and as the binary
  columns the page reads (``format=f64``); the second before any refresh (the view computes every
  bar from raw trades: what a database with no refresh deployment serves).
* ``plans``: EXPLAIN ANALYZE of the 30-day statement: every scan of trades, the rollup and
  indicators must be an index scan (goal), with its execution time.
* ``ui_rss_mb_max``: the dashboard process's RSS, sampled after every load and through the worker
  phases (goal < 100 MB).
* ``worker``: the simulator at ``make run``'s default rate (:data:`SIM_RATE` trades/s over
  :data:`SIM_SYMBOLS` symbols) into a worker process, and an A/B of :data:`AB_ROUNDS` interleaved
  rounds: each round runs every condition of :data:`CONDITIONS` for :data:`PHASE_S` s, in an order
  rotated by one per round — ``closed`` (no page), ``open_streams`` (the Market and Health pages'
  requests without a browser: both SSE streams and the health tables every 5 s, as from a browser
  on another machine), ``open_browser`` (both pages open in chromium on this host) — each phase
  summarised from ``ingest_stats`` (its first :data:`SETTLE_S` s left out). Reported per figure:
  median and spread of each condition, and the median of the paired differences (open − closed of
  the same round). Goal, for the dashboard's own cost (``open_streams``): the median paired harm
  (fewer trades/s; more p99 latency or CPU) is no larger than the noise, the closed phases' spread
  across rounds or 10 % of their median, whichever is larger. ``open_browser`` is reported the
  same way: on a 2-core host chromium's rendering takes CPU from the worker as any program would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg

from bench.bench_decode import machine_info
from bench.common import scratch_database, write_results

SYMBOL = "BENCH"
OTHER_SYMBOLS = ("OTH1", "OTH2", "OTH3", "OTH4")
DAYS = 30
TRADE_EVERY_S = 6  # 10 trades a minute: every 1-minute bucket has a bar
ROUNDS = 5
GOAL_LOAD_S = 1.0
GOAL_RSS_MB = 100.0
SIM_RATE = 20_000  # make run's default (TICKVAULT_SIM_RATE)
SIM_SYMBOLS = 50
PHASE_S = 24.0
SETTLE_S = 6.0  # the first seconds of a phase are left out: a page opening or closing is not steady state
# The worker A/B: every condition once per round, AB_ROUNDS rounds, interleaved (see _worker_phases).
AB_ROUNDS = 3
CONDITIONS = ("closed", "open_streams", "open_browser")
AB_FIGURES = ("trades_per_s", "p99_commit_ms", "p99_proc_ms", "cpu_percent")
STATS_INTERVAL_S = 2.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plant(url: str) -> dict:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) "
            "SELECT t, s, row_number() OVER (), 'V', 100 + 10 * sin(extract(epoch FROM t) / 7200) + random(), "
            "1 + (random() * 200)::int, (extract(epoch FROM t) * 1e9)::bigint "
            "FROM generate_series(date_trunc('minute', now()) - make_interval(days => %s), now(), "
            "make_interval(secs => %s)) t, unnest(%s::text[]) s",
            (DAYS, TRADE_EVERY_S, [SYMBOL, *OTHER_SYMBOLS]))
        trades = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
        conn.execute("ANALYZE trades")
    return {"trades": trades, "plant_s": round(time.perf_counter() - started, 1)}


def _refresh_and_indicators(url: str) -> dict:
    from tickvault.db.aggregates import refresh_ohlcv

    started = time.perf_counter()
    refresh_ohlcv(url)
    refreshed = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        # Indicator-like values for every bar of every symbol, as the worker writes them (the load
        # cost is the same whatever the numbers are).
        conn.execute(
            "INSERT INTO indicators (time, symbol, timeframe, close, ema_12, ema_26, sma_20, bb_upper, bb_middle, "
            "bb_lower, vwap, rsi_14, macd, macd_signal, macd_hist) "
            "SELECT bucket, symbol, '1m', close, avg(close) OVER w12, avg(close) OVER w26, avg(close) OVER w20, "
            "avg(close) OVER w20 + 2 * stddev(close) OVER w20, avg(close) OVER w20, "
            "avg(close) OVER w20 - 2 * stddev(close) OVER w20, vwap, 50, 0.1, 0.05, 0.05 "
            "FROM ohlcv_1m WHERE symbol = ANY(%s) "
            "WINDOW w12 AS (PARTITION BY symbol ORDER BY bucket ROWS 11 PRECEDING), "
            "w26 AS (PARTITION BY symbol ORDER BY bucket ROWS 25 PRECEDING), "
            "w20 AS (PARTITION BY symbol ORDER BY bucket ROWS 19 PRECEDING)", ([SYMBOL, *OTHER_SYMBOLS],))
        conn.execute("ANALYZE")
        bars = conn.execute("SELECT count(*) FROM ohlcv_1m WHERE symbol = %s", (SYMBOL,)).fetchone()[0]
    return {"refresh_s": round(refreshed, 1), "bars_1m": bars}


def _walk(node: dict, out: list) -> None:
    if "Relation Name" in node or "Index Name" in node:
        out.append({"node": node["Node Type"], "relation": node.get("Relation Name"), "index": node.get("Index Name")})
    for child in node.get("Plans", ()):
        _walk(child, out)


def _plans(url: str) -> dict:
    from tickvault.ui.queries import _BARS_F64_SQL, MAX_BARS, bar_window  # the statement the Market page reads

    w = bar_window(SYMBOL, "1m", DAYS)
    with psycopg.connect(url, prepare_threshold=None) as conn:
        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _BARS_F64_SQL["1m", False],
                               {"symbol": w.symbol, "tf": "1m", "start": w.start, "end": w.end, "limit": MAX_BARS}
                               ).fetchone()[0]
    scans: list = []
    _walk(plan["Plan"], scans)
    # A sequential scan is fine only on ohlcv_state (four rows: the watermarks).
    seq = [s for s in scans if s["node"] == "Seq Scan" and s["relation"] != "ohlcv_state"]
    indexed = [s for s in scans if s["index"]]
    return {"execution_ms": round(plan["Execution Time"], 1), "scans": scans,
            "index_scans_only": not seq and bool(indexed), "seq_scans": seq}


def _start_ui(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "TICKVAULT_DATABASE_URL": url, "TICKVAULT_UI_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "ui"], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    if not proc.stdout.readline():
        raise RuntimeError(f"tickvault ui did not start (exit {proc.wait()})")
    return proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


async def _page_loads(base: str, ui: subprocess.Popen, rss: list[float]) -> dict:
    from playwright.async_api import async_playwright

    out: dict = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for label, query in (("default_1d", ""), ("all_30d", f"&days={DAYS}")):
                times, bars, scroll, total, chunks = [], 0, [], 0, []
                for _ in range(ROUNDS):
                    context = await browser.new_context(viewport={"width": 1400, "height": 900})
                    page = await context.new_page()
                    started = time.perf_counter()
                    await page.goto(f"{base}/market?symbol={SYMBOL}&tf=1m{query}")
                    await page.wait_for_function("() => window.tv && tv.loaded && tv.loaded.bars > 0", timeout=60_000)
                    times.append(time.perf_counter() - started)
                    bars = await page.evaluate("() => tv.loaded.bars")
                    if query:
                        # Scrolled back to the window's first bar: every older part fetched and drawn.
                        started = time.perf_counter()
                        await page.evaluate("async () => { while (!tv.history.complete) await tv.loadOlder(); }")
                        scroll.append(time.perf_counter() - started)
                        total = await page.evaluate("() => tv.candles.data().length")
                        chunks.append(await page.evaluate("() => tv.history.chunks.slice(1).map(c => Math.round(c.ms))"))
                    await context.close()
                    rss.append(_rss_mb(ui))
                out[label] = {"bars": bars, "median_s": round(statistics.median(times), 3),
                              "max_s": round(max(times), 3), "rounds_s": [round(t, 3) for t in times]}
                if query:
                    # Each step fetches and redraws everything loaded so far (the chart library has
                    # no prepend), so the last, largest step is the slowest: reported per step.
                    out[label]["scroll_back"] = {
                        "bars": total, "median_s": round(statistics.median(scroll), 3), "max_s": round(max(scroll), 3),
                        "steps_ms_median": [round(statistics.median(c[i] for c in chunks)) for i in range(len(chunks[0]))]}
        finally:
            await browser.close()
    return out


def _api_time(base: str, query: str) -> dict:
    """``/api/bars`` as JSON and as the binary columns the Market page reads (``format=f64``)."""
    out = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for label, fmt in (("json", ""), ("f64", "&format=f64")):
            times, server = [], []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                r = client.get(f"/api/bars?symbol={SYMBOL}&tf=1m{query}{fmt}")
                times.append(time.perf_counter() - started)
                server.append(float(r.headers["server-timing"].split("dur=")[1]))
            out[label] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                          "db_median_ms": round(statistics.median(server), 1), "bytes": len(r.content)}
        out["bars"] = len(client.get(f"/api/bars?symbol={SYMBOL}&tf=1m{query}").json()["t"])
    return out


def _phase_stats(url: str, worker: str, start: datetime, end: datetime) -> dict:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), avg(trades / interval_s), avg(received_to_committed_p99_ms), "
            "avg(received_to_processed_p99_ms), avg(cpu_percent), max(queue_depth), max(rss_mb) "
            "FROM ingest_stats WHERE worker = %s AND time >= %s AND time < %s", (worker, start, end)).fetchone()
    keys = ("rows", "trades_per_s", "p99_commit_ms", "p99_proc_ms", "cpu_percent", "queue_max", "rss_mb_max")
    return {k: (round(float(v), 3) if v is not None else None) for k, v in zip(keys, row)}


async def _worker_phases(url: str, base: str, ui: subprocess.Popen, rss: list[float], tmp: Path) -> dict:
    from playwright.async_api import async_playwright

    ws, rest = _free_port(), _free_port()
    keys = {"TICKVAULT_ALPACA_KEY_ID": "bench-key", "TICKVAULT_ALPACA_SECRET_KEY": "bench-secret"}
    env = {**os.environ, **keys, "TICKVAULT_DATABASE_URL": url, "TICKVAULT_SIM_PORT": str(ws),
           "TICKVAULT_SIM_REST_PORT": str(rest), "TICKVAULT_SIM_SYMBOLS": str(SIM_SYMBOLS),
           "TICKVAULT_SIM_RATE": str(SIM_RATE), "TICKVAULT_ALPACA_STREAM_URL": f"ws://127.0.0.1:{ws}",
           "TICKVAULT_ALPACA_TRADE_STREAM_URL": f"ws://127.0.0.1:{ws}/stream",
           "TICKVAULT_ALPACA_DATA_URL": f"http://127.0.0.1:{rest}", "TICKVAULT_ALPACA_TRADING_URL": f"http://127.0.0.1:{rest}",
           "TICKVAULT_METRICS_PORT": "0", "TICKVAULT_RUN_DIR": str(tmp / "run"), "TICKVAULT_WORKER_NAME": "bench-ui",
           "TICKVAULT_STATS_INTERVAL_S": str(STATS_INTERVAL_S)}
    from tickvault.sim.market import symbol_names

    env["TICKVAULT_SYMBOLS"] = ",".join(symbol_names(SIM_SYMBOLS))
    sim = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "sim"], env=env, stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    worker = None
    phases: dict = {}
    ui_cpu: dict = {}
    try:
        for _ in range(4):
            if not sim.stdout.readline():
                raise RuntimeError("the simulator did not start")
        log = open(tmp / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"], env=env,
                                  stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while _phase_stats(url, "bench-ui", datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC))["rows"] < 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not report (see {tmp / 'worker.log'})")
            await asyncio.sleep(0.5)  # polling a condition in the database
        ui_proc = psutil.Process(ui.pid)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for round_no in range(AB_ROUNDS):
                    # Interleaved: each round runs every condition once, in an order rotated by one
                    # per round, so a drift of the host (other work starting or stopping) falls on
                    # every condition alike instead of on whichever ran last.
                    order = CONDITIONS[round_no % len(CONDITIONS):] + CONDITIONS[:round_no % len(CONDITIONS)]
                    for name in order:
                        stats, cpu = await _phase(url, base, browser, ui, ui_proc, name, rss)
                        phases.setdefault(name, []).append({"round": round_no, **stats})
                        ui_cpu.setdefault(name, []).append(cpu)
            finally:
                await browser.close()
    finally:
        _stop(worker)
        _stop(sim)
    return {"rounds": AB_ROUNDS, "phase_s": PHASE_S, "phases": phases,
            "ui_cpu_percent": {k: round(statistics.median(v), 1) for k, v in ui_cpu.items()},
            "comparison": ab_comparison(phases)}


async def _phase(url: str, base: str, browser, ui: subprocess.Popen, ui_proc: psutil.Process, name: str,
                 rss: list[float]) -> tuple[dict, float]:
    """One phase of one condition: the pages (or their requests) open for :data:`PHASE_S` s, the
    worker's ``ingest_stats`` of its steady part, and the dashboard's CPU meanwhile."""
    context = None
    streams: list[asyncio.Task] = []
    if name == "open_browser":
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        market = await context.new_page()
        await market.goto(f"{base}/market?symbol=AAPL&tf=1m")
        health = await context.new_page()
        await health.goto(f"{base}/health")
    elif name == "open_streams":
        # What the two pages ask of the dashboard, without a browser on this host.
        streams = [asyncio.create_task(_consume(base, path)) for path in ("/api/live/AAPL", "/api/live/health")]
        streams.append(asyncio.create_task(_poll_health(base)))
    ui_proc.cpu_percent()
    start = datetime.now(UTC) + timedelta(seconds=SETTLE_S)
    end = start + timedelta(seconds=PHASE_S - SETTLE_S)
    while datetime.now(UTC) < end + timedelta(seconds=STATS_INTERVAL_S):
        await asyncio.sleep(1.0)  # the phase's duration is the measurement itself
        rss.append(_rss_mb(ui))
    cpu = round(ui_proc.cpu_percent(), 1)
    if context is not None:
        assert await market.evaluate("() => tv.loaded && tv.loaded.bars"), "market page had no bars"
        await context.close()
    for task in streams:
        task.cancel()
    return _phase_stats(url, "bench-ui", start, end), cpu


def ab_comparison(phases: dict[str, list[dict]]) -> dict:
    """Each open condition against ``closed``: per figure, the median and spread (min–max) of its
    phases, and the median of the paired differences (open − closed of the same round). Harm is
    one-sided (fewer trades/s; more latency or CPU); the noise is how far the closed phases spread
    across rounds, or 10 % of their median, whichever is larger. ``within_noise``: the median
    paired harm is no larger than the noise."""
    closed = {p["round"]: p for p in phases["closed"]}
    out: dict = {}
    for cond in CONDITIONS:
        if cond == "closed":
            continue
        for key in AB_FIGURES:
            base = [p[key] for p in phases["closed"] if p[key] is not None]
            open_ = [p[key] for p in phases[cond] if p[key] is not None]
            paired = [p[key] - closed[p["round"]][key] for p in phases[cond]
                      if p[key] is not None and closed[p["round"]][key] is not None]
            if not base or not paired:
                continue
            median_closed = statistics.median(base)
            noise = max(max(base) - min(base), 0.10 * abs(median_closed))
            delta = statistics.median(paired)
            worse = -delta if key == "trades_per_s" else delta
            out.setdefault(cond, {})[key] = {
                "closed_median": round(median_closed, 3), "closed_spread": [round(min(base), 3), round(max(base), 3)],
                "open_median": round(statistics.median(open_), 3), "open_spread": [round(min(open_), 3), round(max(open_), 3)],
                "paired_delta_median": round(delta, 3), "paired_deltas": [round(d, 3) for d in paired],
                "noise": round(noise, 3), "within_noise": worse <= noise}
    return out


async def _consume(base: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=None) as client, client.stream("GET", path) as stream:
        async for _line in stream.aiter_lines():
            pass


async def _poll_health(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while True:
            await client.get("/api/health")
            await asyncio.sleep(5)  # the Health page re-reads its tables this often


def run() -> dict:
    started = time.perf_counter()
    machine = machine_info()
    result: dict = {"goal": f"Market page < {GOAL_LOAD_S} s with {DAYS} days of 1-minute bars; plans use the indexes; "
                            f"dashboard RSS < {GOAL_RSS_MB:.0f} MB; worker figures not moved by an open dashboard"}
    rss: list[float] = []
    with scratch_database("tickvault_bench_ui") as url, tempfile.TemporaryDirectory() as tmpdir:
        result["setup"] = {"symbol": SYMBOL, "other_symbols": len(OTHER_SYMBOLS), "days": DAYS,
                           "trade_every_s": TRADE_EVERY_S, **_plant(url)}
        port = _free_port()
        ui = _start_ui(url, port)
        base = f"http://127.0.0.1:{port}"
        try:
            rss.append(_rss_mb(ui))
            result["api_bars_1d_unrefreshed_s"] = _api_time(base, "")
            result["setup"].update(_refresh_and_indicators(url))
            result["plans"] = _plans(url)
            result["api_bars_30d_s"] = _api_time(base, f"&days={DAYS}")
            result["page_load_s"] = asyncio.run(_page_loads(base, ui, rss))
            result["worker"] = asyncio.run(_worker_phases(url, base, ui, rss, Path(tmpdir)))
        finally:
            _stop(ui)
    result["ui_rss_mb_max"] = round(max(rss), 1)
    result["ui_rss_mb_idle"] = round(rss[0], 1)
    loads = result["page_load_s"]
    result["goals_met"] = {
        # The page as a trader opens it (its default window: a day of 1-minute bars) and the 30-day
        # window (drawn from its newest day, the rest as the user scrolls back), over 30 days of
        # stored bars; scrolling back to the first bar is measured and reported per step.
        "page_load_under_1s": max(loads["default_1d"]["max_s"], loads["all_30d"]["max_s"]) < GOAL_LOAD_S,
        "plans_use_indexes": result["plans"]["index_scans_only"],
        "ui_rss_under_100mb": result["ui_rss_mb_max"] < GOAL_RSS_MB,
        # The dashboard (server and database work) must not move the worker; a browser rendering on
        # the same 2-core host is reported beside it (open_browser) but takes CPU any program would.
        "worker_unmoved": all(v["within_noise"] for v in result["worker"]["comparison"]["open_streams"].values()),
    }
    result["machine"] = machine
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write_results("dashboard", result)
    return result


def main() -> None:
    r = run()
    loads = r["page_load_s"]
    print(f"page load, 1 day ({loads['default_1d']['bars']} bars): median {loads['default_1d']['median_s']} s, "
          f"max {loads['default_1d']['max_s']} s")
    back = loads["all_30d"]["scroll_back"]
    print(f"page load, {DAYS}-day window (first {loads['all_30d']['bars']} bars drawn): median "
          f"{loads['all_30d']['median_s']} s, max {loads['all_30d']['max_s']} s; scrolled back to all {back['bars']} "
          f"bars: median {back['median_s']} s, max {back['max_s']} s, steps (ms) {back['steps_ms_median']}")
    for fmt in ("json", "f64"):
        a = r["api_bars_30d_s"][fmt]
        print(f"API {DAYS} days as {fmt}: {a['median_s']} s (db {a['db_median_ms']} ms, {a['bytes'] / 2**20:.1f} MB)")
    print(f"API 1 day unrefreshed: {r['api_bars_1d_unrefreshed_s']['f64']['median_s']} s (f64), "
          f"{r['api_bars_1d_unrefreshed_s']['json']['median_s']} s (json)")
    print(f"plan: {r['plans']['execution_ms']} ms, index scans only: {r['plans']['index_scans_only']}")
    print(f"dashboard RSS: idle {r['ui_rss_mb_idle']} MB, max {r['ui_rss_mb_max']} MB")
    for phase, keys in r["worker"]["comparison"].items():
        for key, v in keys.items():
            print(f"worker {key}, {phase} vs closed ({r['worker']['rounds']} interleaved rounds): closed median "
                  f"{v['closed_median']} {v['closed_spread']}, open median {v['open_median']} {v['open_spread']}, "
                  f"paired delta median {v['paired_delta_median']} {v['paired_deltas']} (noise {v['noise']})")
    print(f"dashboard CPU % (median per condition): {r['worker']['ui_cpu_percent']}")
    print(json.dumps(r["goals_met"]))


if __name__ == "__main__":
    main()
