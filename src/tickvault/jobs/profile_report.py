"""What a ``profile_worker`` run tells a person: the report's summary with links (flame graph
first), regressions against the previous report, the top functions; or, when profiling could not
happen, what was looked for and what to do. Pure formatting over :mod:`tickvault.jobs.profiling`'s and
:mod:`tickvault.jobs.reports`' results; nothing here touches a process, a store or Prefect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tickvault.market_time import MarketClock
from tickvault.jobs.markdown import table
from tickvault.jobs.profiling import FLAMEGRAPH_FILE, SPEEDSCOPE_FILE, Regression
from tickvault.registration import AmbiguousWorker, WorkerNotRunning

log = logging.getLogger("tickvault.jobs.profiling")

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
    started_at: datetime | None = None
    links: dict[str, str] = field(default_factory=dict)  # artifact name -> URI (s3:// or file://)
    regressions: list[Regression] = field(default_factory=list)
    had_previous: bool = False

    def headline(self) -> str:
        return f"Profile of worker `{self.worker}` (pid {self.pid}): {self.outcome()}"

    def outcome(self) -> str:
        if not self.had_previous:
            return "first report"
        n = len(self.regressions)
        return "no regression" if n == 0 else f"{n} regression{'s' if n != 1 else ''}"

    def log_line(self) -> str:
        s = self.summary
        cpu = (s.get("cpu") or {}).get("mean_percent")
        return (
            f"profile-worker: {self.worker} (pid {self.pid}) for {self.seconds:g} s, {s.get('samples')} samples, "
            f"CPU {cpu if cpu is not None else '-'} %; {self.outcome()}; report in {self.location}"
        )

    def to_markdown(self, clock: MarketClock | None = None) -> str:
        clock = clock or MarketClock()
        s = self.summary
        cpu = (s.get("cpu") or {}).get("mean_percent")
        rss = (s.get("rss") or {}).get("mean_bytes")
        lines = [f"# {self.headline()}", ""]
        flame = self.links.get(FLAMEGRAPH_FILE)
        speedscope = self.links.get(SPEEDSCOPE_FILE)
        if flame:
            lines.append(
                f"**[Open the flame graph]({flame})**"
                + (f" · [speedscope profile]({speedscope}) (drop it on https://www.speedscope.app)" if speedscope else "")
            )
            lines.append("")
        lines += [
            f"- recorded {clock.stamp(self.started_at)}" if self.started_at else "- recorded: -",
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
        lines += ["", "## Files", ""] + table(
            ("file", "link"),
            [(name, f"[{link.split('?')[0].rsplit('/', 1)[-1]}]({link})") for name, link in self.links.items()],
        )
        for title, rows in (("Top functions by own time", s.get("top_self")),
                            ("Top functions by total time", s.get("top_total"))):
            lines += ["", f"## {title}", ""] + table(
                ("share", "function"),
                [(f"{row['share']:.1%}", f"`{row['function']}`") for row in (rows or [])[:TOP_ROWS]],
                right=(0,),
            )
        return "\n".join(lines) + "\n"


def failure_headline(exc: Exception) -> str:
    if isinstance(exc, WorkerNotRunning):
        who = f"worker `{exc.looked_for}`" if exc.looked_for else "no worker"
        return f"Profiling failed: {who} {'is not' if exc.looked_for else 'is'} running on this host"
    if isinstance(exc, AmbiguousWorker):
        return "Profiling failed: several workers are running; choose one"
    return "Profiling failed"


def failure_markdown(exc: Exception, clock: MarketClock | None = None, *, now: datetime | None = None) -> str:
    """The artifact of a run that could not profile: what happened, where, and what to do."""
    clock = clock or MarketClock()
    lines = [f"# {failure_headline(exc)}", ""]
    if now is not None:
        lines += [f"At {clock.stamp(now)}.", ""]
    if isinstance(exc, WorkerNotRunning) and exc.start_command:
        looked = f"a registration of worker `{exc.looked_for}`" if exc.looked_for else "any worker's registration"
        lines += [
            f"Looked for {looked} in `{exc.run_dir}` (TICKVAULT_RUN_DIR of the Prefect worker running this flow).",
            "",
        ]
        if exc.looked_at:
            lines += table(("registration", "why it was not used"),
                           [(f"`{path}`", why) for path, _, why in (e.partition(": ") for e in exc.looked_at)])
            lines.append("")
        lines += [
            "## What to do",
            "",
            "Start the streaming worker on this host, with the same run directory, then run this deployment again:",
            "",
            f"```sh\n{exc.start_command}\n```",
            "",
            "Or pass the name of a worker that is running as the `worker` parameter (*Run* → *Custom run*).",
        ]
    else:
        lines += ["```", str(exc), "```"]
    return "\n".join(lines) + "\n"
