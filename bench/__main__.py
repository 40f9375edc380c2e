"""``python -m bench`` (``make bench``): every benchmark in sequence, one short table, one figure.

Each bench's ``run()`` writes its own ``bench/results/<name>.json`` and returns the same figures;
this runner adds nothing to them, but checks the file was written by this run, so the folder and
the figure cannot disagree: a bench that wrote none is reported as failed. A bench that fails is
reported as failed in the table (with its error) and the others still run. The
figure ``bench/results/summary.png`` shows throughput against the peers and latency percentiles
per stage; it is drawn with the Agg backend and every figure is closed.

Order matters a little on a 2-core host: the CPU-bound comparisons (decode, columnar, indicators) run
before the database-heavy ones, so no checkpoint or autovacuum from an earlier bench lands in them.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable

from bench.common import write_results  # noqa: F401 - imported so a missing bench/common.py fails first

BENCHES = ("decode", "columnar", "indicators", "ingest", "crypto", "memory", "orders", "reconcile",
           "restore", "dashboard")
OPTIONAL = {"indicators", "reconcile"}  # written by other engineers; skipped with a note if absent


def _load(name: str) -> Callable[[], dict] | None:
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except ModuleNotFoundError as exc:
        if name in OPTIONAL and exc.name == f"bench.bench_{name}":
            return None
        raise
    return module.run


def _check_written(name: str, since: float) -> None:
    """Each bench's run() writes bench/results/<name>.json; one that did not is a failed bench."""
    from bench import common

    path = common.RESULTS_DIR / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since - 1:  # 1 s: coarse file-system clocks
        raise RuntimeError(f"bench_{name}.run() wrote no results file in this run ({path})")


def _fmt(v: float | None, unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}{unit}"


def _headline(name: str, r: dict) -> tuple[str, str]:
    """(tickvault's figure, the peer's figure) for the table."""
    if name == "decode":
        return (f"{_fmt(r['tickvault_msgs_per_s'])} msg/s",
                f"alpaca-py raw {_fmt(r['alpaca_py_raw_msgs_per_s'])}, parsed {_fmt(r['alpaca_py_parsed_msgs_per_s'])}"
                f" ({r['ratio_vs_alpaca_py_raw']}x raw)")
    if name == "columnar":
        ours, raw = r["columnar_ns_per_msg"], r["alpaca_py_raw_ns_per_msg"]
        return (", ".join(f"{_fmt(v)} ns/msg @{k}" for k, v in ours.items()),
                "alpaca-py raw " + ", ".join(f"{_fmt(v)} ns/msg @{k}" for k, v in raw.items())
                + " (" + ", ".join(f"{v}x" for v in r["ratio_vs_alpaca_py_raw"].values()) + ")")
    if name == "ingest":
        return (f"{_fmt(r['worker_rows_per_s'])} rows/s; p99 proc {_fmt(r['p99_received_to_processed_ms'], ' ms', 2)}, "
                f"commit {_fmt(r['p99_received_to_committed_ms'], ' ms')} @ {_fmt(r['latency_rate_rows_per_s'])}/s",
                f"bare COPY {_fmt(r['bare_copy_rows_per_s'])} rows/s ({r['worker_vs_bare_copy']:.0%})")
    if name == "crypto":
        ours, raw = r["decode_ns_per_msg"], r["alpaca_py_raw_ns_per_msg"]
        return (", ".join(f"{_fmt(v)} ns/msg @{k}" for k, v in ours.items())
                + f"; worker {_fmt(r['worker_rows_per_s'])} rows/s",
                "alpaca-py raw " + ", ".join(f"{_fmt(v)} ns/msg @{k}" for k, v in raw.items())
                + " (" + ", ".join(f"{v}x" for v in r["decode_ratio_vs_alpaca_py_raw"].values()) + "); "
                f"bare COPY {_fmt(r['bare_copy_rows_per_s'])} rows/s ({r['worker_vs_bare_copy']:.0%})")
    if name == "memory":
        return (f"RSS max {r['rss_mb_max']} MB, q2 {r['rss_mb_q2_mean']} -> q4 {r['rss_mb_q4_mean']} MB",
                f"{_fmt(r['trades'])} trades, 500 symbols")
    if name == "orders":
        return (f"gateway p50 {r['gateway_p50_ms']} / p99 {r['gateway_p99_ms']} ms",
                f"alpaca-py p50 {r['alpaca_py_p50_ms']} / p99 {r['alpaca_py_p99_ms']} ms")
    if name == "indicators":
        inc, tal = r.get("incremental_ns_per_update", {}), r.get("talipp_ns_per_update", {})
        vec, tlb = r.get("vectorized_ns_per_value", {}), r.get("talib_ns_per_value", {})
        speed = [tal[k] / inc[k] for k in inc if inc.get(k) and tal.get(k)]
        ratio = [vec[k] / tlb[k] for k in vec if vec.get(k) and tlb.get(k)]
        return (f"incremental {min(speed):.1f}-{max(speed):.1f}x talipp" if speed else "-",
                f"vectorized {min(ratio):.1f}-{max(ratio):.1f}x TA-Lib time" if ratio else "-")
    if name == "dashboard":
        loads = r["page_load_s"]
        return (f"page {loads['all_30d']['max_s']} s max with 30 d of 1m bars; UI RSS {r['ui_rss_mb_max']} MB",
                "worker unmoved: " + ("yes" if r["goals_met"]["worker_unmoved"] else "no"))
    if name == "restore":
        return (", ".join(f"{n} symbols {_fmt(ms)} ms" for n, ms in r["batched_ms"].items()),
                "per-symbol " + ", ".join(f"{_fmt(ms)} ms" for ms in r["per_symbol_ms"].values())
                + " (" + ", ".join(f"{v}x" for v in r["speedup"].values()) + ")")
    if name == "reconcile":
        keys = [k for k in r if k.endswith("_s") and isinstance(r[k], (int, float))][:2]
        return (", ".join(f"{k} {r[k]}" for k in keys) or "-", "")
    return ("-", "")


