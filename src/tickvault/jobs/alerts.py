"""Alerts: find what is wrong in the database, announce each incident once, and the Prefect
automations that turn announcements (and failed flow runs) into webhook notifications.

Incidents found in the database (:func:`current_conditions`):

* ``ingest_silent:<worker>`` — a worker that wrote ``ingest_stats`` in the last day has written
  nothing for ``TICKVAULT_ALERT_INGEST_SILENCE_MIN`` minutes;
* ``reconcile_drift`` — the latest completed reconciliation run left differences unrepaired (position
  changes option events explain, diff kind ``option_event``, are no drift);
* ``timescaledb_job:<id>`` — a TimescaleDB background job is failing (:mod:`tickvault.db.jobs`).

:func:`check_alerts` compares them with the open rows of ``alert_incidents`` (migration 008) under
an advisory lock: a new condition opens an incident and emits one ``tickvault.alert.opened`` Prefect
event; a condition gone resolves it and emits ``tickvault.alert.resolved``. However often the
``alert-check`` deployment runs, an incident is announced once when it opens and once when it ends.
Events are emitted before the transaction commits: a crash in between announces again (at least
once), never loses an announcement.

Flow runs that fail or crash are Prefect's own events (``prefect.flow-run.Failed``/``Crashed``); their
automation fires on the first and then stays quiet for ``FLOW_FAILURE_QUIET_S`` per flow, so a flow
failing every minute alerts once an hour, not sixty times.

:func:`ensure_automations` (called by ``tickvault deploy``) saves one Custom Webhook notification
block (the URL kept in the block's secrets) and (re)creates the automations by name. Payloads per
``TICKVAULT_ALERT_WEBHOOK_FORMAT`` are in :data:`PAYLOADS` and docs/dashboard.md.

What this module must never do: send a notification itself (Prefect's automations do), or log
the webhook URL (it often carries a token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from tickvault.config import Settings
from tickvault.db.tables import OPEN_ALERT_INCIDENT, OPEN_ALERT_INCIDENTS, RESOLVE_ALERT_INCIDENT
from tickvault.jobs.reconcile import EXPLAINED_KIND
from tickvault.market_time import MarketClock

if TYPE_CHECKING:
    from tickvault.db.jobs import JobHealth

log = logging.getLogger("tickvault.jobs.alerts")

_LOCK_KEY = 0x7469636B_616C7274  # "tick" "alrt": one alert check at a time
OPENED = "tickvault.alert.opened"
RESOLVED = "tickvault.alert.resolved"
FLOW_FAILURE_QUIET_S = 3600  # one alert per flow per hour while it keeps failing
BLOCK_NAME = "tickvault-alerts"
ALERT_CHECK_DEPLOYMENT = "alert-check/alerts-every-minute"
AUTOMATION_PREFIX = "tickvault: "
KINDS = {
    "ingest_silent": "worker silent",
    "reconcile_drift": "reconciliation drift not repaired",
    "timescaledb_job": "TimescaleDB job failing",
}

# The JSON body each receiver understands; {{subject}} and {{body}} are filled by Prefect.
PAYLOADS: dict[str, dict] = {
    "slack": {"text": "*{{subject}}*\n{{body}}"},
    "discord": {"content": "**{{subject}}**\n{{body}}"},
    "telegram": {"chat_id": "{{chat_id}}", "text": "{{subject}}\n{{body}}"},
    "json": {"title": "{{subject}}", "body": "{{body}}", "source": "tickvault"},
}


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    kind: str
    title: str
    detail: str


@dataclass
class AlertReport:
    opened: list[Condition] = field(default_factory=list)
    resolved: list[Condition] = field(default_factory=list)
    open_now: int = 0
    current: list[Condition] = field(default_factory=list)  # everything wrong at this check
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def headline(self, clock: MarketClock) -> str:
        """The artifact's first heading: the state at a glance."""
        state = "all clear" if not self.open_now else f"{self.open_now} open incident(s)"
        return f"Alerts at {clock.time(self.checked_at)}: {state}"

    def log_line(self) -> str:
        return (f"alert-check: {self.open_now} open incident(s), {len(self.opened)} opened and "
                f"{len(self.resolved)} resolved by this check")

    def to_markdown(self, clock: MarketClock) -> str:
        lines = [f"# {self.headline(clock)}", "",
                 f"Checked {clock.stamp(self.checked_at)}: a silent worker, reconciliation drift left "
                 "unrepaired, a failing TimescaleDB job. Each incident is announced once when it opens and "
                 "once when it ends (the webhook automations `tickvault deploy` creates).", ""]
        for title, items in (("Opened by this check", self.opened), ("Resolved by this check", self.resolved),
                             ("Open now", self.current)):
            lines += [f"## {title}", ""]
            lines += [f"- **{c.title}**: {c.detail}" for c in items] or ["None."]
            lines.append("")
        return "\n".join(lines)


