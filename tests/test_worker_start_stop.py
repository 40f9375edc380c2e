"""A stop during start-up: SIGTERM to a `tickvault worker run` that has not reached its feeds yet ends
it in order (exit 0, registration and feed claims gone, a batch being recovered committed first, the
rest of a spill left for the next start), and Prometheus says what a starting worker is doing.

Real processes against the simulator and the real TimescaleDB. A start-up step is held where the test
wants it by a lock the test takes in the database (the worker waits for it as it would for a busy
table), never by a sleep; every wait is a condition with a generous timeout (a failure detector,
not a speed requirement).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest

from tests.support.net import free_port
from tests.support.prometheus import sample, worker_phase
from tests.support.sim import worker_env
from tests.support.waiting import wait_until
from tickvault.sim.server import Simulator
from tickvault.stream.metrics import Metrics
from tickvault.stream.writer import BatchWriter

WORKER = [sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"]
BARS_PER_SYMBOL = 30
SPILLED = "SPILL"  # the spilled rows' symbol: one the simulator does not trade, so only they are counted


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "a") as err:
        return subprocess.Popen(WORKER, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


async def _exit_status(proc: subprocess.Popen, log: Path, timeout: float = 60) -> int:
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the worker did not exit within {timeout} s\n{log.read_text()[-4000:]}") from None


def _registered_pid(run_dir: Path, name: str) -> int | None:
    try:
        return json.loads((run_dir / f"worker-{name}.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _claims(url: str, name: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM feed_claims WHERE worker = %s", (name,)).fetchone()[0]


def _store_bars(url: str, symbols: list[str]) -> None:
    """BARS_PER_SYMBOL recent 1-minute bars of each symbol: what the start-up restore replays."""
    newest = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    rows = [(newest - timedelta(minutes=m), s, "1Min", 100.0 + m % 7, 101.0 + m % 7, 99.0, 100.5, 1000 + m, 10, 100.2)
            for s in symbols for m in range(BARS_PER_SYMBOL)]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO bars (time, symbol, timeframe, open, high, low, close, volume, trade_count, vwap) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)


async def _phase_is(port: int, phase: str) -> bool:
    return await worker_phase(port) == phase


async def _stop_and_wait(proc: subprocess.Popen, log: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return await _exit_status(proc, log)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_while_restoring_indicators_stops_at_once_and_releases_everything(fresh_database, tmp_path, sig):
    """The restore waits on a table the test holds locked (its stocks are restored, its crypto pair
    waits): Prometheus shows the phase and the progress; SIGTERM (or Ctrl-C's SIGINT) ends the worker while the lock is
    still held, exit 0, registration and both feed claims gone, the feed never opened; a worker of
    the same name then starts at once and runs."""
    url = fresh_database()
    run_dir, log, port, name = tmp_path / "run", tmp_path / "worker.log", free_port(), "restorer"
    async with Simulator(symbols=6, rate=200, crypto_pairs=["BTC/USD"], crypto_rate=20) as sim:
        _store_bars(url, sim.symbols)
        env = {**os.environ, **worker_env(sim, url, run_dir, name, TICKVAULT_FEEDS="stocks:iex,crypto:us",
                                          TICKVAULT_CRYPTO_SYMBOLS="BTC/USD", TICKVAULT_METRICS_PORT=str(port))}
        with psycopg.connect(url) as lock:  # its transaction holds the lock until the block ends
            lock.execute("LOCK TABLE crypto_bars IN ACCESS EXCLUSIVE MODE")
            proc = _start(env, log)
            try:
                async def restoring_crypto() -> bool:
                    return (await worker_phase(port) == "restoring_indicators"
                            and await sample(port, "tickvault_restored_symbols") == len(sim.symbols))

                await wait_until(lambda: restoring_crypto() if proc.poll() is None else True, 120,
                                 "the worker restoring, its stocks done and the crypto pair waiting on the lock")
                assert proc.poll() is None, log.read_text()[-4000:]
                assert await sample(port, "tickvault_restore_symbols", worker=name) == len(sim.symbols)
                # the feeds' series answer already (zero: no feed is open)
                assert await sample(port, "tickvault_trades_total", worker=name, feed="stocks:iex") == 0
                assert _registered_pid(run_dir, name) == proc.pid and _claims(url, name) == 2

                proc.send_signal(sig)
                rc = await _exit_status(proc, log)  # while the lock is held: the restore was not waited for
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        assert rc == 0, text[-4000:]
        assert (f"stop requested while restoring indicators: {len(sim.symbols)} of {len(sim.symbols)} symbols"
                in text), text[-4000:]
        assert "Traceback" not in text
        assert _registered_pid(run_dir, name) is None and _claims(url, name) == 0
        assert sim.stats["connections"] == 0  # stopped before any feed opened

        again = _start(env, log)  # same name, same feeds, the lock gone: nothing of the first is in its way
        try:
            await wait_until(lambda: _phase_is(port, "running") if again.poll() is None else True, 120,
                             "the second worker to run")
            assert again.poll() is None, log.read_text()[-4000:]
            assert _registered_pid(run_dir, name) == again.pid and _claims(url, name) == 2
        finally:
            rc = await _stop_and_wait(again, log)
        assert rc == 0, log.read_text()[-4000:]


# ------------------------------------------------------------------------------ spill recovery
def _trades(first_id: int, n: int, symbol: str) -> list[tuple]:
    base = time.time_ns() - 3600 * 10**9
    return [(base + (first_id + i) * 1000, symbol, first_id + i, "V", 100.0 + i % 10 / 100, 1 + i % 5, ["@"], "C")
            for i in range(n)]


def _quotes(first: int, n: int, symbol: str) -> list[tuple]:
    """Quotes have no unique key: a batch written twice would show twice here."""
    base = time.time_ns() - 3600 * 10**9
    return [(base + (first + i) * 1000, symbol, "V", 99.99, 1, "V", 100.01, 2, ["R"], "C") for i in range(n)]


async def _spill(directory: Path, worker: str, first_id: int, n: int, symbol: str) -> tuple[str, Path]:
    """One spilled batch of ``n`` trades and ``n`` quotes, written as a shutdown that cut it short
    writes it (BatchWriter.spill); returns its batch id and file."""
    writer = BatchWriter(None, Metrics(), worker=worker, batch_rows=10**6, flush_ms=10**6)
    await writer.submit(time.monotonic_ns(), backfill_trades=_trades(first_id, n, symbol),
                        quotes=_quotes(first_id, n, symbol))
    path, rows = writer.spill(directory)
    assert rows == 2 * n
    return json.loads(path.read_text())["batch_id"], path


async def _spill_five_batches(spill_dir: Path, name: str, n: int) -> tuple[list[str], dict[str, Path]]:
    """Five spilled batches of ``n`` trades and ``n`` quotes in three files, recovered in name order:
    "a" (batch 0), "b" (batches 1, 2, 3: a file a stop can leave partly recovered), "c" (batch 4)."""
    batches = [await _spill(spill_dir, name, 1 + i * n, n, SPILLED) for i in range(5)]
    files = {stem: spill_dir / f"{name}-20260101T00000{i}Z-{stem}.spill.jsonl" for i, stem in enumerate("abc")}
    files["a"].write_text(batches[0][1].read_text())
    files["b"].write_text("".join(batches[i][1].read_text() for i in (1, 2, 3)))
    files["c"].write_text(batches[4][1].read_text())
    for _, path in batches:
        path.unlink()
    return [b for b, _ in batches], files


class Spilled(NamedTuple):
    run_dir: Path
    log: Path
    port: int  # the worker's Prometheus port
    name: str
    spill_dir: Path
    n: int  # trades (and quotes) per batch
    ids: list[str]  # the five batches' ids, in recovery order
    files: dict[str, Path]


@pytest.fixture
async def spilled(tmp_path) -> Spilled:
    """Worker "spiller"'s run directory holding five spilled batches (:func:`_spill_five_batches`).
    The database is the test's own (made in its body, so dropped when it ends)."""
    run_dir, name, n = tmp_path / "run", "spiller", 500
    ids, files = await _spill_five_batches(run_dir / "spill", name, n)
    return Spilled(run_dir, tmp_path / "worker.log", free_port(), name, run_dir / "spill", n, ids, files)


async def _start_held_at_third_batch(env: dict[str, str], url: str, name: str, log: Path,
                                     blocker: psycopg.Connection, ids: list[str]) -> subprocess.Popen:
    """Start the worker with ``blocker`` holding an uncommitted ledger row of the third batch's id:
    returns once the worker's commit of that batch waits on it (the first two committed)."""
    blocker.execute("INSERT INTO ingest_batches (batch_id, worker, rows) VALUES (%s, 'test', 0)", (ids[2],))
    proc = _start(env, log)
    try:
        await wait_until(lambda: _waiting_on_a_lock(url, name) or proc.poll() is not None, 120,
                         "the recovery of the third batch to wait on the test's ledger row")
        assert proc.poll() is None, log.read_text()[-4000:]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _waiting_on_a_lock(url: str, name: str) -> bool:
    """One of the worker's pooled connections waits on a lock (the test's uncommitted ledger row)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                            "AND wait_event_type = 'Lock'", (f"tickvault-{name}",)).fetchone()[0] == 1


def _landed(url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]) for r in conn.execute("SELECT batch_id FROM ingest_batches WHERE batch_id = ANY(%s::uuid[])",
                                                (ids,))}


async def _next_start_commits_the_rest_once(env: dict[str, str], url: str, port: int, log: Path, spill_dir: Path,
                                            ids: list[str], n: int) -> None:
    """A worker of the same name starts, commits what is still spilled and runs; then every spilled
    trade and quote is stored exactly once (quotes have no unique key: a batch written twice would
    show there)."""
    again = _start(env, log)
    try:
        await wait_until(lambda: _phase_is(port, "running") if again.poll() is None else True, 120,
                         "the next start to recover the rest and run")
        assert again.poll() is None, log.read_text()[-4000:]
    finally:
        rc = await _stop_and_wait(again, log)
    assert rc == 0, log.read_text()[-4000:]
    assert not list(spill_dir.glob("*.spill.jsonl"))
    assert _landed(url, ids) == set(ids)
    with psycopg.connect(url) as conn:
        trades = conn.execute("SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id) FROM trades "
                              "WHERE symbol = %s", (SPILLED,)).fetchone()
        assert trades == (5 * n, 5 * n, 1, 5 * n)
        quotes = conn.execute("SELECT count(*), count(DISTINCT time) FROM quotes WHERE symbol = %s",
                              (SPILLED,)).fetchone()
        assert quotes == (5 * n, 5 * n)


def _stopped_in_order(url: str, run_dir: Path, name: str, log: Path, rc: int) -> None:
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text
    assert _registered_pid(run_dir, name) is None and _claims(url, name) == 0


async def test_sigterm_during_spill_recovery_commits_the_batch_in_flight_and_the_next_start_the_rest(
        fresh_database, spilled):
    """The test holds the third batch's ledger row in an open transaction, so its commit waits;
    SIGTERM then: the worker lets that batch commit, stops before the fourth, exits 0 with the rest
    still spilled. The next start commits the rest, skipping the batches of the partly recovered
    file the ledger says landed: every trade and quote once."""
    url = fresh_database()
    run_dir, log, port, name, spill_dir, n, ids, files = spilled
    async with Simulator(symbols=["AAA"], rate=200) as sim:
        env = {**os.environ, **worker_env(sim, url, run_dir, name, TICKVAULT_METRICS_PORT=str(port))}
        with psycopg.connect(url) as blocker:  # an uncommitted ledger row with the third batch's id
            proc = await _start_held_at_third_batch(env, url, name, log, blocker, ids)
            try:
                assert await worker_phase(port) == "recovering_spill"
                proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: "stop requested while committing the rows the previous run spilled"
                                 in log.read_text() or proc.poll() is not None, 60, "the worker to take the stop")
                assert proc.poll() is None, log.read_text()[-4000:]  # it waits for the batch in flight
                blocker.rollback()  # the third batch's commit goes on
                rc = await _exit_status(proc, log)
            finally:
                if proc.poll() is None:
                    proc.kill()
        _stopped_in_order(url, run_dir, name, log, rc)
        assert _landed(url, ids) == set(ids[:3])  # the batch in flight committed; none after it
        assert not files["a"].exists() and files["b"].exists() and files["c"].exists()
        await _next_start_commits_the_rest_once(env, url, port, log, spill_dir, ids, n)
    assert log.read_text().count("not writing it again") == 2  # batches 1 and 2 of file "b"


async def test_sigterm_while_the_database_is_gone_during_spill_recovery_stops_and_loses_nothing(
        fresh_database, spilled, admin_url):
    """The third batch's connection is ended while it waits, and the database refuses new ones: the
    recovery retries, and SIGTERM stops it at its retry (exit 0) instead of waiting for the database.
    Back up, the next start commits the rest, each batch once."""
    url = fresh_database()
    run_dir, log, port, name, spill_dir, n, ids, files = spilled
    dbname = url.rsplit("/", 1)[1]
    admin = admin_url.rsplit("/", 1)[0] + "/postgres"
    async with Simulator(symbols=["AAA"], rate=200) as sim:
        env = {**os.environ, **worker_env(sim, url, run_dir, name, TICKVAULT_METRICS_PORT=str(port))}
        try:
            with psycopg.connect(url) as blocker:
                proc = await _start_held_at_third_batch(env, url, name, log, blocker, ids)
                try:
                    with psycopg.connect(admin, autocommit=True) as conn:  # the database goes away for the pool
                        conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
                        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = %s", (f"tickvault-{name}",))  # not its …-claims one
                    await wait_until(lambda: "database unavailable" in log.read_text() or proc.poll() is not None, 60,
                                     "the recovery to retry")
                    assert proc.poll() is None, log.read_text()[-4000:]
                    proc.send_signal(signal.SIGTERM)
                    rc = await _exit_status(proc, log)
                finally:
                    blocker.rollback()  # the test's ledger row never lands
                    if proc.poll() is None:
                        proc.kill()
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        _stopped_in_order(url, run_dir, name, log, rc)
        assert "stays for the next start" in log.read_text()
        assert _landed(url, ids) == set(ids[:2])  # the third was cut with its connection
        assert files["b"].exists() and files["c"].exists()
        await _next_start_commits_the_rest_once(env, url, port, log, spill_dir, ids, n)


async def test_a_second_signal_during_spill_recovery_cancels_the_batch_in_flight_and_loses_nothing(
        fresh_database, spilled):
    """Held at the third batch, SIGTERM, then a second SIGTERM (an impatient Ctrl-C): the worker stops
    waiting for that batch and exits 0 with it uncommitted; the next start commits it and the rest once."""
    url = fresh_database()
    run_dir, log, port, name, spill_dir, n, ids, files = spilled
    async with Simulator(symbols=["AAA"], rate=200) as sim:
        env = {**os.environ, **worker_env(sim, url, run_dir, name, TICKVAULT_METRICS_PORT=str(port))}
        with psycopg.connect(url) as blocker:
            proc = await _start_held_at_third_batch(env, url, name, log, blocker, ids)
            try:
                proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: "stop requested while committing the rows the previous run spilled"
                                 in log.read_text() or proc.poll() is not None, 60, "the worker to take the stop")
                proc.send_signal(signal.SIGTERM)
                rc = await _exit_status(proc, log)  # while the test still holds the row the batch waits on
            finally:
                blocker.rollback()
                if proc.poll() is None:
                    proc.kill()
        _stopped_in_order(url, run_dir, name, log, rc)
        assert "cancelled (a second signal came)" in log.read_text()
        assert _landed(url, ids) == set(ids[:2])
        assert files["b"].exists() and files["c"].exists()
        await _next_start_commits_the_rest_once(env, url, port, log, spill_dir, ids, n)


async def test_a_taken_metrics_port_is_refused_in_words_and_releases_everything(fresh_database, tmp_path):
    """Another program holds TICKVAULT_METRICS_PORT: the worker exits 1 naming the port and the setting,
    with no traceback, and leaves neither its registration nor a feed claim behind."""
    import socket

    url = fresh_database()
    run_dir, log, name = tmp_path / "run", tmp_path / "worker.log", "port-taken"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with Simulator(symbols=2, rate=20) as sim:
            env = {**os.environ, **worker_env(sim, url, run_dir, name, TICKVAULT_METRICS_PORT=str(port))}
            rc = await _exit_status(_start(env, log), log)
    text = log.read_text()
    assert rc == 1, text[-4000:]
    assert f"the metrics port 127.0.0.1:{port} is in use by another program" in text and "TICKVAULT_METRICS_PORT" in text
    assert "Traceback" not in text, text[-4000:]
    assert _registered_pid(run_dir, name) is None and _claims(url, name) == 0
    assert sim.stats["connections"] == 0
