"""Health of TimescaleDB's background jobs (refresh and compression policies, Timescale's own jobs).

A background job that fails writes only to the server log and to ``timescaledb_information``; a
continuous aggregate whose refresh policy keeps failing silently stops materializing. This module
reads ``jobs``, ``job_stats`` and ``job_errors`` so that ``tickvault db status``, ``tickvault worker
status`` and the flows' artifacts show every failing job: last success, consecutive failures (errors
since the last success), the last error.

One job fails on every ``apache``-edition server by design: Timescale's "Job History Log Retention
Policy" is scheduled there but refused by the license (SQLSTATE 0A000). It is listed as
``unsupported`` rather than failing, since nothing the user does can make it succeed.

What this module must never do: write anything (it only reads the catalog views).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

__all__ = ["JobHealth", "failing_jobs", "job_health", "jobs_markdown", "warning_lines"]

_FEATURE_NOT_SUPPORTED = "0A000"

_QUERY = """
SELECT j.job_id, j.application_name, j.proc_name,
       coalesce(c.view_name::text, j.hypertable_name::text) AS relation,
       j.scheduled, s.last_run_status,
       CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END AS last_success,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
       CASE WHEN isfinite(s.next_start) THEN s.next_start END,
       (SELECT count(*) FROM timescaledb_information.job_errors e
         WHERE e.job_id = j.job_id AND e.start_time > coalesce(s.last_successful_finish, '-infinity')) AS consecutive,
       le.err_message, le.sqlerrcode, CASE WHEN isfinite(le.start_time) THEN le.start_time END
  FROM timescaledb_information.jobs j
  LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
  LEFT JOIN timescaledb_information.continuous_aggregates c
         ON c.materialization_hypertable_schema = j.hypertable_schema
        AND c.materialization_hypertable_name = j.hypertable_name
  LEFT JOIN LATERAL (
        SELECT e.err_message, e.sqlerrcode, e.start_time FROM timescaledb_information.job_errors e
         WHERE e.job_id = j.job_id ORDER BY e.start_time DESC LIMIT 1) le ON true
 ORDER BY j.job_id"""


@dataclass(frozen=True, slots=True)
class JobHealth:
    job_id: int
    name: str  # Timescale's application_name, e.g. "Refresh Continuous Aggregate Policy [1002]"
    proc: str
    relation: str | None  # the continuous aggregate or hypertable the job works on
    scheduled: bool
    last_status: str | None  # 'Success' / 'Failed' / None before the first run
    last_run: datetime | None
    last_success: datetime | None
    total_runs: int
    total_failures: int
    next_start: datetime | None
    consecutive_failures: int  # errors since the last success
    last_error: str | None
    last_error_code: str | None
    last_error_at: datetime | None
    edition: str

    @property
    def unsupported(self) -> bool:
        """Refused by the server's license on every run: not a fault the user can fix."""
        return self.edition == "apache" and self.last_error_code == _FEATURE_NOT_SUPPORTED

    @property
    def failing(self) -> bool:
        return self.scheduled and not self.unsupported and (
            self.consecutive_failures > 0 or self.last_status == "Failed"
        )

    @property
    def state(self) -> str:
        if self.unsupported:
            return f"unsupported ({self.edition} edition)"
        if self.failing:
            return f"FAILING ({self.consecutive_failures} in a row)"
        if not self.scheduled:
            return "paused"
        return "ok" if self.last_status else "not run yet"

    @property
    def what(self) -> str:
        return f"{self.name}" + (f" on {self.relation}" if self.relation else "")


_EDITION = "SELECT current_setting('timescaledb.license', true)"


def job_health(conn: psycopg.Connection) -> list[JobHealth]:
    """Every background job of this database with its health (see the module docstring)."""
    edition = conn.execute(_EDITION).fetchone()[0]  # type: ignore[index]
    return [JobHealth(*row, edition=edition) for row in conn.execute(_QUERY).fetchall()]  # type: ignore[misc]


async def job_health_async(conn: psycopg.AsyncConnection) -> list[JobHealth]:
    """:func:`job_health` on an async connection (the dashboard's pool)."""
    edition = (await (await conn.execute(_EDITION)).fetchone())[0]  # type: ignore[index]
    return [JobHealth(*row, edition=edition) for row in await (await conn.execute(_QUERY)).fetchall()]


def failing_jobs(conn: psycopg.Connection) -> list[JobHealth]:
    return [j for j in job_health(conn) if j.failing]


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def warning_lines(jobs: list[JobHealth]) -> list[str]:
    """One line per failing job, for a terminal or a log."""
    return [
        f"TimescaleDB job {j.job_id} ({j.what}) is failing: {j.consecutive_failures} failure(s) in a row, "
        f"last success {_when(j.last_success)}, last error: {j.last_error or 'see the server log'}"
        for j in jobs
        if j.failing
    ]


def jobs_markdown(jobs: list[JobHealth]) -> str:
    """A markdown section for the flows' artifacts: failing jobs first, then the rest in a table."""
    failing = [j for j in jobs if j.failing]
    lines = ["## TimescaleDB background jobs", ""]
    if failing:
        lines.append(f"**{len(failing)} failing job(s)**: what they maintain is not being kept up to date.")
        lines.append("")
        lines += [f"- {line}" for line in warning_lines(failing)]
        lines.append("")
    elif jobs:
        lines += ["All scheduled jobs are healthy.", ""]
    else:
        lines += ["No background jobs on this database.", ""]
    if jobs:
        from tickvault.jobs.markdown import cell, table

        lines += table(
            ("job", "what", "state", "last success", "runs / failures", "last error"),
            ((j.job_id, j.what, j.state, _when(j.last_success), f"{j.total_runs} / {j.total_failures}",
              cell(j.last_error or "", 160)) for j in sorted(jobs, key=lambda j: (not j.failing, j.job_id))),
            right=(0,),
        )
    return "\n".join(lines) + "\n"