# --- compute (pure): what is wrong, and what changed since the last check ----------------------


def silent_workers(rows: list[tuple[str, datetime, float]], silence_min: float) -> list[Condition]:
    """``(worker, last ingest_stats time, its age in seconds)`` → a condition per worker silent too long."""
    return [
        Condition(
            f"ingest_silent:{worker}", "ingest_silent", f"tickvault worker {worker} is silent",
            f"no ingest_stats row from worker {worker} for {age / 60:.0f} min (last at "
            f"{last.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; the alert threshold is {silence_min:g} min).")
        for worker, last, age in rows
        if age > silence_min * 60
    ]


def unrepaired_drift(run: tuple[int, datetime, int, str | None] | None) -> list[Condition]:
    """The latest completed reconciliation run ``(id, started_at, unrepaired, kinds)``, if it left drift."""
    if run is None or run[2] <= 0:
        return []
    return [Condition(
        "reconcile_drift", "reconcile_drift", "reconciliation found drift it did not repair",
        f"reconciliation run {run[0]} ({run[1].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC) left {run[2]} "
        f"difference(s) unrepaired: {run[3]}. See reconciliation_diffs and the dashboard's Trading page.")]


def failing_job_conditions(jobs: list[JobHealth]) -> list[Condition]:
    return [
        Condition(
            f"timescaledb_job:{job.job_id}", "timescaledb_job", f"TimescaleDB job {job.job_id} is failing",
            f"{job.what}: {job.consecutive_failures} failure(s) in a row; last error: "
            f"{job.last_error or 'see the server log'}")
        for job in jobs
        if job.failing
    ]


def incident_changes(current: list[Condition], open_now: list[Condition]) -> tuple[list[Condition], list[Condition]]:
    """``(to open, to resolve)``: conditions with no open incident, open incidents whose condition is gone."""
    current_keys = {c.key for c in current}
    open_keys = {c.key for c in open_now}
    return [c for c in current if c.key not in open_keys], [c for c in open_now if c.key not in current_keys]


# --- store (SQL) ----------------------------------------------------------------------------------


def current_conditions(conn: psycopg.Connection, settings: Settings) -> list[Condition]:
    """Everything wrong right now (see the module docstring)."""
    from tickvault.db.jobs import job_health

    workers = conn.execute(
        "SELECT worker, max(time), extract(epoch FROM now() - max(time)) FROM ingest_stats "
        "WHERE time > now() - interval '1 day' GROUP BY worker"
    ).fetchall()
    run = conn.execute(
        "SELECT r.id, r.started_at, count(d.id) FILTER (WHERE NOT d.repaired AND d.kind <> %(explained)s), "
        "string_agg(DISTINCT d.kind, ', ') FILTER (WHERE NOT d.repaired AND d.kind <> %(explained)s) "
        "FROM reconciliation_runs r LEFT JOIN reconciliation_diffs d ON d.run_id = r.id "
        "WHERE r.id = (SELECT max(id) FROM reconciliation_runs WHERE status = 'completed') GROUP BY r.id",
        {"explained": EXPLAINED_KIND},  # differences option events explain are no drift
    ).fetchone()
    return (silent_workers(workers, settings.alert_ingest_silence_min) + unrepaired_drift(run)
            + failing_job_conditions(job_health(conn)))


Emit = Callable[[str, Condition], None]


def check_alerts(url: str, settings: Settings, emit: Emit) -> AlertReport:
    """Open and resolve incidents against what is wrong now; ``emit(event, condition)`` once for each."""
    report = AlertReport()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conditions = {c.key: c for c in current_conditions(conn, settings)}
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            open_now = [Condition(*r) for r in conn.execute(OPEN_ALERT_INCIDENTS).fetchall()]
            report.opened, report.resolved = incident_changes(list(conditions.values()), open_now)
            for cond in report.opened:
                emit(OPENED, cond)
                conn.execute(OPEN_ALERT_INCIDENT, (cond.key, cond.kind, cond.title, cond.detail))
            for cond in report.resolved:
                emit(RESOLVED, cond)
                conn.execute(RESOLVE_ALERT_INCIDENT, (cond.key,))
        report.open_now = len(conditions)
        report.current = list(conditions.values())
    log.info("%s", report.log_line())
    for c in report.opened:
        log.warning("alert opened: %s: %s", c.title, c.detail)
    for c in report.resolved:
        log.info("alert resolved: %s", c.title)
    return report


