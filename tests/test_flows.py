"""The four flows deployed from prefect.yaml to a real Prefect server, a real `process` work pool and
a real Prefect worker, run against a test database, a simulator subprocess and moto's S3 server;
each run must reach COMPLETED and publish its markdown artifact.

The session's one Prefect server (conftest; a start costs ~20 s); deployments are run one at a time
(Prefect on SQLite can report `database is locked` under concurrent runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from tests.support.net import free_port
from tests.support.pipes import read_lines
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.db, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # flows/ and tasks/ import from the project root, as Prefect runs them
    sys.path.insert(0, str(REPO))
HTTP_POOL = 3  # the flow-run processes' pool size: small, so "connections <= pool" means something
PLANTED_OPEN_ORDERS = 40  # orders the broker never heard of: reconcile looks each one up by REST
RUN_TIMEOUT_S = 180.0
LOGS_TIMEOUT_S = 30.0  # a finished run's last log batch reaches the server within a couple of seconds


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
def stack(fresh_database, prefect_server, tmp_path_factory) -> Iterator[Stack]:
    from moto.server import ThreadedMotoServer

    from tickvault.config import load_settings
    from tickvault.deploy import deploy_main, work_pool_name, worker_command
    from tickvault.registration import WorkerNotRunning, find_worker

    tmp = tmp_path_factory.mktemp("flows")
    db_url = fresh_database()
    procs: list[subprocess.Popen] = []
    server = prefect_server  # the session's (conftest), its scheduler off: no runs beside the tests' own
    moto = None
    prefect_worker = None
    try:
        # The simulator, as `tickvault sim` in its own process.
        ws_port, rest_port = free_port(), free_port()
        keys = {"TICKVAULT_ALPACA_KEY_ID": "test-key", "TICKVAULT_ALPACA_SECRET_KEY": "test-secret"}
        sim_env = {**os.environ, **keys, "TICKVAULT_SIM_PORT": str(ws_port), "TICKVAULT_SIM_REST_PORT": str(rest_port),
                   "TICKVAULT_SIM_SYMBOLS": "5", "TICKVAULT_SIM_RATE": "2000"}
        sim = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "sim"], env=sim_env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
        procs.append(sim)
        read_lines(sim, 60, "the simulator's banner up to its REST line", until=lambda line: "REST" in line)
        rest_url = f"http://127.0.0.1:{rest_port}"

        # S3 on loopback.
        s3_port = free_port()
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
            "PREFECT_HOME": str(server.home),
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

        wait_for(registered, 60, "the streaming worker's registration", proc=worker)

        deploy_main(settings, start_worker=False, api_url=server.api_url)

        log = tmp / "prefect-worker.log"
        prefect_worker = subprocess.Popen(worker_command(work_pool_name(REPO), name="tickvault-test"), env=env,
                                          cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
        wait_for(lambda: "started" in log.read_text(errors="replace").lower(), 60, "the Prefect worker", proc=prefect_worker)
        yield Stack(server.api_url, db_url, env, run_dir, bucket, s3_endpoint, log, worker_name)
    finally:
        _stop(prefect_worker)  # the Prefect worker before the server it talks to
        for proc in reversed(procs):
            _stop(proc, then=signal.SIGKILL)
        if moto is not None:
            moto.stop()


async def _run(stack: Stack, name: str, parameters: dict | None = None, *, expect_failed: bool = False):
    """Trigger a deployment, wait for a final state, return (flow run, markdown artifact, logs)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    async with PrefectClient(stack.api_url) as client:
        run = await run_deployment(name, client=client, parameters=parameters or {}, timeout=RUN_TIMEOUT_S,
                                   poll_interval=1, as_subflow=False)
        artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        # The run's process sends its logs in batches, after the state may already be final: wait
        # for the engine's last line ("Finished in state ...") rather than read a partial log.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOGS_TIMEOUT_S
        while True:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            if any(lg.name == "prefect.flow_runs" and lg.message.startswith("Finished in state") for lg in logs):
                break
            assert loop.time() < deadline, f"{name}: the run's logs did not arrive: {[lg.message for lg in logs]}"
            await asyncio.sleep(0.5)  # polling the API for a condition, not synchronising on time
    text = "\n".join(f"{logging.getLevelName(lg.level)} {lg.message}" for lg in logs)
    final = run.state is not None and (run.state.is_failed() if expect_failed else run.state.is_completed())
    assert final, (
        f"{name}: {run.state}\n--- flow run logs ---\n{text}\n--- worker log ---\n"
        + stack.prefect_worker_log.read_text(errors="replace")[-4000:]
    )
    markdown = [a.data for a in artifacts if a.type == "markdown"]
    assert markdown, f"{name} published no markdown artifact"
    return run, markdown[0], text


