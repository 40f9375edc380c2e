"""Profile a running worker with py-spy, summarise where its CPU goes, and compare with last time.

:func:`profile_process` attaches py-spy to a live pid for a fixed window and returns a
:class:`ProfileReport`: a speedscope JSON and a flamegraph SVG (two ``py-spy record`` runs side by
side over the same window — py-spy 0.4 cannot convert one recording into both formats), a
``py-spy dump`` (text and JSON), the process's CPU percent and RSS sampled over the window, and a
summary of the top functions by own (self) and inclusive (total) share of samples, computed here
from the speedscope file (:func:`summarize_speedscope`). :func:`compare_reports` flags functions
whose own share grew past a threshold.

It must never pause the trading process: every py-spy call uses ``--nonblocking`` (py-spy reads
the target's memory without stopping it; the price is an occasional torn stack, which a sampling
profile absorbs). Measured on a CPU-bound target (2-core VM, 100 Hz, 5 s windows, 5 rounds
interleaved with unprofiled baselines): two nonblocking recorders plus the dumps cost the target a
median 1.5 % of its throughput (rounds ranged −5.6 % … +1.0 %, i.e. within the machine's noise);
the same two recorders in py-spy's default blocking mode cost a median 4.2 % (−8.6 % … −0.7 %),
because each sample stops the process. The two py-spy processes themselves use about 3 % of one
core at 100 Hz (each report's summary carries it as ``profiler_cpu_seconds``).

Nothing here uses Prefect; the flow wraps these functions. Every failure is one of
:class:`WorkerNotRunning`, :class:`ProfilerPermissionError` or :class:`ProfilerError`, never a raw
``CalledProcessError``. :func:`profile_process` blocks for the whole window; from an event loop
use :func:`profile_process_async`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from tickvault.registration import WorkerNotRunning

__all__ = [
    "ProfileReport",
    "ProfilerError",
    "ProfilerPermissionError",
    "Regression",
    "WorkerNotRunning",
    "compare_reports",
    "find_py_spy",
    "profile_process",
    "profile_process_async",
    "summarize_speedscope",
]

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = 1
SPEEDSCOPE_FILE = "profile.speedscope.json"
FLAMEGRAPH_FILE = "flamegraph.svg"
DUMP_TEXT_FILE = "dump.txt"
DUMP_JSON_FILE = "dump.json"
SUMMARY_FILE = "summary.json"

# How many functions each top list keeps (what a person reads in the report).
TOP_N = 20
# Own shares below this are left out of ``self_shares`` (what comparisons read): it bounds the map
# to at most 1/0.001 = 1000 entries, and a function under 0.1 % is noise at 100 Hz × 30 s.
SELF_SHARE_FLOOR = 0.001
# py-spy needs a moment to attach and to write its output after the window: allow this much on
# top of ``seconds`` before a recorder is declared hung and killed.
STARTUP_GRACE_S = 30.0
# A dump is one snapshot; it takes milliseconds unless py-spy is stuck.
DUMP_TIMEOUT_S = 30.0
# CPU and RSS are sampled about this many times per window (at least every 0.1 s, at most every 1 s).
_RESOURCE_SAMPLES_PER_WINDOW = 20

_SAMPLES_RE = re.compile(r"Samples:\s*(\d+)\s+Errors:\s*(\d+)")
_PERMISSION_MARKERS = (
    "permission denied",
    "operation not permitted",
    "(os error 1)",
    "(os error 13)",
    "ptrace",
)


class ProfilerError(RuntimeError):
    """py-spy failed; the message carries its command line, exit status and output."""

    def __init__(
        self, message: str, *, cmd: Sequence[str] = (), returncode: int | None = None, output: str = ""
    ):
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output


class ProfilerPermissionError(ProfilerError):
    """py-spy may not read the target process (ptrace/process_vm_readv refused)."""


@dataclass(frozen=True)
class Regression:
    """A function whose own share of samples grew past the threshold since the previous report."""

    function: str
    previous_share: float
    current_share: float
    kind: str  # "grew": was in the previous report; "new": was not (under SELF_SHARE_FLOOR or absent)

    @property
    def delta(self) -> float:
        return self.current_share - self.previous_share

    def __str__(self) -> str:
        if self.kind == "new":
            return f"new hot function {self.function}: {self.current_share:.1%} of samples"
        return (
            f"{self.function}: {self.previous_share:.1%} → {self.current_share:.1%} "
            f"(+{self.delta * 100:.1f} points)"
        )


@dataclass
class ProfileReport:
    """What one profiling window produced. ``files`` maps artifact names to paths in ``out_dir``."""

    pid: int
    started_at: datetime
    seconds: float
    rate_hz: int
    out_dir: Path
    files: dict[str, Path]
    summary: dict[str, Any]
    dump_text: str
    commands: list[list[str]] = field(default_factory=list)


# --- locating and running py-spy --------------------------------------------------------------


def find_py_spy() -> str:
    """The py-spy binary: next to the running interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("py-spy")
    if found:
        return found
    raise ProfilerError(
        f"py-spy not found next to {sys.executable} nor on PATH; install it with "
        f"`{sys.executable} -m pip install 'py-spy>=0.4,<0.5'`"
    )


