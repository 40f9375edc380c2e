"""The sans-I/O Alpaca protocol: bytes in, rows out, no sockets."""

from __future__ import annotations

import json

import msgpack
import pytest

from tickvault.alpaca.protocol import (
    BAR_FIELDS,
    CANCEL_FIELDS,
    CORRECTION_FIELDS,
    ERROR_CODES,
    LULD_FIELDS,
    QUOTE_FIELDS,
    STATUS_FIELDS,
    TRADE_FIELDS,
    ProtocolError,
    StreamError,
    auth_message,
    decode_client_message,
    decode_frame,
    encode_client_message,
    encode_frame,
    ns_to_rfc3339,
    rfc3339_to_ns,
    subscribe_message,
)

T0 = 1_704_205_800_123_456_789  # 2024-01-02T14:30:00.123456789Z

TRADE = {
    "T": "t",
    "S": "AAPL",
    "i": 52983525029461,
    "x": "V",
    "p": 185.64,
    "s": 100,
    "c": ["@", "I"],
    "z": "C",
    "t": T0,
}
QUOTE = {
    "T": "q",
    "S": "AAPL",
    "bx": "V",
    "bp": 185.6,
    "bs": 2,
    "ax": "V",
    "ap": 185.7,
    "as": 3,
    "c": ["R"],
    "z": "C",
    "t": T0 + 1,
}
BAR = {
    "T": "b",
    "S": "AAPL",
    "o": 185.1,
    "h": 186.0,
    "l": 185.0,
    "c": 185.5,
    "v": 12345,
    "n": 67,
    "vw": 185.41,
    "t": 1_704_205_800_000_000_000,
}
CORRECTION = {
    "T": "c",
    "S": "AAPL",
    "x": "V",
    "oi": 10,
    "op": 185.64,
    "os": 100,
    "oc": ["@"],
    "ci": 11,
    "cp": 185.65,
    "cs": 100,
    "cc": ["@"],
    "z": "C",
    "t": T0 + 2,
}
CANCEL = {"T": "x", "S": "AAPL", "i": 10, "x": "V", "p": 185.64, "s": 100, "a": "C", "z": "C", "t": T0 + 3}
STATUS = {
    "T": "s",
    "S": "AAPL",
    "sc": "H",
    "sm": "Trading Halt",
    "rc": "T12",
    "rm": "News Pending",
    "z": "C",
    "t": T0 + 4,
}
LULD = {"T": "l", "S": "AAPL", "u": 195.0, "d": 175.0, "i": "B", "z": "C", "t": T0 + 5}

EXPECTED = {
    "trades": (TRADE_FIELDS, (T0, "AAPL", 52983525029461, "V", 185.64, 100, ["@", "I"], "C")),
    "quotes": (QUOTE_FIELDS, (T0 + 1, "AAPL", "V", 185.6, 2, "V", 185.7, 3, ["R"], "C")),
    "bars": (BAR_FIELDS, (1_704_205_800_000_000_000, "AAPL", 185.1, 186.0, 185.0, 185.5, 12345, 67, 185.41)),
    "corrections": (
        CORRECTION_FIELDS,
        (T0 + 2, "AAPL", "V", 10, 185.64, 100, ["@"], 11, 185.65, 100, ["@"], "C"),
    ),
    "cancels": (CANCEL_FIELDS, (T0 + 3, "AAPL", 10, "V", 185.64, 100, "C", "C")),
    "statuses": (STATUS_FIELDS, (T0 + 4, "AAPL", "H", "Trading Halt", "T12", "News Pending", "C")),
    "lulds": (LULD_FIELDS, (T0 + 5, "AAPL", 195.0, 175.0, "B", "C")),
}


@pytest.mark.parametrize("use_msgpack", [True, False], ids=["msgpack", "json"])
def test_every_message_type_round_trips(use_msgpack: bool) -> None:
    updated = dict(BAR, T="u")
    daily = dict(BAR, T="d")
    frame = encode_frame(
        [TRADE, QUOTE, BAR, updated, daily, CORRECTION, CANCEL, STATUS, LULD], use_msgpack=use_msgpack
    )
    assert isinstance(frame, bytes if use_msgpack else str)
    decoded = decode_frame(frame)
    assert decoded.rejects == []
    assert decoded.market_count() == 9
    for attr, (fields, row) in EXPECTED.items():
        rows = getattr(decoded, attr)
        assert rows == [row], attr
        assert len(rows[0]) == len(fields)
    assert decoded.updated_bars == [EXPECTED["bars"][1]]
    assert decoded.daily_bars == [EXPECTED["bars"][1]]
    assert type(decoded.trades[0][5]) is int  # int size stays int


def test_msgpack_time_is_a_timestamp_extension_with_nanoseconds() -> None:
    raw = msgpack.unpackb(encode_frame([TRADE]), timestamp=0)
    assert isinstance(raw[0]["t"], msgpack.Timestamp)
    assert raw[0]["t"].to_unix_nano() == T0


def test_json_time_is_rfc3339_with_nine_digits() -> None:
    raw = json.loads(encode_frame([TRADE], use_msgpack=False))
    assert raw[0]["t"] == "2024-01-02T14:30:00.123456789Z"


