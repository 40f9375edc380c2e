"""The crypto stream's compiled fast path (``tickvault._columnar.decode_crypto``) against its Python
path (``crypto._decode_python``): on the same frames, identical COPY bytes, rows, newest rows per pair,
bars, orderbooks and rejects — good frames from the simulator, every size shape (int, float, float32,
exponent forms, the extremes), RFC 3339 string times in msgpack, every Timestamp form with exact
nanoseconds, malformed entries, truncations and random byte mutations. The numeric sizes C writes are
read back by PostgreSQL as the decimal Python's ``repr`` prints.
"""

from __future__ import annotations

import random
import struct
from decimal import Decimal

import msgpack
import psycopg
import pytest

from tickvault.alpaca import crypto
from tickvault.alpaca.columnar import COPY_HEADER, COPY_TRAILER, HAVE_EXTENSION
from tickvault.alpaca.crypto import CryptoFrame, decode_crypto
from tickvault.alpaca.protocol import encode_frame, ns_to_rfc3339
from tickvault.db.tables import CRYPTO_QUOTES, CRYPTO_TRADES
from tickvault.sim.crypto import CryptoMarket
from tests.support.columns import frame_key as _norm

pytestmark = pytest.mark.skipif(not HAVE_EXTENSION, reason="tickvault._columnar is not built")

T0 = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z: an 8-byte Timestamp
T_SECONDS = 1_767_225_600 * 10**9  # the 4-byte form
T_PRE_1970 = -(10**18) + 7  # 1938, ns precision: the 12-byte form
ABSENT = object()
SIZES = [0.0012, 3, 0, 0.0, 1e-05, 2.5e-08, 1e-8, 5e-324, 1e16, 1.5e+16, 123456.789, 100.0, 0.1 + 0.2,
         1.7976931348623157e308, 2**63 - 1, 21_000_000.00000001, 9.999999999999999e-05]


def trade(**fields) -> dict:
    msg = {"T": "t", "S": "BTC/USD", "i": 7, "p": 94_123.5, "s": 0.0012, "tks": "B", "t": T0}
    msg.update(fields)
    return {k: v for k, v in msg.items() if v is not ABSENT}


def quote(**fields) -> dict:
    msg = {"T": "q", "S": "ETH/USD", "bp": 3000.1, "bs": 1.5, "ap": 3000.2, "as": 0.25, "t": T0}
    msg.update(fields)
    return {k: v for k, v in msg.items() if v is not ABSENT}




def assert_same(data: bytes) -> CryptoFrame:
    got = decode_crypto(data)
    assert isinstance(got, CryptoFrame)
    assert _norm(got) == _norm(crypto._decode_python(data))
    return got


def _taken_by_c(data: bytes) -> int:
    """Rows C itself encoded (None: it left the frame to Python)."""
    res = crypto._c_decode_crypto(data)
    return -1 if res is None else res[0] + res[6]


def test_simulator_frames_are_encoded_in_c_exactly_as_in_python() -> None:
    market = CryptoMarket(["BTC/USD", "ETH/USD", "SOL/USD"], seed=3, quotes_per_trade=0.5)
    for k in range(20):
        msgs = [m for _, _, m in market.generate(200, T0 + k * 10**9)]
        data = msgpack.packb(msgs)
        got = assert_same(data)
        assert _taken_by_c(data) == got.trades.n + got.quotes.n > 0  # every trade and quote went through C
        assert got.rest.orderbooks and not got.rest.rejects


@pytest.mark.parametrize("size", SIZES, ids=repr)
def test_every_size_shape_gives_the_same_numeric(size) -> None:
    data = encode_frame([trade(s=size), quote(bs=size, **{"as": size})])
    got = assert_same(data)
    assert _taken_by_c(data) == 2
    assert got.trades.latest["BTC/USD"][4] == size and type(got.trades.latest["BTC/USD"][4]) is type(size)


def test_float32_sizes_and_prices_decode_alike() -> None:
    t = msgpack.Timestamp.from_unix_nano(T0)
    data = msgpack.packb([{"T": "t", "S": "BTC/USD", "i": 1, "p": 94_000.5, "s": 0.1, "t": t},
                          {"T": "q", "S": "BTC/USD", "bp": 1.1, "bs": 0.3, "ap": 1.2, "as": 7.0, "t": t}],
                         use_single_float=True)
    got = assert_same(data)
    assert _taken_by_c(data) == 2 and got.trades.latest["BTC/USD"][4] == struct.unpack("f", struct.pack("f", 0.1))[0]


