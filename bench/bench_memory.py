"""Memory: the worker's RSS over ≥ 2M trades across 500 symbols, sampled from outside.

The simulator (``python -m tickvault.cli sim``, 500 symbols at ``SIM_RATE`` trades/s plus its
quotes and minute bars) and the worker (``python -m tickvault.cli worker run --quiet``, every
default channel: trades, quotes, bars, updated bars) each run in their own process, as in
production; the worker writes into a scratch database. Every ``SAMPLE_S`` this bench reads the
worker's RSS with psutil and its trade count from its Prometheus endpoint (127.0.0.1), until the
worker has taken ``TRADES`` trades. Quarters are by trades received: q1 holds the start-up growth
(imports, pool, first chunk, per-symbol state for 500 symbols), so "flat" compares the mean of q4
with the mean of q2.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from bench.bench_decode import KEY, SECRET, machine_info
from bench.common import scratch_database
from bench.common import write_results

SYMBOLS = 500
TRADES = 2_000_000
SIM_RATE = 40_000  # trades/s (+ 25 % quotes): 2M trades in ~50 s, well under the worker's ceiling
SAMPLE_S = 0.5
DEADLINE_S = 240  # a host this slow is reported (complete: false), not waited for
GOAL_MB = 150.0
GOAL_FLAT = 0.05  # q4 mean within 5 % of q2 mean

log = logging.getLogger("bench.memory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """``python -m tickvault.cli sim`` in its own process (own session), stopped with SIGTERM."""

    def __init__(self, symbols: int, rate: float, frame_size: int = 100) -> None:
        self.ws_port, self.rest_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "TICKVAULT_SIM_HOST": "127.0.0.1",
            "TICKVAULT_SIM_PORT": str(self.ws_port),
            "TICKVAULT_SIM_REST_PORT": str(self.rest_port),
            "TICKVAULT_SIM_SYMBOLS": str(symbols),
            "TICKVAULT_SIM_RATE": str(rate),
            "TICKVAULT_SIM_FRAME_SIZE": str(frame_size),
            "TICKVAULT_ALPACA_KEY_ID": KEY,
            "TICKVAULT_ALPACA_SECRET_KEY": SECRET,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def __enter__(self) -> SimProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "sim"], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for _ in range(4):  # the header line and three URL lines, printed once it listens
            if not self.proc.stdout.readline():
                err = self.proc.stderr.read()
                self.__exit__()
                raise RuntimeError(f"the simulator did not start: {err[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        self.proc = None


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> int | None:
    """SIGTERM this one process, wait, SIGKILL it if it will not go; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


_TRADES_RE = re.compile(r"^tickvault_trades_total\{[^}]*\} ([0-9.eE+]+)$", re.M)


