"""``profile_worker``: py-spy on the running streaming worker for N seconds; the report (speedscope
JSON, flamegraph SVG, dumps, summary) goes to S3 (or the local profile directory when no bucket is
set, and the artifact says so), a row goes into ``profiles``, and functions whose share of samples
grew past the threshold since the previous report are flagged.

A worker that is not running, or a py-spy without permission to read it, ends the run in a Failed
state whose message says what to do; it is not a crash.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
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
from tickvault.profiling import ProfilerError, Regression, WorkerNotRunning, compare_reports
from tickvault.registration import AmbiguousWorker
from tickvault.reports import ReportStore, ReportStoreError, StoredReport

ARTIFACT_KEY = "profile-worker"
TOP_ROWS = 10  # functions per table in the artifact; the summary in the store keeps 20


@dataclass
class ProfileRunSummary:
    worker: str
    pid: int
    seconds: float
    store: str  # ReportStore.describe(): where the report went
    location: str
    profile_id: int
    summary: dict[str, Any]
    links: dict[str, str] = field(default_factory=dict)  # artifact name -> URI (s3:// or file://)
    regressions: list[Regression] = field(default_factory=list)
    had_previous: bool = False

    def to_markdown(self) -> str:
        s = self.summary
        cpu = (s.get("cpu") or {}).get("mean_percent")
        rss = (s.get("rss") or {}).get("mean_bytes")
        lines = [
            f"# Profile of worker `{self.worker}` (pid {self.pid})",
            "",
            f"- window: {self.seconds:g} s at {s.get('rate_hz')} Hz, {s.get('samples')} samples",
            f"- CPU: {cpu if cpu is not None else '-'} % mean; RSS: "
            f"{f'{rss / 2**20:.0f} MB' if rss is not None else '-'} mean",
            f"- stored in {self.store}",
            f"- report: `{self.location}` (profiles row {self.profile_id})",
            "",
            "## Regressions",
            "",
        ]
        if not self.had_previous:
            lines.append("No previous report to compare with.")
        elif self.regressions:
            lines += [f"- **{r}**" for r in self.regressions]
        else:
            lines.append("None: no function's own share grew past the threshold.")
        lines += ["", "## Files", "", "| file | link |", "|---|---|"]
        for name, link in self.links.items():
            lines.append(f"| {name} | [{link.split('?')[0].rsplit('/', 1)[-1]}]({link}) |")
        for title, rows in (("Top functions by own time", s.get("top_self")),
                            ("Top functions by total time", s.get("top_total"))):
            lines += ["", f"## {title}", "", "| share | function |", "|---:|---|"]
            for row in (rows or [])[:TOP_ROWS]:
                lines.append(f"| {row['share']:.1%} | `{row['function']}` |")
        return "\n".join(lines) + "\n"


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
    logger = get_run_logger()
    try:
        info = await locate_worker(settings, worker)
        store = ReportStore.from_settings(settings)
        logger.info("profiling %s (pid %d) for %g s; reports go to %s", info.name, info.pid, seconds, store.describe())
        with tempfile.TemporaryDirectory(prefix="tickvault-profile-") as tmp:
            report = await record_profile.with_options(timeout_seconds=seconds + RECORD_MARGIN_S)(
                info.pid, seconds, rate_hz, Path(tmp)
            )
            when = report.started_at
            previous = await previous_summary(store, info.name, when)
            regressions = compare_reports(previous, report.summary, threshold)
            stored: StoredReport = await upload_report(store, info.name, when, report.files, report.summary)
        profile_id = await insert_profile_row(database_url(settings), report, stored, regressions)
    except (WorkerNotRunning, AmbiguousWorker, ProfilerError, ReportStoreError) as exc:
        # ProfilerError covers ProfilerPermissionError; its message says how to grant the permission.
        message = f"{type(exc).__name__}: {exc}"
        logger.error(message)
        await publish_markdown(ARTIFACT_KEY, f"# Profiling failed\n\n```\n{exc}\n```\n", "Profiling failed")
        return Failed(message=message)
    result = ProfileRunSummary(
        worker=info.name,
        pid=info.pid,
        seconds=seconds,
        store=store.describe(),
        location=stored.location,
        profile_id=profile_id,
        summary=report.summary,
        links={name: a.url or a.uri for name, a in {**stored.artifacts, "summary.json": stored.summary}.items()},
        regressions=regressions,
        had_previous=previous is not None,
    )
    await publish_markdown(
        ARTIFACT_KEY,
        result.to_markdown(),
        f"{info.name}: {len(regressions)} regression(s)" if previous is not None else f"{info.name}: first report",
    )
    for r in regressions:
        logger.warning("profile regression: %s", r)
    return result


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    asyncio.run(profile_worker_flow())
