"""``refresh_indicators``: refresh the OHLCV aggregates, then compute the 1-minute indicators of
every symbol with new bars, vectorized, and upsert them (equal to the worker's incremental ones)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow

from tasks.indicators import check_timescaledb_jobs, compute_indicators, find_new_bars, refresh_ohlcv_aggregates
from tasks.publish import publish_markdown
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.indicator_refresh import WARMUP_BARS, IndicatorRefreshSummary

ARTIFACT_KEY = "refresh-indicators"


@flow(name="refresh-indicators", timeout_seconds=600)
async def refresh_indicators_flow(
    since: datetime | None = None, symbols: list[str] | None = None, warmup_bars: int = WARMUP_BARS
) -> IndicatorRefreshSummary:
    """``since``: recompute every bar from then (default: from each symbol's last computed bar).
    ``symbols``: only these (default: all with new bars). ``warmup_bars``: history loaded before
    the first new bar (1000 equals a full replay; see tickvault.indicator_refresh)."""
    url = database_url(load_settings())
    t0 = time.perf_counter()
    summary = IndicatorRefreshSummary(started_at=datetime.now(UTC))
    summary.aggregates = await refresh_ohlcv_aggregates(url)
    t1 = time.perf_counter()
    new_bars = await find_new_bars(url, since=since, symbols=symbols)
    summary.symbols = await compute_indicators(url, new_bars, warmup_bars=warmup_bars)
    summary.aggregates_s, summary.compute_s = t1 - t0, time.perf_counter() - t1
    summary.jobs = await check_timescaledb_jobs(url)
    summary.duration_s = time.perf_counter() - t0
    failing = sum(j.failing for j in summary.jobs)
    await publish_markdown(
        ARTIFACT_KEY,
        summary.to_markdown(),
        f"{summary.rows_upserted} indicator rows, {len(summary.symbols)} symbols"
        + (f", {failing} failing TimescaleDB job(s)" if failing else ""),
    )
    return summary


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(refresh_indicators_flow())
