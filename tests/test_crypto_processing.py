"""Crypto frames through the real processor and writer into TimescaleDB: bars upserted (an updated
bar replaces), indicators computed per pair on each closed minute bar, the price cache fed, rejects kept."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from tickvault.alpaca.columnar import decode_columnar
from tickvault.alpaca.crypto import CRYPTO_TRADE_FIELDS, decode_crypto
from tickvault.alpaca.protocol import encode_frame
from tickvault.stream.cache import PriceCache
from tickvault.stream.metrics import Metrics
from tickvault.stream.processor import Processor
from tickvault.stream.reader import QueuedFrame
from tests.support.pipeline import writer_pipeline

MINUTE = 60 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00Z


def _bar(i: int, close: float, kind: str = "b") -> dict:
    return {"T": kind, "S": "BTC/USD", "t": T0 + i * MINUTE, "o": close - 1, "h": close + 2, "l": close - 2,
            "c": close, "v": 0.5 + i / 1000, "n": 10, "vw": close}


async def test_crypto_frames_store_bars_indicators_and_feed_the_price_cache(fresh_database):
    url = fresh_database()
    feed_metrics = Metrics()
    async with writer_pipeline(url, "crypto-processing-test") as (_, writer, metrics):
        cache = PriceCache(60, metrics)
        processor = Processor(asyncio.Queue(), writer, cache, metrics)
        messages = [_bar(i, 90_000.0 + i) for i in range(30)]
        messages += [{"T": "t", "S": "BTC/USD", "i": 1, "p": 90_031.5, "s": 0.25, "tks": "S", "t": T0 + 31 * MINUTE},
                     {"T": "q", "S": "BTC/USD", "bp": 90_031.0, "bs": 1.0, "ap": 90_032.0, "as": 2.0,
                      "t": T0 + 31 * MINUTE + 1},
                     _bar(29, 95_000.0, kind="u"),  # a late trade changed the last bar
                     {"T": "s", "S": "BTC/USD", "t": T0}]  # no statuses on the crypto stream: rejected alone
        frame = decode_crypto(encode_frame(messages))
        await processor.handle(QueuedFrame(frame, time.time_ns(), time.monotonic_ns(), False, feed_metrics))
        await writer.drain()
    with psycopg.connect(url) as conn:
        bars = conn.execute("SELECT count(*), max(close), bool_or(updated) FROM crypto_bars").fetchone()
        volume = conn.execute("SELECT volume FROM crypto_bars ORDER BY time LIMIT 1").fetchone()[0]
        ind = conn.execute("SELECT count(*), count(rsi_14), count(sma_20) FROM indicators "
                           "WHERE symbol = 'BTC/USD' AND timeframe = '1m'").fetchone()
        bad = conn.execute("SELECT source, reason FROM bad_messages").fetchall()
        trades = conn.execute("SELECT size, taker_side FROM crypto_trades").fetchall()
    assert bars == (30, 95_000.0, True)
    assert str(volume) == "0.5"
    assert ind[0] == 30 and ind[1] == 30 - 14 and ind[2] == 30 - 19  # NULL until each window has filled
    assert bad == [("stream:crypto", "unknown message type 's' on the crypto stream")]
    assert [(str(s), side) for s, side in trades] == [("0.25", "S")]
    assert cache.peek("BTC/USD") == (90_031.5, True) and cache.quote("BTC/USD")["ask_price"] == 90_032.0
    assert feed_metrics.totals["bars"] == 31 and feed_metrics.totals["rejects"] == 1
    assert feed_metrics.totals["rows_committed"] > 0 and metrics.totals["rows_committed"] == 0


def _queued(messages: list[dict]) -> QueuedFrame:
    return QueuedFrame(decode_crypto(encode_frame(messages)), time.time_ns(), time.monotonic_ns())


async def test_crypto_vwap_restarts_at_utc_midnight_uses_vw_and_survives_a_restart(fresh_database):
    """A pair's session is the UTC day: bars from 23:40Z to 00:20Z, the processor restarted at
    23:55Z (it restores from crypto_bars, the whole session even past its warm-up); VWAP equals
    SQL's sum(vwap * volume) / sum(volume) per UTC date, and the first bar after midnight is its own vw."""
    url = fresh_database()
    midnight = T0 + 86_400 * 10**9
    bars = [{**_bar(i, 90_000.0 + 7 * (i % 5)), "t": midnight + (i - 20) * MINUTE, "vw": 90_001.0 + 3 * (i % 7)}
            for i in range(40)]
    async with writer_pipeline(url, "crypto-sessions-test") as (pool, writer, metrics):
        first = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics)
        await first.handle(_queued(bars[:15]))
        await writer.drain()
        restarted = Processor(asyncio.Queue(), writer, PriceCache(60, metrics), metrics)
        # A warm-up of 5 bars, but the session (the UTC day) goes further back: all 15 are replayed.
        assert await restarted.restore(pool, crypto=["BTC/USD"], warmup_bars=5) == 15
        await restarted.handle(_queued(bars[15:]))
        await writer.drain()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT i.time, i.vwap, sum(b.vwap * b.volume::float8) OVER w / sum(b.volume::float8) OVER w, b.vwap "
            "FROM indicators i JOIN crypto_bars b ON b.symbol = i.symbol AND b.time = i.time "
            "WHERE i.symbol = 'BTC/USD' "
            "WINDOW w AS (PARTITION BY (b.time AT TIME ZONE 'UTC')::date ORDER BY b.time) "
            "ORDER BY i.time").fetchall()
    assert len(rows) == 40
    for when, got, by_sql, _ in rows:
        assert got == pytest.approx(by_sql, rel=1e-12), when
    assert rows[20][1] == rows[20][3] and rows[19][1] != pytest.approx(rows[19][3], rel=1e-9)  # 00:00Z restarts


