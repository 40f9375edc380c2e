"""The environment of the test suite's own Prefect servers (one per module that needs one)."""

from __future__ import annotations

from pathlib import Path


def prefect_server_env(home: Path) -> dict[str, str]:
    """Variables for a test Prefect server and its clients, state under ``home``.

    The server's scheduler service is off. prefect.yaml's deployments carry real New York schedules
    (reconcile every 5 minutes and indicators every minute during market hours, the alert check every
    minute); with the scheduler on, a suite that runs on a weekday between 09:30 and 16:00 New York
    time gets those runs beside its own, and the process worker runs them: a scheduled reconcile
    repaired the fill a test had just removed before the test's own run could report it. Tests run
    deployments explicitly; the schedules themselves are still deployed and asserted.
    """
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        # this pytest process runs no flows; without this its API log handler tries to flush to the
        # (by then stopped) test server at exit and prints a connection error
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
    }
