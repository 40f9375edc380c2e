"""The `tickvault` command: help reads well, config show masks secrets, db commands answer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.pipes import read_lines

TICKVAULT = [sys.executable, "-m", "tickvault.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TICKVAULT, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for word in ("config", "db", "worker", "sim"):
        assert word in out.stdout
    assert run("db", "--help").stdout.count("refresh-aggregates") == 1


def test_config_show_masks_secrets():
    secret_env = {
        "TICKVAULT_ALPACA_KEY_ID": "PKTESTKEYID1234567890",
        "TICKVAULT_ALPACA_SECRET_KEY": "verysecretvalue0987654321abcdef",
        "TICKVAULT_DATABASE_URL": "postgresql://trader:hunter2pass@db.example:5432/ticks",
        "TICKVAULT_S3_SECRET_ACCESS_KEY": "s3secretvalue123456",
    }
    out = run("config", "show", env=secret_env)
    assert out.returncode == 0, out.stderr
    for value in ("verysecretvalue0987654321abcdef", "hunter2pass", "PKTESTKEYID1234567890", "s3secretvalue123456"):
        assert value not in out.stdout
    assert "postgresql://trader:****@db.example:5432/ticks" in out.stdout
    assert "TICKVAULT_ALPACA_FEED" in out.stdout


def test_bad_config_is_a_clear_error():
    out = run("config", "show", env={"TICKVAULT_DB_PORT": "not-a-port"})
    assert out.returncode == 2
    assert "TICKVAULT_DB_PORT" in out.stderr


def test_db_status_reports_edition(admin_url):
    if admin_url.startswith("postgresql://postgres:") and "127.0.0.1:55432" not in admin_url:
        pytest.skip("status is exercised against the default local server")
    out = run("db", "status")
    assert out.returncode == 0, out.stderr
    assert "edition (timescaledb.license): apache" in out.stdout or "timescale" in out.stdout
    assert "running:  yes" in out.stdout or "TICKVAULT_DATABASE_URL" in out.stdout
    url = run("db", "url")
    assert "****" in url.stdout


def test_psql_opens_the_database(admin_url):
    out = run("db", "psql", "-At", "-c", "select extname from pg_extension where extname='timescaledb'")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "timescaledb"


@pytest.mark.parametrize("command", [("config", "show"), ("worker", "run", "--quiet"), ("run",)],
                         ids=["config-show", "worker-run", "run"])
def test_backfill_from_without_utc_offset_exits_2_naming_the_variable(command):
    # Checked in Settings, so every command refuses it the same way before it starts anything.
    out = run(*command, env={"TICKVAULT_BACKFILL_FROM": "2026-03-10T09:30:00"})
    assert out.returncode == 2, out.stderr
    assert "TICKVAULT_BACKFILL_FROM" in out.stderr and "no UTC offset" in out.stderr
    assert "Traceback" not in out.stderr


def test_backfill_from_with_an_offset_or_z_is_accepted():
    from tickvault.config import load_settings

    for value in ("2026-03-10T09:30:00-04:00", "2026-03-10T13:30:00Z"):
        assert load_settings(backfill_from=value).backfill_from.utcoffset() is not None


# A server that refuses connections: a command that opened a pool would log psycopg's connection
# warnings (and, before the fix, hang for ever retrying); one that fails first never touches it.
UNREACHABLE_DB = {"TICKVAULT_DATABASE_URL": "postgresql://nobody:x@127.0.0.1:1/none"}
FAKE_KEYS = {"TICKVAULT_ALPACA_KEY_ID": "key", "TICKVAULT_ALPACA_SECRET_KEY": "secret", "TICKVAULT_METRICS_PORT": "0"}


@pytest.mark.parametrize("spec, says", [
    ("nonexistent_module_xyz:Cls", "No module named 'nonexistent_module_xyz'"),
    ("tickvault.stream.strategy:NoSuchStrategy", "has no attribute 'NoSuchStrategy'"),
    ("tickvault.stream.strategy:Bar", "cannot load strategy"),  # calling Bar() without arguments fails
    ("no-colon-here", "is not `package.module:Name`"),
])
@pytest.mark.parametrize("command", [("worker", "run", "--quiet"), ("run",)], ids=["worker-run", "run"])
def test_bad_strategy_exits_2_with_its_message_before_anything_starts(command, spec, says, tmp_path):
    env = {**UNREACHABLE_DB, **FAKE_KEYS, "TICKVAULT_STRATEGY": spec, "TICKVAULT_RUN_DIR": str(tmp_path)}
    out = run(*command, env=env)  # run() has a 60 s timeout: a hang fails the test
    assert out.returncode == 2, out.stderr
    assert "TICKVAULT_STRATEGY" in out.stderr and says in out.stderr, out.stderr
    assert "psycopg" not in out.stderr and "Traceback" not in out.stderr
    assert "TICKVAULT_DATABASE_URL" not in out.stdout  # `run` did not get as far as the database
    assert not list(tmp_path.iterdir())  # and no worker registered


def test_worker_failing_during_start_up_exits_instead_of_hanging(db_url, tmp_path):
    """An error right after the pool opened (here: an unreadable spill file) ends the process: the
    pool is closed on the way out instead of retrying its half-open connections for ever."""
    (tmp_path / "spill").mkdir()
    (tmp_path / "spill" / "worker-1-20260310T000000-0.spill.jsonl").write_text("not json\n")
    env = {**FAKE_KEYS, "TICKVAULT_DATABASE_URL": db_url, "TICKVAULT_RUN_DIR": str(tmp_path),
           "TICKVAULT_WORKER_NAME": "worker-1", "TICKVAULT_SYMBOLS": "AAPL"}
    out = run("worker", "run", "--quiet", env=env)  # 60 s timeout: a hang fails the test
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Expecting value" in out.stderr


def test_help_points_a_newcomer_at_tickvault_run():
    text = " ".join(run("--help").stdout.split())  # the help is wrapped to the terminal's width
    assert "Start with `make run` (or `tickvault run`)" in text


def test_sim_prints_the_keys_it_accepts_with_its_urls():
    import socket

    import httpx

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {**os.environ, "TICKVAULT_SIM_PORT": str(ports[0]), "TICKVAULT_SIM_REST_PORT": str(ports[1]),
           "TICKVAULT_SIM_RATE": "100", "TICKVAULT_SIM_SYMBOLS": "50"}
    for name in ("TICKVAULT_ALPACA_KEY_ID", "TICKVAULT_ALPACA_SECRET_KEY"):
        env.pop(name, None)
    sim = subprocess.Popen([*TICKVAULT, "sim"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # up to the blank line that ends the banner
        banner = read_lines(sim, 60, "the simulator's banner", until=lambda line: not line.strip())[:-1]
        assert any("50 symbols, 30 of them synthetic (ZAAAA...)" in line for line in banner), banner
        keys = next(line for line in banner if line.strip().startswith("keys"))
        key, secret = keys.split()[3], keys.split()[5]
        assert (key, secret) == ("sim-key", "sim-secret")
        rest = next(line.split()[-1] for line in banner if line.strip().startswith("REST"))
        headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}
        assert httpx.get(f"{rest}/v2/account", headers=headers, timeout=10).status_code == 200
        assert httpx.get(f"{rest}/v2/account", headers={**headers, "APCA-API-SECRET-KEY": "secret"},
                         timeout=10).status_code == 401
    finally:
        sim.terminate()
        sim.wait(timeout=30)