async def test_prefect_yaml_deploys_uniquely_named_described_new_york_schedules(stack: Stack) -> None:
    from prefect.client.orchestration import PrefectClient

    from tickvault.deploy import deployments as specs

    async with PrefectClient(stack.api_url) as client:
        deployments = {f"{(await client.read_flow(d.flow_id)).name}/{d.name}": d for d in await client.read_deployments()}
        pool = await client.read_work_pool("tickvault-process")
    assert pool.type == "process"
    expected = {s.full_name: s for s in specs(REPO)}
    assert set(deployments) == set(expected) == {
        "reconcile/reconcile-pre-open", "reconcile/reconcile-market-hours", "reconcile/reconcile-after-close",
        "refresh-indicators/indicators-market-hours", "refresh-indicators/indicators-after-close",
        "purge-retention/retention-nightly", "profile-worker/profile-evening", "alert-check/alerts-every-minute",
    }
    assert len({d.name for d in deployments.values()}) == len(deployments)  # the list's bold names are unique
    for full_name, d in deployments.items():
        assert d.work_pool_name == "tickvault-process"
        assert d.schedules and all(s.schedule.timezone == "America/New_York" for s in d.schedules)
        assert {s.schedule.cron for s in d.schedules} == set(expected[full_name].schedules)
        assert "New York time" in (d.description or ""), full_name  # the list shows no timezone
        assert "tickvault" in d.tags
        limit = d.global_concurrency_limit
        assert limit is not None and limit.limit == 1  # runs of a deployment never overlap
    # Closing-auction fills are checked the same day, and the account before the bell.
    assert deployments["reconcile/reconcile-after-close"].schedules[0].schedule.cron == "10 16 * * 1-5"
    assert deployments["reconcile/reconcile-pre-open"].schedules[0].schedule.cron == "0 9 * * 1-5"


async def test_reconcile_run_makes_many_calls_over_at_most_pool_size_connections(stack: Stack) -> None:
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        for i in range(PLANTED_OPEN_ORDERS):
            conn.execute(
                "INSERT INTO orders (client_order_id, id, symbol, side, order_type, time_in_force, qty, status, "
                "created_at, submitted_at) VALUES (%s, %s, 'AAPL', 'buy', 'market', 'day', 1, 'new', "
                "now() - interval '1 hour', now() - interval '1 hour')",
                (f"planted-{i}", str(uuid.uuid4())),
            )
    _, markdown, logs = await _run(stack, "reconcile/reconcile-market-hours")
    assert "Reconciliation run" in markdown
    # tickvault's own summary line reached the run's logs through the process worker, redacted.
    assert re.search(r"INFO reconcile run \d+: .*broker fetch \d+ ms", logs), logs
    assert "test-secret" not in logs
    m = re.search(r"HTTP: (\d+) requests over (\d+) connections \(pool max (\d+)\)", markdown)
    assert m, markdown
    requests, connections, pool_max = map(int, m.groups())
    assert pool_max == HTTP_POOL
    assert requests >= PLANTED_OPEN_ORDERS  # every planted order was looked up at the broker...
    assert 1 <= connections <= HTTP_POOL  # ...over the one shared, pooled client
    with psycopg.connect(stack.db_url, autocommit=True) as conn:  # later runs in this module start clean
        conn.execute("DELETE FROM orders WHERE client_order_id LIKE 'planted-%%'")


