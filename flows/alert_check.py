"""``alert_check``: open and resolve tickvault's incidents (a silent worker, unrepaired
reconciliation drift, a failing TimescaleDB job); the automations ``tickvault deploy`` creates
turn each into one webhook notification (see ``tickvault.alerts``)."""

from __future__ import annotations

from prefect import flow

from tasks.alerts import check_incidents
from tickvault.config import load_settings
from tickvault.db import database_url


@flow(name="alert-check", timeout_seconds=120)
def alert_check_flow() -> dict:
    settings = load_settings()
    report = check_incidents(settings, database_url(settings))
    return {"opened": [c.key for c in report.opened], "resolved": [c.key for c in report.resolved],
            "open": report.open_now}


if __name__ == "__main__":  # pragma: no cover
    alert_check_flow()