def _pyspy_env() -> dict[str, str]:
    env = dict(os.environ)
    # py-spy (anyhow) appends a Rust backtrace to every error when these are set; it buries the cause.
    env["RUST_BACKTRACE"] = "0"
    env["RUST_LIB_BACKTRACE"] = "0"
    return env


def _failure(what: str, cmd: Sequence[str], returncode: int | None, output: str, pid: int) -> Exception:
    """Turn a failed py-spy run into the exception a caller can act on."""
    text = output.strip()
    lowered = text.lower()
    if not _alive(pid):
        return WorkerNotRunning(f"pid {pid} is not running (py-spy {what}: {text or 'no output'})")
    if any(m in lowered for m in _PERMISSION_MARKERS):
        return ProfilerPermissionError(
            f"py-spy may not read pid {pid}: {text}\n"
            "Run the profiler as root, or as the worker's user with the SYS_PTRACE capability "
            "(containers: `--cap-add SYS_PTRACE`), and check `kernel.yama.ptrace_scope` "
            "(0 lets a user trace its own processes; `sysctl kernel.yama.ptrace_scope`).",
            cmd=cmd,
            returncode=returncode,
            output=text,
        )
    return ProfilerError(
        f"py-spy {what} failed (exit status {returncode}): {' '.join(cmd)}\n{text or '(no output)'}",
        cmd=cmd,
        returncode=returncode,
        output=text,
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _run_dump(py_spy: str, pid: int, *, as_json: bool) -> tuple[list[str], str]:
    cmd = [py_spy, "dump", "--pid", str(pid), "--nonblocking"] + (["--json"] if as_json else [])
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=DUMP_TIMEOUT_S, env=_pyspy_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProfilerError(f"py-spy dump hung for {DUMP_TIMEOUT_S:.0f} s: {' '.join(cmd)}", cmd=cmd) from exc
    except OSError as exc:
        raise ProfilerError(f"cannot run {' '.join(cmd)}: {exc}", cmd=cmd) from exc
    if done.returncode != 0:
        raise _failure("dump", cmd, done.returncode, done.stdout + "\n" + done.stderr, pid)
    return cmd, done.stdout


# --- the profiling window ---------------------------------------------------------------------


def profile_process(pid: int, *, seconds: float, rate_hz: int, out_dir: Path) -> ProfileReport:
    """Profile ``pid`` for ``seconds`` at ``rate_hz`` without pausing it; write artifacts to ``out_dir``.

    Blocks for about ``seconds`` (plus py-spy's attach time). Raises :class:`WorkerNotRunning` if
    the process is gone before or during the window with nothing recorded,
    :class:`ProfilerPermissionError` if py-spy may not read it, :class:`ProfilerError` otherwise.
    """
    if seconds <= 0 or rate_hz <= 0:
        raise ValueError(f"seconds and rate_hz must be positive, got {seconds=} {rate_hz=}")
    if not _alive(pid):
        raise WorkerNotRunning(f"pid {pid} is not running")
    py_spy = find_py_spy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speedscope_path = out_dir / SPEEDSCOPE_FILE
    svg_path = out_dir / FLAMEGRAPH_FILE
    # py-spy's --duration is whole seconds in 0.4 (it parses an integer); round up.
    duration = str(max(1, int(-(-seconds // 1))))
    base = [py_spy, "record", "--pid", str(pid), "--duration", duration, "--rate", str(rate_hz)]
    base.append("--nonblocking")  # never stop the trading process to take a sample
    record_cmds = [
        base + ["--format", "speedscope", "-o", str(speedscope_path)],
        base + ["--format", "flamegraph", "-o", str(svg_path)],
    ]
    for stale in (speedscope_path, svg_path):
        stale.unlink(missing_ok=True)  # a previous window's file must never pass for this one's

    target = psutil.Process(pid)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    try:
        cpu0 = target.cpu_times()
        target.cpu_percent(None)  # prime: the next call reports usage since now
    except psutil.NoSuchProcess as exc:
        raise WorkerNotRunning(f"pid {pid} exited before profiling started") from exc
    except psutil.AccessDenied as exc:
        raise ProfilerPermissionError(f"cannot read pid {pid}'s CPU and memory: {exc}; run as root") from exc

    recorders: list[subprocess.Popen[bytes]] = []
    # Output goes to anonymous files, not pipes: nobody reads a pipe during the window, and a
    # py-spy that filled one would stall until the deadline.
    logs = [tempfile.TemporaryFile() for _ in record_cmds]
    try:
        for cmd, log_file in zip(record_cmds, logs, strict=True):
            recorders.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,  # py-spy splits one message across both; keep its order
                    env=_pyspy_env(),
                )
            )
    except OSError as exc:
        _kill_all(recorders)
        for log_file in logs:
            log_file.close()
        raise ProfilerError(f"cannot start py-spy ({py_spy}): {exc}", cmd=record_cmds[0]) from exc

    cpu_samples: list[float] = []
    rss_samples: list[int] = []
    profiler_cpu: dict[int, float] = {}
    exited = False
    outputs: list[str] = []
    try:
        dump_cmd, dump_text = _run_dump(py_spy, pid, as_json=False)
        dump_json_cmd, dump_json = _run_dump(py_spy, pid, as_json=True)
        interval = min(1.0, max(0.1, seconds / _RESOURCE_SAMPLES_PER_WINDOW))
        deadline = time.monotonic() + float(duration) + STARTUP_GRACE_S
        for rec in recorders:
            while True:
                try:
                    rec.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() > deadline:
                    raise ProfilerError(
                        f"py-spy record did not finish within {float(duration) + STARTUP_GRACE_S:.0f} s",
                        cmd=rec.args,
                    )
                if not exited:
                    exited = not _sample(target, cpu_samples, rss_samples)
                for r in recorders:
                    try:
                        times = psutil.Process(r.pid).cpu_times()
                        profiler_cpu[r.pid] = times.user + times.system
                    except psutil.Error:
                        pass
        if not exited:
            exited = not _sample(target, cpu_samples, rss_samples)
        exited = exited or not _alive(pid)  # py-spy ends its recording early when the target exits
        wall = time.monotonic() - t0
        for rec, cmd, log_file in zip(recorders, record_cmds, logs, strict=True):
            log_file.seek(0)
            output = log_file.read().decode("utf-8", "replace")
            outputs.append(output)
            if rec.returncode != 0:
                raise _failure("record", cmd, rec.returncode, output, pid)
    finally:
        _kill_all(recorders)
        for log_file in logs:
            log_file.close()

    if not speedscope_path.exists() or not svg_path.exists():
        if not _alive(pid):
            raise WorkerNotRunning(f"pid {pid} exited during profiling; py-spy wrote no profile")
        raise ProfilerError(
            f"py-spy exited cleanly but did not write {speedscope_path.name} and {svg_path.name}",
            output="\n".join(outputs),
        )
    try:
        doc = json.loads(speedscope_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfilerError(f"py-spy wrote an unreadable speedscope file {speedscope_path}: {exc}") from exc

    summary = summarize_speedscope(doc)
    if summary["samples"] == 0 and exited:
        raise WorkerNotRunning(f"pid {pid} exited during profiling before any sample was taken")

    cpu_mean = None
    try:
        if exited:
            raise psutil.NoSuchProcess(pid)
        cpu1 = target.cpu_times()
        used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        cpu_mean = round(100.0 * used / wall, 1) if wall > 0 else None
    except psutil.Error:
        pass  # exited: fall back to the samples' mean
    if cpu_mean is None and cpu_samples:
        cpu_mean = round(sum(cpu_samples) / len(cpu_samples), 1)
    recorded = [_SAMPLES_RE.search(o) for o in outputs]
    summary.update(
        {
            "pid": pid,
            "started_at": started_at.isoformat(),
            "duration_s": float(duration),
            "wall_s": round(wall, 3),
            "rate_hz": rate_hz,
            "exited_during_profile": exited,
            "pyspy_errors": sum(int(m.group(2)) for m in recorded if m) if any(recorded) else None,
            "cpu": {
                "mean_percent": cpu_mean,
                "max_percent": max(cpu_samples) if cpu_samples else None,
                "samples": len(cpu_samples),
            },
            "rss": {
                "mean_bytes": int(sum(rss_samples) / len(rss_samples)) if rss_samples else None,
                "max_bytes": max(rss_samples) if rss_samples else None,
                "last_bytes": rss_samples[-1] if rss_samples else None,
                "samples": len(rss_samples),
            },
            "profiler_cpu_seconds": round(sum(profiler_cpu.values()), 3),
        }
    )

    files = {SPEEDSCOPE_FILE: speedscope_path, FLAMEGRAPH_FILE: svg_path}
    (out_dir / DUMP_TEXT_FILE).write_text(dump_text, encoding="utf-8")
    files[DUMP_TEXT_FILE] = out_dir / DUMP_TEXT_FILE
    (out_dir / DUMP_JSON_FILE).write_text(dump_json, encoding="utf-8")
    files[DUMP_JSON_FILE] = out_dir / DUMP_JSON_FILE
    # The summary is also kept beside the artifacts for a person browsing out_dir; the report
    # store uploads it from ProfileReport.summary, so it is not in ``files``.
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info(
        "profiled pid %d for %s s at %d Hz: %d samples, top self %s",
        pid,
        duration,
        rate_hz,
        summary["samples"],
        summary["top_self"][0]["function"] if summary["top_self"] else "(none: idle)",
    )
    return ProfileReport(
        pid=pid,
        started_at=started_at,
        seconds=float(duration),
        rate_hz=rate_hz,
        out_dir=out_dir,
        files=files,
        summary=summary,
        dump_text=dump_text,
        commands=[*record_cmds, dump_cmd, dump_json_cmd],
    )


async def profile_process_async(pid: int, *, seconds: float, rate_hz: int, out_dir: Path) -> ProfileReport:
    """:func:`profile_process` in a worker thread, so an event loop keeps running during the window."""
    return await asyncio.to_thread(profile_process, pid, seconds=seconds, rate_hz=rate_hz, out_dir=out_dir)


def _sample(target: psutil.Process, cpu: list[float], rss: list[int]) -> bool:
    """Append one CPU/RSS sample; False once the process is gone."""
    try:
        with target.oneshot():
            if target.status() == psutil.STATUS_ZOMBIE:
                return False
            cpu.append(target.cpu_percent(None))
            rss.append(target.memory_info().rss)
        return True
    except psutil.Error:
        return False


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("py-spy pid %d did not exit after SIGKILL", proc.pid)


# --- the summary ------------------------------------------------------------------------------


def _short_file(path: str) -> str:
    """A file name that stays the same when the virtualenv or Python install moves."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    match = re.search(r"/lib/python\d+\.\d+/(.+)$", path)
    if match:
        return match.group(1)
    return path


def function_key(frame: Mapping[str, Any]) -> str:
    """``name (file)``: frames of one function at different lines count as one function."""
    name = frame.get("name") or "?"
    file = frame.get("file")
    return f"{name} ({_short_file(file)})" if file else str(name)


def summarize_speedscope(doc: Mapping[str, Any], *, top: int = TOP_N) -> dict[str, Any]:
    """Own and inclusive shares per function from a speedscope document's sampled profiles.

    Speedscope's sampled format: ``shared.frames`` lists frames; each profile's ``samples`` is a
    list of stacks (frame indexes, outermost first, the running frame last) with a parallel
    ``weights`` list (py-spy: seconds per sample). A function's *own* share is the weight of
    samples where it is the running frame; its *total* share is the weight of samples where it
    is anywhere on the stack (counted once per sample, so recursion does not inflate it). Shares
    are of all threads' active samples (py-spy leaves idle threads out by default).
    """
    frames = doc.get("shared", {}).get("frames", [])
    keys = [function_key(f) for f in frames]
    own: dict[str, float] = defaultdict(float)
    total: dict[str, float] = defaultdict(float)
    grand = 0.0
    n_samples = 0
    threads = []
    for profile in doc.get("profiles", []):
        if profile.get("type") != "sampled":
            continue  # "evented" profiles are not what py-spy writes
        samples = profile.get("samples", [])
        weights = profile.get("weights") or [1.0] * len(samples)
        thread_weight = 0.0
        for stack, weight in zip(samples, weights, strict=False):
            if not stack:
                continue
            n_samples += 1
            grand += weight
            thread_weight += weight
            own[keys[stack[-1]]] += weight
            for key in {keys[i] for i in stack}:
                total[key] += weight
        threads.append(
            {"name": profile.get("name", ""), "samples": len(samples), "weight": round(thread_weight, 6)}
        )

    def ranked(table: dict[str, float]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [{"function": k, "share": round(v / grand, 6), "weight": round(v, 6)} for k, v in rows]

    return {
        "schema": SUMMARY_SCHEMA,
        "samples": n_samples,
        "weight": round(grand, 6),
        "weight_unit": (doc.get("profiles") or [{}])[0].get("unit", "none"),
        "threads": threads,
        "top_self": ranked(own) if grand else [],
        "top_total": ranked(total) if grand else [],
        "self_shares": {
            k: round(v / grand, 6)
            for k, v in sorted(own.items(), key=lambda kv: -kv[1])
            if grand and v / grand >= SELF_SHARE_FLOOR
        },
    }


def compare_reports(
    previous_summary: Mapping[str, Any] | None, current_summary: Mapping[str, Any], threshold: float
) -> list[Regression]:
    """Functions whose own share grew by more than ``threshold`` share points (0.05 = 5 points).

    A function absent from the previous summary counts from 0 and is reported as ``"new"``; one
    present is ``"grew"``. Largest growth first. No previous summary: nothing to compare, [].
    """
    if not previous_summary:
        return []
    before: Mapping[str, float] = previous_summary.get("self_shares", {})
    now: Mapping[str, float] = current_summary.get("self_shares", {})
    found = []
    for function, share in now.items():
        prev = before.get(function)
        if share - (prev or 0.0) > threshold:
            found.append(Regression(function, prev or 0.0, share, "grew" if prev is not None else "new"))
    found.sort(key=lambda r: (-r.delta, r.function))
    return found
