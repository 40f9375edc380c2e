"""Columnar decoding: the compiled fast path against decode_frame, on good, bad and broken frames.

Every check compares three decoders of the same bytes: ``decode_columnar`` (the C extension),
``columnar._decode_python`` (decode_frame's own loop with the rows encoded as they are made) and
``decode_frame`` + ``trade_columns``/``quote_columns`` (today's path). The first two must be equal
on every input; the third must be equal except for rows PostgreSQL cannot store, which the
columnar decoders reject (see tickvault.alpaca.columnar's docstring) and decode_frame keeps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct

import msgpack
import psycopg
import pytest

from tickvault.alpaca import columnar
from tickvault.alpaca.columnar import (
    COPY_HEADER,
    COPY_TRAILER,
    HAVE_EXTENSION,
    ColumnarFrame,
    UnstorableRow,
    decode_columnar,
    encode_quote_copy,
    encode_trade_copy,
    quote_columns,
    trade_columns,
)
from tickvault.alpaca.protocol import _reencode, decode_frame, encode_frame, ns_to_datetime, ns_to_rfc3339
from tickvault.sim.market import MINUTE_NS, Market, symbol_names
from tickvault.db.tables import QUOTES, TRADES
from tests.support.columns import cols_key as _cols, frame_key as _norm

T0 = 1_704_205_800_123_456_789  # 2024-01-02T14:30:00.123456789Z: an 8-byte Timestamp
T_SECONDS = 1_704_205_800 * 10**9  # whole seconds below 2^32: the 4-byte form
T_PRE_1970 = -(10**18) + 7  # 1938, ns precision: the 12-byte form
ABSENT = object()


def trade(**fields) -> dict:
    msg = {"T": "t", "S": "AAPL", "i": 52983525029461, "x": "V", "p": 185.64, "s": 100, "c": ["@", "I"],
           "z": "C", "t": T0}
    msg.update(fields)
    return {k: v for k, v in msg.items() if v is not ABSENT}


def quote(**fields) -> dict:
    msg = {"T": "q", "S": "AAPL", "bx": "V", "bp": 185.6, "bs": 3, "ax": "Q", "ap": 185.7, "as": 5,
           "c": ["R"], "z": "C", "t": T0}
    msg.update(fields)
    return {k: v for k, v in msg.items() if v is not ABSENT}


OTHER_TYPES = [
    {"T": "b", "S": "AAPL", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 100, "n": 3, "vw": 1.2,
     "t": T_SECONDS},
    {"T": "u", "S": "AAPL", "o": 1.0, "h": 2.5, "l": 0.5, "c": 2.0, "v": 150, "t": T_SECONDS},
    {"T": "d", "S": "MSFT", "o": 300.0, "h": 310.0, "l": 299.0, "c": 305.0, "v": 10**6, "t": T_SECONDS},
    {"T": "c", "S": "AAPL", "x": "V", "oi": 1, "op": 1.0, "os": 10, "oc": ["@"], "ci": 2, "cp": 1.1, "cs": 10,
     "cc": ["@"], "z": "C", "t": T0},
    {"T": "x", "S": "AAPL", "i": 1, "x": "V", "p": 1.0, "s": 10, "a": "C", "z": "C", "t": T0},
    {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "rc": "T12", "rm": "News", "z": "C", "t": T0},
    {"T": "l", "S": "AAPL", "u": 200.0, "d": 180.0, "i": "B", "z": "C", "t": T0},
    {"T": "success", "msg": "authenticated"},
    {"T": "subscription", "trades": ["AAPL"], "quotes": [], "bars": ["*"]},
    {"T": "error", "code": 407, "msg": "slow client"},
]

# Every shape of the fields C takes itself: conditions absent/nil/empty/non-empty/non-ASCII, tapes,
# int prices, large and negative ids and sizes, all three Timestamp forms, ns, pre-1970, extra keys.
GOOD_VARIANTS = [
    trade(),
    trade(c=ABSENT),
    trade(c=None),
    trade(c=[]),
    trade(c=["@", "F", "T", "I"]),
    trade(c=["é", "条件", "😀"], S="BRK.B"),
    trade(z=ABSENT),
    trade(z=None),
    trade(z="A", x="Ñ"),
    trade(p=186),
    trade(p=0),
    trade(p=-0.0),
    trade(p=2**64 - 1),
    trade(p=1e308),
    trade(p=float("inf")),
    trade(i=2**63 - 1, s=2**63 - 1),
    trade(i=-(2**63), s=-5),
    trade(i=0, s=0),
    trade(t=T_SECONDS),
    trade(t=T_PRE_1970),
    trade(t=-1),
    trade(t=0),
    trade(t=2**63 - 1),  # the last int64 ns (2262): 8-byte form
    trade(t=-(2**63)),  # the first (1677): 12-byte form
    trade(S="", x=""),
    trade(extra="ignored", n=5),
    quote(),
    quote(c=None, z=None),
    quote(c=[], bp=0, ap=10**6, bs=0, **{"as": 2**40}),
    quote(t=T_PRE_1970, S="ΑΒΓ"),
]


def market_messages(n: int, seed: int, symbols: int = 20, quotes: float = 0.5) -> list[dict]:
    """Trades, quotes and bars from the simulator's market model, over a minute boundary."""
    market = Market(symbol_names(symbols), seed=seed, quotes_per_trade=quotes)
    base = 1_704_205_800 * 10**9
    out = [m for _, _, m in market.generate(n // 2, base + 123_456_789)]
    out += [m for _, _, m in market.generate(n - n // 2, base + MINUTE_NS + 7)]
    return out


# ------------------------------------------------------------------------------------------ checks


def _storable(encode, row) -> bool:
    try:
        encode([row])
    except UnstorableRow:
        return False
    return True


def assert_equivalent(data: bytes | str) -> ColumnarFrame:
    got = decode_columnar(data)
    assert isinstance(got, ColumnarFrame)
    assert _norm(got) == _norm(columnar._decode_python(data))
    assert got.rest.trades == [] and got.rest.quotes == []

    df = decode_frame(data)
    good_t = [r for r in df.trades if _storable(encode_trade_copy, r)]
    good_q = [r for r in df.quotes if _storable(encode_quote_copy, r)]
    unstorable = len(df.trades) - len(good_t) + len(df.quotes) - len(good_q)
    assert _cols(got.trades) == _cols(trade_columns(good_t))
    assert _cols(got.quotes) == _cols(quote_columns(good_q))
    expected_rest = dataclasses.replace(df, trades=[], quotes=[])
    if unstorable == 0:
        assert repr(got.rest) == repr(expected_rest)
    else:
        without_rejects = dataclasses.replace(expected_rest, rejects=[])
        assert repr(dataclasses.replace(got.rest, rejects=[])) == repr(without_rejects)
        assert len(got.rest.rejects) == len(df.rejects) + unstorable
    assert got.market_count() == df.market_count() - unstorable
    return got


# ------------------------------------------------------------------------------------------- tests
def test_extension_is_built_by_install() -> None:
    assert HAVE_EXTENSION, "tickvault._columnar did not import: run `make install` (pip install -e .)"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 100, 1000])
def test_simulator_frames_decode_exactly_like_decode_frame(seed: int, size: int) -> None:
    msgs = market_messages(size, seed)
    got = assert_equivalent(encode_frame(msgs))
    trades = [m for m in msgs if m["T"] == "t"]
    assert got.trades is not None and got.trades.n == len(trades)
    assert got.rest.rejects == []
    assert got.market_count() == len(msgs)


def test_every_message_type_and_field_shape_decodes_like_decode_frame() -> None:
    msgs = GOOD_VARIANTS + OTHER_TYPES + GOOD_VARIANTS[::-1]
    got = assert_equivalent(encode_frame(msgs))
    n_trades = sum(m["T"] == "t" for m in msgs)
    n_quotes = sum(m["T"] == "q" for m in msgs)
    assert (got.trades.n, got.quotes.n) == (n_trades, n_quotes)
    assert got.rest.rejects == []
    assert len(got.rest.control) == 3
    # Each good variant alone, too: a frame of one message.
    for m in GOOD_VARIANTS:
        assert_equivalent(encode_frame([m]))


def test_pre_1970_and_nanosecond_times_are_exact() -> None:
    times = [T_PRE_1970, -1, 0, T_SECONDS, T0, T0 + 1]
    got = decode_columnar(encode_frame([trade(t=t, i=k) for k, t in enumerate(times)]))
    assert got.trades.time_min_ns == T_PRE_1970 and got.trades.time_max_ns == T0 + 1
    assert got.trades.time_last_ns == T0 + 1
    assert got.trades.copy == encode_trade_copy(
        (t, "AAPL", k, "V", 185.64, 100, ["@", "I"], "C") for k, t in enumerate(times))
    # timestamptz is floor(ns / 1000) µs since 2000-01-01, also below zero
    first = got.trades.copy
    assert struct.unpack_from("!hiq", first)[2] == T_PRE_1970 // 1000 - 946_684_800_000_000


def test_columns_track_time_range_last_trade_and_newest_trade_per_symbol() -> None:
    msgs = [
        trade(S="AAPL", t=T0 + 5, i=1),
        trade(S="MSFT", t=T0 + 9, i=2),
        trade(S="AAPL", t=T0 + 2, i=3),  # older: not the latest
        trade(S="MSFT", t=T0 + 9, i=4),  # same time: the later one in the frame wins
        trade(S="AAPL", t=T0 + 1, i=5),  # last in the frame, earliest time
        quote(S="AAPL", t=T0 + 3, bs=1),
        quote(S="AAPL", t=T0 + 3, bs=2),
    ]
    got = assert_equivalent(encode_frame(msgs))
    t = got.trades
    assert (t.n, t.time_min_ns, t.time_max_ns, t.time_last_ns) == (5, T0 + 1, T0 + 9, T0 + 1)
    assert {s: r[2] for s, r in t.latest.items()} == {"AAPL": 1, "MSFT": 4}
    assert t.latest["AAPL"] == (T0 + 5, "AAPL", 1, "V", 185.64, 100, ["@", "I"], "C")
    assert got.quotes.latest["AAPL"][4] == 2
    assert got.quotes.latest["AAPL"] == (T0 + 3, "AAPL", "V", 185.6, 2, "Q", 185.7, 5, ["R"], "C")


def _raw_map(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map with pairs as given (repeated keys allowed, which msgpack.packb cannot write)."""
    out = bytearray(b"\xde" + struct.pack("!H", len(pairs)))
    for k, v in pairs:
        out += msgpack.packb(k) + msgpack.packb(v)
    return bytes(out)


def _raw_frame(parts: list[bytes]) -> bytes:
    return b"\xdd" + struct.pack("!I", len(parts)) + b"".join(parts)


BAD_MESSAGES = [
    trade(p=ABSENT),  # missing field
    trade(s="100"),  # wrong type
    trade(S=5),
    trade(i=1.5),
    trade(x=ABSENT),
    quote(ax=ABSENT),
    quote(bp="x"),
    {"T": "zz", "S": "AAPL"},  # unknown type
    {"S": "AAPL", "t": T0},  # no T
    {"T": 5},
    {"T": None},
    {"T": ["t"]},
    trade(t="2024-01-02T14:30:00.5Z"),  # string time: repaired by the slow path
    trade(t="not a time"),  # string time that cannot be repaired
    trade(t="2024-02-30T00:00:00Z"),
    quote(t="2024-01-02T14:30:00Z"),
    {"T": "b", "S": "AAPL", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 100, "t": "2024-01-02T14:30:00Z"},
    trade(s=True),  # Python's fast path takes a bool as 1
    trade(i=False),
    trade(p=True),
    trade(t=T0 // 10**9),  # a plain int time: Python takes it as ns
    trade(p=float("nan")),
    quote(bx=None),  # Python takes None; quotes.bid_exchange is nullable
    trade(c=["@", "é"], z="ü"),
]
UNSTORABLE = [
    trade(s=100.0),  # float size: decode_frame keeps it, int8 cannot
    trade(x=5),
    trade(x=None),
    trade(z=1),
    trade(c="@"),
    trade(c=["@", 5]),
    trade(c=[None]),
    trade(S="AA\x00PL"),
    trade(x="\x00"),
    trade(c=["\x00"]),
    trade(i=2**64 - 1),
    trade(s=2**63),
    trade(t=2**40 * 10**9),  # a Timestamp beyond int64 ns (year 36812)
    trade(t=(2**34 - 1) * 10**9 + 999_999_999),  # the largest 8-byte form, beyond int64 ns
    trade(t=2**63),
    quote(bs=1.5),
    quote(bx=3),
]


def test_malformed_messages_are_rejected_alone_and_the_rest_of_the_frame_kept() -> None:
    good = market_messages(40, seed=7)
    for bad in BAD_MESSAGES + UNSTORABLE:
        msgs = good[:20] + [bad] + good[20:]
        got = assert_equivalent(encode_frame(msgs))
        assert got.market_count() >= len(good)
    everything = []
    for k, bad in enumerate(BAD_MESSAGES + UNSTORABLE):
        everything += [good[k % len(good)], bad]
    assert_equivalent(encode_frame(everything + OTHER_TYPES + GOOD_VARIANTS))


def test_non_map_elements_keys_and_repeated_keys_are_judged_by_python() -> None:
    good = encode_frame([trade()])[1:]
    cases = [
        [good, msgpack.packb(5), good],
        [good, msgpack.packb("t"), msgpack.packb([trade()]), msgpack.packb(None)],
        [_raw_map([("T", "t"), ("S", "A"), ("i", 1), ("x", "V"), ("p", 1.0), ("s", 1),
                   ("t", msgpack.Timestamp(1, 0)), ("S", "B")]), good],  # repeated key: Python keeps the last
        [_raw_map([("T", "q"), ("T", "t"), ("S", "A"), ("i", 1), ("x", "V"), ("p", 1.0), ("s", 1),
                   ("t", msgpack.Timestamp(1, 0))])],
        [_raw_map([(5, "int key"), (b"T", "bin key"), (1.5, None), ("T", "t"), ("S", "A"), ("i", 1),
                   ("x", "V"), ("p", 1.0), ("s", 1), ("t", msgpack.Timestamp(1, 0))])],
        [_raw_map([(msgpack.ExtType(5, b"x"), 1), ("T", "zz")])],
    ]
    for parts in cases:
        assert_equivalent(_raw_frame(parts))


def test_string_time_repaired_rows_follow_decode_frames_order() -> None:
    msgs = [trade(i=1, t=T0 + 10), trade(i=2, t=ns_to_rfc3339(T0 + 20)), trade(i=3, t=T0 + 5)]
    got = assert_equivalent(encode_frame(msgs))
    assert [r[2] for r in decode_frame(encode_frame(msgs)).trades] == [1, 3, 2]
    assert got.trades.time_last_ns == T0 + 20
    assert got.trades.latest["AAPL"][2] == 2


def test_rows_postgres_cannot_store_are_rejected_with_decode_frames_reason_and_payload() -> None:
    for bad in UNSTORABLE:
        frame = encode_frame([trade(i=1), bad, quote()])
        got = decode_columnar(frame)
        assert got.trades.n == 1 and got.quotes.n == 1
        assert len(got.rest.rejects) == 1
        reject = got.rest.rejects[0]
        kind = "trade" if bad["T"] == "t" else "quote"
        assert reject.reason == f"{kind} has a field of the wrong type"
        as_received = msgpack.unpackb(encode_frame([bad]), raw=False, timestamp=2, strict_map_key=False)[0]
        assert reject.payload == _reencode(as_received, True)  # what decode_frame keeps for a reject
        kept = decode_frame(frame)  # decode_frame keeps the row, and the encoder refuses it
        with pytest.raises(UnstorableRow):
            if kind == "trade":
                encode_trade_copy(kept.trades[1:])
            else:
                encode_quote_copy(kept.quotes[:1])


def test_frames_c_cannot_take_whole_decode_in_python_like_decode_frame() -> None:
    valid = encode_frame(market_messages(10, seed=3))
    cases = [
        b"",
        b"\xc1",
        b"\x90",  # empty frame
        msgpack.packb(trade()),  # a lone map is a one-message frame
        msgpack.packb(5),
        valid + b"\x00",  # extra data
        valid[:-1],
        b"\xdd\xff\xff\xff\xff",  # claims 4 billion messages
        b"\x91\xa2\xc3\x28",  # invalid UTF-8
        b"\x91\x81\xa1T\xa3\xed\xa0\x80",  # an encoded surrogate
        b"\x91\x81\x91\x01\x02",  # a list as a map key (unhashable in Python)
        b"\x91\x81\x80\x02",
        b"\x91\xc7\x05\xff" + bytes(5),  # Timestamp of 5 bytes
        b"\x91\xd4\xa1\x00",  # ext type -95: msgpack's ExtType takes 0..127 only
        b"\x91\xd7\xff" + ((10**9 << 34) | 1).to_bytes(8, "big"),  # nanoseconds above 999999999
        b"\x91" * 40 + b"\x01",  # deeper than the C walker goes
        b"\x91" * 1100 + b"\x01",  # deeper than msgpack goes
        json.dumps([{"T": "t"}]).encode(),
    ]
    for data in cases:
        assert_equivalent(data)
    # JSON frames (str) always take the Python path, string times included.
    msgs = market_messages(50, seed=4) + OTHER_TYPES + [trade(c=["é"]), trade(t="bad"), trade(x=5)]
    assert_equivalent(encode_frame(msgs, use_msgpack=False))
    assert_equivalent("[not json")
    assert_equivalent('{"T":"t"}')


def test_truncated_frames_at_every_offset_never_raise_and_match_decode_frame() -> None:
    msgs = [trade(), quote(), OTHER_TYPES[0], trade(c=["é"], t=T_PRE_1970), {"T": "success", "msg": "x"}]
    frame = encode_frame(msgs)
    for end in range(len(frame) + 1):
        assert_equivalent(frame[:end])
    for start in range(len(frame)):
        assert_equivalent(frame[start:])


HEADER_BYTES = (0xC0, 0xC1, 0xC2, 0xC3, 0xCA, 0xCB, 0xCF, 0xD3, 0xD7, 0xDD, 0xDF, 0xFF, 0x00)  # type bytes


def test_random_byte_mutations_never_raise_and_match_decode_frame() -> None:
    rng = random.Random(20240102)
    frames = [encode_frame(market_messages(20, seed=s, symbols=5)) for s in range(4)]
    frames.append(encode_frame(GOOD_VARIANTS[:12] + OTHER_TYPES[:4]))
    for case in range(4000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                data[pos] = rng.choice(HEADER_BYTES)
            elif op < 0.85:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        assert_equivalent(bytes(data))


def test_python_path_without_the_extension_gives_the_same_columns(monkeypatch) -> None:
    frames = [encode_frame(market_messages(100, seed=5)),
              encode_frame(BAD_MESSAGES + GOOD_VARIANTS + UNSTORABLE)]
    with_c = [_norm(decode_columnar(f)) for f in frames]
    monkeypatch.setattr(columnar, "_c_decode", None)
    assert [_norm(decode_columnar(f)) for f in frames] == with_c


def test_copy_bytes_are_what_the_writers_psycopg_dumpers_write() -> None:
    from psycopg import adapters as default_adapters
    from psycopg._copy_base import BinaryFormatter
    from psycopg.adapt import AdaptersMap, Transformer
    from psycopg.pq import Format

    from tickvault.stream.writer import _CachedTextArray, _Conditions, _NsTime, _NsTimestamptz

    def psycopg_copy(spec, rows) -> bytes:
        class Context:
            adapters = AdaptersMap(default_adapters)
            connection = None

        Context.adapters.register_dumper(_NsTime, _NsTimestamptz)
        Context.adapters.register_dumper(_Conditions, _CachedTextArray)
        tx = Transformer(Context)
        tx.set_dumper_types([Context.adapters.types.get_oid(t) for t in spec.types], Format.BINARY)
        formatter = BinaryFormatter(tx)
        data = b"".join(bytes(formatter.write_row(r + (r[0],))) for r in rows) + bytes(formatter.end())
        return data[len(COPY_HEADER):-len(COPY_TRAILER)]

    msgs = market_messages(200, seed=6) + GOOD_VARIANTS
    got = decode_columnar(encode_frame(msgs))
    df = decode_frame(encode_frame(msgs))
    assert got.trades.copy == psycopg_copy(TRADES, df.trades)
    assert got.quotes.copy == psycopg_copy(QUOTES, df.quotes)


def test_copy_header_and_trailer_are_postgres_binary_copy_framing() -> None:
    assert COPY_HEADER == b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    assert COPY_TRAILER == struct.pack("!h", -1)
    assert encode_trade_copy([]) == b"" and trade_columns([]) is None and quote_columns([]) is None


@pytest.mark.db
def test_copy_round_trips_through_postgres_binary_copy_exactly(fresh_database) -> None:
    default_id = trade()["i"]
    variants = [dict(m, i=10_000 + k) if m["T"] == "t" and m["i"] == default_id else m
                for k, m in enumerate(GOOD_VARIANTS)]  # one (symbol, time, id, exchange) key per trade
    frame = encode_frame(market_messages(500, seed=8) + variants)
    got = decode_columnar(frame)
    expected = decode_frame(frame)
    with psycopg.connect(fresh_database(), autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(TRADES.copy_statement()) as copy:
            copy.write(COPY_HEADER + got.trades.copy + COPY_TRAILER)
        with cur.copy(QUOTES.copy_statement()) as copy:
            copy.write(COPY_HEADER + got.quotes.copy + COPY_TRAILER)
        stored_trades = cur.execute(
            "SELECT time_ns, symbol, trade_id, exchange, price, size, conditions, tape, time FROM trades"
        ).fetchall()
        stored_quotes = cur.execute(
            "SELECT time_ns, symbol, bid_exchange, bid_price, bid_size, ask_exchange, ask_price, ask_size, "
            "conditions, tape, time FROM quotes"
        ).fetchall()

    def key(row):
        return (row[0], row[1], repr(row[2:]))

    assert sorted((r[:8] for r in stored_trades), key=key) == sorted(expected.trades, key=key)
    assert sorted((r[:10] for r in stored_quotes), key=key) == sorted(expected.quotes, key=key)
    for r in stored_trades + stored_quotes:
        assert r[-1] == ns_to_datetime(r[0])  # the µs column is floor(ns / 1000), before 1970 too
    assert any(r[0] < 0 for r in stored_trades) and any(r[6] == [] for r in stored_trades)
    assert any(math.isinf(r[4]) for r in stored_trades)


def test_encoders_build_columns_from_tuples_for_backfill_and_spill() -> None:
    rows = [(T0 + k, "AAPL" if k % 2 else "MSFT", k, "V", 1.5 + k, 10 * k, None if k % 3 else ["@"], "C")
            for k in range(10)]
    cols = trade_columns(rows)
    assert (cols.n, cols.time_min_ns, cols.time_max_ns, cols.time_last_ns) == (10, T0, T0 + 9, T0 + 9)
    assert cols.latest == {"AAPL": rows[9], "MSFT": rows[8]}
    assert cols.copy == encode_trade_copy(rows)
    with pytest.raises(UnstorableRow, match="trade row cannot be stored"):
        encode_trade_copy([rows[0][:7] + (5,)])
