"""The embedded TimescaleDB: up is idempotent and safe concurrently, down/status behave, a half-built
cache is detected, and a host that cannot run it gets one clear paragraph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.db.local import LocalDatabaseError, LocalTimescale

pytestmark = pytest.mark.skipif(
    load_settings().database_url is not None, reason="TICKVAULT_DATABASE_URL is set: no embedded server here"
)

SECOND_PORT = 55499  # a second cluster from the same build, so the suite's own server keeps running


@pytest.fixture
def second_cluster(admin_url):  # admin_url: the suite's server is built and running
    local = LocalTimescale(load_settings(db_port=SECOND_PORT), log=lambda m: None)
    yield local
    local.down()
    shutil.rmtree(local.data_dir, ignore_errors=True)
    local.password_path.unlink(missing_ok=True)


def test_up_twice_concurrently_then_status_and_down(second_cluster):
    local = second_cluster
    results: list[dict] = []
    errors: list[BaseException] = []

    def up() -> None:
        try:
            results.append(LocalTimescale(local.settings, log=lambda m: None).up())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=up) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(r["started_now"] for r in results) == [False, True]  # the lock serialised them
    status = local.status()
    assert status.running and status.port == SECOND_PORT
    with psycopg.connect(local.admin_url("tickvault"), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0] in ("apache", "timescale")
        assert conn.execute("SELECT current_setting('listen_addresses')").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0] == "timescaledb"
    assert local.up()["started_now"] is False  # up on a running server is a no-op
    assert local.down() is True
    assert local.status().running is False
    assert local.down() is False
    assert local.up()["started_now"] is True  # and it comes back with its data
    with psycopg.connect(local.admin_url("tickvault"), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_interrupted_build_is_detected_and_removed(tmp_path):
    settings = load_settings(db_cache_dir=tmp_path, debian_mirror="http://127.0.0.1:9/debian")
    local = LocalTimescale(settings, log=lambda m: None)
    (local.partial / "etc").mkdir(parents=True)
    (local.partial / "etc" / "junk-from-an-interrupted-run").write_text("x")
    (local.root / "etc").mkdir(parents=True)  # renamed into place but never marked complete
    assert not local.built
    with pytest.raises(LocalDatabaseError, match="debootstrap failed"):
        local.build()  # the mirror is unreachable on purpose: the point is what happened before
    assert not (local.partial / "etc" / "junk-from-an-interrupted-run").exists()
    assert not local.root.exists()


def test_unsupported_host_gets_one_clear_paragraph(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    code = (
        "from tickvault.config import load_settings\n"
        "from tickvault.db.local import LocalTimescale, LocalDatabaseError\n"
        "try:\n"
        f"    LocalTimescale(load_settings(db_cache_dir={str(tmp_path)!r})).preflight()\n"
        "except LocalDatabaseError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert "needs root" in out.stdout, out.stderr
    assert "docker/compose.yaml" in out.stdout and "TICKVAULT_DATABASE_URL" in out.stdout
