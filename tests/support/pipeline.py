"""The worker's real writer on a real pool, for tests that drive a Processor frame by frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

from tickvault.config import load_settings
from tickvault.db.pool import open_pool
from tickvault.stream.metrics import Metrics
from tickvault.stream.writer import BatchWriter


class Pipeline(NamedTuple):
    pool: object
    writer: BatchWriter
    metrics: Metrics


@asynccontextmanager
async def writer_pipeline(url: str, name: str) -> AsyncIterator[Pipeline]:
    """A pool on ``url`` and a running :class:`BatchWriter` (flushes every 10 ms); on exit the
    writer is closed after committing what it holds, and the pool is closed."""
    pool = await open_pool(load_settings(database_url=url), min_size=1, name=name)
    metrics = Metrics()
    writer = BatchWriter(pool, metrics, worker="t", batch_rows=1000, flush_ms=10)
    writer_task = asyncio.create_task(writer.run())
    try:
        yield Pipeline(pool, writer, metrics)
    finally:
        writer.close()
        await writer_task
        await pool.close()