def test_price_cache_takes_each_decoders_rows_by_field_name():
    """Stock and crypto rows go into one cache as their decoders made them; prices and quotes are read
    by field name, whatever the row's shape."""
    metrics = Metrics()
    cache = PriceCache(60, metrics)
    stock = decode_columnar(encode_frame([
        {"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 185.5, "s": 100, "c": ["@"], "z": "C", "t": T0},
        {"T": "q", "S": "AAPL", "bx": "V", "bp": 185.4, "bs": 3, "ax": "Q", "ap": 185.6, "as": 5, "c": ["R"],
         "z": "C", "t": T0}]))
    crypto = decode_crypto(encode_frame([
        {"T": "t", "S": "ETH/USD", "i": 2, "p": 3000.25, "s": 0.5, "tks": "B", "t": T0},
        {"T": "q", "S": "ETH/USD", "bp": 3000.0, "bs": 1.25, "ap": 3000.5, "as": 2.0, "t": T0}]))
    mono = time.monotonic_ns()
    cache.update_latest_trades(stock.trades.latest, mono)
    cache.update_latest_quotes(stock.quotes.latest, mono)
    cache.update_latest_trades(crypto.trades.latest, mono, CRYPTO_TRADE_FIELDS)
    cache.update_latest_quotes(crypto.quotes.latest, mono)  # named as crypto quotes when read: a pair
    assert cache.peek("AAPL") == (185.5, True) and cache.peek("ETH/USD") == (3000.25, True)
    assert cache.quote("AAPL")["ask_price"] == 185.6 and cache.quote("AAPL")["ask_size"] == 5
    assert cache.quote("ETH/USD")["ask_price"] == 3000.5 and cache.quote("ETH/USD")["bid_size"] == 1.25
    assert cache.peek("BTC/USD") == (None, False) and cache.quote("BTC/USD") is None
    assert cache.symbols() == ["AAPL", "ETH/USD"]
    assert (metrics.totals["cache_hits"], metrics.totals["cache_misses"]) == (2, 1)
