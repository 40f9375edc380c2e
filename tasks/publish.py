"""Publishing a flow's result where a person reads it: a markdown artifact in the Prefect UI.

Not a task, on purpose: an artifact created inside a task run is attached to that task run, and
the flow run's Artifacts tab then shows it under "Flow run: None". Called from the flow's own body,
the artifact belongs to the flow run (the Prefect client retries the API call itself on 429/5xx).
"""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import acreate_markdown_artifact


async def publish_markdown(key: str, markdown: str, description: str) -> UUID:
    """``key`` groups a flow's artifacts across runs in the UI (lowercase, digits and dashes): it is
    stable per flow, so the Artifacts page keeps each flow's history under one name."""
    return await acreate_markdown_artifact(markdown=markdown, key=key, description=description)
