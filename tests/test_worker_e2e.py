"""End to end: simulator → worker → TimescaleDB, compared with the simulator's ground truth.

The simulator records every trade its market made (whether or not anyone was connected); the
trades table must equal it exactly — count and a per-symbol checksum — with and without faults.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.sim.server import Simulator
from tickvault.stream.worker import WorkerHandle, run_worker

CHECKSUM_SQL = """
SELECT symbol, count(*), sum(trade_id), sum(time_ns % 1000003), sum((time_ns / 1000) % 1000003),
       sum(round(price * 100)::bigint), sum(size)
  FROM trades GROUP BY symbol"""


def _env_for(sim: Simulator, db_url: str, run_dir: Path, since: datetime, **extra: str) -> dict[str, str]:
    # The simulated market trades from the moment it starts, before the worker subscribes: a first
    # start backfills from then, as a trader starting mid-session would from the open.
    return {
        "TICKVAULT_BACKFILL_FROM": since.isoformat(),
        "TICKVAULT_DATABASE_URL": db_url,
        "TICKVAULT_ALPACA_KEY_ID": sim.key,
        "TICKVAULT_ALPACA_SECRET_KEY": sim.secret,
        "TICKVAULT_ALPACA_STREAM_URL": sim.ws_url,
        "TICKVAULT_ALPACA_DATA_URL": sim.rest_url,
        "TICKVAULT_ALPACA_TRADING_URL": sim.rest_url,
        "TICKVAULT_ALPACA_TRADE_STREAM_URL": sim.trade_updates_url,
        "TICKVAULT_SYMBOLS": ",".join(sim.symbols),
        "TICKVAULT_METRICS_PORT": "0",
        "TICKVAULT_RUN_DIR": str(run_dir),
        "TICKVAULT_WORKER_NAME": "e2e",
        "TICKVAULT_STATS_INTERVAL_S": "1",
        **extra,
    }


def _settings_for(sim: Simulator, db_url: str, run_dir: Path, since: datetime, **extra: str):
    env = _env_for(sim, db_url, run_dir, since, **extra)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await (await conn.execute("SELECT count(*) FROM trades")).fetchone())[0]


async def wait_until(predicate, timeout: float, what: str, poll: float = 0.1) -> None:
    """Wait for a condition (polled), failing with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(poll)


def _assert_equals_truth(url: str, sim: Simulator) -> None:
    with psycopg.connect(url) as conn:
        stored = {r[0]: tuple(int(v) for v in r[1:]) for r in conn.execute(CHECKSUM_SQL)}
        if sum(v[0] for v in stored.values()) != sim.truth_count():
            ids = {r[0] for r in conn.execute("SELECT trade_id FROM trades")}
            missing = sorted(t for s in sim.symbols for (tid, t, _p, _s) in sim.truth_trades(s) if tid not in ids)
            raise AssertionError(
                f"stored {len(ids)} trades, truth {sim.truth_count()}: {len(missing)} missing, exchange times "
                f"{missing[:1]} … {missing[-1:]}"
            )
    truth = {s: tuple(cs) for s, cs in sim.truth_checksum().items()}
    assert sum(v[0] for v in stored.values()) == sim.truth_count()
    assert stored == truth


async def test_worker_stores_exactly_the_simulators_trades(fresh_database, tmp_path):
    url = fresh_database()
    since = datetime.now(timezone.utc)
    async with Simulator(symbols=50, rate=40_000, frame_size=100, max_trades=200_000, seed=3) as sim:
        settings = _settings_for(sim, url, tmp_path / "run", since)
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))
        await asyncio.wait_for(handle.ready.wait(), 30)
        assert (tmp_path / "run" / "worker-e2e.json").exists()  # registered for the profiler
        await asyncio.wait_for(sim.finished.wait(), 120)
        await wait_until(lambda: _truth_reached(url, sim), 60, "all trades committed")
        handle.stop()
        await asyncio.wait_for(task, 60)
    _assert_equals_truth(url, sim)
    m = handle.metrics
    assert m.totals["rejects"] == 0
    # mostly streamed, not merely backfilled (the in-process simulator shares the worker's loop, so a
    # busy machine can make it drop the worker as slow once: the backfill then covers the gap)
    assert m.totals["trades"] + m.totals["backfilled"] >= 200_000 and m.totals["trades"] > 100_000
    assert m.lifetime["received_to_processed"].total > 0 and m.lifetime["received_to_committed"].total > 0
    with psycopg.connect(url) as conn:
        stats = conn.execute(
            "SELECT count(*), sum(trades) + sum(backfilled) FROM ingest_stats WHERE worker = 'e2e'"
        ).fetchone()
        quotes = conn.execute("SELECT count(*) FROM quotes").fetchone()[0]
    # every interval written, the last one after the drain; streamed trades that a backfill had already
    # stored count as received (the key removed them), so the sum may exceed the truth, never fall short
    assert stats[0] >= 1 and stats[1] >= 200_000
    assert quotes > 0
    assert not (tmp_path / "run" / "worker-e2e.json").exists()  # unregistered on the way out


