"""``alert_check``: open and resolve tickvault's incidents (a silent worker, unrepaired
reconciliation drift, a failing TimescaleDB job); the automations ``tickvault deploy`` creates
turn each into one webhook notification (see ``tickvault.jobs.alerts``). Its artifact says what is open."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.alerts import check_incidents
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.market_time import MarketClock
from tickvault.run_logs import tickvault_logs_in_flow_run

ARTIFACT_KEY = "alert-check"


@flow(name="alert-check", timeout_seconds=120)
def alert_check_flow() -> dict:
    settings = load_settings()
    url = database_url(settings)
    with tickvault_logs_in_flow_run(settings, url):
        report = check_incidents(settings, url)
        clock = MarketClock.from_settings(settings)
        # In the flow's own body (not a task), so the artifact belongs to the flow run (tasks/publish.py).
        create_markdown_artifact(markdown=report.to_markdown(clock), key=ARTIFACT_KEY,
                                 description=report.headline(clock))
    return {"opened": [c.key for c in report.opened], "resolved": [c.key for c in report.resolved],
            "open": report.open_now}


if __name__ == "__main__":  # pragma: no cover
    alert_check_flow()
