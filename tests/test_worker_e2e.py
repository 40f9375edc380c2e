"""End to end: simulator → worker → TimescaleDB, compared with the simulator's ground truth.

The simulator records every trade its market made (whether or not anyone was connected); the
trades table must equal it exactly — count and a per-symbol checksum — with and without faults.

Nothing here asserts the machine's speed: a market runs until the test calls ``sim.finish()``
(``max_trades=None``) when its faults must happen while it trades; waits are conditions with generous
timeouts (failure detectors, not requirements); a worker dropped as a slow client (407) is fine as
long as the stored trades are exact.
"""

from __future__ import annotations

import asyncio
import os
import re
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
from tests.support.net import free_port
from tests.support.prometheus import sample
from tests.support.sim import PATIENT_QUEUE_FRAMES, worker_env
from tests.support.waiting import wait_until

CHECKSUM_SQL = """
SELECT symbol, count(*), sum(trade_id), sum(time_ns % 1000003), sum((time_ns / 1000) % 1000003),
       sum(round(price * 100)::bigint), sum(size)
  FROM trades GROUP BY symbol"""


def _env_for(sim: Simulator, db_url: str, run_dir: Path, since: datetime, **extra: str) -> dict[str, str]:
    # The simulated market trades from the moment it starts, before the worker subscribes: a first
    # start backfills from then, as a trader starting mid-session would from the open.
    return worker_env(sim, db_url, run_dir, "e2e", TICKVAULT_BACKFILL_FROM=since.isoformat(),
                      TICKVAULT_STATS_INTERVAL_S="1", **extra)


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



def _missing_runs(ids: set[int], sim: Simulator, limit: int = 6) -> str:
    """The truth's trades missing from ``ids``, as runs of consecutive exchange times (the holes)."""
    from tickvault.alpaca.protocol import ns_to_rfc3339

    truth = sorted((t, tid) for s in sim.symbols for (tid, t, _p, _s) in sim.truth_trades(s))
    runs: list[list[int]] = []  # [first_ns, last_ns, count]
    in_run = False
    for t, tid in truth:
        if tid in ids:
            in_run = False
        elif in_run:
            runs[-1][1] = t
            runs[-1][2] += 1
        else:
            runs.append([t, t, 1])
            in_run = True
    shown = "; ".join(f"{ns_to_rfc3339(a)} … {ns_to_rfc3339(b)} ({n} trades)" for a, b, n in runs[:limit])
    return f"{sum(r[2] for r in runs)} missing in {len(runs)} holes: {shown}"


def _assert_equals_truth(url: str, sim: Simulator) -> None:
    with psycopg.connect(url) as conn:
        stored = {r[0]: tuple(int(v) for v in r[1:]) for r in conn.execute(CHECKSUM_SQL)}
        if sum(v[0] for v in stored.values()) != sim.truth_count():
            ids = {r[0] for r in conn.execute("SELECT trade_id FROM trades")}
            raise AssertionError(f"stored {len(ids)} trades, truth {sim.truth_count()}: {_missing_runs(ids, sim)}")
    truth = {s: tuple(cs) for s, cs in sim.truth_checksum().items()}
    assert sum(v[0] for v in stored.values()) == sim.truth_count()
    assert stored == truth


def _market_made(sim: Simulator, n: int):
    async def made() -> bool:
        return sim.truth_count() >= n

    return made


def _grows(count, url: str):
    """``grew(by)``: True once ``count(url)`` has grown by ``by`` rows since the last time it was True."""
    progress = {"n": 0}

    async def grew(by: int) -> bool:
        n = await count(url)
        if n >= progress["n"] + by:
            progress["n"] = n
            return True
        return False

    return grew


async def _subscribed(sim: Simulator) -> bool:
    return sim.subscribed_clients() > 0