async def test_refresh_indicators_run_upserts_indicator_rows(stack: Stack) -> None:
    base = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        with conn.cursor().copy("COPY trades (time, symbol, trade_id, exchange, price, size, time_ns) FROM STDIN") as cp:
            for m in range(60):
                t = base + timedelta(minutes=m, seconds=1)
                cp.write_row((t, "ZZFLOW", 10_000_000 + m, "V", 50.0 + (m % 7) * 0.1, 10 + m, int(t.timestamp() * 1e9)))
        # Late trades, as the worker's writer notes them: a refresh of the stack's database (a scheduled
        # run in New York market hours, another test's) may already have materialized past them.
        conn.execute("SELECT tickvault_ohlcv_invalidate(%s, %s)", (base, base + timedelta(minutes=60)))
    _, markdown, logs = await _run(stack, "refresh-indicators/indicators-market-hours",
                                   {"since": base.isoformat(), "symbols": ["ZZFLOW"]})
    assert markdown.startswith("# Indicators refreshed at ") and "ZZFLOW" in markdown
    # VWAP's sessions came from the simulator's /v2/calendar, not the fallback rule.
    assert re.search(r"INFO session calendar: \d+ trading days from /v2/calendar", logs), logs
    assert "default rule" not in logs, logs
    with psycopg.connect(stack.db_url) as conn:
        rows, with_macd = conn.execute(
            "SELECT count(*), count(macd) FROM indicators WHERE symbol = 'ZZFLOW' AND source = 'flow'"
        ).fetchone()
    assert rows == 60 and with_macd == 60 - 33  # MACD's warm-up is 33 bars


async def test_purge_retention_run_completes_with_report(stack: Stack) -> None:
    _, markdown, logs = await _run(stack, "purge-retention/retention-nightly")
    assert markdown.startswith("# Retention purge: dropped ")
    assert re.search(r"INFO retention: dropped \d+ chunk\(s\), freed .* across \d+ tables", logs), logs


async def test_profile_worker_run_uploads_report_to_s3(stack: Stack) -> None:
    import boto3

    _, markdown, logs = await _run(stack, "profile-worker/profile-evening",
                                   {"seconds": 3, "worker": stack.worker_name})
    assert f"s3://{stack.bucket}/" in markdown and stack.worker_name in markdown
    assert re.search(r"\*\*\[Open the flame graph\]\(http[^)]+flamegraph\.svg", markdown), markdown  # presigned link
    assert f"INFO profile-worker: {stack.worker_name} (pid " in logs, logs
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


async def test_profile_worker_without_the_worker_says_what_to_do_without_a_traceback(stack: Stack) -> None:
    """An expected condition: the run is Failed with a message naming the worker looked for, where,
    and the command that starts it; the artifact says the same; no traceback in the run's logs."""
    run, markdown, logs = await _run(stack, "profile-worker/profile-evening",
                                     {"seconds": 1, "worker": "nobody-here"}, expect_failed=True)
    message = run.state.message
    assert "worker 'nobody-here' is not running on this host" in message, message
    assert str(stack.run_dir / "worker-nobody-here.json") in message and "TICKVAULT_RUN_DIR" in message
    assert f"TICKVAULT_WORKER_NAME=nobody-here TICKVAULT_RUN_DIR={stack.run_dir} tickvault worker run" in message
    assert "any worker" not in message and "WorkerNotRunning" not in message
    assert markdown.startswith("# Profiling failed: worker `nobody-here` is not running on this host\n")
    assert "## What to do" in markdown
    assert "Traceback" not in logs, logs
    assert "ERROR profile-worker: worker 'nobody-here' is not running" in logs, logs


