"""The four flows deployed from prefect.yaml to a real Prefect server, a real `process` work pool and
a real Prefect worker, run against a test database, a simulator subprocess and moto's S3 server;
each run must reach COMPLETED and publish its markdown artifact.

One Prefect server for the module (a start costs ~20 s); deployments are run one at a time
(Prefect on SQLite can report `database is locked` under concurrent runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.db, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # flows/ and tasks/ import from the project root, as Prefect runs them
    sys.path.insert(0, str(REPO))
HTTP_POOL = 3  # the flow-run processes' pool size: small, so "connections <= pool" means something
PLANTED_OPEN_ORDERS = 40  # orders the broker never heard of: reconcile looks each one up by REST
RUN_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None:
            try:
                proc.wait(timeout=interval)  # returns at once if the process died
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        time.sleep(interval)  # noqa: polling an external condition, not synchronising on time
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen | None, first=signal.SIGTERM, then=signal.SIGINT, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig in (first, then):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@dataclass
class Stack:
    api_url: str
    db_url: str
    env: dict[str, str]
    run_dir: Path
    bucket: str
    s3_endpoint: str
    prefect_worker_log: Path
    worker_name: str


@pytest.fixture(scope="module")
def stack(fresh_database, tmp_path_factory) -> Iterator[Stack]:
    from moto.server import ThreadedMotoServer

    from tickvault.config import load_settings
    from tickvault.deploy import LocalPrefectServer, deploy_main, work_pool_name, worker_command
    from tickvault.registration import WorkerNotRunning, find_worker

    tmp = tmp_path_factory.mktemp("flows")
    db_url = fresh_database()
    procs: list[subprocess.Popen] = []
    mp = pytest.MonkeyPatch()
    home = tmp / "prefect-home"
    for k, v in {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                 # this pytest process runs no flows; without this its API log handler tries to flush
                 # to the (by then stopped) test server at exit and prints a connection error
                 "PREFECT_LOGGING_TO_API_ENABLED": "false"}.items():
        mp.setenv(k, v)
    server = LocalPrefectServer(home=home, port=_free_port())
    moto = None
    prefect_worker = None
    try:
        server.start()

        # The simulator, as `tickvault sim` in its own process.
        ws_port, rest_port = _free_port(), _free_port()
        keys = {"TICKVAULT_ALPACA_KEY_ID": "test-key", "TICKVAULT_ALPACA_SECRET_KEY": "test-secret"}
        sim_env = {**os.environ, **keys, "TICKVAULT_SIM_PORT": str(ws_port), "TICKVAULT_SIM_REST_PORT": str(rest_port),
                   "TICKVAULT_SIM_SYMBOLS": "5", "TICKVAULT_SIM_RATE": "2000"}
        sim = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "sim"], env=sim_env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
        procs.append(sim)
        lines = [sim.stdout.readline() for _ in range(4)]
        assert any("REST" in line for line in lines), lines
        rest_url = f"http://127.0.0.1:{rest_port}"

        # S3 on loopback.
        s3_port = _free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
        moto.start()
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        bucket = "tickvault-profiles"
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)

        run_dir = tmp / "run"
        worker_name = "flows-test-worker"
        env = {
            **os.environ, **keys, **aws,
            "TICKVAULT_DATABASE_URL": db_url,
            "TICKVAULT_ALPACA_TRADING_URL": rest_url,
            "TICKVAULT_ALPACA_DATA_URL": rest_url,
            "TICKVAULT_ALPACA_STREAM_URL": f"ws://127.0.0.1:{ws_port}",
            "TICKVAULT_ALPACA_TRADE_STREAM_URL": f"ws://127.0.0.1:{ws_port}/stream",
            "TICKVAULT_HTTP_MAX_CONNECTIONS": str(HTTP_POOL),
            "TICKVAULT_RUN_DIR": str(run_dir),
            "TICKVAULT_WORKER_NAME": worker_name,
            "TICKVAULT_METRICS_PORT": "0",
            "TICKVAULT_S3_ENDPOINT_URL": s3_endpoint,
            "TICKVAULT_S3_BUCKET": bucket,
            "TICKVAULT_S3_ACCESS_KEY_ID": "testing",
            "TICKVAULT_S3_SECRET_ACCESS_KEY": "testing",
            "TICKVAULT_PROFILE_DIR": str(tmp / "profiles"),
            "TICKVAULT_PROFILE_SECONDS": "3",
            "PREFECT_API_URL": server.api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick scheduled runs up within a second
            "PREFECT_LOGGING_TO_API_ENABLED": "true",  # flow-run logs reach the server (the UI shows them)
        }

        # The streaming worker the profile flow attaches to.
        worker = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "worker", "run", "--quiet"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "wb"),
                                  start_new_session=True)
        procs.append(worker)
        settings = load_settings(run_dir=run_dir)

        def registered():
            try:
                return find_worker(settings, worker_name)
            except WorkerNotRunning:
                return None

        _wait(registered, 60, "the streaming worker's registration", proc=worker)

        deploy_main(settings, start_worker=False, api_url=server.api_url)

        log = tmp / "prefect-worker.log"
        prefect_worker = subprocess.Popen(worker_command(work_pool_name(REPO), name="tickvault-test"), env=env,
                                          cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
        _wait(lambda: "started" in log.read_text(errors="replace").lower(), 60, "the Prefect worker", proc=prefect_worker)
        yield Stack(server.api_url, db_url, env, run_dir, bucket, s3_endpoint, log, worker_name)
    finally:
        _stop(prefect_worker)  # the Prefect worker before the server it talks to
        for proc in reversed(procs):
            _stop(proc, then=signal.SIGKILL)
        if moto is not None:
            moto.stop()
        server.stop()
        mp.undo()


async def _run(stack: Stack, name: str, parameters: dict | None = None):
    """Trigger a deployment, wait for a final state, return (flow run, markdown artifacts, logs)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    async with PrefectClient(stack.api_url) as client:
        run = await run_deployment(name, client=client, parameters=parameters or {}, timeout=RUN_TIMEOUT_S,
                                   poll_interval=1, as_subflow=False)
        artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    text = "\n".join(f"{lg.level} {lg.message}" for lg in logs)
    assert run.state is not None and run.state.is_completed(), (
        f"{name}: {run.state}\n--- flow run logs ---\n{text}\n--- worker log ---\n"
        + stack.prefect_worker_log.read_text(errors="replace")[-4000:]
    )
    markdown = [a.data for a in artifacts if a.type == "markdown"]
    assert markdown, f"{name} published no markdown artifact"
    return run, markdown[0], text


