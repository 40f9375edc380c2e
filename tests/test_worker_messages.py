"""Corrections, cancels and updated bars reach the stored rows; the worker's figures are visible on
Prometheus and through `tickvault worker status`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import psycopg

from tickvault.config import load_settings
from tickvault.sim.calendar import SimClock
from tickvault.sim.server import Simulator
from tickvault.stream.worker import WorkerHandle, run_worker
from tests.support.net import free_port



async def wait_for_row(url: str, sql: str, params: tuple, what: str, timeout: float = 30) -> tuple:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            row = await (await conn.execute(sql, params)).fetchone()
        if row is not None:
            return row
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_corrections_cancels_updated_bars_metrics_and_status(fresh_database, tmp_path):
    url = fresh_database()
    port = free_port()
    fast = SimClock(scale=120)  # a simulated minute every 0.5 s
    async with Simulator(symbols=["AAPL", "MSFT"], rate=2_000, seed=4, clock=fast) as sim:
        settings = load_settings(
            database_url=url, alpaca_key_id=sim.key, alpaca_secret_key=sim.secret,
            alpaca_stream_url=sim.ws_url, alpaca_data_url=sim.rest_url, alpaca_trading_url=sim.rest_url,
            alpaca_trade_stream_url=sim.trade_updates_url, symbols="AAPL,MSFT", metrics_port=port,
            run_dir=tmp_path / "run", worker_name="msgs", stats_interval_s=0.5,
        )
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))
        try:
            await asyncio.wait_for(handle.ready.wait(), 30)
            await wait_for_row(url, "SELECT 1 FROM bars WHERE symbol = 'AAPL' LIMIT 1", (), "a minute bar")

            correction = sim.send_correction("AAPL")
            corrected = await wait_for_row(
                url, "SELECT price, size, corrected FROM trades WHERE symbol = 'AAPL' AND trade_id = %s AND corrected",
                (correction["oi"],), "the corrected trade",
            )
            assert corrected == (correction["cp"], correction["cs"], True)
            original = await wait_for_row(
                url, "SELECT orig_price, corr_trade_id, applied FROM trade_corrections WHERE kind = 'correction' "
                "AND orig_trade_id = %s", (correction["oi"],), "the kept original",
            )
            assert original == (correction["op"], correction["ci"], True)

            cancel = sim.send_cancel("MSFT")
            await wait_for_row(url, "SELECT 1 FROM trades WHERE symbol = 'MSFT' AND trade_id = %s AND canceled",
                               (cancel["i"],), "the canceled trade")

            updated = sim.send_updated_bar("AAPL")
            assert updated is not None
            await wait_for_row(url, "SELECT 1 FROM bars WHERE symbol = 'AAPL' AND updated", (), "the updated bar")

            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
            totals = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("tickvault_") and "{" in line and "quantile" not in line}
            assert totals["tickvault_trades_total"] > 0 and totals["tickvault_other_messages_total"] >= 2
            assert 'tickvault_received_to_processed_ms{worker="msgs",quantile="0.99"}' in text
        finally:
            handle.stop()
            await asyncio.wait_for(task, 60)
    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tickvault.cli", "worker", "status"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "TICKVAULT_DATABASE_URL": url, "TICKVAULT_WORKER_NAME": "msgs"},
    )
    assert status.returncode == 0, status.stderr
    assert "worker msgs" in status.stdout and "trades/s" in status.stdout and "p99 commit ms" in status.stdout