def scrape_trades(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            m = _TRADES_RE.search(resp.read().decode())
    except OSError:
        return None
    return float(m.group(1)) if m else None


def quarter_means(samples: list[tuple[float, float, float]], total: int) -> list[float | None]:
    """Mean RSS (MB) of the samples in each quarter of ``total`` trades."""
    out = []
    for q in range(4):
        lo, hi = total * q / 4, total * (q + 1) / 4
        vals = [rss for _, trades, rss in samples if lo <= trades < hi or (q == 3 and trades >= hi)]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def run() -> dict:
    started = time.perf_counter()
    machine = machine_info()
    samples: list[tuple[float, float, float]] = []  # (seconds since worker start, trades, rss MB)
    metrics_port = free_port()
    with scratch_database("tickvault_bench_memory") as url, SimProcess(SYMBOLS, SIM_RATE) as sim, \
            tempfile.TemporaryDirectory(prefix="tickvault-bench-") as run_dir:
        env = {
            **os.environ,
            "TICKVAULT_DATABASE_URL": url,
            "TICKVAULT_ALPACA_KEY_ID": KEY,
            "TICKVAULT_ALPACA_SECRET_KEY": SECRET,
            "TICKVAULT_ALPACA_STREAM_URL": sim.ws_url,
            "TICKVAULT_ALPACA_DATA_URL": sim.rest_url,
            "TICKVAULT_ALPACA_TRADING_URL": sim.rest_url,
            "TICKVAULT_ALPACA_TRADE_STREAM_URL": f"{sim.ws_url}/stream",
            "TICKVAULT_SYMBOLS": ",".join(_symbols()),
            "TICKVAULT_METRICS_PORT": str(metrics_port),
            "TICKVAULT_RUN_DIR": str(Path(run_dir)),
            "TICKVAULT_WORKER_NAME": "bench-memory",
            "TICKVAULT_STATS_INTERVAL_S": "5",
        }
        worker_log = Path(run_dir) / "worker.log"
        with open(worker_log, "w") as errf:
            worker = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
            proc = psutil.Process(worker.pid)
            t0 = time.monotonic()
            trades = 0.0
            try:
                deadline = t0 + DEADLINE_S
                while trades < TRADES:
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited with {worker.returncode}: "
                                           f"{worker_log.read_text()[-2000:]}")
                    if time.monotonic() > deadline:  # report what was measured, marked incomplete
                        log.warning("the worker took only %s trades in %d s", f"{trades:,.0f}", DEADLINE_S)
                        break
                    rss = proc.memory_info().rss / 2**20
                    got = scrape_trades(metrics_port)
                    if got is not None:
                        trades = got
                        samples.append((round(time.monotonic() - t0, 2), trades, round(rss, 2)))
                    time.sleep(SAMPLE_S)
                ingest_s = time.monotonic() - t0
            finally:
                code = stop_process(worker, 60)
        log_tail = worker_log.read_text()[-3000:]
        import psycopg

        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
            stats = conn.execute(
                "SELECT max(rss_mb), sum(reconnects), sum(stalls), sum(rejects), sum(backfilled), "
                "sum((extra->>'db_errors')::float), max(queue_max) FROM ingest_stats WHERE worker = 'bench-memory'"
            ).fetchone()
    q = quarter_means(samples, TRADES)
    rss_max = max(r for _, _, r in samples)
    flat_ratio = (q[3] / q[1]) if q[1] and q[3] else None
    met = {"trades_reached": trades >= TRADES, "rss_mb_max": rss_max < GOAL_MB, "flat": flat_ratio is not None and abs(flat_ratio - 1) <= GOAL_FLAT}
    result = {
        "rss_mb_max": round(rss_max, 1),
        "rss_mb_q2_mean": round(q[1], 1) if q[1] else None,
        "rss_mb_q4_mean": round(q[3], 1) if q[3] else None,
        "trades": int(trades),
        "rss_mb_q1_mean": round(q[0], 1) if q[0] else None,
        "rss_mb_q3_mean": round(q[2], 1) if q[2] else None,
        "q4_over_q2": round(flat_ratio, 4) if flat_ratio else None,
        "goal": f"RSS < {GOAL_MB:g} MB and flat (q4 mean within {GOAL_FLAT:.0%} of q2 mean)",
        "goal_met": all(met.values()),
        "goals_met": met,
        "trades_per_s": round(trades / ingest_s),
        "stored_trades_after_drain": stored,
        "worker_exit_code": code,
        "complete": trades >= TRADES,
        "worker_ingest_stats": dict(zip(
            ("max_rss_mb", "reconnects", "stalls", "rejects", "backfilled", "db_errors", "queue_max_frames"),
            (None if v is None else float(v) for v in stats))),
        "samples": samples,
        "setup": {
            "symbols": SYMBOLS,
            "sim_rate_trades_per_s": SIM_RATE,
            "channels": "worker defaults (trades, quotes, bars, updatedBars); sim sends 0.25 quotes per trade",
            "sample_interval_s": SAMPLE_S,
            "processes": "simulator and worker each in their own process (the CLI commands)",
        },
        "worker_log_tail": log_tail if code != 0 or trades < TRADES else None,
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_results("memory", result)
    return result


def _symbols() -> list[str]:
    from tickvault.sim.market import symbol_names

    return symbol_names(SYMBOLS)


if __name__ == "__main__":
    out = run()
    print(
        f"memory: RSS max {out['rss_mb_max']} MB, q2 {out['rss_mb_q2_mean']} MB, q4 {out['rss_mb_q4_mean']} MB "
        f"over {out['trades']:,} trades ({out['trades_per_s']:,}/s); goal {'met' if out['goal_met'] else 'NOT met'} "
        f"{out['goals_met']}"
    )
