"""Reading a child process's piped output with a deadline: a child that hangs before it prints must
fail its test, not hang the whole run.

``proc.stdout.readline()`` blocks until the child writes a line or closes the pipe; a simulator stuck
before its banner would block CI forever. :func:`read_lines` reads on a daemon thread per pipe (one
for stdout, one for stderr when it is piped too; both kept on the process, so later calls go on where
the last one stopped and neither pipe fills up and stalls the child) and waits on a queue with a
deadline. On a timeout or an early end of output it fails with what the child printed on both pipes
and its exit status (or that it is still running).
"""

from __future__ import annotations

import io
import queue
import subprocess
import threading
import time
from collections.abc import Callable

_EOF = None  # what a reader thread queues when its pipe closes
_KEEP = 200  # lines of each pipe kept for the failure message (the newest)


class _PipeLines:
    """One daemon thread reading one pipe line by line into a queue (unbounded: a test reads what it
    asked for; the rest of a chatty child's output is only held until the test ends)."""

    def __init__(self, pipe) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []  # every line read so far, newest last, for the failure message
        self.done = threading.Event()  # the pipe is closed and every line read
        threading.Thread(target=self._run, args=(pipe,), daemon=True, name="test-pipe-reader").start()

    def _run(self, pipe) -> None:
        try:
            for line in iter(pipe.readline, "" if isinstance(pipe, io.TextIOBase) else b""):
                text = line if isinstance(line, str) else line.decode(errors="replace")
                self.seen.append(text.rstrip("\n"))
                del self.seen[:-_KEEP]
                self.queue.put(text)
        except (OSError, ValueError):  # the test closed the pipe while the thread read it
            pass
        finally:
            self.done.set()
            self.queue.put(_EOF)


class _ChildOutput:
    def __init__(self, proc: subprocess.Popen) -> None:
        if proc.stdout is None:
            raise ValueError("the child's stdout is not a pipe (Popen(..., stdout=subprocess.PIPE))")
        self.stdout = _PipeLines(proc.stdout)
        self.stderr = _PipeLines(proc.stderr) if proc.stderr is not None else None


def _output(proc: subprocess.Popen) -> _ChildOutput:
    out = getattr(proc, "_tests_output", None)
    if out is None:
        out = _ChildOutput(proc)
        proc._tests_output = out  # type: ignore[attr-defined]  # one reader per pipe, whoever calls
    return out


def read_lines(proc: subprocess.Popen, timeout: float, what: str, *, count: int | None = None,
               until: Callable[[str], bool] | None = None) -> list[str]:
    """The next lines ``proc`` writes to its stdout (newlines stripped): ``count`` of them, or up to
    the first line for which ``until`` is true (that line included). Fails naming ``what`` when
    ``timeout`` s pass first or stdout ends first, with the child's stdout and stderr so far and its
    exit status."""
    if (count is None) == (until is None):
        raise ValueError("give exactly one of count and until")
    out = _output(proc)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while count is None or len(lines) < count:
        try:
            line = out.stdout.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(_failure(proc, out, f"timed out after {timeout} s waiting for {what}")) from None
        if line is _EOF:
            out.stdout.queue.put(_EOF)  # still closed for the next caller
            raise AssertionError(_failure(proc, out, f"{what}: the child's stdout ended first"))
        lines.append(line.rstrip("\n"))
        if until is not None and until(lines[-1]):
            break
    return lines


def _failure(proc: subprocess.Popen, out: _ChildOutput, headline: str) -> str:
    try:
        status = f"exited with status {proc.wait(timeout=1)}"  # a child that just closed its pipe
        for pipe in (out.stdout, out.stderr):
            if pipe is not None:
                pipe.done.wait(1)  # its last lines, for the message
    except subprocess.TimeoutExpired:
        status = "still running"
    parts = [f"{headline}; the child (pid {proc.pid}, {proc.args!r}) {status}",
             "--- its stdout ---", *out.stdout.seen]
    if out.stderr is not None:
        parts += ["--- its stderr ---", *out.stderr.seen]
    return "\n".join(parts)
