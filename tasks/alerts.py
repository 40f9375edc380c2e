"""The alert check as a Prefect task: incidents opened/resolved against the database (logic in
``tickvault.jobs.alerts``), each announced as a Prefect event that the automations notify."""

from __future__ import annotations

from prefect import task

from tickvault.jobs.alerts import AlertReport, check_alerts, prefect_emit
from tickvault.config import Settings


@task(name="check-incidents", retries=2, retry_delay_seconds=[5, 15], timeout_seconds=60)
def check_incidents(settings: Settings, db_url: str) -> AlertReport:
    return check_alerts(db_url, settings, prefect_emit)
