"""Helpers for the dashboard's tests: simulator → settings, trades planted per minute, and
the dashboard served in-process by uvicorn on 127.0.0.1 (real HTTP, the test's event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from tests.support.net import free_port
from tests.support.sim import worker_settings
from tests.support.waiting import wait_until
from tickvault.config import Settings


def settings_for_sim(sim, db_url: str, run_dir: Path, **overrides: object) -> Settings:
    """Settings of a worker (tests/support/sim.py) and its dashboard pointed at an in-process
    :class:`Simulator`: figures every second, the dashboard on a free port polling twice a second."""
    return worker_settings(sim, db_url, run_dir, **{
        "stats_interval_s": 1.0, "ui_port": free_port(), "ui_live_interval_s": 0.5,
        "prefect_ui_url": f"http://127.0.0.1:{free_port()}", **overrides})


@asynccontextmanager
async def serve_dashboard(settings: Settings, db_url: str) -> AsyncIterator[str]:
    """The dashboard app under uvicorn in this event loop; yields its base URL."""
    import uvicorn

    from tickvault.ui.app import create_app

    config = uvicorn.Config(create_app(settings, db_url=db_url), host="127.0.0.1", port=settings.ui_port,
                            log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
    class _Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self):  # the test process owns its signals
            yield

    server = _Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 30, "the dashboard to start", poll=0.05)
    if task.done():
        task.result()
    try:
        yield f"http://127.0.0.1:{settings.ui_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def plant_minute_trades(conn, symbol: str, start, minutes: int, per_minute: int = 4, first_id: int = 1) -> None:
    """``per_minute`` trades of ``symbol`` in each of ``minutes`` minutes from ``start`` (a rising
    price, sizes 100), inserted as the writer does; the OHLCV views compute bars from them."""
    from datetime import timedelta

    rows = []
    tid = first_id
    for m in range(minutes):
        for k in range(per_minute):
            when = start + timedelta(minutes=m, seconds=k * (60 / per_minute))
            ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
            rows.append((when, symbol, tid, "V", 100.0 + m + k * 0.25, 100, ns))
            tid += 1
    with conn.cursor() as cur, cur.copy(
        "COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)
