"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real worker on
the simulator: candles drawn, a new bar live, the worker's figures on the health page, the trading
tables and the kill switch, no console errors, and a screenshot of each page.

The simulator runs its clock 60× (a simulated minute per second) so minute bars, indicators and
the strategy's orders come within seconds; every wait is on a condition in the page or the
database, with generous timeouts. Screenshots go to the ``--ui-screenshots DIR`` directory when given (the
docs' images: ``make screenshots``),
else to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio

from tests.support.dashboard import serve_dashboard, settings_for_sim
from tests.support.waiting import wait_until
from tickvault.sim.server import Simulator
from tickvault.stream.worker import WorkerHandle, run_worker

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token-0123456789"
SPEEDUP = 60  # simulated seconds per real second: a minute bar every second


@dataclass
class Stack:
    base: str
    db_url: str
    sim: Simulator
    handle: WorkerHandle
    browser: object
    shots: Path
    pages: list = field(default_factory=list)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(fresh_database, tmp_path_factory, request):
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make install` installs Debian's chromium package (apt-get)")
    tmp = tmp_path_factory.mktemp("ui-browser")
    shots = Path(request.config.getoption("--ui-screenshots") or tmp)
    shots.mkdir(parents=True, exist_ok=True)
    url = fresh_database()
    t0 = time.time_ns()

    def fast() -> int:
        return t0 + (time.time_ns() - t0) * SPEEDUP

    async with Simulator(symbols=["AAPL", "MSFT"], rate=1_000, seed=7, clock=fast) as sim:
        settings = settings_for_sim(sim, url, tmp / "run", worker_name="browser",
                                    strategy="tests.support.strategies:BuyOneShareEachBar",
                                    ui_kill_switch=True, ui_kill_switch_token=TOKEN)
        handle = WorkerHandle()
        worker = asyncio.create_task(run_worker(settings, handle))
        await asyncio.wait_for(handle.ready.wait(), 30)
        try:
            async with serve_dashboard(settings, url) as base, async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                try:
                    yield Stack(base, url, sim, handle, browser, shots)
                finally:
                    await browser.close()
        finally:
            handle.stop()
            await asyncio.wait_for(worker, 60)


@pytest_asyncio.fixture(loop_scope="module")
async def page(stack):
    """A fresh page that records console errors and uncaught exceptions; none may happen except those
    a test expects and names in ``page.expected_errors``."""
    context = await stack.browser.new_context(viewport={"width": 1400, "height": 900})
    p = await context.new_page()
    errors: list[str] = []
    p.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    p.expected_errors = []  # type: ignore[attr-defined]
    yield p
    await context.close()
    unexpected = [e for e in errors if not any(x in e for x in p.expected_errors)]  # type: ignore[attr-defined]
    assert not unexpected, f"errors in the browser console: {unexpected}"


_CANDLE_PIXELS = """() => {
  // Pixels in the candle colours (#26a69a up, #ef5350 down) on the chart's canvases.
  let n = 0;
  for (const c of document.querySelectorAll('#chart canvas')) {
    if (!c.width || !c.height) continue;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) {
      const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
      if (a > 200 && ((Math.abs(r - 38) < 8 && Math.abs(g - 166) < 8 && Math.abs(b - 154) < 8) ||
                      (Math.abs(r - 239) < 8 && Math.abs(g - 83) < 8 && Math.abs(b - 80) < 8))) n++;
    }
  }
  return n;
}"""


async def test_market_chart_draws_candles_and_a_new_bar_arrives_live(stack, page):
    async with await psycopg.AsyncConnection.connect(stack.db_url) as conn:
        async def minutes_stored() -> bool:
            cur = await conn.execute("SELECT count(*) FROM bars WHERE symbol = 'AAPL'")
            return (await cur.fetchone())[0] >= 3
        await wait_until(minutes_stored, 60, "three minute bars of AAPL in the database")

    await page.goto(f"{stack.base}/market?symbol=AAPL&tf=1m")
    await page.wait_for_function("() => window.tv && tv.loaded && tv.candles.data().length >= 3", timeout=30_000)
    drawn = await page.evaluate(_CANDLE_PIXELS)
    assert drawn > 100, f"only {drawn} candle-coloured pixels: the chart is blank"
    bar = await page.evaluate("() => tv.candles.data().at(-1)")
    assert bar["high"] >= max(bar["open"], bar["close"]) and bar["low"] <= min(bar["open"], bar["close"])

    # Live: a bar newer than the newest drawn arrives over SSE without reloading the page.
    newest = await page.evaluate("() => tv.candles.data().at(-1).time")
    await page.wait_for_function("t => tv.candles.data().at(-1).time > t", arg=newest, timeout=30_000)
    assert await page.locator("#live-status").text_content() != "connecting…"

    # Indicators: once 26 bars are in, the overlays and both panes have values.
    await page.wait_for_function(
        "() => ['ema_12', 'sma_20', 'bb_upper'].every(k => tv.overlays[k].data().some(p => p.value !== undefined))"
        " && ['rsi_14', 'macd'].every(k => tv.panes[k].data().some(p => p.value !== undefined))",
        timeout=90_000,
    )
    stored = await _stored_vwap(stack)  # before the reload: every one of these rows is there for it to load
    await page.reload()  # markers (the strategy's fills) come with a page load
    await page.wait_for_function("() => tv.loaded && tv.markers.markers().length > 0", timeout=30_000)
    await _assert_vwap_drawn_where_a_session_holds_the_bar(stored, page)
    await page.screenshot(path=str(stack.shots / "dashboard-market.png"))


async def _stored_vwap(stack) -> dict[int, float | None]:
    """AAPL's stored 1-minute VWAP by bar time (epoch seconds), NULL as None."""
    async with await psycopg.AsyncConnection.connect(stack.db_url) as conn:
        cur = await conn.execute("SELECT extract(epoch FROM time)::bigint, vwap FROM indicators "
                                 "WHERE symbol = 'AAPL' AND timeframe = '1m' ORDER BY time")
        return dict(await cur.fetchall())


async def _assert_vwap_drawn_where_a_session_holds_the_bar(stored: dict[int, float | None], page) -> None:
    """VWAP exists only for a bar inside a US equity session (04:00-20:00 New York on a trading day of
    the simulator's /v2/calendar, which the worker fetched): the worker stores it there and NULL
    everywhere else, and the chart draws what is stored (a gap for NULL). The simulator's clock starts
    at the wall clock, so the bars are a trading day's, a night's, a weekend's or a holiday's: this
    holds at any moment. The month window's test draws planted VWAP values, whenever it runs."""
    from datetime import timedelta

    from tickvault.indicators.sessions import SessionCalendar
    from tickvault.sim.calendar import NYSE, new_york_date

    first, last = (new_york_date(t * 10**9) + timedelta(days=k) for t, k in ((min(stored), -1), (max(stored), 1)))
    sessions = SessionCalendar.from_alpaca([NYSE.day_json(s) for s in NYSE.sessions(first, last)], first, last)
    for t, vwap in stored.items():
        in_session = sessions.window("AAPL", t * 10**9) is not None
        assert (vwap is not None) == in_session, (t, vwap, in_session)

    # Every bar whose indicators were stored before the page loaded (``stored`` was read first), so
    # the page's load fetched them all, however long the worker takes to commit the newer ones.
    drawn = await page.evaluate(
        "() => { const v = new Map(tv.overlays.vwap.data().filter(p => p.value !== undefined)"
        ".map(p => [p.time, p.value])); return tv.candles.data().map(b => [b.time, v.get(b.time) ?? null]); }")
    compared = [(t, value) for t, value in drawn if t in stored]
    assert len(compared) >= 15, (drawn, stored)
    for t, value in compared:
        assert value == stored[t], (t, value, stored[t])


async def test_a_month_window_opens_with_its_newest_day_and_scrolling_back_draws_exactly_the_stored_bars(stack, page):
    # Three days of one trade every 20 s at arbitrary doubles (random prices), and an indicator
    # that is an exact function of the close: what the chart holds must be these numbers, bit for bit.
    async with await psycopg.AsyncConnection.connect(stack.db_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) "
            "SELECT t, 'HIST', 50000000 + row_number() OVER (), 'V', 100 + 10 * random(), 1 + (random() * 300)::int, "
            "(extract(epoch FROM t) * 1e9)::bigint FROM generate_series(date_trunc('minute', now()) - interval '3 days' "
            "+ interval '1 minute', now() - interval '2 minutes', interval '20 seconds') t")
        # Planted late, as the writer would note them: a refresh may already have materialized past them.
        await conn.execute("SELECT tickvault_ohlcv_invalidate(now() - interval '3 days', now())")
        await conn.execute(
            "INSERT INTO indicators (time, symbol, timeframe, close, ema_12, vwap) "
            "SELECT bucket, symbol, '1m', close, close / 3, close / 5 FROM ohlcv_1m WHERE symbol = 'HIST'")
        stored = await (await conn.execute(
            "SELECT extract(epoch FROM bucket)::bigint, open, high, low, close, volume, close / 3, close / 5 "
            "FROM ohlcv_1m WHERE symbol = 'HIST' ORDER BY bucket")).fetchall()

    await page.goto(f"{stack.base}/market?symbol=HIST&tf=1m&days=3")
    await page.wait_for_function("() => window.tv && tv.history && tv.loaded.symbol === 'HIST'", timeout=30_000)
    first = await page.evaluate("() => tv.candles.data().length")
    assert 0 < first <= 1441 < len(stored) and not await page.evaluate("() => tv.history.complete")

    # Scrolling to the left edge loads the older bars by itself.
    await page.evaluate("() => tv.chart.timeScale().setVisibleLogicalRange({ from: 0, to: 200 })")
    await page.wait_for_function("n => tv.candles.data().length > n", arg=first, timeout=30_000)
    await page.evaluate("async () => { while (!tv.history.complete) await tv.loadOlder(); }")

    drawn = await page.evaluate(
        "() => ({ candles: tv.candles.data().map(b => [b.time, b.open, b.high, b.low, b.close]),"
        " volume: tv.volume.data().map(p => p.value), ema: tv.overlays.ema_12.data().map(p => p.value),"
        " vwap: tv.overlays.vwap.data().map(p => p.value), bars: tv.loaded.bars })")
    assert drawn["candles"] == [[t, o, h, lo, c] for t, o, h, lo, c, _v, _e, _w in stored]
    assert drawn["volume"] == [float(v) for *_x, v, _e, _w in stored]
    assert drawn["ema"] == [e for *_x, e, _w in stored]
    assert drawn["vwap"] == [w for *_x, w in stored]
    assert drawn["bars"] == len(stored)

    # Two timeframes chosen one after the other, the first one's bars answered last (held here until
    # the second has drawn): the chart keeps the second's bars, exactly ohlcv_1h's, and its live
    # stream; the late answer is dropped (tv.superseded), not drawn over them. Then 5-minute bars.
    async with await psycopg.AsyncConnection.connect(stack.db_url) as conn:
        hourly, five = [[list(r) for r in await (await conn.execute(
            f"SELECT extract(epoch FROM bucket)::bigint, open, high, low, close FROM ohlcv_{tf} "
            "WHERE symbol = 'HIST' ORDER BY bucket")).fetchall()] for tf in ("1h", "5m")]
    release = asyncio.Event()

    async def hold(route) -> None:
        await release.wait()
        await route.continue_()

    held = re.compile(r"/api/bars\?.*tf=5m")
    await page.route(held, hold)
    await page.select_option("#timeframe", "5m")
    await page.select_option("#timeframe", "1h")
    await page.wait_for_function("() => tv.loaded.timeframe === '1h' && tv.history.tf === '1h'", timeout=30_000)
    release.set()
    await page.wait_for_function("() => tv.superseded >= 1", timeout=30_000)
    await page.unroute(held)
    assert await page.evaluate("() => [tv.loaded.timeframe, tv.history.tf]") == ["1h", "1h"]
    # The window is the 3 days before now: the bucket holding its first trade starts before it (clipped).
    drawn_hours = await page.evaluate("() => tv.candles.data().map(b => [b.time, b.open, b.high, b.low, b.close])")
    assert len(drawn_hours) >= len(hourly) - 1 and drawn_hours == hourly[-len(drawn_hours):]
    await page.select_option("#timeframe", "5m")
    await page.wait_for_function("n => tv.loaded.timeframe === '5m' && tv.history.complete "
                                 "&& tv.candles.data().length >= n", arg=len(five) - 1, timeout=30_000)
    drawn_fives = await page.evaluate("() => tv.candles.data().map(b => [b.time, b.open, b.high, b.low, b.close])")
    assert drawn_fives == five[-len(drawn_fives):]


async def test_a_crypto_pair_draws_its_candles_with_fractional_volume(stack, page):
    """A pair (a slash in its name, through the URL, the bars API and the live stream) draws the
    candles of crypto_ohlcv_1m exactly, its fractional volume included, with no console error."""
    async with await psycopg.AsyncConnection.connect(stack.db_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO crypto_trades (time, symbol, trade_id, price, size, taker_side, time_ns) "
            "SELECT t, 'ETH/BTC', row_number() OVER (), 0.05 + random() / 100, round((random() * 3)::numeric, 8), "
            "'B', (extract(epoch FROM t) * 1e9)::bigint FROM generate_series(date_trunc('minute', now()) "
            "- interval '2 hours', now() - interval '2 minutes', interval '15 seconds') t")
        await conn.execute("SELECT tickvault_aggregate_invalidate('crypto_ohlcv', now() - interval '2 hours', now())")
        stored = await (await conn.execute(
            "SELECT extract(epoch FROM bucket)::bigint, open, high, low, close, volume::float8 FROM crypto_ohlcv_1m "
            "WHERE symbol = 'ETH/BTC' ORDER BY bucket")).fetchall()
    assert len(stored) > 100 and any(v != int(v) for *_x, v in stored)

    await page.goto(f"{stack.base}/market?symbol=ETH%2FBTC&tf=1m")
    await page.wait_for_function("n => window.tv && tv.loaded && tv.loaded.symbol === 'ETH/BTC' "
                                 "&& tv.candles.data().length >= n", arg=len(stored), timeout=30_000)
    drawn = await page.evaluate(
        "() => ({ candles: tv.candles.data().map(b => [b.time, b.open, b.high, b.low, b.close]),"
        " volume: tv.volume.data().map(p => p.value) })")
    assert drawn["candles"][:len(stored)] == [[t, o, h, lo, c] for t, o, h, lo, c, _v in stored]
    assert drawn["volume"][:len(stored)] == [v for *_x, v in stored]
    assert await page.evaluate(_CANDLE_PIXELS) > 100


async def test_health_page_shows_the_workers_figures(stack, page):
    await page.goto(f"{stack.base}/health")
    row = page.locator('#workers tr[data-worker="browser"]')
    await row.wait_for(timeout=30_000)
    cells = await row.locator("td").all_text_contents()
    assert cells[0] == "browser"
    assert float(cells[2].replace(",", "")) > 0, f"trades/s should be positive: {cells}"
    assert float(cells[8].replace(",", "")) > 10, f"RSS MB: {cells}"
    # charts over time fill from history and keep growing from live rows
    await page.wait_for_function("() => tv.series.trades_per_s.data().length >= 2", timeout=30_000)
    seen = await page.evaluate("() => tv.series.trades_per_s.data().length")
    await page.wait_for_function("n => tv.series.trades_per_s.data().length > n", arg=seen, timeout=30_000)
    assert await page.locator("#chunks tbody tr").count() >= 5  # every table retention manages
    assert "trades" in await page.locator("#chunks").text_content()
    assert await page.locator("#jobs tbody tr").count() >= 1
    await page.screenshot(path=str(stack.shots / "dashboard-health.png"), full_page=True)


async def test_trading_page_lists_orders_and_the_kill_switch_halts_the_strategy(stack, page):
    # An order far from the market, so it is still open when the kill switch cancels open orders.
    async with httpx.AsyncClient(base_url=stack.sim.rest_url, headers={
            "APCA-API-KEY-ID": stack.sim.key, "APCA-API-SECRET-KEY": stack.sim.secret}) as rest:
        placed = (await rest.post("/v2/orders", json={"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                                                       "limit_price": "1.00", "time_in_force": "gtc"})).json()
        assert placed["status"] in ("new", "accepted")

        await page.goto(f"{stack.base}/trading")
        await page.wait_for_function("() => tv.tradingLoaded === true", timeout=30_000)
        await page.wait_for_function("() => document.querySelectorAll('#fills tbody tr').length > 0", timeout=60_000)
        assert "buy" in await page.locator("#orders").text_content()
        await page.screenshot(path=str(stack.shots / "dashboard-trading.png"))

        # A wrong token is refused (403, which the browser logs as a failed resource) and recorded;
        # the right one halts and cancels.
        page.expected_errors.append("status of 403 (Forbidden)")
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.fill("#kill-token", "not-the-token-at-all")
        await page.click("#kill-engage")
        await page.wait_for_function("() => document.getElementById('kill-result').textContent.startsWith('refused')")
        await page.fill("#kill-token", TOKEN)
        await page.fill("#kill-reason", "browser test")
        await page.click("#kill-engage")
        await page.locator("#halt").wait_for(state="visible", timeout=15_000)
        assert "browser test" in await page.locator("#halt").text_content()
        order = (await rest.get(f"/v2/orders/{placed['id']}")).json()
        assert order["status"] in ("canceled", "pending_cancel")

    with psycopg.connect(stack.db_url) as conn:
        audit = conn.execute("SELECT action, allowed, outcome FROM ui_audit ORDER BY id").fetchall()
        assert [(a, ok) for a, ok, _ in audit] == [("kill_switch", False), ("kill_switch", True)]
        assert "canceled 1 open order" in audit[1][2]

    # The gateways refuse the strategy's intents from now on: no new order while more are dropped.
    drops = stack.handle.metrics.totals
    await wait_until(lambda: drops["drops"] >= 2, 30, "the gateway refusing intents under the halt")
    with psycopg.connect(stack.db_url) as conn:
        before = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    seen = drops["drops"]
    await wait_until(lambda: drops["drops"] >= seen + 2, 30, "two more refused intents")
    with psycopg.connect(stack.db_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == before
