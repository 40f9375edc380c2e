"""The worker's self-measurement: fixed-size latency histograms, counters, a Prometheus endpoint.

Nothing here allocates per observation: a histogram is a fixed list of bucket counts
(log-spaced, 4 buckets per doubling from 1 µs to ~68 s: 105 ints, ±9 % resolution), a counter
is an int. ``snapshot_and_reset`` hands the interval's figures to the stats writer.
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import Callable
from dataclasses import dataclass, field

_SUB = 4  # buckets per doubling
_MIN_NS = 1_000  # 1 µs
_N = 26 * _SUB + 1  # up to 2^26 µs ≈ 67 s; the last bucket takes everything above
_LOG2 = math.log2


class LatencyHistogram:
    """Log-bucketed latency histogram in nanoseconds; bounded memory (105 ints), O(1) record."""

    __slots__ = ("counts", "total", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * _N
        self.total = 0
        self.max_ns = 0
        self.sum_ns = 0

    def record(self, ns: int, n: int = 1) -> None:
        if ns <= _MIN_NS:
            idx = 0
        else:
            idx = int(_LOG2(ns / _MIN_NS) * _SUB) + 1
            if idx >= _N:
                idx = _N - 1
        self.counts[idx] += n
        self.total += n
        self.sum_ns += ns * n
        if ns > self.max_ns:
            self.max_ns = ns

    def percentile_ms(self, q: float) -> float | None:
        if self.total == 0:
            return None
        rank = q * self.total
        seen = 0
        for idx, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                upper_ns = _MIN_NS * 2 ** (idx / _SUB) if idx else _MIN_NS
                return min(upper_ns, self.max_ns) / 1e6
        return self.max_ns / 1e6

    def summary(self) -> dict[str, float | None]:
        return {
            "p50_ms": self.percentile_ms(0.50),
            "p90_ms": self.percentile_ms(0.90),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.max_ns / 1e6 if self.total else None,
            "count": self.total,
        }

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    def reset(self) -> None:
        self.counts = [0] * _N
        self.total = 0
        self.max_ns = 0
        self.sum_ns = 0


STAGES = ("exchange_to_received", "received_to_processed", "received_to_committed")
COUNTERS = (
    "frames", "trades", "quotes", "bars", "other_messages", "rows_committed", "rejects", "drops",
    "stalls", "stall_seconds", "reconnects", "backfilled", "db_errors", "cache_hits", "cache_misses",
    "cache_stale", "orders_submitted", "fills_recorded",
)


@dataclass
class Metrics:
    """Interval figures (reset by the stats loop) and lifetime totals (for Prometheus)."""

    interval: dict[str, LatencyHistogram] = field(default_factory=lambda: {s: LatencyHistogram() for s in STAGES})
    lifetime: dict[str, LatencyHistogram] = field(default_factory=lambda: {s: LatencyHistogram() for s in STAGES})
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    queue_depth: int = 0
    queue_max: int = 0
    rss_mb: float = 0.0
    cpu_percent: float = 0.0
    # Rows accepted but not yet committed (the writer's count, read at scrape time: no hot-path cost).
    pending_rows_source: Callable[[], int] | None = None

    def observe(self, stage: str, ns: int, n: int = 1) -> None:
        self.interval[stage].record(ns, n)
        self.lifetime[stage].record(ns, n)

    def add(self, name: str, value: float = 1) -> None:
        self.counts[name] += value
        self.totals[name] += value

    def snapshot_and_reset(self) -> tuple[dict[str, float], dict[str, dict]]:
        counts = dict(self.counts)
        hists = {s: h.summary() for s, h in self.interval.items()}
        for k in self.counts:
            self.counts[k] = 0
        for h in self.interval.values():
            h.reset()
        return counts, hists

    def prometheus(self, worker: str) -> str:
        return prometheus_text(worker, [(None, self)])


# What the worker is doing, in the order it does it: the ``phase`` label of ``tickvault_worker_phase``.
PHASES = ("starting", "recovering_spill", "restoring_indicators", "connecting", "running", "draining", "stopping")
_PHASE_TEXT = {
    "starting": "starting: registration, database, feed claims, session calendar",
    "recovering_spill": "committing the rows the previous run spilled",
    "connecting": "connecting: resume points, opening and subscribing the feeds",
    "draining": "draining: committing what was accepted",
    "stopping": "stopping",
}


class RestoreProgress:
    """How far the indicator restore is: ``done`` of ``symbols`` symbols (both tables together)."""

    __slots__ = ("done", "symbols")

    def __init__(self) -> None:
        self.done = 0
        self.symbols = 0


@dataclass
class WorkerPhase:
    """The worker's phase (one of :data:`PHASES`) and the restore's progress, for Prometheus and the
    status line: an operator sees what a starting worker waits for before any feed exists."""

    name: str = "starting"
    restore: RestoreProgress = field(default_factory=RestoreProgress)

    def set(self, name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown worker phase {name!r}; one of {', '.join(PHASES)}")
        self.name = name

    def describe(self) -> str:
        """One line for a person: ``restoring indicators: 1,200 of 5,000 symbols``."""
        if self.name == "restoring_indicators":
            return f"restoring indicators: {self.restore.done:,} of {self.restore.symbols:,} symbols"
        return _PHASE_TEXT.get(self.name, self.name)

    def prometheus(self, worker: str) -> str:
        """An enum as Prometheus clients write one (a sample per phase, 1 for the current one), and the
        restore's progress as two gauges (symbols to restore, symbols restored so far)."""
        label = f'worker="{worker}"'
        lines = ["# TYPE tickvault_worker_phase gauge"]
        lines.extend(f'tickvault_worker_phase{{{label},phase="{p}"}} {int(p == self.name)}' for p in PHASES)
        lines.append("# TYPE tickvault_restore_symbols gauge")
        lines.append(f"tickvault_restore_symbols{{{label}}} {self.restore.symbols}")
        lines.append("# TYPE tickvault_restored_symbols gauge")
        lines.append(f"tickvault_restored_symbols{{{label}}} {self.restore.done}")
        return "\n".join(lines) + "\n"