async def test_prefect_yaml_deploys_all_four_flows_to_the_process_pool(stack: Stack) -> None:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(stack.api_url) as client:
        deployments = {f"{(await client.read_flow(d.flow_id)).name}/{d.name}": d for d in await client.read_deployments()}
        pool = await client.read_work_pool("tickvault-process")
    assert pool.type == "process"
    assert set(deployments) == {
        "reconcile/market-hours", "refresh-indicators/market-hours", "purge-retention/nightly", "profile-worker/nightly",
        "alert-check/every-minute",
    }
    for d in deployments.values():
        assert d.work_pool_name == "tickvault-process"
        assert d.schedules and all(s.schedule.timezone == "America/New_York" for s in d.schedules)
        assert "tickvault" in d.tags
    reconcile = deployments["reconcile/market-hours"]
    assert reconcile.schedules[0].schedule.cron == "*/5 9-15 * * 1-5"
    limit = reconcile.global_concurrency_limit
    assert limit is not None and limit.limit == 1  # two reconciliations never overlap


async def test_reconcile_run_makes_many_calls_over_at_most_pool_size_connections(stack: Stack) -> None:
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        for i in range(PLANTED_OPEN_ORDERS):
            conn.execute(
                "INSERT INTO orders (client_order_id, id, symbol, side, order_type, time_in_force, qty, status, "
                "created_at, submitted_at) VALUES (%s, %s, 'AAPL', 'buy', 'market', 'day', 1, 'new', "
                "now() - interval '1 hour', now() - interval '1 hour')",
                (f"planted-{i}", str(uuid.uuid4())),
            )
    _, markdown, _ = await _run(stack, "reconcile/market-hours")
    assert "Reconciliation run" in markdown
    m = re.search(r"HTTP: (\d+) requests over (\d+) connections \(pool max (\d+)\)", markdown)
    assert m, markdown
    requests, connections, pool_max = map(int, m.groups())
    assert pool_max == HTTP_POOL
    assert requests >= PLANTED_OPEN_ORDERS  # every planted order was looked up at the broker...
    assert 1 <= connections <= HTTP_POOL  # ...over the one shared, pooled client