class WorkerProcesses:
    """``tickvault worker run`` subprocesses on one environment, each with its own log; killed on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen:
        self.logs.append(self.log_dir / f"worker-{len(self.logs)}.log")
        with open(self.logs[-1], "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"],
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        self.procs.append(proc)
        return proc

    async def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        proc.send_signal(sig)
        return await asyncio.to_thread(proc.wait, timeout)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-6000:] for p in self.logs)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def _finish_and_assert_truth(url: str, sim: Simulator, workers: WorkerProcesses, proc) -> None:
    """Stop the market, wait for the worker to store it all, stop the worker, compare with the truth."""
    sim.finish()
    try:
        await wait_until(lambda: _truth_reached(url, sim), 180, "all trades committed")
    except AssertionError:
        await workers.stop(proc)
        try:
            _assert_equals_truth(url, sim)  # says which trades are missing
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{workers.log_text()}") from None
        raise
    assert await workers.stop(proc) == 0, workers.log_text()
    _assert_equals_truth(url, sim)


async def test_worker_stores_exactly_the_simulators_trades(fresh_database, tmp_path):
    url = fresh_database()
    since = datetime.now(timezone.utc)
    async with Simulator(symbols=50, rate=40_000, frame_size=100, max_trades=200_000, seed=3) as sim:
        settings = _settings_for(sim, url, tmp_path / "run", since)
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))
        await asyncio.wait_for(handle.ready.wait(), 120)
        assert (tmp_path / "run" / "worker-e2e.json").exists()  # registered for the profiler
        await asyncio.wait_for(sim.finished.wait(), 300)
        await wait_until(lambda: _truth_reached(url, sim), 180, "all trades committed")
        handle.stop()
        await asyncio.wait_for(task, 120)
    _assert_equals_truth(url, sim)
    m = handle.metrics
    assert m.totals["rejects"] == 0
    # every trade streamed or backfilled; how many of each depends on the machine (the in-process
    # simulator shares the worker's loop, so a busy machine makes it drop the worker as slow: 407)
    assert m.totals["trades"] + m.totals["backfilled"] >= 200_000
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
    # The market trades until sim.finish(): every fault below happens while it trades, however slow the machine.
    async with Simulator(symbols=50, rate=20_000, frame_size=100, max_trades=None, seed=5,
                         client_queue_frames=PATIENT_QUEUE_FRAMES) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since, TICKVAULT_FEED_SILENCE_S="1.0")}
        workers = WorkerProcesses(env, tmp_path)
        try:
            proc = workers.start()
            grew = _grows(_count, url)

            await wait_until(lambda: grew(5_000), 120, "first rows")
            for _ in range(5):
                await wait_until(lambda: _subscribed(sim), 120, "the worker subscribed")
                assert sim.drop_connections() >= 1
                await wait_until(lambda: grew(5_000), 120, "rows after a forced disconnect")
            loop = asyncio.get_running_loop()
            stall_ends = loop.time() + 2.0
            sim.stall(2.0)  # longer than the worker's 1 s silence limit: it must reconnect and backfill

            async def stall_over() -> bool:  # the simulator drops every frame until then
                return loop.time() > stall_ends and await grew(5_000)

            await wait_until(stall_over, 120, "the stall to end and rows to grow")

            async def rejects_stored() -> bool:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    return (await (await conn.execute("SELECT count(*) FROM bad_messages")).fetchone())[0] >= 2

            await wait_until(lambda: _subscribed(sim), 120, "the worker subscribed")
            sim.send_malformed()
            sim.send_unknown_type()
            await wait_until(rejects_stored, 120, "the malformed frame and the unknown message in bad_messages")
            if local is not None:
                await asyncio.to_thread(local.stop)
                await asyncio.to_thread(local.start)
                await wait_until(lambda: grew(5_000), 180, "rows after a database restart")
            await wait_until(lambda: _subscribed(sim), 120, "the worker subscribed")
            assert await workers.stop(proc) == 0, workers.log_text()
            proc = workers.start()  # the restart backfills what the market made while it was down
            await wait_until(lambda: _subscribed(sim), 120, "the restarted worker subscribed")
            await _finish_and_assert_truth(url, sim, workers, proc)
        finally:
            workers.kill_all()
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
    metrics_port = free_port()
    async with Simulator(symbols=20, rate=20_000, frame_size=100, max_trades=None, seed=9) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since, TICKVAULT_SHUTDOWN_TIMEOUT_S="3",
                                        TICKVAULT_METRICS_PORT=str(metrics_port))}
        cmd = [sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"]
        log = open(tmp_path / "worker.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            await wait_until(lambda: _grew_past(url, 10_000), 120, "first rows")
            with psycopg.connect(admin, autocommit=True) as conn:  # the database goes away
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
            failed_commits = await _worker_total(metrics_port, "db_errors")

            async def rows_held() -> bool:
                # A commit failed since the database went away, and rows are still waiting: they cannot
                # be committed now, so the shutdown below must spill them.
                return (await _worker_total(metrics_port, "db_errors") > failed_commits
                        and await _worker_gauge(metrics_port, "pending_rows") > 0)

            await wait_until(rows_held, 120, "the worker to hold rows it cannot commit")
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 120)
            assert rc == 3, (tmp_path / "worker.log").read_text()[-3000:]
            spills = list((tmp_path / "run" / "spill").glob("e2e-*.spill.jsonl"))
            assert len(spills) == 1 and spills[0].stat().st_size > 0
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
            await wait_until(lambda: _subscribed(sim), 120, "the restarted worker subscribed")
            sim.finish()
            try:
                await wait_until(lambda: _truth_reached(url, sim), 180, "all trades after recovery")
            except AssertionError:
                try:
                    _assert_equals_truth(url, sim)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{(tmp_path / 'worker.log').read_text()[-5000:]}") from None
                raise
            assert not list((tmp_path / "run" / "spill").glob("*.spill.jsonl"))  # recovered and removed
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 120) == 0
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



async def _worker_gauge(port: int, name: str) -> float:
    """A figure from the worker's Prometheus endpoint (0 while it is not up yet)."""
    return await sample(port, f"tickvault_{name}")


