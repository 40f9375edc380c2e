"""Worker registration and py-spy profiling against real Python processes.

A child interpreter registers itself through tickvault.registration and burns CPU in
``hot_loop_tickvault_test``; the profiler must find it by its registration and see that function
on top. Needs py-spy and the right to read another process's memory (root or SYS_PTRACE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tickvault.jobs import profiling
from tickvault.config import Settings
from tickvault.jobs.profiling import (
    ProfilerError,
    ProfilerPermissionError,
    Regression,
    WorkerNotRunning,
    compare_reports,
    profile_process,
    profile_process_async,
    summarize_speedscope,
)
from tickvault.registration import (
    AmbiguousWorker,
    find_worker,
    register_worker,
    registration_path,
    unregister_worker,
)
from tests.support.waiting import loop_turns

HOT = "hot_loop_tickvault_test"

WORKER_SCRIPT = textwrap.dedent(
    f"""
    import os, sys
    from pathlib import Path
    from tickvault.config import Settings
    from tickvault.registration import register_worker

    def {HOT}():
        total = 0
        while True:
            for i in range(10_000):
                total += i * i

    settings = Settings(run_dir=Path(sys.argv[1]))
    register_worker(settings, name=sys.argv[2], pid=os.getpid(), extra={{"metrics_port": 9999}})
    {HOT}()
    """
)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # polling interval of the condition, not a synchronisation sleep


def start_worker(script: Path, run_dir: Path, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), name])
    path = run_dir / f"worker-{name}.json"
    wait_for(lambda: path.exists() or proc.poll() is not None, what=f"{path} to appear")
    assert proc.poll() is None, f"worker script exited with {proc.returncode}"
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("script") / "burner.py"
    script.write_text(WORKER_SCRIPT)
    return script


@pytest.fixture(scope="module")
def run_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(run_dir=tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def burner(worker_script: Path, run_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(worker_script, run_settings.run_dir, "burner")
    yield proc
    stop(proc)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    return proc.pid


# --- registration -----------------------------------------------------------------------------


def test_find_worker_finds_the_registered_live_process(burner, run_settings):
    info = find_worker(run_settings, "burner")
    assert info.pid == burner.pid
    assert info.name == "burner"
    assert info.extra == {"metrics_port": 9999}
    assert info.python == sys.executable
    assert info.argv[-1] == "burner"
    assert info.started_at.tzinfo is not None
    registration = json.loads(registration_path(run_settings, "burner").read_text())
    assert {"pid", "name", "started_at", "hostname", "argv", "python", "extra"} <= registration.keys()


def test_find_worker_ignores_stale_registrations_and_says_why(burner, run_settings, tmp_path):
    settings = Settings(run_dir=tmp_path)
    shutil.copy(registration_path(run_settings, "burner"), tmp_path / "worker-burner.json")
    # A worker that died without unregistering.
    gone = json.loads((tmp_path / "worker-burner.json").read_text()) | {"name": "gone", "pid": dead_pid()}
    (tmp_path / "worker-gone.json").write_text(json.dumps(gone))
    # A registration whose pid now belongs to another program (this test process).
    register_worker(settings, name="reused", pid=os.getpid(), extra={})
    reused = json.loads((tmp_path / "worker-reused.json").read_text())
    reused["cmdline"] = ["/usr/bin/some-other-program", "--flag"]
    (tmp_path / "worker-reused.json").write_text(json.dumps(reused))

    assert find_worker(settings).pid == burner.pid  # the only live one, found without a name

    with pytest.raises(WorkerNotRunning) as excinfo:
        find_worker(settings, "gone")
    message = str(excinfo.value)
    assert "worker-gone.json" in message and f"pid {gone['pid']} does not exist" in message

    with pytest.raises(WorkerNotRunning, match="is now"):
        find_worker(settings, "reused")


def test_find_worker_without_registration_names_the_directory(tmp_path):
    with pytest.raises(WorkerNotRunning, match=str(tmp_path)):
        find_worker(Settings(run_dir=tmp_path))
    with pytest.raises(WorkerNotRunning, match="no such file"):
        find_worker(Settings(run_dir=tmp_path), "nobody")


def test_find_worker_refuses_to_guess_between_two_live_workers(burner, run_settings, tmp_path):
    settings = Settings(run_dir=tmp_path)
    shutil.copy(registration_path(run_settings, "burner"), tmp_path / "worker-burner.json")
    register_worker(settings, name="me", pid=os.getpid(), extra={})
    with pytest.raises(AmbiguousWorker, match="burner.*me"):
        find_worker(settings)
    assert find_worker(settings, "me").pid == os.getpid()


def test_unregister_leaves_a_newer_workers_registration_alone(tmp_path):
    settings = Settings(run_dir=tmp_path)
    path = register_worker(settings, name="w", pid=os.getpid(), extra={})
    assert not unregister_worker(settings, "w", pid=os.getpid() + 1_000_000)
    assert path.exists()
    assert unregister_worker(settings, "w", pid=os.getpid())
    assert not path.exists()
    assert not unregister_worker(settings, "w")
    assert not list(tmp_path.iterdir())  # no temporary files left behind either


# --- profiling --------------------------------------------------------------------------------


async def test_profile_process_finds_the_hot_loop_without_blocking_the_event_loop(
    burner, run_settings, tmp_path
):
    info = find_worker(run_settings, "burner")
    async with loop_turns(0.01) as turns:
        report = await profile_process_async(info.pid, seconds=2, rate_hz=100, out_dir=tmp_path)
    # ~200 at 10 ms each; a loop blocked for the 2 s turns once or twice. Not higher: a loaded machine
    # turns it less often, and this is about blocking, not speed.
    assert turns.count >= 10, "the event loop was blocked during profiling"

    speedscope = json.loads(report.files["profile.speedscope.json"].read_text())
    assert {"$schema", "shared", "profiles"} <= speedscope.keys()
    assert speedscope["shared"]["frames"] and speedscope["profiles"][0]["type"] == "sampled"
    profile = speedscope["profiles"][0]
    # ~200 expected at 100 Hz × 2 s; a busy machine loses some, so only "it sampled" is asserted.
    assert len(profile["samples"]) == len(profile["weights"]) > 10

    svg = report.files["flamegraph.svg"].read_text()
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg
    assert HOT in svg

    assert HOT in report.dump_text and HOT in report.files["dump.txt"].read_text()
    dump = json.loads(report.files["dump.json"].read_text())
    assert any(frame["name"] == HOT for thread in dump for frame in thread["frames"])

    summary = report.summary
    top = summary["top_self"][0]
    assert top["function"].startswith(HOT) and top["share"] > 0.5
    assert any(row["function"].startswith(HOT) for row in summary["top_total"])
    # The burner spins, but its share of a core depends on what else runs: measured, not judged.
    assert summary["cpu"]["mean_percent"] > 0 and summary["cpu"]["samples"] >= 2
    assert summary["rss"]["max_bytes"] > 1_000_000
    assert summary["pid"] == info.pid and summary["pyspy_errors"] is not None
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == summary["samples"]
    assert all("--nonblocking" in cmd for cmd in report.commands)


def test_profiling_a_dead_pid_raises_worker_not_running(tmp_path):
    with pytest.raises(WorkerNotRunning):
        profile_process(dead_pid(), seconds=1, rate_hz=100, out_dir=tmp_path)


def test_profiling_a_non_python_process_is_a_profiler_error(tmp_path):
    # `cat` waiting on stdin: alive, but not Python.
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        with pytest.raises(ProfilerError) as excinfo:
            profile_process(cat.pid, seconds=1, rate_hz=100, out_dir=tmp_path)
        assert not isinstance(excinfo.value, ProfilerPermissionError)
        assert excinfo.value.output and "py-spy" in str(excinfo.value)
    finally:
        cat.kill()
        cat.wait(timeout=10)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run py-spy unprivileged",
)
def test_py_spy_without_ptrace_rights_raises_permission_error(burner, tmp_path, monkeypatch):
    # Run the real py-spy as `nobody` against the root-owned burner: the kernel refuses.
    wrapper = tmp_path / "py-spy-as-nobody"
    wrapper.write_text(
        f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {profiling.find_py_spy()} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(profiling, "find_py_spy", lambda: str(wrapper))
    with pytest.raises(ProfilerPermissionError, match="SYS_PTRACE") as excinfo:
        profile_process(burner.pid, seconds=1, rate_hz=100, out_dir=tmp_path / "out")
    assert "ptrace_scope" in str(excinfo.value) and "root" in str(excinfo.value)
    assert burner.poll() is None  # the target is untouched


# --- summary and comparison -------------------------------------------------------------------


def test_summary_counts_own_at_the_leaf_and_total_once_per_stack():
    frames = [
        {"name": "main", "file": "/venv/lib/python3.11/site-packages/app/run.py", "line": 1},
        {"name": "decode", "file": "/venv/lib/python3.11/site-packages/app/wire.py", "line": 10},
        {"name": "decode", "file": "/venv/lib/python3.11/site-packages/app/wire.py", "line": 12},
        {"name": "write", "file": "/srv/app/db.py", "line": 5},
    ]
    doc = {
        "shared": {"frames": frames},
        "profiles": [
            # decode recursing into itself at another line: one function, counted once per stack.
            {"type": "sampled", "unit": "seconds",
             "samples": [[0, 1, 2], [0, 1], [0, 3]], "weights": [0.01] * 3},
            {"type": "sampled", "unit": "seconds", "samples": [[0, 3], []], "weights": [0.01, 0.01]},
        ],
    }
    summary = summarize_speedscope(doc)
    assert summary["samples"] == 4
    own = {row["function"]: row["share"] for row in summary["top_self"]}
    total = {row["function"]: row["share"] for row in summary["top_total"]}
    assert own == {"decode (app/wire.py)": 0.5, "write (/srv/app/db.py)": 0.5}
    assert total == {"main (app/run.py)": 1.0, "decode (app/wire.py)": 0.5, "write (/srv/app/db.py)": 0.5}
    assert summary["self_shares"] == own


def test_summary_of_an_idle_process_is_empty_not_an_error():
    summary = summarize_speedscope({"shared": {"frames": []}, "profiles": []})
    assert summary["samples"] == 0 and summary["top_self"] == [] and summary["self_shares"] == {}


def test_compare_reports_flags_growth_past_the_threshold_only():
    previous = {"self_shares": {"decode": 0.30, "write": 0.20, "parse": 0.10}}
    current = {"self_shares": {"decode": 0.36, "write": 0.24, "parse": 0.10, "gc_storm": 0.07, "tiny": 0.01}}
    found = compare_reports(previous, current, threshold=0.05)
    assert [(r.function, r.kind) for r in found] == [("gc_storm", "new"), ("decode", "grew")]
    assert found[1].delta == pytest.approx(0.06)
    assert "30.0% → 36.0%" in str(found[1]) and "new hot function gc_storm" in str(found[0])
    assert compare_reports(previous, current, threshold=0.08) == []
    assert compare_reports(None, current, threshold=0.05) == []
    assert isinstance(found[0], Regression)


def test_a_worker_exiting_mid_window_still_yields_its_samples(tmp_path):
    # The child runs its hot loop for 1 s of its own clock, then exits inside the 3 s window.
    script = tmp_path / "short.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            def {HOT}():
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    pass
            {HOT}()
            """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        report = profile_process(child.pid, seconds=3, rate_hz=100, out_dir=tmp_path / "out")
    finally:
        stop(child)
    assert report.summary["exited_during_profile"] is True
    assert report.summary["samples"] > 0
    assert report.summary["top_self"][0]["function"].startswith(HOT)