def _goal_met(r: dict) -> str:
    met = r.get("goal_met")
    if met is None:
        goals = r.get("goals_met") or {}
        met = all(goals.values()) if goals else None
    if met is None and isinstance(r.get("goals"), dict):  # indicators.json: per-indicator verdicts
        verdicts = [v for key in ("incremental_met", "vectorized_met")
                    for v in (r["goals"].get(key) or {}).values() if v is not None]
        met = all(verdicts) if verdicts else None
    return {True: "met", False: "NOT met", None: "?"}[met]


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("bench", "tickvault", "peer", "goal", "wall s")
    table = [head, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    print()
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def draw_summary(results: dict[str, dict]) -> str | None:
    """bench/results/summary.png: throughput vs peers, latency percentiles per stage, RSS over trades."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import RESULTS_DIR

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    try:
        ax = axes[0][0]
        d = results.get("decode")
        if d:
            names = ["tickvault\nreader", "alpaca-py\nraw", "alpaca-py\nparsed"]
            vals = [d["tickvault_msgs_per_s"], d["alpaca_py_raw_msgs_per_s"], d["alpaca_py_parsed_msgs_per_s"]]
            bars = ax.bar(names, [v / 1000 for v in vals], color=["tab:blue", "tab:gray", "tab:gray"])
            ax.bar_label(bars, fmt="%.0fk")
            ax.axhline(3 * d["alpaca_py_raw_msgs_per_s"] / 1000, ls="--", c="tab:red", lw=1, label="goal: 3x raw")
            ax.legend(loc="upper right")
        ax.set_title("decode + dispatch (msgs/s, thousands)")

        ax = axes[0][1]
        g = results.get("ingest")
        if g:
            vals = [g["worker_rows_per_s"], g["bare_copy_rows_per_s"]]
            bars = ax.bar(["worker\n(end to end)", "bare binary\nCOPY"], [v / 1000 for v in vals],
                          color=["tab:blue", "tab:gray"])
            ax.bar_label(bars, fmt="%.0fk")
            ax.axhline(0.8 * g["bare_copy_rows_per_s"] / 1000, ls="--", c="tab:red", lw=1, label="goal: 80% of COPY")
            ax.legend(loc="lower right")
        ax.set_title("ingest into TimescaleDB (trades/s, thousands)")

        ax = axes[0][2]
        ind = results.get("indicators")
        if ind and ind.get("incremental_ns_per_update"):
            inc, tal = ind["incremental_ns_per_update"], ind.get("talipp_ns_per_update", {})
            keys = [k for k in inc if inc[k] and tal.get(k)]
            x = range(len(keys))
            ax.bar([i - 0.2 for i in x], [inc[k] for k in keys], 0.4, label="tickvault incremental", color="tab:blue")
            ax.bar([i + 0.2 for i in x], [tal[k] for k in keys], 0.4, label="talipp", color="tab:gray")
            ax.set_xticks(list(x), keys)
            ax.set_yscale("log")
            ax.legend()
        ax.set_title("indicators: ns per update (log)")

        ax = axes[1][0]
        if g:
            paced = g["phases"]["worker_paced"]["latency_ms"]
            stages = ["received_to_processed", "received_to_committed"]
            qs = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
            for j, q in enumerate(qs):
                vals = [paced[s][q] or 0 for s in stages]
                ax.bar([i + (j - 1.5) * 0.2 for i in range(len(stages))], vals, 0.2, label=q.replace("_ms", ""))
            ax.set_xticks(range(len(stages)), ["received->processed", "received->committed"])
            ax.set_yscale("log")
            ax.axhline(250, ls="--", c="tab:red", lw=1)
            ax.axhline(1, ls=":", c="tab:red", lw=1)
            ax.legend(fontsize=8)
        ax.set_title(f"worker stage latency, ms (log) at {g['latency_rate_rows_per_s']:,}/s" if g else "stage latency")

        ax = axes[1][1]
        o = results.get("orders")
        if o:
            groups = [("gateway", o["gateway"]), ("gateway\nREST only", o["gateway_rest_only"]), ("alpaca-py", o["alpaca_py"])]
            for j, q in enumerate(["p50_ms", "p90_ms", "p99_ms"]):
                ax.bar([i + (j - 1) * 0.25 for i in range(len(groups))], [s[q] for _, s in groups], 0.25,
                       label=q.replace("_ms", ""))
            ax.set_xticks(range(len(groups)), [n for n, _ in groups])
            ax.legend()
        ax.set_title("order round trip to the simulator, ms")

        ax = axes[1][2]
        m = results.get("memory")
        if m and m.get("samples"):
            xs = [s[1] / 1e6 for s in m["samples"]]
            ys = [s[2] for s in m["samples"]]
            ax.plot(xs, ys, color="tab:blue")
            ax.axhline(150, ls="--", c="tab:red", lw=1, label="goal: 150 MB")
            ax.set_xlabel("trades received (millions)")
            ax.set_ylim(0, max(160, max(ys) * 1.1))
            ax.legend(loc="lower right")
        ax.set_title("worker RSS, MB (500 symbols)")
        fig.suptitle("tickvault benchmarks (bench/results/*.json)")
        fig.tight_layout()
        path = RESULTS_DIR / "summary.png"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        return str(path)
    finally:
        plt.close(fig)


def main(argv: list[str]) -> int:
    wanted = [a for a in argv if a in BENCHES] or list(BENCHES)
    results: dict[str, dict] = {}
    rows = []
    failed = 0
    total = time.perf_counter()
    for name in wanted:
        started = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            fn = _load(name)
            if fn is None:
                rows.append((name, "skipped: bench/bench_%s.py is missing" % name, "", "-", "0"))
                continue
            written = time.time()
            result = fn()
            _check_written(name, since=written)
        except Exception as exc:  # noqa: BLE001 - one failed bench must not hide the others
            failed += 1
            traceback.print_exc()
            rows.append((name, f"FAILED: {type(exc).__name__}: {exc}"[:100], "", "-",
                         f"{time.perf_counter() - started:.0f}"))
            continue
        results[name] = result
        ours, peer = _headline(name, result)
        rows.append((name, ours, peer, _goal_met(result), f"{time.perf_counter() - started:.0f}"))
    print_table(rows)
    try:
        path = draw_summary(results)
        print(f"\nresults: bench/results/*.json; figure: {path}; total {time.perf_counter() - total:.0f} s")
    except Exception:  # noqa: BLE001 - a plotting problem must not lose the table
        traceback.print_exc()
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