def test_timestamps_are_exact_nanoseconds_in_every_form_and_string_times_follow_the_others() -> None:
    msgs = [trade(i=1, t=T0), trade(i=2, t=T_SECONDS), trade(i=3, t=T_PRE_1970), quote(t=T_PRE_1970 + 1),
            trade(i=4, t=ns_to_rfc3339(T0 + 5)), quote(t=ns_to_rfc3339(T0 + 6)), trade(i=5, t="not a time"),
            trade(i=6, t=T0 + 999)]
    data = encode_frame(msgs)
    got = assert_same(data)
    assert _taken_by_c(data) == 5  # the string times are Python's: repaired, after the others
    assert [r for r in (got.trades.time_min_ns, got.trades.time_max_ns, got.trades.time_last_ns)] == \
        [T_PRE_1970, T0 + 999, T0 + 5]
    assert got.quotes.time_last_ns == T0 + 6 and len(got.rest.rejects) == 1


MALFORMED = [
    trade(s=-1.0), trade(s=-1), trade(s=float("nan")), trade(s=float("inf")), trade(s=-0.0), trade(s=True),
    trade(s="1.5"), trade(s=None), trade(s=2**64 - 1), trade(tks="X"), trade(tks=1), trade(tks=None),
    trade(tks=ABSENT), trade(tks="BS"), trade(i=True), trade(i=1.5), trade(i=2**64 - 1), trade(p=float("nan")),
    trade(p="1"), trade(S="BTC\0USD"), trade(S=5), trade(S=ABSENT), trade(t=ABSENT), trade(t=5), trade(p=ABSENT),
    quote(bs=float("nan")), quote(bs=-1.0), quote(bs=True), quote(ap=None), quote(S=b"x"), quote(t="2026-01-01"),
    {"T": "t"}, {"T": "c", "S": "BTC/USD"}, {"T": 5}, {"x": 1}, [1, 2], "text", 7,
    {"T": "b", "S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": -0.5, "t": T0},
]


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda m: repr(m)[:60])
def test_a_malformed_entry_gets_the_same_reject_and_the_rest_of_the_frame_is_kept(bad) -> None:
    data = encode_frame([trade(i=1), quote(), bad, trade(i=2, s=3)])
    got = assert_same(data)
    assert got.trades.n >= 2 and got.quotes.n >= 1


def test_repeated_keys_and_extra_fields_are_judged_by_python() -> None:
    assert_same(encode_frame([trade(), trade(**{"s ": 1})]))  # a key that only looks like one
    raw = bytearray(msgpack.packb([{"T": "t", "S": "A/B", "i": 1, "p": 1.0, "s": 0.5, "z": 0.25,
                                    "t": msgpack.Timestamp.from_unix_nano(T0)}]))
    raw[raw.index(b"\xa1z")+1] = ord("s")  # a second "s" key: Python keeps the last
    assert_same(bytes(raw))
    assert_same(encode_frame([trade(x="V", c=["@"], z="C", extra={"a": [1, 2]})]))


def test_truncated_frames_at_every_offset_never_raise_and_match_python() -> None:
    frame = encode_frame([trade(), quote(), trade(t=T_PRE_1970, s=2.5e-08), {"T": "success", "msg": "x"},
                          {"T": "o", "S": "BTC/USD", "t": T0, "b": [{"p": 1.0, "s": 0.5}], "a": []}])
    for end in range(len(frame) + 1):
        assert_same(frame[:end])
    for start in range(len(frame)):
        assert_same(frame[start:])


def test_random_byte_mutations_never_raise_and_match_python() -> None:
    rng = random.Random(2026)
    market = CryptoMarket(["BTC/USD", "ETH/USD"], seed=5)
    frames = [msgpack.packb([m for _, _, m in market.generate(15, T0 + k)]) for k in range(4)]
    frames.append(encode_frame([trade(s=s) for s in SIZES] + MALFORMED[:10]))
    for _ in range(3000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.7:
                data[pos] = rng.randrange(256)
            elif op < 0.85:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        assert_same(bytes(data))


def test_c_encoded_sizes_are_stored_as_the_printed_decimal(fresh_database) -> None:
    frame = decode_crypto(encode_frame([trade(i=i, s=s) for i, s in enumerate(SIZES)] + [quote()]))
    assert frame.trades.n == len(SIZES)
    with psycopg.connect(fresh_database(), autocommit=True) as conn:
        with conn.cursor().copy(CRYPTO_TRADES.copy_statement()) as copy:
            copy.write(COPY_HEADER + frame.trades.copy + COPY_TRAILER)
        with conn.cursor().copy(CRYPTO_QUOTES.copy_statement()) as copy:
            copy.write(COPY_HEADER + frame.quotes.copy + COPY_TRAILER)
        stored = dict(conn.execute("SELECT trade_id, size FROM crypto_trades").fetchall())
        assert conn.execute("SELECT bid_size, ask_size FROM crypto_quotes").fetchone() == (1.5, 0.25)
    for i, s in enumerate(SIZES):
        want = Decimal(repr(s)) if isinstance(s, float) else Decimal(s)
        assert stored[i] == want and format(stored[i], "f") == format(want, "f"), s  # the printed digits and scale
