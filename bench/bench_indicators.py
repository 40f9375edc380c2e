"""Indicators benchmark: tickvault vs talipp (incremental) and vs TA-Lib (vectorized).

Run from the repo root: ``python -m bench.bench_indicators``. Writes
``bench/results/indicators.json`` and prints a table. Takes ~30-60 s.

* incremental: ns per ``update`` over the same 100k bars of a random walk for both libraries (talipp
  keeps every output it ever produced; its per-update cost is measured over as many bars as ours),
  a fresh indicator per round (warm-up included on both sides), rounds alternating the two, best
  round of each. talipp's ATR and VWAP take ``OHLCV`` objects; those are built before timing starts,
  as our tuples are.
* vectorized: ns per value on 100k points, tickvault's function against the TA-Lib C function
  (VWAP has no TA-Lib equivalent), rounds alternating the two, best round of each; measured in a
  child process whose allocator keeps freed memory (see ``_pin_allocator``), with ``compute_all``.

Goals: incremental >= 5x faster than talipp; vectorized within 3x of TA-Lib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import talib
from talipp import indicators as tp
from talipp.ohlcv import OHLCV

import tickvault.indicators as ind
from bench.common import RESULTS_DIR, write_results
from tickvault.indicators._compiled import compiled as ind_compiled

N_VECTOR = 100_000
N_INCREMENTAL = 100_000  # bars fed to each library's incremental form, the same bars to both
ROUNDS_INCREMENTAL = 4
ROUNDS_VECTOR = 15
ROOT = Path(__file__).resolve().parent.parent
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
INCREMENTAL_GOAL = 5.0
VECTOR_GOAL = 3.0


def _market(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
    spread = np.abs(rng.normal(0.0, 1e-3, n)) * close
    high = close + spread * rng.random(n)
    low = close - spread * rng.random(n)
    volume = rng.integers(1, 5000, n).astype(float)
    return high, low, close, volume


def _best(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _feed(update: Callable, rows: list) -> Callable[[], None]:
    def run() -> None:
        for row in rows:
            update(*row)

    return run


def _incremental(high, low, close, volume) -> tuple[dict[str, float], dict[str, float]]:
    n = N_INCREMENTAL
    closes = [(c,) for c in close[:n].tolist()]
    hlc = list(zip(high[:n].tolist(), low[:n].tolist(), close[:n].tolist()))
    hlcv = list(zip(high[:n].tolist(), low[:n].tolist(), close[:n].tolist(), volume[:n].tolist()))
    scalars = closes
    bars = [(OHLCV(c, h, lo, c, v),) for h, lo, c, v in hlcv]  # built before timing
    pairs = {
        "rsi": ((lambda: ind.RSI(14), closes), (lambda: tp.RSI(14), scalars)),
        "ema": ((lambda: ind.EMA(12), closes), (lambda: tp.EMA(12), scalars)),
        "sma": ((lambda: ind.SMA(20), closes), (lambda: tp.SMA(20), scalars)),
        "macd": ((lambda: ind.MACD(12, 26, 9), closes), (lambda: tp.MACD(12, 26, 9), scalars)),
        "bbands": ((lambda: ind.BollingerBands(20, 2.0, 2.0), closes), (lambda: tp.BB(20, 2.0), scalars)),
        "atr": ((lambda: ind.ATR(14), hlc), (lambda: tp.ATR(14), bars)),
        "vwap": ((lambda: ind.VWAP(), hlcv), (lambda: tp.VWAP(), bars)),
    }
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    for name, ((make_ours, rows_ours), (make_theirs, rows_theirs)) in pairs.items():
        best_ours = best_theirs = float("inf")
        # Rounds alternate the two libraries, so a noisy neighbour on the machine hits both alike;
        # a fresh indicator each round (warm-up included, as in a real session).
        for _ in range(ROUNDS_INCREMENTAL):
            best_ours = min(best_ours, _best(_feed(make_ours().update, rows_ours), 1))
            best_theirs = min(best_theirs, _best(_feed(make_theirs().add, rows_theirs), 1))
        ours[name] = best_ours / len(rows_ours) * 1e9
        theirs[name] = best_theirs / len(rows_theirs) * 1e9
    return ours, theirs


def _vectorized(high, low, close, volume) -> tuple[dict[str, float], dict[str, float | None]]:
    h, lo, c, v = (a[:N_VECTOR].copy() for a in (high, low, close, volume))
    ours_calls = {
        "rsi": lambda: ind.rsi(c, 14),
        "ema": lambda: ind.ema(c, 12),
        "sma": lambda: ind.sma(c, 20),
        "macd": lambda: ind.macd(c, 12, 26, 9),
        "bbands": lambda: ind.bbands(c, 20, 2.0, 2.0),
        "atr": lambda: ind.atr(h, lo, c, 14),
        "vwap": lambda: ind.vwap(h, lo, c, v),
    }
    talib_calls = {
        "rsi": lambda: talib.RSI(c, 14),
        "ema": lambda: talib.EMA(c, 12),
        "sma": lambda: talib.SMA(c, 20),
        "macd": lambda: talib.MACD(c, 12, 26, 9),
        "bbands": lambda: talib.BBANDS(c, 20, 2.0, 2.0, matype=0),
        "atr": lambda: talib.ATR(h, lo, c, 14),
    }
    ours: dict[str, float] = {}
    theirs: dict[str, float | None] = {}
    for name, call in ours_calls.items():
        peer = talib_calls.get(name)
        call()  # warm both sides (our scratch workspace is kept between calls)
        if peer is not None:
            peer()
        # Rounds alternate the two sides, so a noisy neighbour on the machine hits both alike.
        best_ours = best_theirs = float("inf")
        for _ in range(ROUNDS_VECTOR):
            best_ours = min(best_ours, _best(call, 1))
            if peer is not None:
                best_theirs = min(best_theirs, _best(peer, 1))
        ours[name] = best_ours / N_VECTOR * 1e9
        theirs[name] = best_theirs / N_VECTOR * 1e9 if peer is not None else None
    return ours, theirs


def _pin_allocator() -> bool:
    """Make glibc keep freed memory for reuse: no trimming of the heap's top, no mmap per large array.

    Both libraries return fresh output arrays of 100k values (800 kB), and TA-Lib's MACD also
    mallocs two work buffers per call. With glibc's defaults whether such an array comes from
    reused heap or from fresh pages (~380 page faults, zeroed by the kernel, per 1.5 MB) depends on
    what the process freed before -- it was measured to double one side's time and not the
    other's (our BBANDS 10 -> 20 ns/value after another scratch slot was allocated, TA-Lib's
    BBANDS 4.9 or 9 by run, TA-Lib's MACD 10 ns/value with faults, 2.4 without). Pinned, both sides
    are measured on reused memory, as the refresh flow's arrays of a few thousand bars are.
    Returns False (figures then include that noise) where mallopt is not glibc's.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # 32 MiB: glibc's largest mmap threshold on 64-bit, far above any array here.
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))


