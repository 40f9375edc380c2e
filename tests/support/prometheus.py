"""Reading a worker's Prometheus endpoint: its samples by name and labels, as a test asks for them."""

from __future__ import annotations

import httpx


async def scrape(port: int) -> dict[str, float]:
    """Every sample of ``http://127.0.0.1:<port>/metrics``, keyed by the sample's name and labels as
    written (``tickvault_worker_phase{worker="w",phase="running"}``); {} while nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.TransportError:
        return {}
    return {key: float(value) for key, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}


async def sample(port: int, name: str, **labels: str) -> float:
    """The first sample called ``name`` carrying every one of ``labels`` (0 while the endpoint or the
    sample is not there yet)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in (await scrape(port)).items():
        if key.partition("{")[0] == name and all(w in key for w in wanted):
            return value
    return 0.0


async def worker_phase(port: int) -> str | None:
    """The phase ``tickvault_worker_phase`` marks with 1 (None while the endpoint does not answer)."""
    for key, value in (await scrape(port)).items():
        if key.startswith("tickvault_worker_phase{") and value == 1:
            return key.split('phase="', 1)[1].split('"', 1)[0]
    return None