@pytest.mark.parametrize(
    "text,ns",
    [
        ("2024-01-02T14:30:00.123456789Z", T0),
        ("2024-01-02T14:30:00.1Z", 1_704_205_800_100_000_000),
        ("2024-01-02T14:30:00Z", 1_704_205_800_000_000_000),
        ("2024-01-02T09:30:00.123456789-05:00", T0),
        ("2024-01-02T14:30:00+00:00", 1_704_205_800_000_000_000),
        ("2024-01-02", 1_704_153_600_000_000_000),
        ("1970-01-01T00:00:00.000000001Z", 1),
    ],
)
def test_rfc3339_parses_exactly_to_the_nanosecond(text: str, ns: int) -> None:
    assert rfc3339_to_ns(text) == ns


@pytest.mark.parametrize("ns", [0, 1, T0, T0 + 999_999_999, 4_102_444_800_000_000_001])
def test_ns_to_rfc3339_round_trips(ns: int) -> None:
    text = ns_to_rfc3339(ns)
    assert text.endswith("Z") and len(text.split(".")[1]) == 10
    assert rfc3339_to_ns(text) == ns


def test_rfc3339_rejects_garbage() -> None:
    for bad in ("yesterday", "2024-01-02T14:30:00.1234567891Z", ""):
        with pytest.raises(ValueError):
            rfc3339_to_ns(bad)


def test_float_size_stays_float() -> None:
    decoded = decode_frame(encode_frame([dict(TRADE, s=0.5)]))
    assert decoded.trades[0][5] == 0.5


def test_malformed_message_inside_good_frame_rejects_only_it() -> None:
    bad = {k: v for k, v in TRADE.items() if k != "p"}
    wrong_type = dict(TRADE, t="not a time")
    frame = encode_frame([TRADE, bad, QUOTE, wrong_type, 42, dict(TRADE, i=7)])
    decoded = decode_frame(frame)
    assert [r[2] for r in decoded.trades] == [TRADE["i"], 7]
    assert len(decoded.quotes) == 1
    reasons = [r.reason for r in decoded.rejects]
    assert reasons == [
        "trade missing field 'p'",
        "trade has a field of the wrong type",
        "message is not a map: int",
    ]
    assert msgpack.unpackb(decoded.rejects[0].payload)["S"] == "AAPL"


def test_string_time_in_msgpack_is_repaired_not_rejected() -> None:
    decoded = decode_frame(msgpack.packb([dict(TRADE, t="2024-01-02T14:30:00.123456789Z")]))
    assert decoded.rejects == []
    assert decoded.trades[0][0] == T0


@pytest.mark.parametrize("garbage", [b"\xc1\xc1 not msgpack", b"", b"\x92\x01", "[{not json", "42"])
def test_garbage_frame_is_one_reject_with_the_whole_payload(garbage: bytes | str) -> None:
    decoded = decode_frame(garbage)
    assert decoded.market_count() == 0
    assert len(decoded.rejects) == 1
    reject = decoded.rejects[0]
    assert reject.reason.startswith("undecodable frame")
    assert reject.payload == (garbage.encode() if isinstance(garbage, str) else garbage)


def test_unknown_type_is_rejected_and_the_rest_kept() -> None:
    decoded = decode_frame(encode_frame([TRADE, {"T": "Z", "S": "AAPL", "t": T0}, QUOTE]))
    assert len(decoded.trades) == 1 and len(decoded.quotes) == 1
    assert [r.reason for r in decoded.rejects] == ["unknown message type 'Z'"]


def test_control_messages_are_plain_dicts() -> None:
    frame = encode_frame([{"T": "success", "msg": "connected"}, {"T": "subscription", "trades": ["AAPL"]}])
    decoded = decode_frame(frame)
    assert decoded.control == [
        {"T": "success", "msg": "connected"},
        {"T": "subscription", "trades": ["AAPL"]},
    ]
    assert decoded.market_count() == 0


def test_error_control_becomes_stream_error_with_code() -> None:
    decoded = decode_frame(encode_frame([{"T": "error", "code": 406, "msg": "connection limit exceeded"}]))
    err = StreamError.from_control(decoded.control[0])
    assert err.code == 406 and err.message == "connection limit exceeded"
    assert "406" in str(err)
    assert set(ERROR_CODES) == {400, 401, 402, 403, 404, 405, 406, 407, 409, 500}


def test_client_messages_round_trip() -> None:
    assert auth_message("k", "s") == {"action": "auth", "key": "k", "secret": "s"}
    sub = subscribe_message(trades=["AAPL"], updated_bars=["*"], daily_bars=())
    assert sub == {"action": "subscribe", "trades": ["AAPL"], "updatedBars": ["*"]}
    unsub = subscribe_message(quotes=("MSFT",), action="unsubscribe")
    assert unsub == {"action": "unsubscribe", "quotes": ["MSFT"]}
    for use_msgpack in (True, False):
        assert decode_client_message(encode_client_message(sub, use_msgpack=use_msgpack)) == sub


@pytest.mark.parametrize("garbage", [b"\xc1", "not json", "[1, 2]", msgpack.packb({"no": "action"})])
def test_decode_client_message_raises_protocol_error_on_garbage(garbage: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(garbage)


def test_encode_frame_leaves_input_untouched() -> None:
    msg = dict(TRADE)
    encode_frame([msg])
    encode_frame([msg], use_msgpack=False)
    assert msg == TRADE
