"""``refresh_indicators``: refresh the OHLCV aggregates, then compute the 1-minute indicators of
every symbol with new bars, vectorized, and upsert them (equal to the worker's incremental ones)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow

from tasks.indicators import (
    check_timescaledb_jobs,
    compute_indicators,
    fetch_calendar,
    find_new_bars,
    read_ohlcv_state,
    refresh_ohlcv_aggregates,
)
from tasks.publish import publish_markdown
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.jobs.indicators import WARMUP_BARS, IndicatorRefreshSummary, log_summary
from tickvault.market_time import MarketClock
from tickvault.run_logs import tickvault_logs_in_flow_run

ARTIFACT_KEY = "refresh-indicators"


@flow(name="refresh-indicators", timeout_seconds=600)
async def refresh_indicators_flow(
    since: datetime | None = None, symbols: list[str] | None = None, warmup_bars: int = WARMUP_BARS
) -> IndicatorRefreshSummary:
    """``since``: recompute every bar from then (default: from each symbol's last computed bar).
    ``symbols``: only these (default: all with new bars). ``warmup_bars``: history loaded before
    the first new bar (1000 equals a full replay; see tickvault.jobs.indicators)."""
    settings = load_settings()
    url = database_url(settings)
    clock = MarketClock.from_settings(settings)
    with tickvault_logs_in_flow_run(settings, url):
        t0 = time.perf_counter()
        summary = IndicatorRefreshSummary(started_at=datetime.now(UTC))
        summary.aggregates = await refresh_ohlcv_aggregates(url)
        t1 = time.perf_counter()
        new_bars = await find_new_bars(url, since=since, symbols=symbols)
        # VWAP's sessions: the exchange's calendar, as the worker uses (tickvault.indicators.sessions).
        calendar = await fetch_calendar(settings, since=since) if new_bars else None
        summary.symbols = await compute_indicators(url, new_bars, warmup_bars=warmup_bars, calendar=calendar)
        summary.aggregates_s, summary.compute_s = t1 - t0, time.perf_counter() - t1
        summary.ohlcv = await read_ohlcv_state(url)
        summary.jobs = await check_timescaledb_jobs(url)
        summary.duration_s = time.perf_counter() - t0
        log_summary(summary, clock)
        failing = sum(j.failing for j in summary.jobs)
        await publish_markdown(
            ARTIFACT_KEY,
            summary.to_markdown(clock),
            f"{summary.rows_upserted} indicator rows, {len(summary.symbols)} symbols"
            + (f", {failing} failing TimescaleDB job(s)" if failing else ""),
        )
    return summary


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(refresh_indicators_flow())
