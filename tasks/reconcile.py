"""The reconciliation task: broker state fetched concurrently, compared and repaired by
:func:`tickvault.jobs.reconcile.reconcile` through the process's shared HTTP client."""

from __future__ import annotations

from prefect import task

from tasks import JITTER, NO_CACHE, WRITE_RETRIES, backoff
from tickvault.config import Settings
from tickvault.db import database_url
from tickvault.jobs.reconcile import ReconcileSummary, reconcile


@task(
    name="Reconcile account with broker",
    # Safe to retry: a reconciliation repairs only what still differs, so a second attempt after
    # a partial one never repairs twice; it never sends orders.
    retries=WRITE_RETRIES,
    retry_delay_seconds=backoff(WRITE_RETRIES),
    retry_jitter_factor=JITTER,
    # Four concurrent REST reads (each retried by the client within http_timeout_s) plus a few
    # SQL statements: minutes would mean a hung connection, not a slow broker.
    timeout_seconds=300,
    cache_policy=NO_CACHE,
)
async def reconcile_with_broker(settings: Settings) -> ReconcileSummary:
    return await reconcile(settings, db_url=database_url(settings))