async def test_refresh_indicators_run_upserts_indicator_rows(stack: Stack) -> None:
    base = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        with conn.cursor().copy("COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN") as cp:
            for m in range(60):
                t = base + timedelta(minutes=m, seconds=1)
                cp.write_row((t, "ZZFLOW", 10_000_000 + m, "V", 50.0 + (m % 7) * 0.1, 10 + m, int(t.timestamp() * 1e9)))
    _, markdown, _ = await _run(stack, "refresh-indicators/market-hours",
                                {"since": base.isoformat(), "symbols": ["ZZFLOW"]})
    assert "# Indicator refresh" in markdown and "ZZFLOW" in markdown
    with psycopg.connect(stack.db_url) as conn:
        rows, with_macd = conn.execute(
            "SELECT count(*), count(macd) FROM indicators WHERE symbol = 'ZZFLOW' AND source = 'flow'"
        ).fetchone()
    assert rows == 60 and with_macd == 60 - 33  # MACD's warm-up is 33 bars


async def test_purge_retention_run_completes_with_report(stack: Stack) -> None:
    _, markdown, _ = await _run(stack, "purge-retention/nightly")
    assert markdown.strip().startswith("#")


async def test_profile_worker_run_uploads_report_to_s3(stack: Stack) -> None:
    import boto3

    _, markdown, _ = await _run(stack, "profile-worker/nightly", {"seconds": 3, "worker": stack.worker_name})
    assert f"s3://{stack.bucket}/" in markdown and stack.worker_name in markdown
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])]
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert all(k.startswith(f"tickvault/profiles/{stack.worker_name}/") for k in keys), keys
    speedscope = next(k for k in keys if k.endswith("profile.speedscope.json"))
    svg = next(k for k in keys if k.endswith("flamegraph.svg"))
    summary = next(k for k in keys if k.endswith("summary.json"))
    assert day in speedscope or (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d") in speedscope
    doc = json.loads(s3.get_object(Bucket=stack.bucket, Key=speedscope)["Body"].read())
    assert doc["$schema"].startswith("https://www.speedscope.app/") and doc["profiles"]
    assert b"<svg" in s3.get_object(Bucket=stack.bucket, Key=svg)["Body"].read()[:2000]
    assert json.loads(s3.get_object(Bucket=stack.bucket, Key=summary)["Body"].read())["samples"] > 0
    with psycopg.connect(stack.db_url) as conn:
        row = conn.execute(
            "SELECT location, speedscope_key, summary ? 'top_self' FROM profiles WHERE worker = %s ORDER BY time DESC",
            (stack.worker_name,),
        ).fetchone()
    assert row is not None and row[0].startswith(f"s3://{stack.bucket}/") and row[1] == speedscope and row[2]


async def test_profile_worker_without_a_running_worker_fails_with_a_clear_message(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called in-process against the same server: a Failed state carrying the reason, no crash."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.profile_worker import profile_worker_flow

    for k, v in stack.env.items():
        if k.startswith("TICKVAULT_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("TICKVAULT_RUN_DIR", str(tmp_path / "empty-run-dir"))
    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        state = await profile_worker_flow(seconds=1, return_state=True)
    assert state.is_failed()
    assert "WorkerNotRunning" in state.message and "not running" in state.message


def test_stopping_the_local_server_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A stale pidfile whose pid now belongs to another program is removed, and that program lives."""
    from tickvault.deploy import LocalPrefectServer

    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        server = LocalPrefectServer(home=tmp_path, port=_free_port())
        server.pidfile.write_text(f"{other.pid}\n", encoding="utf-8")
        assert server.stop() is False
        assert not server.pidfile.exists()
        assert other.poll() is None
    finally:
        other.stdin.close()
        other.wait(timeout=10)


async def test_a_finished_run_reruns_as_the_ui_retry_does(stack: Stack) -> None:
    """The UI's Retry puts a flow run back into a scheduled state; the process worker runs it again."""
    from prefect.client.orchestration import PrefectClient
    from prefect.states import AwaitingRetry

    run, _, _ = await _run(stack, "purge-retention/nightly")
    async with PrefectClient(stack.api_url) as client:
        await client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUN_TIMEOUT_S
        while True:
            again = await client.read_flow_run(run.id)
            if again.state is not None and again.state.is_completed() and again.run_count >= 2:
                break
            assert loop.time() < deadline, f"rerun did not complete: {again.state}"
            await asyncio.sleep(0.5)
