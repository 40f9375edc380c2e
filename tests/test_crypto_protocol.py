"""The crypto stream's messages: decoded whole, exact ns times, rejects kept alone, never raising; the
COPY data they become is stored exactly (fractional sizes as numeric)."""

from __future__ import annotations

from decimal import Decimal

import msgpack
import pytest

from tickvault.alpaca.columnar import COPY_HEADER, COPY_TRAILER
from tickvault.alpaca.crypto import (
    crypto_trade_columns,
    decode_crypto,
    trade_row_from_rest,
)
from tickvault.alpaca.protocol import encode_frame
from tickvault.db.tables import CRYPTO_QUOTES, CRYPTO_TRADES

T0 = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z


def _trade(i: int, size=0.0012, tks="B", **over) -> dict:
    return {"T": "t", "S": "BTC/USD", "i": i, "p": 94_123.5, "s": size, "tks": tks, "t": T0 + i, **over}


def test_trades_keep_fractional_size_taker_side_and_exact_ns():
    frame = decode_crypto(encode_frame([_trade(1), _trade(2, size=3, tks="S")]))
    assert frame.trades.n == 2 and not frame.rest.rejects
    assert frame.trades.latest["BTC/USD"] == (T0 + 2, "BTC/USD", 2, 94_123.5, 3, "S")
    assert (frame.trades.time_min_ns, frame.trades.time_max_ns) == (T0 + 1, T0 + 2)


def test_json_frames_decode_like_msgpack_with_rfc3339_times():
    messages = [_trade(1), {"T": "q", "S": "ETH/USD", "bp": 3000.1, "bs": 1.5, "ap": 3000.2, "as": 0.25, "t": T0}]
    packed, text = decode_crypto(encode_frame(messages)), decode_crypto(encode_frame(messages, use_msgpack=False))
    assert packed.trades.copy == text.trades.copy and packed.quotes.copy == text.quotes.copy
    assert text.quotes.latest["ETH/USD"] == (T0, "ETH/USD", 3000.1, 1.5, 3000.2, 0.25)


def test_bars_updated_bars_daily_bars_and_orderbooks_with_reset():
    bar = {"S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 0.75, "n": 3, "vw": 1.2, "t": T0}
    book = {"T": "o", "S": "BTC/USD", "t": T0, "b": [{"p": 100.0, "s": 0.5}, {"p": 99.5, "s": 2}],
            "a": [{"p": 100.5, "s": 0.1}], "r": True}
    update = {"T": "o", "S": "BTC/USD", "t": T0 + 5, "b": [{"p": 100.0, "s": 0}], "a": []}
    frame = decode_crypto(encode_frame([dict(bar, T="b"), dict(bar, T="u"), dict(bar, T="d"), book, update]))
    rest = frame.rest
    assert rest.bars == rest.updated_bars == rest.daily_bars == [(T0, "BTC/USD", 1.0, 2.0, 0.5, 1.5, 0.75, 3, 1.2)]
    assert rest.orderbooks == [
        (T0, "BTC/USD", True, [100.0, 99.5], [0.5, 2.0], [100.5], [0.1]),
        (T0 + 5, "BTC/USD", False, [100.0], [0.0], [], []),  # r absent: an update; size 0 removes a level
    ]
    assert frame.market_count() == 5


@pytest.mark.parametrize(
    "bad, reason",
    [
        (_trade(9, size=-1.0), "crypto trade has a field of the wrong type or a value the table cannot store"),
        (_trade(9, size=float("nan")), "crypto trade has a field of the wrong type or a value the table cannot store"),
        (_trade(9, tks="X"), "crypto trade has a field of the wrong type or a value the table cannot store"),
        ({k: v for k, v in _trade(9).items() if k != "i"}, "crypto trade missing field 'i'"),
        ({"T": "s", "S": "BTC/USD", "t": T0}, "unknown message type 's' on the crypto stream"),
        ({"T": "o", "S": "BTC/USD", "t": T0, "b": [{"p": 1.0}], "a": []},
         "crypto orderbook has a field of the wrong type or a value the table cannot store"),
    ],
)
def test_a_bad_message_is_rejected_alone_with_its_bytes(bad, reason):
    frame = decode_crypto(encode_frame([_trade(1), bad, _trade(2)]))
    assert frame.trades.n == 2
    assert [r.reason for r in frame.rest.rejects] == [reason]
    assert msgpack.unpackb(frame.rest.rejects[0].payload, timestamp=3)["T"] == bad["T"]


@pytest.mark.parametrize("data", [b"\xc1garbage", b"\x93\x01\x02", "not json", "{}", b""])
def test_undecodable_frames_never_raise(data):
    frame = decode_crypto(data)
    assert frame.trades is None and frame.market_count() == 0
    assert len(frame.rest.rejects) == 1 or data == "{}"  # a lone map is a one-message frame: rejected as such


def test_control_messages_pass_through():
    frame = decode_crypto(encode_frame([{"T": "success", "msg": "authenticated"},
                                        {"T": "subscription", "trades": ["BTC/USD"], "orderbooks": []}]))
    assert [m["T"] for m in frame.rest.control] == ["success", "subscription"]


def test_rest_trades_become_the_same_rows_as_the_stream():
    # the REST client parses JSON numbers as Decimal: the row must still equal the stream's
    raw = {"t": "2026-01-01T00:00:00.123456790Z", "p": Decimal("94123.5"), "s": Decimal("0.0012"), "i": 1,
           "tks": "B"}
    row = trade_row_from_rest("BTC/USD", raw)
    assert row == decode_crypto(encode_frame([_trade(1)])).trades.latest["BTC/USD"]
    assert crypto_trade_columns([row]).copy == decode_crypto(encode_frame([_trade(1)])).trades.copy


def test_copy_data_stores_sizes_exactly_and_sums_exactly(conn):
    sizes = [0.1, 0.2, 0.0012, 1e-8, 123456.12345678]
    rows = [(T0 + i, "BTC/USD", i, 94_000.0 + i, s, "BS"[i % 2]) for i, s in enumerate(sizes)]
    cols = crypto_trade_columns(rows)
    quote = decode_crypto(encode_frame([{"T": "q", "S": "BTC/USD", "bp": 1.5, "bs": 0.3, "ap": 1.6, "as": 2,
                                         "t": T0}])).quotes
    with conn.transaction(force_rollback=True):
        with conn.cursor().copy(CRYPTO_TRADES.copy_statement()) as copy:
            copy.write(COPY_HEADER + cols.copy + COPY_TRAILER)
        with conn.cursor().copy(CRYPTO_QUOTES.copy_statement()) as copy:
            copy.write(COPY_HEADER + quote.copy + COPY_TRAILER)
        stored = conn.execute("SELECT size, taker_side, time_ns, time FROM crypto_trades ORDER BY trade_id").fetchall()
        total = conn.execute("SELECT sum(size) FROM crypto_trades").fetchone()[0]
        q = conn.execute("SELECT bid_price, bid_size, ask_price, ask_size, time_ns FROM crypto_quotes").fetchone()
    assert [r[0] for r in stored] == [Decimal(repr(s)) for s in sizes]
    assert total == sum(Decimal(repr(s)) for s in sizes) == Decimal("123456.42465679")
    assert [r[1] for r in stored] == ["B", "S", "B", "S", "B"]
    assert stored[0][2] == T0 and stored[0][3].microsecond == 123456
    assert q == (1.5, 0.3, 1.6, 2.0, T0)