async def _worker_total(port: int, name: str) -> float:
    """A counter from the worker's Prometheus endpoint (0 while it is not up yet)."""
    return await _worker_gauge(port, f"{name}_total")


# ---------------------------------------------------------------------------- restarts and symbols
async def test_wildcard_first_start_backfills_every_tradable_symbol_from_backfill_from(fresh_database, tmp_path):
    """No TICKVAULT_SYMBOLS, TICKVAULT_BACKFILL_FROM set, nothing stored: the gap before the subscription is
    backfilled for the broker's tradable assets (GET /v2/assets), so the table equals the truth."""
    url = fresh_database()
    since = datetime.now(timezone.utc)
    async with Simulator(symbols=30, rate=20_000, frame_size=100, max_trades=None, seed=11) as sim:
        await wait_until(_market_made(sim, 20_000), 120, "the market to trade before the worker starts")
        settings = _settings_for(sim, url, tmp_path / "run", since, TICKVAULT_SYMBOLS="")
        assert settings.symbols == [] and settings.backfill_from is not None
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))
        try:
            await asyncio.wait_for(handle.ready.wait(), 120)
            await wait_until(_market_made(sim, sim.truth_count() + 20_000), 120, "the market to go on streaming")
            sim.finish()
            await wait_until(lambda: _truth_reached(url, sim), 180, "all trades committed")
        except AssertionError:
            _assert_equals_truth(url, sim)  # names the holes
            raise
        finally:
            handle.stop()
            await asyncio.wait_for(task, 120)
    _assert_equals_truth(url, sim)
    assert handle.metrics.totals["backfilled"] >= 20_000  # the first 20k trades came by REST only


async def test_wildcard_worker_restarted_after_sigterm_leaves_no_hole(fresh_database, tmp_path):
    """`tickvault worker run` with no TICKVAULT_SYMBOLS streams, stops on SIGTERM, the market goes on, it
    restarts: the restart's gap is backfilled for the symbols stored before it, so no hole."""
    url = fresh_database()
    since = datetime.now(timezone.utc)
    async with Simulator(symbols=50, rate=20_000, frame_size=100, max_trades=None, seed=13) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since, TICKVAULT_SYMBOLS="")}
        workers = WorkerProcesses(env, tmp_path)
        try:
            proc = workers.start()
            await wait_until(lambda: _subscribed(sim), 120, "the worker subscribed")
            await wait_until(_market_made(sim, sim.truth_count() + 20_000), 120, "the worker to stream a while")
            await wait_until(lambda: _grew_past(url, 20_000), 120, "rows stored")
            assert await workers.stop(proc) == 0, workers.log_text()
            down_at = sim.truth_count()
            await wait_until(_market_made(sim, down_at + 40_000), 120, "the market to go on while the worker is down")
            proc = workers.start()
            await wait_until(lambda: _subscribed(sim), 120, "the restarted worker subscribed")
            await wait_until(_market_made(sim, sim.truth_count() + 20_000), 120, "the restarted worker to stream")
            await _finish_and_assert_truth(url, sim, workers, proc)
        finally:
            workers.kill_all()
    assert "wildcard subscription" in workers.logs[1].read_text()
    # Each start read VWAP's sessions from the simulator's /v2/calendar (no fallback to the default rule).
    for log in workers.logs:
        assert re.search(r"session calendar: \d+ trading days from /v2/calendar", log.read_text()), log.read_text()
        assert "default rule" not in log.read_text()