def _vectorized_child() -> None:
    """The vectorized half, run in its own process (``_vectorized_in_child``): JSON on stdout."""
    pinned = _pin_allocator()
    high, low, close, volume = _market(max(N_VECTOR, N_INCREMENTAL))
    ours, theirs = _vectorized(high, low, close, volume)
    compute_all_s = _best(lambda: ind.compute_all(high, low, close, volume), 5)
    json.dump({"ours": ours, "theirs": theirs, "allocator_pinned": pinned,
               "compute_all_ns_per_bar": compute_all_s / high.shape[0] * 1e9}, sys.stdout)


def _vectorized_in_child() -> dict:
    # A process of its own: the allocator setting stays out of this one (and out of the benches
    # that `python -m bench` runs after this one), and no heap left by the incremental half.
    code = "from bench.bench_indicators import _vectorized_child; _vectorized_child()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the vectorized half of the indicators bench failed:\n{done.stderr}")
    return json.loads(done.stdout)


def run() -> dict:
    """Run the benchmark, write ``bench/results/indicators.json`` (as every bench's ``run`` does, so
    ``python -m bench`` gets it too), return the results."""
    high, low, close, volume = _market(max(N_VECTOR, N_INCREMENTAL))
    incremental, talipp_ns = _incremental(high, low, close, volume)
    child = _vectorized_in_child()
    vectorized, talib_ns = child["ours"], child["theirs"]

    rows = list(zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist()))
    indicator_set_s = min(_best(_feed(ind.IndicatorSet().update, rows), 1) for _ in range(3))
    indicator_set_ns = indicator_set_s / len(rows) * 1e9
    compute_all_ns = child["compute_all_ns_per_bar"]

    speedup = {k: talipp_ns[k] / incremental[k] for k in incremental}
    ratio = {k: (vectorized[k] / talib_ns[k]) if talib_ns[k] else None for k in vectorized}
    results = {
        "incremental_ns_per_update": incremental,
        "talipp_ns_per_update": talipp_ns,
        "vectorized_ns_per_value": vectorized,
        "talib_ns_per_value": talib_ns,
        "speedup_vs_talipp": speedup,
        "ratio_vs_talib": ratio,
        "indicator_set_ns_per_bar": indicator_set_ns,
        "compute_all_ns_per_bar": compute_all_ns,
        "goals": {
            "incremental_speedup_at_least": INCREMENTAL_GOAL,
            "vectorized_ratio_at_most": VECTOR_GOAL,
            "incremental_met": {k: s >= INCREMENTAL_GOAL for k, s in speedup.items()},
            "vectorized_met": {
                k: (r <= VECTOR_GOAL if r is not None else None) for k, r in ratio.items()
            },
        },
        "setup": {
            "points_vectorized": N_VECTOR,
            "updates_incremental": N_INCREMENTAL,
            "updates_talipp": N_INCREMENTAL,
            "rounds_incremental": ROUNDS_INCREMENTAL,
            "rounds_vectorized": ROUNDS_VECTOR,
            "compiled_extension": ind_compiled is not None,
            "vectorized_allocator_pinned": child["allocator_pinned"],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "talib": talib.__version__,
            "talipp": importlib.metadata.version("talipp"),
            "machine": platform.machine(),
        },
    }
    write_results("indicators", results)
    return results


