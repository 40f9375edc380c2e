"""``profile_worker``: py-spy on the running streaming worker for N seconds; the report (speedscope
JSON, flamegraph SVG, dumps, summary) goes to S3 (or the local profile directory when no bucket is
set, and the artifact says so), a row goes into ``profiles``, and functions whose share of samples
grew past the threshold since the previous report are flagged.

A worker that is not running, or a py-spy without permission to read it, ends the run in a Failed
state whose message (and artifact) says what to do; it is an expected condition, not a crash, so
no traceback goes to the run's log.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.states import Failed, State

from tasks.profiling import (
    RECORD_MARGIN_S,
    insert_profile_row,
    locate_worker,
    previous_summary,
    record_profile,
    upload_report,
)
from tasks.publish import publish_markdown
from tickvault.config import load_settings
from tickvault.db import database_url
from tickvault.market_time import MarketClock
from tickvault.jobs.profile_report import ProfileRunSummary, failure_headline, failure_markdown, log
from tickvault.jobs.profiling import ProfilerError, compare_reports
from tickvault.jobs.reports import ReportStore, ReportStoreError
from tickvault.run_logs import tickvault_logs_in_flow_run

ARTIFACT_KEY = "profile-worker"


@flow(name="profile-worker", timeout_seconds=7200)
async def profile_worker_flow(
    seconds: float | None = None,
    worker: str | None = None,
    rate_hz: int | None = None,
    threshold: float | None = None,
) -> ProfileRunSummary | State:
    """``seconds``/``rate_hz``/``threshold`` default to the profile_* settings; ``worker`` to the
    only registered worker."""
    settings = load_settings()
    seconds = seconds or settings.profile_seconds
    rate_hz = rate_hz or settings.profile_rate_hz
    threshold = threshold or settings.profile_growth_threshold
    clock = MarketClock.from_settings(settings)
    url = database_url(settings)
    with tickvault_logs_in_flow_run(settings, url):
        try:
            info = await locate_worker(settings, worker)
            if isinstance(info, Exception):  # no such worker: an expected outcome, returned by the task
                raise info
            store = ReportStore.from_settings(settings)
            log.info("profiling %s (pid %d) for %g s; reports go to %s", info.name, info.pid, seconds, store.describe())
            with tempfile.TemporaryDirectory(prefix="tickvault-profile-") as tmp:
                report = await record_profile.with_options(timeout_seconds=seconds + RECORD_MARGIN_S)(
                    info.pid, seconds, rate_hz, Path(tmp)
                )
                if isinstance(report, Exception):  # e.g. no permission to trace: says how to grant it
                    raise report
                when = report.started_at
                previous = await previous_summary(store, info.name, when)
                regressions = compare_reports(previous, report.summary, threshold)
                stored = await upload_report(store, info.name, when, report.files, report.summary)
            profile_id = await insert_profile_row(url, report, stored, regressions)
        except (LookupError, ProfilerError, ReportStoreError) as exc:  # WorkerNotRunning, AmbiguousWorker: LookupError
            log.error("profile-worker: %s", exc)
            await publish_markdown(ARTIFACT_KEY, failure_markdown(exc, clock, now=datetime.now(UTC)),
                                   failure_headline(exc))
            return Failed(message=str(exc))
        result = ProfileRunSummary(
            worker=info.name,
            pid=info.pid,
            seconds=seconds,
            store=store.describe(),
            location=stored.location,
            profile_id=profile_id,
            summary=report.summary,
            started_at=report.started_at,
            links={name: a.url or a.uri for name, a in {**stored.artifacts, "summary.json": stored.summary}.items()},
            regressions=regressions,
            had_previous=previous is not None,
        )
        log.info("%s", result.log_line())
        for r in regressions:
            log.warning("profile regression: %s", r)
        await publish_markdown(ARTIFACT_KEY, result.to_markdown(clock), f"{info.name}: {result.outcome()}")
    return result


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(profile_worker_flow())