async def _truth_reached(url: str, sim: Simulator) -> bool:
    return await _count(url) >= sim.truth_count()


@pytest.mark.slow
async def test_worker_survives_faults_and_restart_with_exact_ground_truth(fresh_database, admin_url, tmp_path):
    """≥ 5 forced disconnects, a silent feed, malformed frames, a database restart, SIGTERM and restart."""
    from tickvault.db.local import LocalTimescale

    url = fresh_database()
    local = None
    if load_settings().database_url is None:
        local = LocalTimescale(load_settings(), log=lambda m: None)
    since = datetime.now(timezone.utc)
    # 30 s of market at 20k trades/s: every fault below happens while the market still trades.
    async with Simulator(symbols=50, rate=20_000, frame_size=100, max_trades=600_000, seed=5) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since, TICKVAULT_FEED_SILENCE_S="1.0")}

        logs: list[Path] = []

        def start_worker() -> subprocess.Popen:
            logs.append(tmp_path / f"worker-{len(logs)}.log")
            with open(logs[-1], "w") as log:
                return subprocess.Popen([sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=log, text=True)

        def log_text() -> str:
            return "\n".join(f"--- {p.name}\n" + p.read_text()[-6000:] for p in logs)

        procs: list[subprocess.Popen] = []
        try:
            proc = start_worker()
            procs.append(proc)
            progress = {"n": 0}

            async def grew(by: int) -> bool:
                n = await _count(url)
                if n >= progress["n"] + by:
                    progress["n"] = n
                    return True
                return False

            async def subscribed() -> bool:
                return any(c.sub_key is not None and not c.closed for c in sim._clients)

            await wait_until(lambda: grew(5_000), 60, "first rows")
            for _ in range(5):
                assert not sim.finished.is_set(), "the market ended before the faults did"
                await wait_until(subscribed, 60, "the worker subscribed")
                assert sim.drop_connections() >= 1
                await wait_until(lambda: grew(5_000), 60, "rows after a forced disconnect")
            loop = asyncio.get_running_loop()
            stall_ends = loop.time() + 2.0
            sim.stall(2.0)  # longer than the worker's 1 s silence limit: it must reconnect and backfill

            async def stall_over() -> bool:  # the simulator drops every frame until then
                return loop.time() > stall_ends and await grew(5_000)

            await wait_until(stall_over, 60, "the stall to end and rows to grow")

            async def rejects_stored() -> bool:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    return (await (await conn.execute("SELECT count(*) FROM bad_messages")).fetchone())[0] >= 2

            await wait_until(subscribed, 60, "the worker subscribed")
            sim.send_malformed()
            sim.send_unknown_type()
            await wait_until(rejects_stored, 60, "the malformed frame and the unknown message in bad_messages")
            assert not sim.finished.is_set(), "the market ended before the faults did"
            if local is not None:
                await asyncio.to_thread(local.stop)
                await asyncio.to_thread(local.start)
                await wait_until(lambda: grew(5_000), 90, "rows after a database restart")
            await wait_until(subscribed, 60, "the worker subscribed")
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 60)
            assert rc == 0, log_text()
            proc = start_worker()
            procs.append(proc)  # the restart backfills what the market made while it was down
            await asyncio.wait_for(sim.finished.wait(), 180)
            try:
                await wait_until(lambda: _truth_reached(url, sim), 120, "all trades after faults")
            except AssertionError:
                proc.send_signal(signal.SIGTERM)
                try:
                    _assert_equals_truth(url, sim)  # says which trades are missing
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{log_text()}") from None
                raise
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 60)
            assert rc == 0, log_text()

        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    _assert_equals_truth(url, sim)
    with psycopg.connect(url) as conn:
        bad = conn.execute("SELECT reason FROM bad_messages").fetchall()
        reconnects, backfilled, stalls = conn.execute(
            "SELECT sum(reconnects), sum(backfilled), sum(stalls) FROM ingest_stats WHERE worker = 'e2e'"
        ).fetchone()
    reasons = " ".join(r[0] for r in bad)
    assert len(bad) >= 2 and "unknown" in reasons.lower()
    assert reconnects >= 6  # five drops and the silent feed
    assert backfilled > 0 and stalls >= 1


