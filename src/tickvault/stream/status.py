"""The worker's live status line in a terminal: one line at the bottom, log records above it.

rich's ``Live`` keeps the line in place; while it is active, log records (through
:class:`LogAboveStatus`), anything else written to this process's stdout/stderr, and lines relayed
from a child process (the simulator of ``tickvault run``, through :meth:`StatusDisplay.relay`) are
printed above it, never into it. Everything is printed from the event loop's thread: a relay thread
only queues lines, the once-a-second tick prints them.

The p99 figures are shown twice: over the last :data:`RECENT_WINDOW_S` seconds, and since start in
parentheses (``all``); the line wraps on a narrow terminal rather than lose its end; a start-up backfill dominates the since-start figure for the whole run. The window is
computed from the lifetime histograms (difference of their bucket counts now and a window ago), so
it costs :data:`RECENT_WINDOW_S` + 1 copies of 105 ints per stage and nothing on the hot path.

This module must never block the loop (no I/O but the terminal) nor touch the worker's state beyond
reading its metrics.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from tickvault.stream.metrics import LatencyHistogram, Metrics, WorkerPhase

RECENT_WINDOW_S = 10  # long enough for a stable p99 at a few hundred frames/s, short enough to show now
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RecentLatency:
    """Percentiles of one lifetime histogram over its last ``window`` ticks (a tick is a second here).

    Bound: ``window`` snapshots of the histogram's bucket counts.
    """

    __slots__ = ("_hist", "_ring")

    def __init__(self, hist: LatencyHistogram, window: int = RECENT_WINDOW_S) -> None:
        self._hist = hist
        self._ring: deque[tuple[list[int], int]] = deque(maxlen=window)

    def tick(self) -> None:
        """Mark a tick: from now on the window covers what is recorded after the ``window``-th last tick."""
        self._ring.append((list(self._hist.counts), self._hist.total))

    def percentile_ms(self, q: float) -> float | None:
        """``q``-quantile of what was recorded since ``window`` ticks ago (since start before that many
        ticks); None if nothing was."""
        if not self._ring:
            return self._hist.percentile_ms(q)
        old_counts, old_total = self._ring[0]
        recent = LatencyHistogram()
        recent.counts = [now - then for now, then in zip(self._hist.counts, old_counts)]
        recent.total = self._hist.total - old_total
        recent.max_ns = self._hist.max_ns  # only caps the top bucket's upper bound
        return recent.percentile_ms(q)


class StatusLine:
    """Formats the status line from a worker's metrics; call :meth:`render` once a second."""

    def __init__(self, metrics: Metrics, rss_mb=None, phase: WorkerPhase | None = None) -> None:
        self.metrics = metrics
        self.phase = phase  # the worker's: before it runs, the line says what it waits for
        self._recent = {stage: RecentLatency(metrics.lifetime[stage])
                        for stage in ("received_to_processed", "received_to_committed")}
        self._last_trades = 0.0
        self._last_t = time.monotonic()
        self._rss_mb = rss_mb or _own_rss_mb

    def render(self) -> str:
        if self.phase is not None and self.phase.name in ("starting", "recovering_spill", "restoring_indicators"):
            return self.phase.describe()
        m = self.metrics
        now = time.monotonic()
        trades = m.totals["trades"]
        rate = (trades - self._last_trades) / max(now - self._last_t, 1e-9)
        self._last_trades, self._last_t = trades, now

        def p99(stage: str, digits: int) -> str:
            recent = self._recent[stage].percentile_ms(0.99)
            lifetime = m.lifetime[stage].percentile_ms(0.99)
            self._recent[stage].tick()
            return f"{recent or 0:.{digits}f} ms (all {lifetime or 0:.{digits}f})"

        return (
            f"{rate:9,.0f} trades/s  total {int(trades):,}  "
            f"p99 proc {p99('received_to_processed', 3)}  commit {p99('received_to_committed', 0)}  "
            f"queue {m.queue_depth}  rss {self._rss_mb():.0f} MB  reconnects {int(m.totals['reconnects'])}  "
            f"rejects {int(m.totals['rejects'])}"
        )


def _own_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class LogAboveStatus(logging.Handler):
    """Prints log records through the console, so they land above the live status line."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the worker
            self.handleError(record)


RELAY_MAX_LINES = 10_000  # child output lines waiting for the next redraw (a second's worth is a few)

class StatusDisplay:
    """The status line and what prints above it, for the duration of a ``with`` block.

    ``live=False`` (not a terminal, or ``--quiet``): no status line; log records go to stderr as
    plain lines at ``quiet_level``, relayed lines are written as they are.
    """

    def __init__(self, metrics: Metrics, *, live: bool, console: Console | None = None,
                 level: int = logging.WARNING, quiet_level: int = logging.INFO,
                 phase: WorkerPhase | None = None) -> None:
        self.live = live
        self.console = console or Console(stderr=True)
        self.status = StatusLine(metrics, phase=phase)
        self._level = level if live else quiet_level
        # Relayed child output until the next tick. Bound: RELAY_MAX_LINES; past it (a child flooding its
        # output, or nobody ticking any more) lines are dropped and the count is printed.
        self._lines: queue.Queue[str] = queue.Queue(maxsize=RELAY_MAX_LINES)
        self._dropped = 0
        self._live: Live | None = None
        self._handler: logging.Handler | None = None
        self._saved: tuple[list[logging.Handler], int] | None = None

    def __enter__(self) -> StatusDisplay:
        root = logging.getLogger()
        self._saved = (root.handlers[:], root.level)
        if self.live:
            self._handler = LogAboveStatus(self.console)
        else:
            import sys

            self._handler = logging.StreamHandler(sys.stderr)
            self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.handlers = [self._handler]
        root.setLevel(self._level)
        if self.live:
            # No refresh thread: the line is redrawn by tick(), on the loop's thread, once a second.
            self._live = Live(Text("starting ..."), console=self.console, auto_refresh=False,
                              redirect_stdout=True, redirect_stderr=True, transient=False)
            self._live.__enter__()
        return self

    def tick(self) -> None:
        """Print the relayed lines that arrived, then redraw the status line (once a second)."""
        self._print_relayed()
        if self._live is not None:
            self._live.update(Text(self.status.render()), refresh=True)

    def relay(self, stream: IO[str], prefix: str) -> threading.Thread:
        """Relay a child's output line by line (a daemon thread reads it; :meth:`tick` prints it)."""

        def pump() -> None:
            for line in stream:
                try:
                    self._lines.put_nowait(prefix + line.rstrip("\n"))
                except queue.Full:
                    self._dropped += 1

        thread = threading.Thread(target=pump, name=f"relay {prefix.strip()}", daemon=True)
        thread.start()
        return thread

    def _print_relayed(self) -> None:
        lines: list[str] = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            lines.append(f"({dropped} line(s) of child output dropped: more than {RELAY_MAX_LINES} waited)")
        self._print(lines)

    def _print(self, lines: Iterable[str]) -> None:
        for line in lines:
            if self.live:
                self.console.print(Text(line), soft_wrap=True)
            else:
                import sys

                sys.stderr.write(line + "\n")

    def __exit__(self, *exc: object) -> None:
        self._print_relayed()
        if self._live is not None:
            self._live.update(Text(self.status.render()), refresh=True)
            self._live.__exit__(None, None, None)
            self._live = None
        if self._saved is not None:
            root = logging.getLogger()
            root.handlers, level = self._saved
            root.setLevel(level)
