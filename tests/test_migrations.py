"""Migrations: applied once, in order, atomically; history protected; schema as designed."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from tickvault.db.migrate import MigrationError, discover, migrate, sql_dir


def test_migrations_apply_from_empty_then_rerun_is_noop(fresh_database):
    url = fresh_database(migrated=False)
    applied = migrate(url)
    with psycopg.connect(url) as conn:
        edition = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]
    expected = sorted({m.path.name for v in discover().values() for m in v if m.edition in (None, edition)})
    assert any(name.endswith(f".{edition}.sql") for name in applied)  # the edition's own variants ran
    assert applied == expected
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM tickvault_migrations ORDER BY version")]
    assert versions == sorted(discover().keys())


def test_edited_applied_migration_is_refused(fresh_database, tmp_path):
    url = fresh_database(migrated=False)
    local = tmp_path / "sql"
    shutil.copytree(sql_dir(), local, ignore=shutil.ignore_patterns("queries"))
    migrate(url, local)
    target = local / "002_trade_history.sql"
    target.write_text(target.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match="002_trade_history.sql was changed after it was applied"):
        migrate(url, local)


def test_failing_migration_leaves_no_trace(fresh_database, tmp_path):
    url = fresh_database(migrated=False)
    local = tmp_path / "sql"
    local.mkdir()
    (local / "001_ok.sql").write_text("CREATE TABLE kept (id int);")
    (local / "002_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();")
    with pytest.raises(MigrationError, match="002_broken.sql failed and was rolled back"):
        migrate(url, local)
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM tickvault_migrations")]
    assert "kept" in tables and "half_done" not in tables
    assert versions == [1]
    # the fixed file then applies
    (local / "002_broken.sql").write_text("CREATE TABLE half_done (id int);")
    assert migrate(url, local) == ["002_broken.sql"]


def test_badly_named_migration_is_refused(tmp_path):
    (tmp_path / "1_bad.sql").write_text("select 1")
    with pytest.raises(MigrationError, match="NNN_name.sql"):
        discover(tmp_path)


HYPERTABLES = {
    "trades", "quotes", "bars", "trade_corrections", "trading_statuses", "lulds", "bad_messages",
    "position_snapshots", "account_snapshots", "indicators", "ingest_stats",
}
ROLLUPS = {"ohlcv_1m_rollup", "ohlcv_5m_rollup", "ohlcv_1h_rollup", "ohlcv_1d_rollup"}


def test_hypertables_indexes_and_the_editions_ohlcv_relations_exist(conn):
    edition = conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]
    hypertables = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert HYPERTABLES <= hypertables
    if edition == "apache":  # tickvault's rollup tables; on timescale the views are continuous aggregates
        assert ROLLUPS <= hypertables
    else:
        assert not ROLLUPS & hypertables
    intervals = dict(
        conn.execute(
            "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions"
        ).fetchall()
    )
    assert str(intervals["trades"]) == "1 day, 0:00:00"
    assert str(intervals["quotes"]) == "6:00:00"
    indexes = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname='public'")}
    assert "(symbol, \"time\" DESC, trade_id, exchange)" in indexes["trades_symbol_time_key"]
    assert "UNIQUE" in indexes["trades_symbol_time_key"]
    assert "(symbol, \"time\" DESC)" in indexes["quotes_symbol_time_idx"]
    assert "orders_status_idx" in indexes and "orders_symbol_submitted_idx" in indexes
    assert "WHERE" in indexes["orders_open_idx"]
    views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname='public'")}
    if edition == "apache":
        assert {"ohlcv_1m", "ohlcv_5m", "ohlcv_1h", "ohlcv_1d"} <= views
    else:
        caggs = {r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
        assert {"ohlcv_1m", "ohlcv_5m", "ohlcv_1h", "ohlcv_1d"} <= caggs


def test_money_and_quantities_are_numeric(conn):
    rows = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name IN ('orders','fills','position_snapshots','account_snapshots') "
        "AND column_name IN ('qty','notional','limit_price','filled_qty','price','cash','equity','cum_qty','avg_entry_price')"
    ).fetchall()
    assert rows and all(dtype == "numeric" for _, _, dtype in rows)


def test_redelivered_trade_is_not_duplicated(conn):
    row = ("2026-01-05 15:00:00.123456+00", "DUPE", 7, "V", 10.5, 100, 1767625200123456789)
    insert = (
        "INSERT INTO trades (time, symbol, trade_id, exchange, price, size, time_ns) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    )
    conn.execute(insert, row)
    conn.execute(insert, row)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert.replace(" ON CONFLICT DO NOTHING", ""), row)
    assert conn.execute("SELECT count(*) FROM trades WHERE symbol = 'DUPE'").fetchone()[0] == 1
    # the ns stamp survives beside the µs timestamptz
    assert conn.execute("SELECT time_ns FROM trades WHERE symbol = 'DUPE'").fetchone()[0] == row[-1]
