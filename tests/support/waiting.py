"""Waiting on a condition with a deadline: how tests synchronise with processes, never a bare sleep.

One helper for async tests (:func:`wait_until`) and one for sync ones (:func:`wait_for`); each polls
a condition and fails naming what it waited for. The poll interval is how often to look, not a
guess at how long something takes.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Awaitable, Callable
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
