"""What differs between the TimescaleDB editions, tested on whichever one the server has.

Refresh policies agree with retention by construction, compression keeps late trades and backfills
inserting (``timescale``), and failing background jobs are visible. Each test runs unchanged on both
editions; only what the ``apache`` edition cannot do (compression) is skipped there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tickvault.config import load_settings
from tickvault.db.aggregates import AGGREGATES
from tickvault.db.jobs import failing_jobs, job_health, jobs_markdown, warning_lines
from tickvault.db.policies import (
    APACHE_NOTE,
    RAW_MARGIN,
    REFRESH_POLICIES,
    apply_policies,
    compression_stats,
    policy_start_offset,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.db


def _edition(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]


def _refresh_jobs(conn: psycopg.Connection) -> dict[str, timedelta]:
    rows = conn.execute(
        "SELECT c.view_name, (j.config->>'start_offset')::interval FROM timescaledb_information.jobs j "
        "JOIN timescaledb_information.continuous_aggregates c "
        "ON j.hypertable_name = c.materialization_hypertable_name "
        "WHERE j.proc_name = 'policy_refresh_continuous_aggregate'"
    ).fetchall()
    return dict(rows)  # by continuous aggregate: ohlcv_1m ... and crypto_ohlcv_1m ...


def _compression_jobs(conn: psycopg.Connection) -> dict[str, timedelta]:
    rows = conn.execute(
        "SELECT hypertable_name, (config->>'compress_after')::interval FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression'"
    ).fetchall()
    return dict(rows)


@pytest.mark.parametrize("days", [0, 1, 2, 3, 4, 7, 30, 365])
def test_policy_start_offsets_stay_inside_the_raw_retention_window(days: int) -> None:
    for tf, policy in REFRESH_POLICIES.items():
        start = policy_start_offset(tf, days)
        if days == 0:  # raw trades kept forever: the defaults
            assert start == policy.start_offset
            continue
        if start is None:  # too short a raw window for Timescale's two-bucket minimum: no policy
            assert timedelta(days=days) - RAW_MARGIN < policy.end_offset + 2 * policy.width
            continue
        assert start <= timedelta(days=days) - RAW_MARGIN
        assert start >= policy.end_offset + 2 * policy.width
        assert start == min(policy.start_offset, timedelta(days=days) - RAW_MARGIN)
    assert policy_start_offset("1d", 30) == timedelta(days=29)  # the default 30 d would touch the purge


def test_apply_policies_follows_the_retention_and_compression_settings(fresh_database) -> None:
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        jobs_before = conn.execute("SELECT count(*) FROM timescaledb_information.jobs").fetchone()[0]
        report = apply_policies(conn, load_settings(retention_trades_days=30, retention_crypto_trades_days=30,
                                                    compress_after_hours=24))
        if _edition(conn) == "apache":  # nothing to configure there, said once and clearly
            assert report.note == APACHE_NOTE and not report.refresh and not report.changed
            assert conn.execute("SELECT count(*) FROM timescaledb_information.jobs").fetchone()[0] == jobs_before
            assert compression_stats(conn) == []
            return
        assert _refresh_jobs(conn) == {f"{a.name}_{tf}": policy_start_offset(tf, 30)
                                       for a in AGGREGATES for tf in REFRESH_POLICIES}
        assert _refresh_jobs(conn)["ohlcv_1d"] == _refresh_jobs(conn)["crypto_ohlcv_1d"] == timedelta(days=29)
        assert _compression_jobs(conn) == {"trades": timedelta(hours=24), "quotes": timedelta(hours=24)}
        again = apply_policies(conn, load_settings(retention_trades_days=30, retention_crypto_trades_days=30,
                                                   compress_after_hours=24))
        assert again.changed == []  # idempotent: no job is recreated
        apply_policies(conn, load_settings(retention_trades_days=3, retention_crypto_trades_days=30,
                                           compress_after_hours=0))
        short = _refresh_jobs(conn)
        assert "ohlcv_1d" not in short and short["ohlcv_1h"] == timedelta(days=2)  # 1d cannot fit two buckets in 2 d
        assert short["crypto_ohlcv_1d"] == timedelta(days=29)  # each family follows its own raw table's window
        assert _compression_jobs(conn) == {}


async def test_retention_purge_brings_the_refresh_policies_inside_its_window_first(fresh_database) -> None:
    from tickvault.jobs.retention import purge_retention

    url = fresh_database()
    report = await purge_retention(load_settings(retention_trades_days=10, retention_crypto_trades_days=10), db_url=url)
    with psycopg.connect(url, autocommit=True) as conn:
        if _edition(conn) == "apache":
            assert report.policy_note == APACHE_NOTE
            assert "compression: not available on this edition" in report.to_markdown()
        else:
            assert all(start <= timedelta(days=9) for start in _refresh_jobs(conn).values())
            assert "compression saved" in report.to_markdown()
    assert report.raw_horizon is None  # no trades: nothing may be refreshed
    assert "## TimescaleDB background jobs" in report.to_markdown()


def test_failing_background_jobs_are_reported_with_their_last_error(fresh_database) -> None:
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        if _edition(conn) == "apache":
            # Timescale schedules its job-history retention on every database and the apache license
            # refuses it on every run: a real failing job, reported as unsupported rather than failing.
            def refused() -> list:
                return [j for j in job_health(conn) if j.last_error_code == "0A000"]

            wait_for(lambda: refused(), 60, "the job-history retention job to fail under the apache license")
            job = refused()[0]
            assert job.unsupported and not job.failing and job.state == "unsupported (apache edition)"
            assert job.consecutive_failures >= 1 and job.last_success is None and "license" in job.last_error
            assert job not in failing_jobs(conn)
            # The same row on a server whose license allows the job is a failure the user must see.
            failing = dataclasses.replace(job, edition="timescale")
            assert failing.failing and failing.state.startswith("FAILING")
            [line] = warning_lines([failing])
            assert f"job {job.job_id}" in line and "last success never" in line and "license" in line
            assert "**1 failing job(s)**" in jobs_markdown([failing])
        else:
            conn.execute(
                "CREATE PROCEDURE tv_always_fails(job_id int, config jsonb) LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refresh source is gone'; END $$"
            )
            job_id = conn.execute(
                "SELECT add_job('tv_always_fails', '1 hour', initial_start => now())"
            ).fetchone()[0]
            try:
                wait_for(lambda: any(j.job_id == job_id for j in failing_jobs(conn)), 90, "the job to fail")
                job = next(j for j in failing_jobs(conn) if j.job_id == job_id)
                assert job.consecutive_failures >= 1 and "refresh source is gone" in job.last_error
                assert "**1 failing job(s)**" in jobs_markdown(job_health(conn))
            finally:
                conn.execute("SELECT delete_job(%s)", (job_id,))


def test_db_status_shows_edition_features_and_jobs(fresh_database) -> None:
    url = fresh_database()
    env = {**os.environ, "TICKVAULT_DATABASE_URL": url}
    out = subprocess.run(
        [sys.executable, "-m", "tickvault.cli", "db", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    with psycopg.connect(url) as conn:
        edition = _edition(conn)
    assert f"edition (timescaledb.license): {edition}" in out.stdout
    assert "raw horizon: none (no raw trades)" in out.stdout
    assert "jobs:" in out.stdout
    if edition == "apache":
        assert APACHE_NOTE in out.stdout
    else:
        assert "compression:" in out.stdout and "refresh policies look back" in out.stdout


async def test_late_trades_and_backfills_insert_into_compressed_chunks(fresh_database) -> None:
    from tickvault.db.pool import open_pool
    from tickvault.stream.metrics import Metrics
    from tickvault.stream.writer import BatchWriter

    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        if _edition(conn) == "apache":
            pytest.skip("the apache edition has no compression")
        day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=15, minute=0, second=0, microsecond=0)
        for i in range(200):
            t = day + timedelta(seconds=i)
            conn.execute(
                "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) "
                "VALUES (%s, %s, %s, 'V', 100, 1, %s)",
                (t, "CMP" if i % 2 else "CMQ", i, int(t.timestamp()) * 10**9),
            )
        conn.execute("SELECT compress_chunk(c) FROM show_chunks('trades') c")
        [stats] = [s for s in compression_stats(conn) if s.table == "trades"]
        assert stats.compressed_chunks == stats.chunks == 1 and stats.bytes_before > 0

    settings = load_settings(database_url=url)
    pool = await open_pool(settings, min_size=1, url=url)
    writer = BatchWriter(pool, Metrics(), worker="compressed", batch_rows=1000, flush_ms=20)
    task = asyncio.create_task(writer.run())
    late_ns = int((day + timedelta(minutes=30)).timestamp()) * 10**9
    late = (late_ns, "CMP", 10_001, "V", 99.5, 3, None, "C")
    dup = (int(day.timestamp()) * 10**9 + 1 * 10**9, "CMP", 1, "V", 100.0, 1, None, "C")  # trade 1, stored
    try:
        await writer.submit(time.monotonic_ns(), trades=[late])  # a late print: COPY into the chunk
        await writer.submit(time.monotonic_ns(), backfill_trades=[late, dup])  # a backfill overlapping both
        await writer.submit(time.monotonic_ns(), trades=[dup])  # a live re-delivery: key rejects, dedupe path
    finally:
        writer.close()  # drains: every submitted row is committed before run() returns
        await asyncio.wait_for(task, 60)
        await pool.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 201
        assert conn.execute(
            "SELECT price, size FROM trades WHERE symbol = 'CMP' AND trade_id = 10001"
        ).fetchone() == (99.5, 3)
        assert conn.execute("SELECT count(*) FROM trades WHERE symbol = 'CMP' AND trade_id = 1").fetchone()[0] == 1

