"""Profiling tasks: find the worker, record it with py-spy, store the report, remember it.

A worker that is not running, or a py-spy without permission, is an expected outcome: those two
tasks *return* the specific exception from :mod:`tickvault.registration` / :mod:`tickvault.jobs.profiling`
rather than raise it (a raised one fails the task run with a traceback in the flow run's log); the
flow turns it into a Failed state and an artifact saying what to do. Recording is never retried (it is the expensive part, and a permission
problem will not fix itself); storing and reading reports are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task

from tasks import JITTER, NO_CACHE, READ_RETRIES, WRITE_RETRIES, backoff
from tickvault.config import Settings
from tickvault.jobs.profiling import (
    ProfileReport,
    ProfilerError,
    Regression,
    profile_process_async,
)
from tickvault.registration import AmbiguousWorker, WorkerInfo, WorkerNotRunning, find_worker
from tickvault.jobs.reports import ReportStore, StoredReport, profile_row, record_profile_row

# py-spy needs a moment to attach and to write its files after the window (profiling.py allows
# 30 s of grace per recorder); on top of that, a margin before the task is declared hung.
RECORD_MARGIN_S = 90


@task(name="Find running worker", timeout_seconds=30, cache_policy=NO_CACHE)
async def locate_worker(
    settings: Settings, name: str | None = None
) -> WorkerInfo | WorkerNotRunning | AmbiguousWorker:
    try:
        return find_worker(settings, name)
    except (WorkerNotRunning, AmbiguousWorker) as exc:
        return exc


@task(name="Record py-spy profile", timeout_seconds=3600, cache_policy=NO_CACHE)
async def record_profile(pid: int, seconds: float, rate_hz: int, out_dir: Path) -> ProfileReport | ProfilerError | WorkerNotRunning:
    """The task's own timeout is a backstop; call it ``.with_options(timeout_seconds=seconds + RECORD_MARGIN_S)``.
    A worker gone since it was found, or no permission to trace it, is returned (see the module docstring)."""
    try:
        return await profile_process_async(pid, seconds=seconds, rate_hz=rate_hz, out_dir=out_dir)
    except (ProfilerError, WorkerNotRunning) as exc:
        return exc


@task(
    name="Read previous profile summary",
    retries=READ_RETRIES,
    retry_delay_seconds=backoff(READ_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=120,
    cache_policy=NO_CACHE,
)
async def previous_summary(store: ReportStore, worker: str, before: datetime) -> dict[str, Any] | None:
    return await store.latest_summary_async(worker, before)


@task(
    name="Upload profile report",
    retries=WRITE_RETRIES,  # the same keys are overwritten: idempotent
    retry_delay_seconds=backoff(WRITE_RETRIES),
    retry_jitter_factor=JITTER,
    timeout_seconds=600,
    cache_policy=NO_CACHE,
)
async def upload_report(
    store: ReportStore, worker: str, when: datetime, files: Mapping[str, Path], summary: Mapping[str, Any]
) -> StoredReport:
    return await store.put_report_async(worker, when, files, summary)


@task(name="Record profile row", timeout_seconds=60, cache_policy=NO_CACHE)  # an INSERT: not retried
async def insert_profile_row(
    url: str, report: ProfileReport, stored: StoredReport, regressions: Sequence[Regression]
) -> int:
    return await record_profile_row(url, profile_row(report, stored, regressions))
