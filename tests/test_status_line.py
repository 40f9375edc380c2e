"""The live status line: log records and a child's output print above it, never into it; its p99
shows the last seconds beside the since-start figure that a start-up backfill dominates."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest
from rich.console import Console

from tickvault.stream.metrics import LatencyHistogram, Metrics, WorkerPhase
from tickvault.stream.status import RecentLatency, StatusDisplay, StatusLine

MS = 1_000_000


def test_recent_p99_covers_only_the_last_ticks_while_since_start_keeps_the_backfill():
    hist = LatencyHistogram()
    recent = RecentLatency(hist, window=3)
    hist.record(800 * MS, 1_000)  # a start-up backfill: slow
    recent.tick()
    for _ in range(3):  # then three ticks of live trades, fast
        hist.record(MS // 10, 1_000)
        recent.tick()
    assert recent.percentile_ms(0.99) < 0.2
    assert hist.percentile_ms(0.99) > 500


def test_status_line_shows_the_recent_and_the_since_start_p99():
    metrics = Metrics()
    line = StatusLine(metrics, rss_mb=lambda: 42.0)
    metrics.observe("received_to_committed", 800 * MS, 1_000)
    line.render()
    for _ in range(10):
        metrics.observe("received_to_committed", 20 * MS, 1_000)
        text = line.render()
    recent, since_start = map(int, re.search(r"commit (\d+) ms \(all (\d+)\)", text).groups())
    assert 18 <= recent <= 24 and 730 <= since_start <= 880  # the histogram's buckets are ±9 %


def test_status_line_says_what_a_starting_worker_waits_for_then_shows_its_figures():
    phase = WorkerPhase()
    line = StatusLine(Metrics(), rss_mb=lambda: 42.0, phase=phase)
    assert line.render().startswith("starting: registration")
    phase.set("recovering_spill")
    assert line.render() == "committing the rows the previous run spilled"
    phase.set("restoring_indicators")
    phase.restore.symbols, phase.restore.done = 5_000, 1_200
    assert line.render() == "restoring indicators: 1,200 of 5,000 symbols"
    phase.set("running")
    assert "trades/s" in line.render()


def test_the_phase_is_a_prometheus_enum_with_the_restore_progress():
    phase = WorkerPhase()
    phase.set("restoring_indicators")
    phase.restore.symbols, phase.restore.done = 40, 12
    text = phase.prometheus("w")
    assert text.count("# TYPE tickvault_worker_phase gauge") == 1
    assert 'tickvault_worker_phase{worker="w",phase="restoring_indicators"} 1' in text
    assert 'tickvault_worker_phase{worker="w",phase="running"} 0' in text
    assert sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tickvault_worker_phase")) == 1
    assert 'tickvault_restore_symbols{worker="w"} 40' in text and 'tickvault_restored_symbols{worker="w"} 12' in text
    with pytest.raises(ValueError, match="one of starting, recovering_spill"):
        phase.set("restoring")


def _screen_lines(raw: str) -> list[str]:
    """What the terminal shows line by line: escape sequences dropped, carriage returns as breaks."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def test_log_records_and_the_childs_output_print_above_the_status_line():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=400, color_system=None)
    metrics = Metrics()
    read_fd, write_fd = os.pipe()
    with StatusDisplay(metrics, live=True, console=console) as display:
        metrics.add("trades", 100)
        display.tick()
        logging.getLogger("tickvault.reader").warning("market data connection lost; reconnecting")
        relay = display.relay(os.fdopen(read_fd), "simulator: ")
        with os.fdopen(write_fd, "w") as child:
            child.write("Traceback (most recent call last):\n  boom\n")
        relay.join(timeout=10)
        display.tick()
    lines = _screen_lines(out.getvalue())
    printed = [line for line in lines if "connection lost" in line or line.startswith("simulator: ")]
    assert [p.split(" WARNING ")[-1] if "WARNING" in p else p for p in printed] == [
        "tickvault.reader: market data connection lost; reconnecting",
        "simulator: Traceback (most recent call last):",
        "simulator:   boom",
    ]
    assert not any("trades/s" in line for line in printed)  # each on its own line
    assert "trades/s" in lines[-1]  # and the status line stays at the bottom
