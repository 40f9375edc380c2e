"""Alerts: incidents found in the database are opened and resolved once each; with a real Prefect
server, the automations `tickvault deploy` creates notify a webhook receiver on 127.0.0.1 once per
incident and once per failing flow (not once per failed run)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from tickvault.jobs.alerts import OPENED, RESOLVED, Condition, check_alerts
from tickvault.config import load_settings

pytestmark = pytest.mark.db


def _plant_silent_worker(url: str, worker: str, minutes_ago: float) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO ingest_stats (time, worker, interval_s) VALUES (now() - make_interval(secs => %s), %s, 10)",
                     (minutes_ago * 60, worker))


def _reconcile_run(url: str, unrepaired: int, explained: int = 0) -> None:
    """A completed run that left ``unrepaired`` drift and ``explained`` option-event diffs unrepaired
    (another run had written their snapshots)."""
    with psycopg.connect(url, autocommit=True) as conn:
        run = conn.execute("INSERT INTO reconciliation_runs (status, finished_at, diffs, explained) "
                           "VALUES ('completed', now(), %s, %s) RETURNING id", (unrepaired, explained)).fetchone()[0]
        for kind in ["missing_fill"] * unrepaired + ["option_event"] * explained:
            conn.execute("INSERT INTO reconciliation_diffs (run_id, kind, symbol, repaired) VALUES (%s, %s, "
                         "'AAPL', false)", (run, kind))


def test_each_incident_is_announced_once_when_it_opens_and_once_when_it_ends(fresh_database):
    url = fresh_database()
    settings = load_settings(database_url=url, alert_ingest_silence_min=5)
    announced: list[tuple[str, str]] = []

    def emit(event: str, cond: Condition) -> None:
        announced.append((event, cond.key))

    _plant_silent_worker(url, "w-quiet", 12)
    _plant_silent_worker(url, "w-busy", 0.1)
    _reconcile_run(url, unrepaired=2)
    first = check_alerts(url, settings, emit)
    assert sorted(c.key for c in first.opened) == ["ingest_silent:w-quiet", "reconcile_drift"]
    assert "2 difference(s) unrepaired: missing_fill" in next(c.detail for c in first.opened if c.kind == "reconcile_drift")
    for _ in range(3):  # the check runs every minute: nothing new to say
        again = check_alerts(url, settings, emit)
        assert not again.opened and not again.resolved and again.open_now == 2
    assert sorted(announced) == [(OPENED, "ingest_silent:w-quiet"), (OPENED, "reconcile_drift")]

    _plant_silent_worker(url, "w-quiet", 0)  # the worker writes again
    _reconcile_run(url, unrepaired=0, explained=2)  # the next run found no drift, only option events
    ended = check_alerts(url, settings, emit)
    assert sorted(c.key for c in ended.resolved) == ["ingest_silent:w-quiet", "reconcile_drift"]
    assert announced[2:] and all(e == RESOLVED for e, _ in announced[2:]) and len(announced) == 4
    _plant_silent_worker(url, "w-quiet", 20)  # an older row changes nothing: the newest row counts
    assert not check_alerts(url, settings, emit).opened
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key, resolved_at IS NOT NULL FROM alert_incidents ORDER BY id").fetchall()
    assert sorted(rows) == [("ingest_silent:w-quiet", True), ("reconcile_drift", True)]


def test_an_emit_failure_leaves_the_incident_unannounced_for_the_next_check(fresh_database):
    url = fresh_database()
    settings = load_settings(database_url=url, alert_ingest_silence_min=5)
    _plant_silent_worker(url, "w-down", 30)

    def broken(event: str, cond: Condition) -> None:
        raise ConnectionError("Prefect unreachable")

    with pytest.raises(ConnectionError):
        check_alerts(url, settings, broken)
    seen: list[str] = []
    report = check_alerts(url, settings, lambda e, c: seen.append(c.key))
    assert seen == ["ingest_silent:w-down"] and len(report.opened) == 1  # at least once, never lost


class _Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.arrived:
                    outer.bodies.append(body)
                    outer.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def wait_for(self, predicate, timeout: float, what: str) -> list[dict]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: predicate(self.bodies), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got {self.bodies}")
            return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prefect_api(prefect_server) -> Iterator[str]:
    """The session's Prefect server (conftest); the automations this module makes are deleted after
    it, so no later module's failed run notifies this module's (by then closed) webhook."""
    yield prefect_server.api_url
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as client:
        for automation in client.read_automations():
            client.delete_automation(automation.id)


def _texts(bodies: list[dict]) -> list[str]:
    return [b["text"] for b in bodies]


@pytest.mark.slow
def test_deployed_automations_notify_the_webhook_once_per_incident(fresh_database, prefect_api, receiver):
    from prefect import flow
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tickvault.jobs.alerts import ALERT_CHECK_DEPLOYMENT, prefect_emit
    from tickvault.deploy import create_alert_automations, deploy_flows, ensure_work_pool, prefect_env, project_dir, work_pool_name

    url = fresh_database()
    env = prefect_env(prefect_api)
    ensure_work_pool(env, work_pool_name())
    deploy_flows(env, project_dir())  # prefect.yaml, alert-check's schedule paused
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            paused = client.read_deployment_by_name(ALERT_CHECK_DEPLOYMENT).schedules
        assert paused and not any(s.active for s in paused)
    webhook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    settings = load_settings(database_url=url, alert_webhook_url=webhook, alert_webhook_format="slack",
                             alert_ingest_silence_min=5)
    create_alert_automations(settings, prefect_api)
    create_alert_automations(settings, prefect_api)  # a second deploy replaces, never duplicates

    @flow(name="alert-test-failing")
    def failing() -> None:
        raise RuntimeError("boom for the alert test")

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            names = sorted(a.name for a in client.read_automations())
            alert_check = client.read_deployment_by_name(ALERT_CHECK_DEPLOYMENT)
        assert alert_check.schedules and all(s.active for s in alert_check.schedules)  # started by the deploy
        assert names == sorted([
            "tickvault: flow run failed or crashed", "tickvault: worker silent",
            "tickvault: reconciliation drift not repaired", "tickvault: TimescaleDB job failing",
            "tickvault: incident resolved"])

        # A worker goes silent: the alert check runs three times, the webhook hears it once.
        _plant_silent_worker(url, "w-alert", 9)
        for _ in range(3):
            check_alerts(url, settings, prefect_emit)
        EventsWorker.drain_all()
        got = receiver.wait_for(lambda b: any("w-alert is silent" in t for t in _texts(b)), 60, "the silent-worker alert")
        assert "no ingest_stats row from worker w-alert" in next(t for t in _texts(got) if "w-alert" in t)

        # A flow fails twice in a row: one notification for that flow (then quiet for the hour).
        for _ in range(2):
            failing(return_state=True)
        EventsWorker.drain_all()
        receiver.wait_for(lambda b: any("alert-test-failing" in t for t in _texts(b)), 60, "the flow-failure alert")

        # The incident ends: announced once more, as resolved. Everything before it has been handled by
        # then, so the counts below are final for what came before.
        _plant_silent_worker(url, "w-alert", 0)
        check_alerts(url, settings, prefect_emit)
        EventsWorker.drain_all()
        got = receiver.wait_for(lambda b: any("resolved" in t for t in _texts(b)), 60, "the resolved notice")
    texts = _texts(got)
    assert sum("w-alert is silent" in t and "resolved" not in t for t in texts) == 1, texts
    assert sum("alert-test-failing" in t for t in texts) == 1, texts
    failure = next(t for t in texts if "alert-test-failing" in t)
    assert "Failed" in failure and "boom for the alert test" in failure, failure  # the templates were filled
    assert all(set(b) == {"text"} for b in got)  # Slack's incoming-webhook shape
