"""The ``tickvault`` command: configuration, the database, the simulator and the worker.

Every subcommand reads configuration through :func:`tickvault.config.get_settings` only, and
prints errors as one clear paragraph (exit code 1 for an operational failure, 2 for bad config).
"""

from __future__ import annotations

import os
import sys
import time

import typer

from tickvault.config import ConfigError, Settings, get_settings, masked

app = typer.Typer(
    help="tickvault: Alpaca market data into TimescaleDB, measured. "
    "Start with `make run` (or `tickvault run`): the local TimescaleDB, the simulator (no Alpaca keys "
    "needed) and the streaming worker, in one terminal. `tickvault worker run` is the worker alone and "
    "needs Alpaca keys (or a simulator's); `make test` runs the tests.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="The TimescaleDB: start/stop the local server, migrate, refresh aggregates.", no_args_is_help=True)
worker_app = typer.Typer(help="The streaming worker.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(worker_app, name="worker")


def _mount_prefect() -> None:
    # Prefect is imported only when its commands run; mounting them costs nothing at start-up.
    from tickvault.deploy import deploy_command, prefect_app

    app.add_typer(prefect_app, name="prefect")  # tickvault prefect deploy|server|worker
    app.command("deploy")(deploy_command)  # tickvault deploy (what `make deploy` calls)


_mount_prefect()


def _mount_ui() -> None:
    from tickvault.ui import ui_command

    app.command("ui")(ui_command)  # tickvault ui: the dashboard on 127.0.0.1:TICKVAULT_UI_PORT


_mount_ui()


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _strategy(settings: Settings):
    """The configured strategy, loaded before anything starts; a bad one is bad config (exit 2)."""
    if not settings.strategy:
        return None
    from tickvault.stream.strategy import StrategyLoadError, load_strategy

    try:
        return load_strategy(settings.strategy)
    except StrategyLoadError as exc:
        message = str(exc)
        raise _fail(message if message.startswith("TICKVAULT_STRATEGY") else f"TICKVAULT_STRATEGY: {message}",
                    code=2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _local(settings: Settings):
    from tickvault.db.local import LocalTimescale

    return LocalTimescale(settings, log=lambda m: typer.echo(m, err=True))


# --- config -------------------------------------------------------------------------------
@config_app.command("show")
def config_show() -> None:
    """Print every setting's effective value; secrets are masked."""
    settings = _settings()
    values = masked(settings)
    width = max(len(k) for k in values)
    for name, value in values.items():
        typer.echo(f"TICKVAULT_{name.upper():<{width}}  {value}")


@config_app.command("doc")
def config_doc() -> None:
    """Print the settings as a Markdown table (docs/configuration.md's table comes from here)."""
    from tickvault.config import documented_settings
    from tickvault.jobs.markdown import table

    rows = ((f"`{variable}`", f"`{default}`", meaning) for variable, default, meaning in documented_settings())
    for line in table(("variable", "default", "meaning"), rows):
        typer.echo(line)


# --- db -----------------------------------------------------------------------------------
@db_app.command("up")
def db_up(migrate_too: bool = typer.Option(True, "--migrate/--no-migrate", help="Apply migrations after start.")) -> None:
    """Start the local TimescaleDB (build it the first time), or check TICKVAULT_DATABASE_URL's server."""
    from tickvault.db import database_url
    from tickvault.db.local import LocalDatabaseError

    settings = _settings()
    started = time.monotonic()
    if settings.database_url is None:
        try:
            timings = _local(settings).up()
        except LocalDatabaseError as exc:
            raise _fail(str(exc)) from None
        what = "started" if timings["started_now"] else "already running"
        typer.echo(f"local TimescaleDB {what} on 127.0.0.1:{settings.db_port} ({time.monotonic() - started:.1f} s)")
    else:
        typer.echo("using TICKVAULT_DATABASE_URL (no local server started)")
    if migrate_too:
        _migrate(database_url(settings))
        _apply_policies(database_url(settings), settings)


def _apply_policies(url: str, settings: Settings) -> None:
    """The edition's refresh and compression policies, as the settings say (see tickvault.db.policies)."""
    import psycopg

    from tickvault.db.policies import apply_policies

    with psycopg.connect(url, autocommit=True) as conn:
        report = apply_policies(conn, settings)
    for change in report.changed:
        typer.echo(f"timescaledb policy: {change}")
    typer.echo(report.note)


def _migrate(url: str) -> None:
    from tickvault.db.migrate import MigrationError, migrate

    try:
        applied = migrate(url, log=lambda m: typer.echo(m))
    except MigrationError as exc:
        raise _fail(str(exc)) from None
    if not applied:
        typer.echo("schema up to date")


@db_app.command("down")
def db_down() -> None:
    """Stop the local TimescaleDB (never touches a server named by TICKVAULT_DATABASE_URL)."""
    settings = _settings()
    if settings.database_url is not None:
        raise _fail("TICKVAULT_DATABASE_URL is set: tickvault does not manage that server")
    stopped = _local(settings).down()
    typer.echo("stopped" if stopped else "not running")


@db_app.command("status")
def db_status() -> None:
    """Say whether the server runs, where, and which TimescaleDB edition and version it has."""
    import psycopg

    from tickvault.db import database_url

    settings = _settings()
    if settings.database_url is None:
        st = _local(settings).status()
        typer.echo(f"server:   local ({st.root})")
        typer.echo(f"built:    {'yes' if st.built else 'no'}    initialised: {'yes' if st.initialised else 'no'}")
        typer.echo(f"running:  {'yes, pid ' + str(st.pid) if st.running else 'no'}    port: {st.port}")
        if not st.running:
            raise typer.Exit(3)
    else:
        typer.echo("server:   TICKVAULT_DATABASE_URL")
    try:
        with psycopg.connect(database_url(settings), connect_timeout=5) as conn:
            edition, version, pg = conn.execute(
                "SELECT current_setting('timescaledb.license', true), "
                "(SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), current_setting('server_version')"
            ).fetchone()
            applied = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tickvault_migrations'"
            ).fetchone()[0]
            migrations = conn.execute("SELECT count(*) FROM tickvault_migrations").fetchone()[0] if applied else 0
    except (psycopg.Error, Exception) as exc:  # noqa: BLE001 - any failure here is "cannot connect"
        raise _fail(f"cannot connect: {exc}") from None
    typer.echo(f"postgres: {pg}")
    typer.echo(f"timescaledb: {version or 'not installed'}    edition (timescaledb.license): {edition}")
    typer.echo(f"migrations applied: {migrations}")
    if migrations and version:
        _edition_status(database_url(settings))


def _edition_status(url: str) -> None:
    """Aggregates, compression and background jobs: what the edition gives and whether it works."""
    import psycopg

    from tickvault.db.aggregates import CRYPTO, raw_horizon
    from tickvault.db.jobs import job_health, warning_lines
    from tickvault.db.policies import compression_stats, current_policies
    from tickvault.jobs.markdown import human_bytes

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        policies = current_policies(conn)
        horizon = raw_horizon(conn)
        crypto_horizon = raw_horizon(conn, CRYPTO)
        compression = compression_stats(conn)
        jobs = job_health(conn)
    typer.echo(policies.note)
    if horizon is None:
        typer.echo("raw horizon: none (no raw trades)")
    else:
        typer.echo(f"raw horizon: {horizon.isoformat(timespec='seconds')} (OHLCV buckets before it are kept, never refreshed)")
    if crypto_horizon is not None:
        typer.echo(f"crypto raw horizon: {crypto_horizon.isoformat(timespec='seconds')} "
                   "(crypto_ohlcv buckets before it are kept, never refreshed)")
    for c in compression:
        typer.echo(
            f"compression: {c.table} {c.compressed_chunks}/{c.chunks} chunks compressed, "
            f"{human_bytes(c.bytes_before)} -> {human_bytes(c.bytes_after)} (saved {human_bytes(c.bytes_saved)})"
        )
    typer.echo(f"jobs: {len(jobs)}" + ("" if jobs else " (none)"))
    for j in jobs:
        typer.echo(f"  {j.job_id:>5}  {j.what:<60}  {j.state}")
    for line in warning_lines(jobs):
        typer.secho(f"WARNING: {line}", fg="yellow", err=True)


@db_app.command("url")
def db_url(show_password: bool = typer.Option(False, "--show-password", help="Print the password too.")) -> None:
    """Print the connection URL (password masked unless --show-password)."""
    from tickvault.config import _mask_url
    from tickvault.db import database_url
    from tickvault.db.local import LocalDatabaseError

    try:
        url = database_url(_settings())
    except LocalDatabaseError as exc:
        raise _fail(str(exc)) from None
    typer.echo(url if show_password else _mask_url(url))


@db_app.command("psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_psql(ctx: typer.Context) -> None:
    """Open psql on the database (extra arguments go to psql, e.g. `-c 'select 1'`)."""
    import shutil

    from tickvault.db import database_url

    settings = _settings()
    if settings.database_url is None:
        argv, env = _local(settings).psql_argv()
    else:
        psql = shutil.which("psql")
        if psql is None:
            raise _fail("psql is not installed on this host (apt-get install postgresql-client)")
        argv, env = [psql, database_url(settings)], dict(os.environ)
    sys.stdout.flush()
    os.execve(argv[0], argv + list(ctx.args), env)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (each once, in order, in a transaction)."""
    from tickvault.db import database_url

    _migrate(database_url(_settings()))


@db_app.command("refresh-aggregates")
def db_refresh_aggregates(
    start: str = typer.Option(None, help="Recompute buckets from this time (ISO 8601, UTC if no offset)."),
    end: str = typer.Option(None, help="...up to this time."),
) -> None:
    """Refresh the OHLCV aggregates, ohlcv_* and crypto_ohlcv_* (continuous aggregates or tickvault's rollups, per edition)."""
    from datetime import datetime

    from tickvault.db import database_url
    from tickvault.db.aggregates import refresh_ohlcv

    def parse(value: str | None) -> datetime | None:
        if value is None:
            return None
        from datetime import timezone

        dt = datetime.fromisoformat(value)
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)

    results = refresh_ohlcv(database_url(_settings()), parse(start), parse(end))
    for r in results:
        rows = "" if r.rows is None else f"  {r.rows} rows"
        typer.echo(f"{r.aggregate}_{r.timeframe}  {r.lo} → {r.hi}{rows}")
    if not results:
        typer.echo("nothing to refresh (no raw trades in the window, or all of it is below the raw horizon)")


def _run_worker_foreground(settings: Settings, *, live: bool, strategy=None, children=()) -> None:
    """Run the worker in the foreground until it stops; then stop ``children`` (``(process, prefix)``:
    the dashboard, the simulator), in that order.

    ``live``: a status line at the bottom of the terminal with log records, and the children's output
    (relayed line by line, each line with its prefix), printed above it; otherwise plain INFO logs.
    Errors propagate.
    """
    import asyncio

    from tickvault.stream.status import StatusDisplay
    from tickvault.stream.worker import WorkerHandle, run_worker

    handle = WorkerHandle()

    async def worker_with_status(display: StatusDisplay) -> None:
        async def ticker() -> None:
            while not handle.stop_event.is_set():
                try:
                    await asyncio.wait_for(handle.stop_event.wait(), 1.0)
                except asyncio.TimeoutError:
                    display.tick()

        tick = asyncio.create_task(ticker())
        try:
            await run_worker(settings, handle, install_signal_handlers=True, strategy=strategy)
        finally:
            handle.stop_event.set()
            await tick

    with StatusDisplay(handle.metrics, live=live, phase=handle.phase) as display:
        relays = [display.relay(pipe, prefix) for child, prefix in children for pipe in (child.stdout, child.stderr)]
        try:
            asyncio.run(worker_with_status(display))
        finally:
            for child, _ in children:
                _stop_child(child)
            for relay in relays:
                relay.join(timeout=5)  # the pipes close when the children exit
    typer.echo(f"worker stopped cleanly: {int(handle.metrics.totals['rows_committed']):,} rows committed", err=True)


def _stop_child(proc) -> None:
    """SIGTERM, then SIGKILL after 15 s (the simulator's and the dashboard's own shutdowns are quick)."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@worker_app.command("run")
def worker_run(live: bool = typer.Option(True, "--live/--quiet", help="Show a one-line live status.")) -> None:
    """Run the streaming worker in the foreground (SIGTERM/Ctrl-C: drain, flush, exit 0)."""
    from tickvault.registration import WorkerNameTaken
    from tickvault.stream.feed_claims import FeedTaken
    from tickvault.stream.reader import AuthFailed
    from tickvault.stream.worker import ShutdownIncomplete

    settings = _settings()
    strategy = _strategy(settings)
    try:
        _run_worker_foreground(settings, live=live and sys.stderr.isatty(), strategy=strategy)
    except ShutdownIncomplete as exc:
        raise _fail(str(exc), code=3) from None
    except (AuthFailed, WorkerNameTaken, FeedTaken, ValueError) as exc:
        raise _fail(str(exc)) from None


FEED_KINDS = 4  # stocks, crypto, options, news: at most one feed of each per worker


@worker_app.command("status")
def worker_status(rows: int = typer.Option(5, help="How many recent intervals to show.")) -> None:
    """The latest figures the worker wrote to ingest_stats, as a table: the last N intervals of each feed."""
    import psycopg

    from tickvault.db import database_url

    settings = _settings()
    with psycopg.connect(database_url(settings), connect_timeout=5) as conn:
        found = conn.execute(
            "SELECT time, worker, trades / interval_s, rows_committed / interval_s, received_to_processed_p99_ms, "
            "received_to_committed_p99_ms, exchange_to_received_p99_ms, queue_depth, queue_max, rss_mb, cpu_percent, "
            "reconnects, rejects, stalls, backfilled, feed FROM ingest_stats WHERE worker = %s "
            "ORDER BY time DESC LIMIT %s",
            (settings.worker_name, rows * FEED_KINDS),  # one row per feed per interval
        ).fetchall()
    per_feed: dict[str, int] = {}
    kept = []
    for r in found:  # the last `rows` intervals of each feed
        per_feed[r[15]] = per_feed.get(r[15], 0) + 1
        if per_feed[r[15]] <= rows:
            kept.append(r)
    found = kept
    if not found:
        typer.echo(f"no ingest_stats yet for worker {settings.worker_name!r}")
        raise typer.Exit(3)
    head = ("time (UTC)", "feed", "trades/s", "rows/s", "p99 proc ms", "p99 commit ms", "p99 feed ms", "queue", "q max",
            "RSS MB", "CPU %", "reconn", "rejects", "stalls", "backfill")
    table = [head]
    for r in found:
        table.append((r[0].strftime("%H:%M:%S"), r[15], f"{r[2]:,.0f}", f"{r[3]:,.0f}", *(f"{v:.3f}" if v is not None else "-" for v in r[4:7]),
                      str(r[7]), str(r[8]), f"{r[9]:.0f}", f"{r[10]:.0f}", *(str(v) for v in r[11:15])))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    typer.echo(f"worker {settings.worker_name}")
    for row in table:
        typer.echo("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    _warn_failing_jobs(database_url(settings))


def _warn_failing_jobs(url: str) -> None:
    """TimescaleDB background jobs that keep failing (a refresh policy, compression): said, not hidden."""
    import psycopg

    from tickvault.db.jobs import job_health, warning_lines

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        jobs = job_health(conn)
    lines = warning_lines(jobs)
    typer.echo(f"TimescaleDB jobs: {len(jobs)}, failing: {len(lines)}")
    for line in lines:
        typer.secho(f"WARNING: {line}", fg="yellow", err=True)


def _simulator_banner(sim, settings: Settings) -> list[str]:
    """What `tickvault sim` prints when it listens: its symbols, URLs, clock and the keys it accepts."""
    from tickvault.alpaca.protocol import ns_to_rfc3339
    from tickvault.sim.market import _TICKERS
    from tickvault.sim.server import SIM_KEY, SIM_SECRET

    real = sum(1 for s in sim.symbols if s in _TICKERS)
    synthetic = f", {len(sim.symbols) - real} of them synthetic ({sim.symbols[real]}...)" if real < len(sim.symbols) else ""
    keys = (f"key id {SIM_KEY}  secret {SIM_SECRET}" if (sim.key, sim.secret) == (SIM_KEY, SIM_SECRET)
            else "those of TICKVAULT_ALPACA_KEY_ID / TICKVAULT_ALPACA_SECRET_KEY")
    if sim.replay is not None:
        speed = f"{sim.replay_speed:g}x" if sim.replay_speed else "as fast as clients read"
        source = f"simulator: replaying {sim.replay} ({speed}), {len(sim.symbols)} symbols so far"
    else:
        source = f"simulator: {len(sim.symbols)} symbols{synthetic}, {sim.rate or 'max'} trades/s, frames of {sim.frame_size}"
    scale = getattr(sim.clock, "scale", 1.0)
    return [
        source,
        f"  market data  {sim.stream_url(settings.alpaca_feed)}",
        f"  trade updates {sim.trade_updates_url}",
        f"  REST         {sim.rest_url}",
        # after the first four lines, which scripts and tests read for the URLs they need
        f"  crypto       {sim.crypto_stream_url('us')}  ({', '.join(sim.crypto_pairs)})",
        *([f"  options      {sim.options_stream_url('indicative')}  (msgpack only; {len(sim.option_symbols)} "
           f"contracts, e.g. {sim.option_symbols[0]})"] if sim.option_symbols else []),
        f"  news         {sim.news_stream_url}",
        f"  keys         {keys}",
        f"  clock        {ns_to_rfc3339(sim.clock())} x{scale:g}, hours {sim.hours}  (POST {sim.rest_url}/_sim/clock)",
    ]


sim_app = typer.Typer(
    help="The Alpaca-protocol simulator on 127.0.0.1 (market-data WebSocket, trade updates, trading and data "
    "REST). Options override the TICKVAULT_SIM_* settings. `tickvault sim record` saves a live stream for --replay.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(sim_app, name="sim")


@sim_app.callback()
def sim_command(
    ctx: typer.Context,
    port: int = typer.Option(None, help="Market-data and trade-updates WebSocket port (0: any free one)."),
    rest_port: int = typer.Option(None, "--rest-port", help="REST port (0: any free one)."),
    symbols: str = typer.Option(None, help="A count of symbols (50), or the symbols themselves (AAPL,MSFT)."),
    rate: float = typer.Option(None, help="Trades per second across all symbols."),
    seed: int = typer.Option(None, help="Seed of the random walk (and of rate-based faults)."),
    frame_size: int = typer.Option(None, "--frame-size", help="Messages per frame."),
    hours: str = typer.Option(None, help="always (never closes) or calendar (NYSE's sessions)."),
    calendar_file: str = typer.Option(None, "--calendar-file", help="Extra closures and early closes for --hours calendar: "
                                      "a file of YYYY-MM-DD or YYYY-MM-DD HH:MM lines."),
    clock_start: str = typer.Option(None, "--clock-start", help="Simulated start time, ISO 8601 with offset."),
    clock_scale: float = typer.Option(None, "--clock-scale", help="Simulated seconds per wall second."),
    replay: str = typer.Option(None, help="Serve this recording (tickvault sim record) instead of the random walk."),
    replay_speed: float = typer.Option(None, "--replay-speed", help="1: recorded pace, 10: ten times faster, 0: as fast as clients read."),
    drop_every: float = typer.Option(0, "--drop-every", help="Fault: drop every market-data connection every N s."),
    stall_every: float = typer.Option(0, "--stall-every", help="Fault: stall the feed every N s ..."),
    stall_seconds: float = typer.Option(5, "--stall-seconds", help="... for this many seconds."),
    malformed_every: float = typer.Option(0, "--malformed-every", help="Fault: an undecodable frame every N s."),
    rate_429: float = typer.Option(0, "--rate-429", help="Fault: answer this share (0..1) of REST requests with 429."),
    rate_500: float = typer.Option(0, "--rate-500", help="Fault: answer this share (0..1) of REST requests with 500."),
    latency_ms: float = typer.Option(0, "--latency-ms", help="Fault: add this latency to every REST answer."),
    record: str = typer.Option(None, "--record", help="Record a live stream into this file instead of simulating "
                               "(as `tickvault sim record FILE`; needs --symbols, takes --channels, --url, "
                               "--seconds, --frames)."),
    channels: str = typer.Option(None, help="With --record: channels to record (default trades,quotes,bars)."),
    url: str = typer.Option(None, help="With --record: the stream URL (default: Alpaca's, from the settings)."),
    seconds: float = typer.Option(None, help="With --record: stop after this long."),
    frames: int = typer.Option(None, help="With --record: stop after this many frames."),
) -> None:
    """Run the simulator until Ctrl-C / SIGTERM; prints its URLs and the keys it accepts. With --record,
    record a live stream instead."""
    if ctx.invoked_subcommand is not None:
        return
    simulator_only = {"--port": port, "--rest-port": rest_port, "--rate": rate, "--seed": seed,
                      "--frame-size": frame_size, "--hours": hours, "--calendar-file": calendar_file,
                      "--clock-start": clock_start, "--clock-scale": clock_scale, "--replay": replay,
                      "--replay-speed": replay_speed, "--drop-every": drop_every or None,
                      "--stall-every": stall_every or None, "--malformed-every": malformed_every or None,
                      "--rate-429": rate_429 or None, "--rate-500": rate_500 or None, "--latency-ms": latency_ms or None}
    if record is not None:
        given = [flag for flag, value in simulator_only.items() if value is not None]
        if given:
            raise _fail(f"--record records a live stream; {', '.join(given)} configure the simulator", code=2)
        if not symbols:
            raise _fail("--record needs --symbols (comma-separated, * for all)", code=2)
        _record(record, symbols, channels or "trades,quotes,bars", url, seconds, frames)
        return
    for flag, value in (("--channels", channels), ("--url", url), ("--seconds", seconds), ("--frames", frames)):
        if value is not None:
            raise _fail(f"{flag} applies to --record only", code=2)
    import asyncio

    from tickvault.config import load_settings
    from tickvault.sim.recording import RecordingError
    from tickvault.sim.server import run_simulator

    overrides: dict[str, object] = {
        name: value
        for name, value in (
            ("sim_port", port), ("sim_rest_port", rest_port), ("sim_rate", rate), ("sim_seed", seed),
            ("sim_frame_size", frame_size), ("sim_hours", hours), ("sim_calendar_file", calendar_file),
            ("sim_clock_start", clock_start),
            ("sim_clock_scale", clock_scale), ("sim_replay", replay), ("sim_replay_speed", replay_speed),
        )
        if value is not None
    }
    names = None
    if symbols is not None:
        if symbols.strip().isdigit():
            overrides["sim_symbols"] = int(symbols)
        else:
            names = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    for share, name in ((rate_429, "--rate-429"), (rate_500, "--rate-500")):
        if not 0 <= share <= 1:
            raise _fail(f"{name} is a share of requests between 0 and 1, not {share}", code=2)

    def ready(sim) -> None:
        sim.chaos(drop_every=drop_every, stall_every=stall_every, stall_seconds=stall_seconds if stall_every else 0,
                  malformed_every=malformed_every)
        sim.rest_fail_rate(429, rate_429)
        sim.rest_fail_rate(500, rate_500)
        sim.rest_latency(latency_ms)
        for line in _simulator_banner(sim, settings):
            typer.echo(line)
        faults = [f"{flag} {value:g}" for flag, value in (
            ("--drop-every", drop_every), ("--stall-every", stall_every), ("--malformed-every", malformed_every),
            ("--rate-429", rate_429), ("--rate-500", rate_500), ("--latency-ms", latency_ms)) if value]
        if faults:
            typer.echo(f"  faults       {', '.join(faults)}")
        typer.echo("")  # the end of the banner (`tickvault run` reads up to here)
        sys.stdout.flush()

    try:
        asyncio.run(run_simulator(settings, on_ready=ready, **({"symbols": names} if names else {})))
    except (RecordingError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


@sim_app.command("record")
def sim_record(
    out: str = typer.Argument(..., help="The recording file to write (gzip; replay it with `tickvault sim --replay`)."),
    symbols: str = typer.Option(..., help="Symbols to record, comma-separated (* for all)."),
    channels: str = typer.Option("trades,quotes,bars", help="Channels: trades, quotes, bars, updatedBars, dailyBars, statuses, lulds."),
    url: str = typer.Option(None, help="Stream URL. Default: TICKVAULT_ALPACA_STREAM_URL/v2/TICKVAULT_ALPACA_FEED."),
    seconds: float = typer.Option(None, help="Stop after this long (default: until Ctrl-C)."),
    frames: int = typer.Option(None, help="Stop after this many frames."),
) -> None:
    """Record a live market-data stream's frames (as they arrive, with arrival times) for --replay.

    The keys are TICKVAULT_ALPACA_KEY_ID / TICKVAULT_ALPACA_SECRET_KEY; they are never written to the file.
    `tickvault sim --record FILE` does the same."""
    _record(out, symbols, channels, url, seconds, frames)


def _record(out: str, symbols: str, channels: str, url: str | None, seconds: float | None,
            frames: int | None) -> None:
    """`tickvault sim record` and `tickvault sim --record`: one way to record a stream."""
    import asyncio
    import signal

    from tickvault.sim.recording import RecordingError, record_stream

    settings = _settings()
    if not settings.has_alpaca_keys:
        raise _fail("recording needs TICKVAULT_ALPACA_KEY_ID and TICKVAULT_ALPACA_SECRET_KEY", code=2)
    wire = {"trades": "trades", "quotes": "quotes", "bars": "bars", "updatedbars": "updated_bars",
            "dailybars": "daily_bars", "statuses": "statuses", "lulds": "lulds"}
    names = [s.strip().upper() if s.strip() != "*" else "*" for s in symbols.split(",") if s.strip()]
    subscription: dict[str, list[str]] = {}
    for channel in (c.strip() for c in channels.split(",") if c.strip()):
        if channel.lower() not in wire:
            raise _fail(f"unknown channel {channel!r}; one of {', '.join(wire)}", code=2)
        subscription[wire[channel.lower()]] = names
    target = url or f"{settings.alpaca_stream_url.rstrip('/')}/v2/{settings.alpaca_feed}"

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await record_stream(target, settings.alpaca_key_id.get_secret_value(),
                                   settings.alpaca_secret_key.get_secret_value(), out, subscription=subscription,
                                   seconds=seconds, max_frames=frames, stop=stop)

    typer.echo(f"recording {target} ({', '.join(subscription)} of {', '.join(names)}) into {out}; Ctrl-C stops")
    try:
        written = asyncio.run(main())
    except (RecordingError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"recorded {written} frames into {out}")


@app.command("run")
def run_main() -> None:
    """The main job: database up and migrated, the simulator (unless Alpaca keys are set), the worker."""
    import subprocess

    from tickvault.registration import WorkerNameTaken, check_name_free
    from tickvault.stream.feed_claims import FeedTaken
    from tickvault.stream.reader import AuthFailed
    from tickvault.stream.worker import ShutdownIncomplete

    settings = _settings()
    strategy = _strategy(settings)
    try:
        check_name_free(settings, settings.worker_name)  # refuse before starting anything
    except WorkerNameTaken as exc:
        raise _fail(str(exc)) from None
    db_up(migrate_too=True)
    sim_proc = None
    if not settings.has_alpaca_keys:
        from pydantic import SecretStr

        from tickvault.sim.market import symbol_names
        from tickvault.sim.server import SIM_KEY, SIM_SECRET

        typer.echo("no Alpaca keys configured: starting the simulator (set TICKVAULT_ALPACA_KEY_ID/SECRET_KEY for Alpaca)")
        env = {**os.environ, "TICKVAULT_ALPACA_KEY_ID": SIM_KEY, "TICKVAULT_ALPACA_SECRET_KEY": SIM_SECRET}
        # Its output is piped and relayed above the status line, never written into it.
        sim_proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "sim"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        banner = []
        for line in sim_proc.stdout:
            if not line.strip():
                break
            banner.append(line.rstrip())
            typer.echo(line.rstrip())
        if not banner or sim_proc.poll() is not None:
            _stop_child(sim_proc)
            raise _fail("the simulator did not start:\n" + sim_proc.stderr.read()[-3000:])
        base = f"http://{settings.sim_host}:{settings.sim_rest_port}"
        settings = settings.model_copy(update={
            "alpaca_key_id": SecretStr(SIM_KEY), "alpaca_secret_key": SecretStr(SIM_SECRET),
            "alpaca_stream_url": f"ws://{settings.sim_host}:{settings.sim_port}", "alpaca_data_url": base,
            "alpaca_trading_url": base, "alpaca_trade_stream_url": f"ws://{settings.sim_host}:{settings.sim_port}/stream",
            "symbols": settings.symbols or symbol_names(settings.sim_symbols),
        })
    ui_proc = _start_dashboard(settings)
    typer.echo(f"worker {settings.worker_name}: {len(settings.symbols) or 'all'} symbols, Ctrl-C stops everything cleanly")
    try:
        children = [(p, prefix) for p, prefix in ((ui_proc, "dashboard: "), (sim_proc, "simulator: ")) if p]
        _run_worker_foreground(settings, live=sys.stderr.isatty(), strategy=strategy, children=children)
    except ShutdownIncomplete as exc:
        raise _fail(str(exc), code=3) from None
    except (AuthFailed, WorkerNameTaken, FeedTaken, ValueError) as exc:  # the name: claimed since the check
        raise _fail(str(exc)) from None
    finally:
        for child in (ui_proc, sim_proc):
            if child is not None:
                _stop_child(child)


def _start_dashboard(settings: Settings):
    """`tickvault ui` as a child of `tickvault run`, with the worker's Alpaca URLs and keys (the kill
    switch cancels orders there); prints its URL line. None when TICKVAULT_UI_PORT is 0."""
    import subprocess

    if settings.ui_port == 0:
        return None
    env = {**os.environ, "TICKVAULT_ALPACA_TRADING_URL": settings.alpaca_trading_url,
           "TICKVAULT_ALPACA_DATA_URL": settings.alpaca_data_url}
    if settings.has_alpaca_keys:
        env["TICKVAULT_ALPACA_KEY_ID"] = settings.alpaca_key_id.get_secret_value()
        env["TICKVAULT_ALPACA_SECRET_KEY"] = settings.alpaca_secret_key.get_secret_value()
    # Its output is piped and relayed above the status line (like the simulator's), never written into it.
    proc = subprocess.Popen([sys.executable, "-m", "tickvault.cli", "ui"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        typer.echo(f"warning: the dashboard did not start (exit {proc.wait()}); the worker runs without it", err=True)
        return None
    typer.echo(line.rstrip())
    return proc


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
