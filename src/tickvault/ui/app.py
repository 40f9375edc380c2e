"""The dashboard's web application: three pages, their JSON, live updates (SSE), the kill switch.

Served by uvicorn on 127.0.0.1 only (``TICKVAULT_UI_PORT``). Pages are static HTML + JS in
``static/``; the charting library (TradingView lightweight-charts) is vendored in
``static/vendor/`` and served from here, so the dashboard works offline and no page loads
anything from another origin (the Content-Security-Policy says so to the browser too).

Read-only unless ``TICKVAULT_UI_KILL_SWITCH`` is on: the only writes are the kill switch's
(:mod:`tickvault.ui.killswitch`). One connection pool of ``POOL_MAX`` connections serves every
request and the live poller, so however many tabs are open the database sees at most that many
connections from the dashboard. What this module must never do: bind another address, log a
token, or hold a connection across an await on the client.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tickvault.config import Settings
from tickvault.ui import killswitch, queries
from tickvault.ui.live import HEALTH, LiveHub

log = logging.getLogger("tickvault.ui")

POOL_MAX = 4  # requests are short reads; 4 serve three pages' parallel fetches plus the live poller
SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser from timing out
PREFECT_TIMEOUT_S = 2.0  # the Prefect API is a nicety on the Trading page: never hold the page up
PAGES = ("market", "health", "trading")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'")


def static_dir() -> Path:
    return Path(str(resources.files("tickvault") / "ui" / "static"))


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_app(settings: Settings, *, db_url: str | None = None) -> Starlette:
    from tickvault.db import database_url

    url = db_url or database_url(settings)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        pool = AsyncConnectionPool(url, min_size=1, max_size=POOL_MAX, open=False, name="tickvault-ui",
                                   check=AsyncConnectionPool.check_connection,
                                   # prepare_threshold=None: never a generic plan (see queries._BARS_SQL)
                                   kwargs={"autocommit": True, "connect_timeout": 10, "application_name": "tickvault-ui",
                                           "prepare_threshold": None})
        await pool.open(wait=True, timeout=30)
        hub = LiveHub(pool, settings.ui_live_interval_s)
        hub.start()
        state.update(pool=pool, hub=hub)
        try:
            yield
        finally:
            await hub.stop()
            await pool.close()

    async def page(request: Request) -> Response:
        name = request.path_params.get("page", "market")
        if name not in PAGES:
            return HTMLResponse("no such page", status_code=404)
        return HTMLResponse((static_dir() / f"{name}.html").read_text(encoding="utf-8"))

    async def config(request: Request) -> Response:
        async with state["pool"].connection() as conn:
            syms = await queries.symbols(conn, settings)
        return JSON({"symbols": syms, "timeframes": list(queries.TIMEFRAMES), "kill_switch": settings.ui_kill_switch,
                     "prefect_ui_url": settings.prefect_ui_url.rstrip("/"), "live_interval_s": settings.ui_live_interval_s})

    async def bars(request: Request) -> Response:
        started = time.perf_counter()
        q = request.query_params
        try:
            days = float(q["days"]) if q.get("days") else None
            if days is not None and not 0 < days <= 3660:
                raise ValueError("days must be in (0, 3660]")
            before = datetime.fromtimestamp(float(q["before"]), UTC) if q.get("before") else None
            w = queries.bar_window(q.get("symbol", ""), q.get("tf", "1m"), days, before=before)
        except (ValueError, OverflowError, OSError) as exc:  # the last two: a `before` no datetime can hold
            return JSON({"error": str(exc)}, status_code=400)
        if not w.symbol:
            return JSON({"error": "symbol is required"}, status_code=400)
        if q.get("format") == "f64":
            return await bar_columns(w, started)
        async with state["pool"].connection() as conn:
            found = await queries.bars(conn, w)
            marks = await queries.markers(conn, w)
        ms = (time.perf_counter() - started) * 1000
        # The bars object comes from PostgreSQL as JSON text; the markers join it unparsed.
        body = found.json.encode()[:-1] + b', "markers": ' + orjson.dumps(marks) + b"}"
        return Response(body, media_type="application/json", headers={"Server-Timing": f"db;dur={ms:.1f}"})

    async def bar_columns(w: queries.BarWindow, started: float) -> Response:
        """``format=f64``: a little-endian uint32 ``n``, ``n`` bytes of JSON (symbol, timeframe, count,
        the row limit, the window's start and end in epoch seconds, columns, markers), spaces to a multiple of 8, then the columns as PostgreSQL sent them
        (:data:`queries.BAR_COLUMNS`, ``count`` big-endian float64 each; NaN: no value)."""
        async with state["pool"].connection() as conn:
            found = await queries.bar_columns(conn, w)
            marks = await queries.markers(conn, w)
        ms = (time.perf_counter() - started) * 1000
        meta = orjson.dumps({"symbol": w.symbol, "timeframe": w.timeframe, "count": found.count,
                             "limit": queries.MAX_BARS, "start": w.start.timestamp(), "end": w.end.timestamp(),
                             "columns": queries.BAR_COLUMNS, "markers": marks})
        head = struct.pack("<I", len(meta)) + meta
        head += b" " * (-len(head) % 8)
        return Response(head + found.data, media_type="application/octet-stream",
                        headers={"Server-Timing": f"db;dur={ms:.1f}"})

    async def live(request: Request) -> Response:
        topic = request.path_params["topic"]
        topic = HEALTH if topic == HEALTH else topic.upper()
        hub: LiveHub = state["hub"]

        async def events():
            async with hub.listen(topic) as page:
                yield b"retry: 2000\n\n"
                while True:
                    try:
                        event, data = await asyncio.wait_for(page.queue.get(), SSE_KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def health(request: Request) -> Response:
        async with state["pool"].connection() as conn:
            workers = await queries.workers(conn)
            chunks = await queries.chunks(conn, settings)
            jobs = await queries.job_health(conn)
        return JSON({"workers": workers, "jobs": jobs, "chunks": chunks})

    async def health_history(request: Request) -> Response:
        try:
            minutes = min(float(request.query_params.get("minutes", "60")), 24 * 60)
        except ValueError:
            return JSON({"error": "minutes must be a number"}, status_code=400)
        async with state["pool"].connection() as conn:
            rows = await queries.ingest_history(conn, request.query_params.get("worker", settings.worker_name), minutes)
        return JSON({"rows": rows})

    async def trading(request: Request) -> Response:
        async with state["pool"].connection() as conn:
            found = await queries.trading(conn)
        return JSON(found)

    async def prefect_runs(request: Request) -> Response:
        """The latest run of each flow from the Prefect API, with links into the Prefect UI."""
        ui = settings.prefect_ui_url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=PREFECT_TIMEOUT_S, trust_env=False) as client:
                flows = (await client.post(f"{ui}/api/flows/filter", json={"limit": 50})).json()
                runs = (await client.post(f"{ui}/api/flow_runs/filter",
                                          json={"limit": 50, "sort": "START_TIME_DESC"})).json()
        except (httpx.HTTPError, ValueError) as exc:
            return JSON({"reachable": False, "ui": ui, "error": type(exc).__name__, "flows": []})
        names = {f["id"]: f["name"] for f in flows if isinstance(f, dict)}
        latest: dict[str, dict] = {}
        for r in runs if isinstance(runs, list) else []:
            name = names.get(r.get("flow_id"), "?")
            latest.setdefault(name, {"flow": name, "run": r.get("name"), "state": r.get("state_type"),
                                     "start": r.get("start_time"), "url": f"{ui}/runs/flow-run/{r.get('id')}"})
        return JSON({"reachable": True, "ui": ui, "flows": sorted(latest.values(), key=lambda x: x["flow"])})

    async def flamegraph(request: Request) -> Response:
        async with state["pool"].connection() as conn:
            cur = await conn.execute("SELECT location, flamegraph_key FROM profiles WHERE id = %s",
                                     (int(request.path_params["id"]),))
            row = await cur.fetchone()
        if row is None or not row[1]:
            return HTMLResponse("no flame graph for this profile", status_code=404)
        location, key = row
        if location.startswith("s3://"):
            from tickvault.jobs.reports import S3ReportStore

            store = S3ReportStore.from_settings(settings)
            link = await asyncio.to_thread(store._presign, key)
            return RedirectResponse(link) if link else HTMLResponse(f"s3://{store.bucket}/{key}", status_code=404)
        root = settings.profile_dir.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # only files under the profile directory
            return HTMLResponse("flame graph file not found under TICKVAULT_PROFILE_DIR", status_code=404)
        return FileResponse(path, media_type="image/svg+xml")

    async def kill(request: Request) -> Response:
        from tickvault.alpaca.rest import AlpacaREST

        body = await _body(request)
        try:
            result = await killswitch.engage(settings, state["pool"], AlpacaREST(settings), client=_client(request),
                                             token=body.get("token"), reason=str(body.get("reason") or ""))
        except killswitch.KillSwitchRefused as exc:
            return JSON({"error": str(exc)}, status_code=403)
        return JSON({"audit_id": result.audit_id, "halted": True, "canceled": result.canceled, "errors": result.errors})

    async def lift(request: Request) -> Response:
        body = await _body(request)
        try:
            n = await killswitch.lift(settings, state["pool"], client=_client(request), token=body.get("token"))
        except killswitch.KillSwitchRefused as exc:
            return JSON({"error": str(exc)}, status_code=403)
        return JSON({"lifted": n})

    routes = [
        Route("/", lambda r: RedirectResponse("/market")),
        Route("/api/config", config),
        Route("/api/bars", bars),
        Route("/api/live/{topic:path}", live),  # a crypto pair's topic has a slash: BTC/USD
        Route("/api/health", health),
        Route("/api/health/history", health_history),
        Route("/api/trading", trading),
        Route("/api/prefect", prefect_runs),
        Route("/api/kill-switch", kill, methods=["POST"]),
        Route("/api/kill-switch/lift", lift, methods=["POST"]),
        Route("/profiles/{id:int}/flamegraph", flamegraph),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        Route("/{page}", page),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_SecurityHeaders)
    app.state.tickvault = state  # the pool and the hub, for tests
    return app


class _SecurityHeaders:
    """Adds the CSP to every response (pure ASGI: streaming responses pass through untouched)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _body(request: Request) -> dict:
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def serve(settings: Settings, *, on_ready=None) -> None:
    """Run the dashboard on 127.0.0.1:``ui_port`` until SIGINT/SIGTERM."""
    import signal

    import uvicorn

    class _Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            # SIGINT/SIGTERM: stop serving and exit 0 (uvicorn's own handler re-raises the signal
            # after shutdown, which reads as a crash to `tickvault run` and to process managers).
            def stop(signum, frame) -> None:
                self.force_exit = self.should_exit  # a second signal: do not wait for open streams
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        async def startup(self, sockets=None):  # type: ignore[override]
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(f"http://127.0.0.1:{settings.ui_port}")

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.ui_port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=3, lifespan="on")
    _Server(config).run()
