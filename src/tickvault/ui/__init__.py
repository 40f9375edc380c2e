"""``tickvault ui``: a local web dashboard over the tickvault database (see docs/dashboard.md).

Market (candles, indicators, live bars), Ingest health (``ingest_stats`` over time, TimescaleDB
jobs, chunks and retention) and Trading (orders, fills, positions, P&L, reconciliation, profiles,
Prefect runs, the kill switch). Served on 127.0.0.1 only; read-only unless the kill switch is
enabled. This module stays light (the CLI imports it at start-up); the web stack loads in
:mod:`tickvault.ui.app` when the command runs.
"""

from __future__ import annotations

import sys

import typer

__all__ = ["ui_command"]


def ui_command() -> None:
    """Serve the dashboard on 127.0.0.1:TICKVAULT_UI_PORT until Ctrl-C / SIGTERM."""
    from tickvault.config import ConfigError, get_settings
    from tickvault.db.local import LocalDatabaseError

    try:
        settings = get_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if settings.ui_port == 0:
        typer.echo("error: TICKVAULT_UI_PORT is 0 (the dashboard is off)", err=True)
        raise typer.Exit(2)
    from tickvault.ui.app import serve

    def ready(url: str) -> None:
        # `tickvault run` reads exactly this one line from the child's stdout, then never again.
        typer.echo(f"  dashboard    {url}")
        sys.stdout.flush()

    try:
        serve(settings, on_ready=ready)
    except LocalDatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
