"""``reconcile``: the account, positions, open orders and fills at the broker, fetched together
through the process's one HTTP client, compared with the database and repaired where the broker
is the truth (never by sending orders)."""

from __future__ import annotations

from prefect import flow

from tasks.http import http_pool_markdown, http_pool_snapshot
from tasks.publish import publish_markdown
from tasks.reconcile import reconcile_with_broker
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.market_time import MarketClock
from tickvault.jobs.reconcile import ReconcileSummary
from tickvault.run_logs import tickvault_logs_in_flow_run

ARTIFACT_KEY = "reconcile"


@flow(name="reconcile", timeout_seconds=600)
async def reconcile_flow() -> ReconcileSummary:
    settings = load_settings()
    clock = MarketClock.from_settings(settings)
    with tickvault_logs_in_flow_run(settings, database_url(settings)):
        summary = await reconcile_with_broker(settings)
        markdown = summary.to_markdown(clock).rstrip() + "\n\n" + http_pool_markdown(http_pool_snapshot(settings)) + "\n"
        equity = f"; {summary.account_line(clock).split(': ', 1)[1]}" if summary.account else ""
        await publish_markdown(ARTIFACT_KEY, markdown, f"Run {summary.run_id}: {summary.outcome_line()}{equity}")
    return summary


if __name__ == "__main__":  # pragma: no cover - ad-hoc run: python flows/reconcile.py
    import asyncio

    asyncio.run(reconcile_flow())
