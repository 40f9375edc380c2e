"""``purge_retention``: drop the chunks older than each table's retention window and report the
chunks and bytes freed; nothing inside a window is touched."""

from __future__ import annotations

from prefect import flow

from tasks.publish import publish_markdown
from tasks.retention import drop_expired_chunks
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.market_time import MarketClock
from tickvault.jobs.retention import PurgeReport
from tickvault.run_logs import tickvault_logs_in_flow_run

ARTIFACT_KEY = "purge-retention"


@flow(name="purge-retention", timeout_seconds=3600)
async def purge_retention_flow(dry_run: bool = False) -> PurgeReport:
    """``dry_run``: report what would be dropped, drop nothing."""
    settings = load_settings()
    with tickvault_logs_in_flow_run(settings, database_url(settings)):
        report = await drop_expired_chunks(settings, dry_run=dry_run)
        await publish_markdown(ARTIFACT_KEY, report.to_markdown(MarketClock.from_settings(settings)), report.headline())
    return report


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(purge_retention_flow())