def _table(results: dict) -> str:
    lines = [
        f"{'indicator':<9} {'incr ns':>8} {'talipp ns':>10} {'speedup':>8}   "
        f"{'vec ns/v':>8} {'talib ns/v':>10} {'ratio':>6}",
    ]
    for name in results["incremental_ns_per_update"]:
        talib_ns = results["talib_ns_per_value"][name]
        ratio = results["ratio_vs_talib"][name]
        talib_cell = f"{talib_ns:10.2f}" if talib_ns else "       n/a"
        ratio_cell = f"{ratio:5.2f}x" if ratio else "   n/a"
        lines.append(
            f"{name:<9} {results['incremental_ns_per_update'][name]:8.0f} "
            f"{results['talipp_ns_per_update'][name]:10.0f} {results['speedup_vs_talipp'][name]:7.1f}x   "
            f"{results['vectorized_ns_per_value'][name]:8.2f} "
            f"{talib_cell} {ratio_cell}"
        )
    lines.append(
        f"IndicatorSet.update: {results['indicator_set_ns_per_bar']:.0f} ns/bar; "
        f"compute_all: {results['compute_all_ns_per_bar']:.1f} ns/bar"
    )
    goals = results["goals"]
    missed_incr = [k for k, ok in goals["incremental_met"].items() if not ok]
    missed_vec = [k for k, ok in goals["vectorized_met"].items() if ok is False]
    incr_verdict = "met" if not missed_incr else "MISSED " + ", ".join(missed_incr)
    vec_verdict = "met" if not missed_vec else "MISSED " + ", ".join(missed_vec)
    lines.append(
        f"goals: incremental >= {INCREMENTAL_GOAL:g}x talipp: {incr_verdict}; "
        f"vectorized <= {VECTOR_GOAL:g}x TA-Lib: {vec_verdict}"
    )
    return "\n".join(lines)


def main() -> None:
    results = run()
    print(_table(results))
    print(f"wrote {RESULTS_DIR / 'indicators.json'}")


if __name__ == "__main__":
    main()