def prefect_emit(event: str, cond: Condition) -> None:
    """Emit the incident as a Prefect event (the automations match on its name and kind label)."""
    from prefect.events import emit_event

    emitted = emit_event(
        event=event,
        resource={"prefect.resource.id": f"tickvault.alert.{cond.key}", "prefect.resource.name": cond.title,
                  "tickvault.alert.kind": cond.kind},
        payload={"key": cond.key, "kind": cond.kind, "title": cond.title, "detail": cond.detail,
                 "at": datetime.now(UTC).isoformat()},
    )
    if emitted is None:
        raise RuntimeError("Prefect did not emit the alert event (no events client: PREFECT_API_URL unset?)")


# --- automations ---------------------------------------------------------------------------------


def _automation_specs(block_id) -> list:
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    def notify(subject: str, body: str) -> list:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    specs = [
        Automation(
            name=AUTOMATION_PREFIX + "flow run failed or crashed",
            description=f"A flow run ends Failed or Crashed; then quiet for {FLOW_FAILURE_QUIET_S // 60} min per flow.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                for_each={"related:flow:prefect.resource.id"},
                posture=Posture.Reactive, threshold=1, within=timedelta(seconds=FLOW_FAILURE_QUIET_S),
            ),
            actions=notify(
                "tickvault: flow {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                "Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
                "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
            ),
        )
    ]
    for kind, what in KINDS.items():
        specs.append(Automation(
            name=AUTOMATION_PREFIX + what,
            description=f"tickvault's alert-check opened a {kind} incident (announced once per incident).",
            trigger=EventTrigger(
                expect={OPENED}, match={"prefect.resource.id": "tickvault.alert.*", "tickvault.alert.kind": kind},
                posture=Posture.Reactive, threshold=1, within=timedelta(0),
            ),
            actions=notify("tickvault: {{ event.payload.title }}", "{{ event.payload.detail }}"),
        ))
    specs.append(Automation(
        name=AUTOMATION_PREFIX + "incident resolved",
        description="An incident tickvault's alert-check had opened is over.",
        trigger=EventTrigger(expect={RESOLVED}, match={"prefect.resource.id": "tickvault.alert.*"},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=notify("tickvault: resolved: {{ event.payload.title }}", "No longer the case: {{ event.payload.detail }}"),
    ))
    return specs


def webhook_block(settings: Settings):
    """The Custom Webhook notification block for ``settings`` (URL and chat id in its secrets)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if settings.alert_webhook_url is None:
        raise ValueError("TICKVAULT_ALERT_WEBHOOK_URL is not set")
    secrets = {"webhook_url": settings.alert_webhook_url.get_secret_value()}
    if settings.alert_webhook_format == "telegram":
        secrets["chat_id"] = settings.alert_telegram_chat_id or ""
    return CustomWebhookNotificationBlock(
        name=BLOCK_NAME, url="{{webhook_url}}", method="POST", json_data=PAYLOADS[settings.alert_webhook_format],
        secrets=secrets, timeout=10,
    )


def ensure_automations(settings: Settings, api_url: str) -> list[str]:
    """Save the webhook block and (re)create every tickvault automation on ``api_url``; their names.

    Idempotent: automations named ``tickvault: ...`` are replaced, so a second ``tickvault deploy``
    leaves exactly one of each. Uses a temporary Prefect setting, never the process's own.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        block_id = webhook_block(settings).save(BLOCK_NAME, overwrite=True)
        with get_client(sync_client=True) as client:
            for existing in client.read_automations():
                if existing.name.startswith(AUTOMATION_PREFIX):
                    client.delete_automation(existing.id)
            names = []
            for spec in _automation_specs(block_id):
                spec.create()
                names.append(spec.name)
            _activate_alert_check(client)
    return names


def _activate_alert_check(client) -> None:
    """prefect.yaml deploys alert-check with its schedule paused: checking for incidents nobody is
    notified of would only add runs. With the automations in place, the schedule starts."""
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(ALERT_CHECK_DEPLOYMENT)
    except ObjectNotFound:
        log.warning("%s is not deployed: incidents are not checked (run `tickvault deploy`)", ALERT_CHECK_DEPLOYMENT)
        return
    for schedule in deployment.schedules:
        client.update_deployment_schedule(deployment.id, schedule.id, active=True)
