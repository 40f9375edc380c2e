"""tests/support/pipes.py: a child's banner read with a deadline; a child that hangs or dies before
printing fails the test at once with its output and exit status instead of hanging the run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.pipes import read_lines

# A child that prints what it is told, then waits for its stdin to close (it never exits on its own).
ECHO_THEN_WAIT = "import sys; print(sys.argv[1], flush=True); print('to stderr', file=sys.stderr, flush=True); sys.stdin.read()"


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.kill()
    proc.wait(timeout=30)


def test_lines_by_count_and_up_to_a_blank_line_then_on_from_there():
    proc = _child(ECHO_THEN_WAIT, "one\ntwo\n\nthree\nfour")
    try:
        assert read_lines(proc, 30, "two lines", count=2) == ["one", "two"]
        assert read_lines(proc, 30, "the rest of the banner", until=lambda line: not line.strip()) == [""]
        assert read_lines(proc, 30, "what follows", until=lambda line: line == "four") == ["three", "four"]
    finally:
        _end(proc)


def test_a_child_that_never_prints_fails_at_the_deadline_still_running():
    proc = _child("import sys; sys.stdin.read()")
    try:
        with pytest.raises(AssertionError, match=r"timed out after 0.5 s waiting for the banner; .* still running"):
            read_lines(proc, 0.5, "the banner", count=1)
        assert proc.poll() is None  # it returned while the child (which never ends by itself) still runs
    finally:
        _end(proc)


def test_a_child_that_dies_first_fails_with_its_output_and_exit_status():
    proc = _child("import sys; print('starting', flush=True); sys.exit('bad setting: TICKVAULT_SIM_PORT')")
    with pytest.raises(AssertionError) as failed:
        read_lines(proc, 60, "the simulator's banner", count=4)
    text = str(failed.value)
    assert "the simulator's banner: the child's stdout ended first" in text
    assert "exited with status 1" in text and "starting" in text and "bad setting: TICKVAULT_SIM_PORT" in text
    proc.wait(timeout=30)


def test_exactly_one_of_count_and_until():
    proc = _child(ECHO_THEN_WAIT, "x")
    try:
        with pytest.raises(ValueError):
            read_lines(proc, 1, "nothing")
        with pytest.raises(ValueError):
            read_lines(proc, 1, "nothing", count=1, until=bool)
    finally:
        _end(proc)