def test_stopping_the_local_server_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A stale pidfile whose pid now belongs to another program is removed, and that program lives."""
    from tickvault.deploy import LocalPrefectServer

    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        server = LocalPrefectServer(home=tmp_path, port=free_port())
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

    run, _, _ = await _run(stack, "purge-retention/retention-nightly")
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


# --- the Prefect UI in a real browser ------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make test installs it); Playwright's download cannot run here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 30_000  # a page of the Prefect UI renders in about a second; this is a hung page
# What a person must see first, per flow: tickvault's own summary line in the run's Logs tab, and
# the artifact's first heading (rendered markdown, so `code` reads as plain text).
UI_EXPECTED = {
    "reconcile": (r"reconcile run \d+: ", r"Account at \d\d:\d\d:\d\d E[SD]T: equity \$[\d,.]+, \d+ positions?"),
    "refresh-indicators": (r"refresh-indicators: \d+ indicator rows", r"Indicators refreshed at \d\d:\d\d E[SD]T: \d+ rows? for \d+ symbols?"),
    "purge-retention": (r"retention: dropped \d+ chunk", r"Retention purge: dropped \d+ chunk\(s\), freed "),
    "profile-worker": (r"profile-worker: flows-test-worker \(pid \d+\)", r"Profile of worker flows-test-worker \(pid \d+\): (first report|no regression|\d+ regressions?)"),
    "alert-check": (r"alert-check: \d+ open incident", r"Alerts at \d\d:\d\d:\d\d E[SD]T: (all clear|\d+ open incident)"),
}


def _small_png(path: Path) -> None:
    """A UI screenshot as a 128-colour PNG: the UI's flat colours survive, the file shrinks ~4x."""
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)


