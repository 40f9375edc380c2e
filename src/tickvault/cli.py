"""The ``tickvault`` command: configuration, the database, the simulator and the worker.

Every subcommand reads configuration through :func:`tickvault.config.get_settings` only, and
prints errors as one clear paragraph (exit code 1 for an operational failure, 2 for bad config).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from tickvault.config import ConfigError, Settings, get_settings, masked

app = typer.Typer(
    help="tickvault: Alpaca market data into TimescaleDB, measured. "
    "Start with `tickvault db up`, then `tickvault worker run` (or `make run`).",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="The TimescaleDB: start/stop the local server, migrate, refresh aggregates.", no_args_is_help=True)
worker_app = typer.Typer(help="The streaming worker.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(worker_app, name="worker")


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


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
    """Print the settings as a Markdown table (the README's configuration table comes from here)."""
    from tickvault.config import Settings

    typer.echo("| variable | default | meaning |")
    typer.echo("| --- | --- | --- |")
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = field.default_factory()
            default = ",".join(default) if isinstance(default, list) else str(default).replace(str(Path.home()), "~")
        else:
            default = "" if field.default is None else str(field.default)
        typer.echo(f"| `TICKVAULT_{name.upper()}` | `{default}` | {field.description or ''} |")


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
    """Refresh the OHLCV aggregates (continuous aggregates or tickvault's rollups, per edition)."""
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
        typer.echo(f"{r.timeframe:>3}  {r.lo} → {r.hi}  {r.rows} rows")
    if not results:
        typer.echo("nothing to refresh")


@app.command("run")
def run_main() -> None:
    """The main job: start the database (and migrate), then run what is configured."""
    settings = _settings()
    db_up(migrate_too=True)
    from tickvault.config import _mask_url
    from tickvault.db import database_url

    typer.echo(f"TimescaleDB ready: {_mask_url(database_url(settings))}  (open it with `tickvault db psql`)")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
