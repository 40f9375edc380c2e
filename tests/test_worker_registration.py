"""A worker name belongs to one live worker: a second `tickvault worker run` of the same name refuses
to start and leaves the first one's registration alone; a stale registration is taken over; a
worker removes only its own registration. Real processes, a real simulator and database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.pipes import read_lines
from tests.support.sim import PATIENT_QUEUE_FRAMES, worker_env
from tests.support.waiting import wait_until
from tickvault.config import Settings
from tickvault.sim.server import Simulator

WORKER = [sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"]


def _env(sim: Simulator, db_url: str, run_dir: Path, name: str) -> dict[str, str]:
    return {**os.environ, **worker_env(sim, db_url, run_dir, name)}


def _registered_pid(path: Path) -> int | None:
    try:
        return json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen(WORKER, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


async def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_second_worker_with_a_taken_name_refuses_to_start_and_leaves_the_first_registered(db_url, tmp_path):
    path = tmp_path / "run" / "worker-twin.json"
    async with Simulator(symbols=["AAA", "BBB"], rate=2_000, client_queue_frames=PATIENT_QUEUE_FRAMES) as sim:
        env = _env(sim, db_url, tmp_path / "run", "twin")
        first = _start(env, tmp_path / "first.log")
        second = None
        try:
            await wait_until(lambda: _registered_pid(path) == first.pid or first.poll() is not None, 60,
                             "the first worker to register")
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            await wait_until(lambda: sim.stats["connections"] >= 1, 60, "the first worker to connect")

            second = _start(env, tmp_path / "second.log")
            rc = await asyncio.to_thread(second.wait, 60)
            err = (tmp_path / "second.log").read_text()
            assert rc == 1, err[-3000:]
            assert f"worker name 'twin' is taken: pid {first.pid}" in err
            assert "TICKVAULT_WORKER_NAME" in err and "Traceback" not in err

            assert first.poll() is None  # the first one runs on, still registered under its pid
            assert _registered_pid(path) == first.pid
            assert sim.stats["connections"] == 1  # the second never reached the feed
        finally:
            if second is not None:
                await _stop(second)
            rc = await _stop(first)
        assert rc == 0, (tmp_path / "first.log").read_text()[-3000:]
        assert not path.exists()  # the first removed its own registration on the way out


async def test_worker_takes_over_a_stale_registration_and_removes_it_at_exit(db_url, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "worker-phoenix.json"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    path.write_text(json.dumps({"name": "phoenix", "pid": gone.pid, "started_at": "2026-03-10T14:30:00+00:00",
                                "hostname": os.uname().nodename, "cmdline": WORKER, "create_time": 0.0}))
    async with Simulator(symbols=["AAA"], rate=1_000) as sim:
        worker = _start(_env(sim, db_url, run_dir, "phoenix"), tmp_path / "worker.log")
        try:
            await wait_until(lambda: _registered_pid(path) == worker.pid or worker.poll() is not None, 60,
                             "the worker to take over the stale registration")
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            # Connected means started: its SIGTERM handler (drain, flush, unregister) is in place.
            await wait_until(lambda: sim.stats["connections"] >= 1, 60, "the worker to connect")
        finally:
            rc = await _stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert rc == 0, log[-3000:]
    assert f"taking over the stale registration {path}: pid {gone.pid} does not exist" in log
    assert not path.exists()


CLAIM = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tickvault.config import Settings
    from tickvault.registration import WorkerNameTaken, register_worker

    sys.stdin.readline()  # "go": every contender is started and waiting
    try:
        register_worker(Settings(run_dir=Path(sys.argv[1])), name="contested", pid=os.getpid())
        print("won", flush=True)
    except WorkerNameTaken:
        print("taken", flush=True)
    sys.stdin.read()  # keep the claim live until the test is done
    """
)


async def test_concurrent_claims_of_one_name_let_exactly_one_worker_win(tmp_path):
    settings = Settings(run_dir=tmp_path)
    contenders = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for proc in contenders:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        answers = [(await asyncio.to_thread(read_lines, p, 30, "the contender's answer", count=1))[0]
                   for p in contenders]
        assert sorted(a.strip() for a in answers) == ["taken", "taken", "taken", "won"]
        winner = contenders[[a.strip() for a in answers].index("won")]
        assert _registered_pid(tmp_path / "worker-contested.json") == winner.pid
        from tickvault.registration import unregister_worker

        loser = next(p for p in contenders if p is not winner)
        assert not unregister_worker(settings, "contested", pid=loser.pid)  # never another's
        assert _registered_pid(tmp_path / "worker-contested.json") == winner.pid
    finally:
        for proc in contenders:
            proc.stdin.close()
            proc.wait(timeout=30)
    assert [p.name for p in tmp_path.iterdir()] == ["worker-contested.json"]  # no temporary or lock files
