"""``purge_retention``: drop the chunks older than each table's retention window and report the
chunks and bytes freed; nothing inside a window is touched."""

from __future__ import annotations

from prefect import flow

from tasks.publish import publish_markdown
from tasks.retention import drop_expired_chunks
from tickvault.config import load_settings
from tickvault.retention import PurgeReport

ARTIFACT_KEY = "purge-retention"


@flow(name="purge-retention", timeout_seconds=3600)
async def purge_retention_flow(dry_run: bool = False) -> PurgeReport:
    """``dry_run``: report what would be dropped, drop nothing."""
    settings = load_settings()
    report = await drop_expired_chunks(settings, dry_run=dry_run)
    await publish_markdown(
        ARTIFACT_KEY, report.to_markdown(), "Retention purge (dry run)" if dry_run else "Retention purge"
    )
    return report


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(purge_retention_flow())
