"""What the process's one pooled HTTP client did during a flow run, for the run's report."""

from __future__ import annotations

from tickvault.config import Settings
from tickvault.http import PoolStats, get_http_client, pool_stats


def http_pool_snapshot(settings: Settings) -> PoolStats:
    """Stats of the shared client of the running loop (the one every task of this run used)."""
    return pool_stats(get_http_client(settings))


def http_pool_markdown(stats: PoolStats) -> str:
    # The exact wording is read back by tests/test_flows.py; keep them in step.
    return (
        f"HTTP: {stats.requests} requests over {stats.connections_opened} connections "
        f"(pool max {stats.max_connections})"
    )