async def test_prefect_ui_shows_tickvault_logs_and_artifact_headings_for_every_deployment(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """Each deployment of prefect.yaml run once on the process worker, then read as a person reads it
    in Chromium: the run's Logs tab holds tickvault's summary line, its Artifacts tab lists the
    artifact under the flow run (not "Flow run: None"), and the artifact's first heading reads as
    designed. With --ui-screenshots DIR, the README's screenshots are written there."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=UI_TIMEOUT_MS)

    from tickvault.deploy import deployments as specs

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package (apt-get install chromium)")
    shots = request.config.getoption("--ui-screenshots")
    shots_dir = Path(shots).resolve() if shots else None
    if shots_dir:
        shots_dir.mkdir(parents=True, exist_ok=True)
    ui = stack.api_url.removesuffix("/api")
    parameters = {"profile-worker": {"seconds": 2, "worker": stack.worker_name}}

    # Orders filled at the (simulated) broker that the database never heard of: the reconcile
    # artifact has positions with P&L and differences to put in words.
    from decimal import Decimal

    from tickvault.alpaca.models import OrderRequest
    from tickvault.alpaca.rest import AlpacaREST
    from tickvault.config import Settings
    from tickvault.http import aclose_http_client

    broker = AlpacaREST(Settings(alpaca_key_id=stack.env["TICKVAULT_ALPACA_KEY_ID"],
                                 alpaca_secret_key=stack.env["TICKVAULT_ALPACA_SECRET_KEY"],
                                 alpaca_trading_url=stack.env["TICKVAULT_ALPACA_TRADING_URL"],
                                 alpaca_data_url=stack.env["TICKVAULT_ALPACA_DATA_URL"]))
    try:
        orders = [await broker.submit_order(OrderRequest(symbol=symbol, side="buy", qty=Decimal(qty),
                                                         client_order_id=OrderRequest.new_client_order_id("ui")))
                  for symbol, qty in (("AAPL", 10), ("MSFT", 5))]
    finally:
        await aclose_http_client()
    # The streaming worker records both fills from the trade-updates stream; then the AAPL one is
    # lost, as a fill is when the stream drops at the wrong moment.
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        def recorded():
            return conn.execute("SELECT count(*) FROM fills WHERE order_id = ANY(%s::uuid[])",
                                ([o.id for o in orders],)).fetchone()[0] == len(orders)

        wait_for(recorded, 60, "the worker recording the fills")
        conn.execute("DELETE FROM fills WHERE order_id = %s", (orders[0].id,))

    runs = []
    for spec in specs(REPO):
        run, _, _ = await _run(stack, spec.full_name, parameters.get(spec.flow))
        runs.append((spec, run))
    # Nothing ran beside these: the test server's scheduler is off (tests/support/prefect.py), so a
    # scheduled reconcile cannot repair the planted fill before reconcile-pre-open reports it.
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(stack.api_url) as client:
        scheduled = [r.name for r in await client.read_flow_runs() if r.auto_scheduled]
    assert not scheduled, f"the test server's scheduler made runs: {scheduled}"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # A trader's browser in New York: the UI's own times then read on the artifacts' clock.
            context = await browser.new_context(viewport={"width": 1600, "height": 900}, timezone_id="America/New_York")
            page = await context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            for spec, run in runs:
                log_pattern, heading_pattern = UI_EXPECTED[spec.flow]
                await page.goto(f"{ui}/runs/flow-run/{run.id}")
                # Logs is the run page's first tab: tickvault's line, under its own logger's name.
                await expect(page.get_by_text(re.compile(log_pattern)).first).to_be_visible()
                await expect(page.get_by_text(re.compile(r"^tickvault\.")).first).to_be_visible()
                assert "test-secret" not in await page.inner_text("body")
                if shots_dir and spec.name == "reconcile-pre-open":
                    await page.get_by_text(re.compile(log_pattern)).first.evaluate(
                        "e => e.scrollIntoView({block: 'center'})")
                    await page.screenshot(path=shots_dir / "prefect-run-logs.png")
                    _small_png(shots_dir / "prefect-run-logs.png")

                await page.get_by_text("Artifacts", exact=True).click()
                card = page.locator("a[href^='/artifacts/artifact/']").first
                await expect(card).to_be_visible()
                tab = await page.inner_text("body")
                flow_run_part = tab.split("Job Variables", 1)[1].split("Task runs", 1)[0]
                assert "Flow run" in flow_run_part and spec.flow in flow_run_part, flow_run_part  # under the flow run
                if spec.name == "reconcile-pre-open":  # the first reconcile: the planted fills, in words
                    await page.goto(ui + await card.get_attribute("href"))
                    await expect(page.get_by_text(re.compile(
                        rf"order {orders[0].client_order_id} \(AAPL\) filled at the broker .*, missing here: repaired"
                    ))).to_be_visible()
                    await expect(page.get_by_role("heading", name="Positions", exact=True)).to_be_visible()
                    await page.goto(f"{ui}/runs/flow-run/{run.id}")
                    await page.get_by_text("Artifacts", exact=True).click()
                    await expect(card).to_be_visible()
                await page.goto(ui + await card.get_attribute("href"))
                heading = page.locator("h1").first
                await expect(heading).to_have_text(re.compile("^" + heading_pattern))
                if shots_dir and spec.name in ("reconcile-pre-open", "indicators-market-hours"):
                    name = f"prefect-artifact-{spec.flow}.png"
                    await page.screenshot(path=shots_dir / name)
                    _small_png(shots_dir / name)

            # The deployments list: unique names, each with its schedule.
            await page.goto(f"{ui}/deployments")
            for spec in specs(REPO):
                await expect(page.get_by_text(spec.name, exact=True).first).to_be_visible()
            if shots_dir:
                await page.screenshot(path=shots_dir / "prefect-deployments.png")
                _small_png(shots_dir / "prefect-deployments.png")
        finally:
            await browser.close()
