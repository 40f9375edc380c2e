"""Live updates for open pages: one poller per process, fanned out to bounded per-page queues.

However many pages are open, the database sees one query per watched symbol (its open 1-minute
bar, and the one before during the first seconds of a minute, with their indicators) and one for new ``ingest_stats`` rows, every
``ui_live_interval_s``. A 1-minute page takes those bars as they are; a page on a longer timeframe
re-reads its newest bucket through ``/api/bars`` on its own timer (every 5-30 s by timeframe), so
each such open page adds one bars query per tick of that timer. Nothing is polled while no page
listens.

Bounds: each page's queue holds ``PAGE_QUEUE_MAX`` updates (about that many seconds of updates).
A page that falls that far behind (a frozen tab, a slow link) has its queue emptied and gets one
``resync`` event, on which it reloads what it shows: memory stays flat and the page is never wrong,
only late. What this module must never do: write to the database, or let a slow page slow the
poller (puts never wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from tickvault.ui import queries

log = logging.getLogger("tickvault.ui.live")

PAGE_QUEUE_MAX = 64  # updates per page; one per interval per topic, so about a minute of backlog
HEALTH = "health"  # the topic of ingest_stats rows (market topics are symbols)


@dataclass(eq=False)
class Page:
    topic: str
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=PAGE_QUEUE_MAX))
    resyncs: int = 0

    def offer(self, event: str, data: Any) -> None:
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", {}))
            self.resyncs += 1


class LiveHub:
    def __init__(self, pool: AsyncConnectionPool, interval_s: float) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self._pages: set[Page] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._health_since = time.time() - 60
        self.polls = 0  # queries run, for tests and the bench

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ui-live")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @asynccontextmanager
    async def listen(self, topic: str) -> AsyncIterator[Page]:
        page = Page(topic)
        self._pages.add(page)
        self._wake.set()
        try:
            yield page
        finally:
            self._pages.discard(page)

    async def _run(self) -> None:
        while True:
            if not self._pages:
                self._wake.clear()
                await self._wake.wait()
            started = time.monotonic()
            try:
                await self._poll()
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end live updates
                log.warning("live update poll failed: %s", exc)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def _poll(self) -> None:
        topics = {p.topic for p in self._pages}
        async with self.pool.connection() as conn:
            for topic in sorted(topics):
                if topic == HEALTH:
                    rows = await queries.ingest_since(conn, self._health_since)
                    self.polls += 1
                    if rows:
                        self._health_since = max(r["t"] for r in rows)
                        self._publish(HEALTH, "stats", rows)
                else:
                    found = await queries.latest_bars(conn, topic)
                    self.polls += 1
                    if found.count:
                        self._publish(topic, "bars", orjson.Fragment(found.json))  # sent as PostgreSQL wrote it

    def _publish(self, topic: str, event: str, data: Any) -> None:
        for page in list(self._pages):
            if page.topic == topic:
                page.offer(event, data)