async def test_worker_killed_with_sigkill_mid_stream_restarts_with_exactly_the_simulators_trades(
    fresh_database, tmp_path
):
    """SIGKILL while streaming and while its first-start backfill is still running (slow REST): no drain,
    no flush, batches in flight lost, the newest stored trade lies past the unfinished backfill. The
    restart resumes from the backfill window left open (gaps.py) and the table equals the truth."""
    url = fresh_database()
    since = datetime.now(timezone.utc)
    async with Simulator(symbols=50, rate=20_000, frame_size=100, max_trades=None, seed=17) as sim:
        env = {**os.environ, **_env_for(sim, url, tmp_path / "run", since)}
        workers = WorkerProcesses(env, tmp_path)
        try:
            await wait_until(_market_made(sim, 30_000), 120, "the market to trade before the worker starts")
            sim.rest_latency(1_000)  # each REST page takes a second: the backfill of 30k+ trades outlasts the kill
            proc = workers.start()
            await wait_until(lambda: _subscribed(sim), 120, "the worker subscribed")
            await wait_until(_market_made(sim, sim.truth_count() + 20_000), 120, "the worker to stream a while")
            await wait_until(lambda: _grew_past(url, 10_000), 120, "streamed rows stored")
            assert sim.subscribed_clients() == 1  # mid-stream
            assert await _count(url) < sim.truth_count()  # the backfill is not done
            assert await workers.stop(proc, signal.SIGKILL) == -signal.SIGKILL
            sim.rest_latency(0)
            killed_at = sim.truth_count()
            await wait_until(_market_made(sim, killed_at + 20_000), 120, "the market to go on while the worker is dead")
            proc = workers.start()
            await wait_until(lambda: _subscribed(sim), 120, "the restarted worker subscribed")
            await wait_until(_market_made(sim, sim.truth_count() + 20_000), 120, "the restarted worker to stream")
            await _finish_and_assert_truth(url, sim, workers, proc)
        finally:
            workers.kill_all()
    assert "left a backfill unfinished" in workers.logs[1].read_text()


CRYPTO_ROWS_SQL = """
SELECT trade_id, time_ns, round(price * 100)::bigint, (size * 100000000)::bigint, taker_side
  FROM crypto_trades ORDER BY trade_id"""


async def _crypto_count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await (await conn.execute("SELECT count(*) FROM crypto_trades")).fetchone())[0]


async def _news_stored(url: str) -> dict[int, tuple]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT id, headline, updated_at FROM news")
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


OPTION_ROWS_SQL = """
SELECT symbol, time_ns, round(price * 100)::bigint, size, exchange FROM option_trades ORDER BY symbol, time_ns"""


async def _option_count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await (await conn.execute("SELECT count(*) FROM option_trades")).fetchone())[0]


