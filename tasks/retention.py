"""The retention task: drop chunks older than each table's window (settings ``retention_*``)."""

from __future__ import annotations

from prefect import task

from tasks import JITTER, NO_CACHE, WRITE_RETRIES, backoff
from tickvault.config import Settings
from tickvault.db import database_url
from tickvault.jobs.retention import PurgeReport, purge_retention


@task(
    name="Drop chunks past retention",
    # drop_chunks is idempotent: a retry drops what the failed attempt did not.
    retries=WRITE_RETRIES,
    retry_delay_seconds=backoff(WRITE_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=1800,  # dropping chunks is metadata work; half an hour means a lock wait gone wrong
    cache_policy=NO_CACHE,
)
async def drop_expired_chunks(settings: Settings, dry_run: bool = False) -> PurgeReport:
    return await purge_retention(settings, db_url=database_url(settings), dry_run=dry_run)