def prometheus_text(worker: str, feeds: list[tuple[str | None, Metrics]]) -> str:
    """The exposition text of one worker: one ``# TYPE`` line per metric, then a sample per feed, labelled
    ``feed="crypto:us"`` when the worker records several feeds (a single feed keeps only ``worker``, as
    before feeds existed, so existing dashboards keep their series)."""
    labels = [(f'worker="{worker}"' + (f',feed="{feed}"' if feed is not None else ""), m) for feed, m in feeds]
    lines = []
    for name in COUNTERS:
        lines.append(f"# TYPE tickvault_{name}_total counter")
        lines.extend(f"tickvault_{name}_total{{{label}}} {m.totals[name]}" for label, m in labels)
    for gauge in ("queue_depth", "queue_max", "rss_mb", "cpu_percent"):
        lines.append(f"# TYPE tickvault_{gauge} gauge")
        lines.extend(f"tickvault_{gauge}{{{label}}} {getattr(m, gauge)}" for label, m in labels)
    pending = [(label, m) for label, m in labels if m.pending_rows_source is not None]
    if pending:
        lines.append("# TYPE tickvault_pending_rows gauge")
        lines.extend(f"tickvault_pending_rows{{{label}}} {m.pending_rows_source()}" for label, m in pending)
    for stage in labels[0][1].lifetime:
        lines.append(f"# TYPE tickvault_{stage}_ms summary")
        for label, m in labels:
            hist = m.lifetime[stage]
            for q in (0.5, 0.9, 0.99):
                v = hist.percentile_ms(q)
                if v is not None:
                    lines.append(f'tickvault_{stage}_ms{{{label},quantile="{q}"}} {v:.6f}')
            lines.append(f"tickvault_{stage}_ms_count{{{label}}} {hist.total}")
            lines.append(f"tickvault_{stage}_ms_sum{{{label}}} {hist.sum_ns / 1e6:.6f}")
    return "\n".join(lines) + "\n"


class MetricsPortTaken(ValueError):
    """TICKVAULT_METRICS_PORT is taken: a setting to change, said in words (the CLI exits 1 with it)."""


async def serve_prometheus(metrics: Metrics | dict[str, Metrics], worker: str, port: int, *,
                           phase: WorkerPhase | None = None) -> asyncio.AbstractServer:
    """A minimal HTTP/1.0 endpoint on 127.0.0.1 answering every GET with the metrics text. ``metrics``: the
    worker's, or a feed label → Metrics map (several feeds: each sample carries its ``feed`` label), read
    at every scrape; ``phase``: the worker's phase, written first (it answers before the feeds exist)."""

    def feeds() -> list[tuple[str | None, Metrics]]:
        if isinstance(metrics, Metrics):
            return [(None, metrics)]
        return [(None, m) for m in metrics.values()] if len(metrics) == 1 else list(metrics.items())

    def text() -> str:
        head = phase.prometheus(worker) if phase is not None else ""
        current = feeds()
        return head + (prometheus_text(worker, current) if current else "")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            body = text().encode()
            writer.write(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(handle, "127.0.0.1", port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise MetricsPortTaken(
            f"the metrics port 127.0.0.1:{port} is in use by another program: set TICKVAULT_METRICS_PORT to a "
            "free port (or 0 for no metrics endpoint)") from None
