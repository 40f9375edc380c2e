"""Waiting on a condition with a deadline: how tests synchronise with processes, never a bare sleep.

One helper for async tests (:func:`wait_until`) and one for sync ones (:func:`wait_for`); each polls
a condition and fails naming what it waited for. The poll interval is how often to look, not a
guess at how long something takes. :func:`loop_turns` counts the event loop's turns while code
runs, for tests that prove the code does not block the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any


async def wait_until(condition: Callable[[], Any | Awaitable[Any]], timeout: float, what: str,
                     poll: float = 0.05) -> Any:
    """Poll ``condition`` (sync or async) until it returns a truthy value, which is returned; fail
    naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(poll)  # the polling interval, not a synchronisation sleep


def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, proc: subprocess.Popen | None = None,
             poll: float = 0.1) -> Any:
    """The same for sync code; with ``proc``, fail at once if that process exits while waiting."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if proc is not None:
            try:
                proc.wait(timeout=poll)  # returns at once if the process died
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        time.sleep(poll)  # the polling interval, not a synchronisation sleep


class LoopTurns:
    """How often the task of :func:`loop_turns` got the event loop."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@asynccontextmanager
async def loop_turns(interval: float = 0) -> AsyncIterator[LoopTurns]:
    """Count the event loop's turns while the block runs: a task that adds one and sleeps
    ``interval`` s (0: every turn), started before the block and stopped after it. Code that
    blocks the loop leaves the count low; the count is about blocking, never about speed."""
    turns = LoopTurns()

    async def turn() -> None:
        while True:
            turns.count += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(turn())
    await asyncio.sleep(0)  # the counting task has started
    try:
        yield turns
    finally:
        task.cancel()
