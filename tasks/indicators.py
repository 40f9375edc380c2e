"""Indicator refresh tasks: aggregates, which symbols have new bars, vectorized indicators.

The work is :mod:`tickvault.jobs.indicators` (blocking psycopg + numpy), run in threads so the
flow's event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from prefect import task

from tasks import JITTER, NO_CACHE, READ_RETRIES, WRITE_RETRIES, backoff
from tickvault.config import Settings
from tickvault.indicators.sessions import NEW_YORK, SessionCalendar, calendar_range, fetch_session_calendar
from tickvault.jobs import indicators as logic
from tickvault.db.aggregates import RefreshResult
from tickvault.db.jobs import JobHealth

# Symbols computed at once: each holds one database connection for its load + upsert, so this
# bounds the flow's connections (the worker's pool needs the rest).
SYMBOL_CONCURRENCY = 4


@task(
    name="Refresh OHLCV aggregates",
    retries=WRITE_RETRIES,  # both editions' refreshes are idempotent
    retry_delay_seconds=backoff(WRITE_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=300,
    cache_policy=NO_CACHE,
)
async def refresh_ohlcv_aggregates(url: str) -> list[RefreshResult]:
    return await asyncio.to_thread(logic.refresh_aggregates, url)


@task(
    name="Read OHLCV materialization state",
    retries=READ_RETRIES,
    retry_delay_seconds=backoff(READ_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=60,
    cache_policy=NO_CACHE,
)
async def read_ohlcv_state(url: str) -> logic.OhlcvState:
    """How far each timeframe is materialized after the refresh, on either edition."""
    return await asyncio.to_thread(logic.read_ohlcv_state, url)


@task(
    name="Check TimescaleDB background jobs",
    retries=READ_RETRIES,
    retry_delay_seconds=backoff(READ_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=60,
    cache_policy=NO_CACHE,
)
async def check_timescaledb_jobs(url: str) -> list[JobHealth]:
    """A failing refresh policy stops the OHLCV views materializing: warn in the run's log and artifact."""
    return await asyncio.to_thread(logic.check_jobs, url)


@task(
    name="Fetch the exchange calendar",
    timeout_seconds=60,  # no task retries: the REST client retries, and a failure falls back (logged)
    cache_policy=NO_CACHE,
)
async def fetch_calendar(settings: Settings, since: datetime | None = None) -> SessionCalendar:
    """The US equity sessions (``GET /v2/calendar``) over the warm-up of every bar the run may
    compute; the default rule, with a warning, when Alpaca cannot be reached."""
    from tickvault.alpaca.rest import AlpacaREST

    start, end = calendar_range()
    if since is not None:
        start = min(start, since.astimezone(NEW_YORK).date() - logic.MAX_HISTORY)
    return await fetch_session_calendar(AlpacaREST(settings), start, end)


@task(
    name="Find symbols with new bars",
    retries=READ_RETRIES,
    retry_delay_seconds=backoff(READ_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=60,
    cache_policy=NO_CACHE,
)
async def find_new_bars(
    url: str, since: datetime | None = None, symbols: Sequence[str] | None = None
) -> list[logic.NewBars]:
    return await asyncio.to_thread(logic.find_new_bars, url, since=since, symbols=symbols)


@task(
    name="Compute and upsert indicators",
    retries=WRITE_RETRIES,  # an upsert keyed by (symbol, timeframe, time): idempotent
    retry_delay_seconds=backoff(WRITE_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=300,
    cache_policy=NO_CACHE,
)
async def compute_indicators(
    url: str,
    new_bars: Sequence[logic.NewBars],
    warmup_bars: int = logic.WARMUP_BARS,
    calendar: SessionCalendar | None = None,
) -> list[logic.SymbolRefresh]:
    gate = asyncio.Semaphore(SYMBOL_CONCURRENCY)

    async def one(new: logic.NewBars) -> logic.SymbolRefresh:
        async with gate:
            return await asyncio.to_thread(logic.compute_symbol, url, new, warmup_bars=warmup_bars,
                                           calendar=calendar)

    return list(await asyncio.gather(*(one(n) for n in new_bars)))