async def test_shutdown_with_database_gone_spills_then_next_start_commits(fresh_database, admin_url, tmp_path):
    """SIGTERM while the database refuses connections: exit within the deadline, rows kept in a file,
    committed by the next start; the table still ends equal to the ground truth."""
    url = fresh_database()
    dbname = url.rsplit("/", 1)[1]
    since = datetime.now(timezone.utc)
    admin = admin_url.rsplit("/", 1)[0] + "/postgres"
    async with Simulator(symbols=20, rate=20_000, frame_size=100, max_trades=120_000, seed=9) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since, TICKVAULT_SHUTDOWN_TIMEOUT_S="3")}
        cmd = [sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"]
        log = open(tmp_path / "worker.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            await wait_until(lambda: _grew_past(url, 10_000), 60, "first rows")
            with psycopg.connect(admin, autocommit=True) as conn:  # the database goes away
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
            mark = sim.truth_count()

            async def market_moved_on() -> bool:  # rows pile up in the worker while the database is away
                return sim.truth_count() >= mark + 5_000

            await wait_until(market_moved_on, 30, "the market to go on while the database is away")
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 30)
            assert rc == 3, (tmp_path / "worker.log").read_text()[-3000:]
            spills = list((tmp_path / "run" / "spill").glob("e2e-*.spill.jsonl"))
            assert len(spills) == 1 and spills[0].stat().st_size > 0
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
            await asyncio.wait_for(sim.finished.wait(), 120)
            try:
                await wait_until(lambda: _truth_reached(url, sim), 90, "all trades after recovery")
            except AssertionError:
                try:
                    _assert_equals_truth(url, sim)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{(tmp_path / 'worker.log').read_text()[-5000:]}") from None
                raise
            assert not list((tmp_path / "run" / "spill").glob("*.spill.jsonl"))  # recovered and removed
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    _assert_equals_truth(url, sim)
    with psycopg.connect(url) as conn:  # quotes have no natural key: the batch ledger kept them single
        dup = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM quotes GROUP BY symbol, time_ns, bid_price, ask_price, bid_size, "
            "ask_size HAVING count(*) > 1) d"
        ).fetchone()[0]
    assert dup == 0


async def _grew_past(url: str, n: int) -> bool:
    return await _count(url) >= n


async def test_a_trickle_of_rows_is_committed_within_the_flush_interval(fresh_database):
    """A quiet feed: a few rows after an idle writer reach the database within writer_flush_ms, not at
    the next full batch."""
    from tickvault.db.pool import open_pool
    from tickvault.stream.metrics import Metrics
    from tickvault.stream.writer import BatchWriter

    url = fresh_database()
    settings = load_settings(database_url=url)
    pool = await open_pool(settings, min_size=1, url=url)
    writer = BatchWriter(pool, Metrics(), worker="trickle", batch_rows=20_000, flush_ms=50)
    task = asyncio.create_task(writer.run())
    try:
        import time

        base = time.time_ns()
        for i in range(3):  # three lone trades, each after the writer went idle
            await writer.submit(time.monotonic_ns(), trades=[(base + i, "QUIET", i, "V", 10.0, 1, None, "C")])

            async def stored(n=i + 1) -> bool:
                return await _count(url) >= n

            await wait_until(stored, 5, f"lone trade {i} committed", poll=0.01)
            await wait_until(lambda: _idle(writer), 5, "the writer idle again", poll=0.01)
    finally:
        writer.close()
        await task
        await pool.close()


async def _idle(writer) -> bool:
    return writer.pending_rows() == 0
