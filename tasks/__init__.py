"""Prefect tasks the flows in ``flows/`` compose: each is a few lines around a function of
:mod:`tickvault`, with a name that reads well in the Prefect UI, a timeout, and retries with
backoff only where a retry is safe (reads, and writes that are idempotent).

Tasks never cache their results (``NO_CACHE``): every run must look at the broker and the
database afresh, and their inputs (Settings with secrets) must never be hashed into a cache key.
"""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

__all__ = ["JITTER", "NO_CACHE", "READ_RETRIES", "WRITE_RETRIES", "backoff"]

# Reads: 3 retries at 2, 4, 8 s (±50 % jitter) ride out a database restart or a REST hiccup that
# outlived the HTTP client's own retries, without running into the next scheduled run.
READ_RETRIES = 3
# Idempotent writes (upserts, drop_chunks, overwriting the same S3 keys): fewer, same backoff.
WRITE_RETRIES = 2
JITTER = 0.5


def backoff(retries: int) -> list[float]:
    """Exponential delays for ``retries`` retries starting at 2 s."""
    return exponential_backoff(backoff_factor=2)(retries)