async def test_one_worker_streams_every_feed_through_a_disconnect_exactly(fresh_database, tmp_path):
    """stocks + crypto + options + news in one worker, every connection dropped twice and a stall that only
    the watchdogs notice: each table equals the simulator's truth (crypto and options row for row)."""
    url = fresh_database()
    since = datetime.now(timezone.utc)
    pairs = ["BTC/USD", "ETH/USD"]
    async with Simulator(symbols=5, rate=2_000, frame_size=100, max_trades=None, seed=11, crypto_pairs=pairs,
                         crypto_rate=400, news_interval_s=0.05, options_rate=300) as sim:
        contracts = sim.option_symbols[:4]
        settings = _settings_for(sim, url, tmp_path / "run", since,
                                 TICKVAULT_FEEDS="stocks:iex,crypto:us,options:opra,news",
                                 TICKVAULT_OPTION_SYMBOLS=",".join(contracts),
                                 TICKVAULT_CRYPTO_SYMBOLS=",".join(pairs),
                                 TICKVAULT_CRYPTO_CHANNELS="trades,quotes,bars,orderbooks",
                                 TICKVAULT_CRYPTO_FEED_SILENCE_S="1", TICKVAULT_FEED_SILENCE_S="1",
                                 TICKVAULT_OPTION_FEED_SILENCE_S="1")
        handle = WorkerHandle()
        task = asyncio.create_task(run_worker(settings, handle))
        try:
            await asyncio.wait_for(handle.ready.wait(), 120)
            crypto_reader = handle.readers["crypto:us"]
            grew = _grows(_crypto_count, url)

            await wait_until(lambda: grew(500), 120, "crypto trades stored")
            assert sim.drop_connections() >= 4  # the stocks, crypto, options and news connections alike

            async def reconnected() -> bool:
                return all(r.connected.is_set() for r in handle.readers.values())

            await wait_until(reconnected, 120, "every feed reconnected")
            await wait_until(lambda: grew(500), 120, "crypto trades after the disconnect")
            # A stall: sockets open, nothing sent, what the markets make meanwhile only in REST history.
            # The crypto watchdog (1 s here, never doubled) must notice, reconnect and backfill by itself.
            stalls_before = crypto_reader.metrics.totals["stalls"]
            sim.stall(2.5)

            async def crypto_stalled() -> bool:
                return crypto_reader.metrics.totals["stalls"] > stalls_before

            await wait_until(crypto_stalled, 60, "the crypto watchdog to notice the stall")
            await wait_until(lambda: grew(500), 120, "crypto trades after the stall")
            # News has no watchdog (silence is normal there): a second drop makes it reconnect and backfill.
            await wait_until(reconnected, 120, "every feed reconnected after the stall")
            assert sim.drop_connections() >= 4
            await wait_until(reconnected, 120, "every feed reconnected after the second drop")
            sim.finish()
            made = sim.crypto_market.total

            news_truth = {i: (a["headline"], datetime.fromisoformat(a["updated_at"])) for i, a in sim.news.truth.items()}

            options_made = sum(1 for c in contracts for _ in sim.options_market.truth_trades_full(c))

            async def all_stored() -> bool:
                return (await _crypto_count(url) >= made and await _truth_reached(url, sim)
                        and await _option_count(url) >= options_made
                        and await _news_stored(url) == news_truth)

            await wait_until(all_stored, 180, "every crypto and stock trade committed")
        finally:
            handle.stop()
            await asyncio.wait_for(task, 120)
    truth = sorted(row[:4] + (row[4],) for p in pairs for row in sim.crypto_market.truth_trades_full(p))
    with psycopg.connect(url) as conn:
        stored = [tuple(r) for r in conn.execute(CRYPTO_ROWS_SQL)]
        feeds = dict(conn.execute("SELECT feed, sum(trades) + sum(backfilled) FROM ingest_stats "
                                  "WHERE worker = 'e2e' GROUP BY feed").fetchall())
        reconnects = dict(conn.execute("SELECT feed, sum(reconnects) FROM ingest_stats GROUP BY feed").fetchall())
        resets = conn.execute("SELECT count(*) FROM crypto_orderbooks WHERE reset").fetchone()[0]
        quotes = conn.execute("SELECT count(*) FROM crypto_quotes").fetchone()[0]
        bad = conn.execute("SELECT count(*) FROM bad_messages").fetchone()[0]
    assert len(stored) == len(truth) == made
    assert stored == truth  # id, exact ns time, price, size to 1e-8, taker side: every trade once
    _assert_equals_truth(url, sim)  # and the stocks feed alongside, exact too
    assert feeds["crypto:us"] >= made and feeds["stocks:iex"] >= sim.truth_count()
    assert reconnects["crypto:us"] >= 1 and reconnects["stocks:iex"] >= 1
    assert resets >= len(pairs) and quotes > 0 and bad == 0
    assert len(news_truth) > 10 and any(h.endswith("(updated)") for h, _ in news_truth.values())
    assert "news" in feeds and feeds["options:opra"] >= options_made
    with psycopg.connect(url) as conn:
        options = [tuple(r) for r in conn.execute(OPTION_ROWS_SQL)]
    assert options == sorted((c, *row) for c in contracts for row in sim.options_market.truth_trades_full(c))
