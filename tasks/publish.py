"""Publishing a flow's result where a person reads it: a markdown artifact in the Prefect UI."""

from __future__ import annotations

from uuid import UUID

from prefect import task
from prefect.artifacts import acreate_markdown_artifact

from tasks import NO_CACHE, WRITE_RETRIES, backoff


@task(
    name="Publish markdown report",
    retries=WRITE_RETRIES,
    retry_delay_seconds=backoff(WRITE_RETRIES),
    timeout_seconds=30,
    cache_policy=NO_CACHE,
)
async def publish_markdown(key: str, markdown: str, description: str) -> UUID:
    """``key`` groups a flow's artifacts across runs in the UI (lowercase, digits and dashes)."""
    return await acreate_markdown_artifact(markdown=markdown, key=key, description=description)
