"""Helpers the OHLCV tests share (stocks' ``ohlcv_*`` and crypto's ``crypto_ohlcv_*``)."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest

WIDTH = {"1m": "1 minute", "5m": "5 minutes", "1h": "1 hour", "1d": "1 day"}
COLUMNS = "bucket, symbol, open, high, low, close, volume, trade_count, vwap"


def dsn(conn: psycopg.Connection) -> str:
    info = conn.info
    return f"postgresql://{info.user}:{info.password}@{info.host}:{info.port}/{info.dbname}"


def day(when: datetime) -> datetime:
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def edition(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_setting('timescaledb.license')").fetchone()[0]


def view(conn: psycopg.Connection, relation: str, where: str = "true", params=()) -> list[tuple]:
    return conn.execute(
        f"SELECT {COLUMNS} FROM {relation} WHERE {where} ORDER BY symbol, bucket", params
    ).fetchall()


def assert_same_bars(got: list[tuple], want: list[tuple], label: str) -> None:
    """Aggregate rows (COLUMNS order) against a direct GROUP BY's: equal, but for vwap, a float sum that
    may add up in another order."""
    assert len(got) == len(want), label
    for g, w in zip(got, want):
        assert g[:8] == w[:8], (label, g, w)
        assert g[8] == pytest.approx(w[8], rel=1e-12), (label, g, w)
