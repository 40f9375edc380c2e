"""Alpaca market-data wire protocol as pure functions over bytes (sans-I/O).

The stream client and the simulator are thin I/O shells around this module: it never touches a
socket, never blocks, never logs, and never raises while decoding server frames (bad input becomes
a :class:`Reject` that keeps the raw bytes).

Hot path: :func:`decode_frame` decodes a whole frame with ONE ``msgpack.unpackb`` call (Timestamps
become int nanoseconds inside the C unpacker, ``timestamp=2``) and then ONE tight loop that builds a
tuple per message, in the ``*_FIELDS`` order. No per-message function call, no per-field
try/except: one ``try`` around the fast path; only a message that fails it goes to the slow path,
which either repairs it (an RFC 3339 string time) or rejects it with a reason.

Bounds: a decoded frame holds exactly the messages of its input (no buffering across frames); memory
is O(frame size), one tuple per market message plus the decoder's own objects, and is released when
the caller drops the :class:`DecodedFrame`.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack

__all__ = [
    "BAR_FIELDS",
    "CANCEL_FIELDS",
    "CORRECTION_FIELDS",
    "ERROR_CODES",
    "LULD_FIELDS",
    "QUOTE_FIELDS",
    "STATUS_FIELDS",
    "TRADE_FIELDS",
    "DecodedFrame",
    "ProtocolError",
    "Reject",
    "StreamError",
    "auth_message",
    "decode_client_message",
    "decode_frame",
    "encode_client_message",
    "encode_frame",
    "ns_to_rfc3339",
    "rfc3339_to_ns",
    "subscribe_message",
]

TRADE_FIELDS = ("time_ns", "symbol", "trade_id", "exchange", "price", "size", "conditions", "tape")
QUOTE_FIELDS = (
    "time_ns",
    "symbol",
    "bid_exchange",
    "bid_price",
    "bid_size",
    "ask_exchange",
    "ask_price",
    "ask_size",
    "conditions",
    "tape",
)
BAR_FIELDS = ("time_ns", "symbol", "open", "high", "low", "close", "volume", "trade_count", "vwap")
CORRECTION_FIELDS = (
    "time_ns",
    "symbol",
    "exchange",
    "orig_id",
    "orig_price",
    "orig_size",
    "orig_conditions",
    "corr_id",
    "corr_price",
    "corr_size",
    "corr_conditions",
    "tape",
)
CANCEL_FIELDS = ("time_ns", "symbol", "trade_id", "exchange", "price", "size", "action", "tape")
STATUS_FIELDS = (
    "time_ns",
    "symbol",
    "status_code",
    "status_message",
    "reason_code",
    "reason_message",
    "tape",
)
LULD_FIELDS = ("time_ns", "symbol", "limit_up", "limit_down", "indicator", "tape")

#: Error codes of ``{"T":"error"}`` control messages, as Alpaca documents them.
ERROR_CODES: dict[int, str] = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    500: "internal error",
}

_CONTROL_TYPES = frozenset(("success", "error", "subscription"))

# Required wire keys per message type, in the order the slow path reports the first missing one.
# Optional keys (conditions, tape, trade count, vwap) become None when absent.
_REQUIRED: dict[str, tuple[str, tuple[str, ...]]] = {
    "t": ("trade", ("t", "S", "i", "x", "p", "s")),
    "q": ("quote", ("t", "S", "bx", "bp", "bs", "ax", "ap", "as")),
    "b": ("bar", ("t", "S", "o", "h", "l", "c", "v")),
    "u": ("updated bar", ("t", "S", "o", "h", "l", "c", "v")),
    "d": ("daily bar", ("t", "S", "o", "h", "l", "c", "v")),
    "c": ("correction", ("t", "S", "x", "oi", "op", "os", "ci", "cp", "cs")),
    "x": ("cancel", ("t", "S", "i", "x", "p", "s", "a")),
    "s": ("status", ("t", "S", "sc", "sm", "rc", "rm")),
    "l": ("luld", ("t", "S", "u", "d", "i")),
}


class ProtocolError(ValueError):
    """A client message the server cannot parse (the simulator answers it with error 400)."""


class StreamError(Exception):
    """The server sent ``{"T":"error","code":N,"msg":TEXT}``; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Alpaca stream error {code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_control(cls, msg: dict) -> StreamError:
        """Build from a decoded ``{"T":"error"}`` control message (missing code → 500)."""
        code = msg.get("code")
        code = code if isinstance(code, int) else 500
        return cls(code, str(msg.get("msg") or ERROR_CODES.get(code, "unknown error")))


@dataclass(slots=True)
class Reject:
    """A message (or a whole frame) that could not be decoded. Never raised, always returned."""

    reason: str
    payload: bytes


@dataclass(slots=True)
class DecodedFrame:
    """One server frame split into per-type row lists (tuples in the ``*_FIELDS`` order)."""

    trades: list[tuple] = field(default_factory=list)
    quotes: list[tuple] = field(default_factory=list)
    bars: list[tuple] = field(default_factory=list)
    updated_bars: list[tuple] = field(default_factory=list)
    daily_bars: list[tuple] = field(default_factory=list)
    corrections: list[tuple] = field(default_factory=list)
    cancels: list[tuple] = field(default_factory=list)
    statuses: list[tuple] = field(default_factory=list)
    lulds: list[tuple] = field(default_factory=list)
    control: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def market_count(self) -> int:
        """Number of market messages decoded (rows of every type; control and rejects excluded)."""
        return (
            len(self.trades)
            + len(self.quotes)
            + len(self.bars)
            + len(self.updated_bars)
            + len(self.daily_bars)
            + len(self.corrections)
            + len(self.cancels)
            + len(self.statuses)
            + len(self.lulds)
        )


# --------------------------------------------------------------------------------------------
# Time: RFC 3339 <-> int nanoseconds, exact (no float anywhere).

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def rfc3339_to_ns(s: str) -> int:
    """Parse an RFC 3339 time (``2024-01-02T14:30:00.123456789Z``, an offset, or a bare date) to int
    ns since the epoch, exactly. A time without zone is UTC. More than 9 fraction digits: ValueError."""
    m = _RFC3339.fullmatch(s)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    y, mo, d, hh, mm, ss, frac, _z, sign, oh, om = m.groups()
    year, month, day, hour, minute, second = int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in_month = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not (1 <= month <= 12 and 1 <= day <= days_in_month[month - 1] and hour < 24 and minute < 60
            and second <= 60):
        raise ValueError(f"RFC 3339 time out of range: {s!r}")
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if sign is not None:
        offset = int(oh) * 3600 + int(om) * 60
        secs += -offset if sign == "+" else offset
    ns = int(frac.ljust(9, "0")) if frac else 0
    return secs * 1_000_000_000 + ns


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ns_to_datetime(ns: int) -> datetime:
    """Aware UTC datetime of epoch ns, truncated to µs (datetime's resolution), with no float on the way."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(when: datetime) -> int:
    """Epoch ns of an aware datetime, exactly (no float on the way); the inverse of :func:`ns_to_datetime`."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def ns_to_rfc3339(ns: int) -> str:
    """Format int ns since the epoch as RFC 3339 UTC with exactly 9 fraction digits and ``Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


# --------------------------------------------------------------------------------------------
# Decoding server frames (the hot path).

_unpackb = msgpack.unpackb
_packb = msgpack.packb


def _reencode(msg: Any, use_msgpack: bool) -> bytes:
    """The raw bytes kept in a Reject: the message re-encoded the way it arrived."""
    try:
        if use_msgpack:
            return _packb(msg, default=repr)
        return json.dumps(msg, default=repr).encode()
    except Exception:  # noqa: BLE001 - a Reject must always carry something
        return repr(msg).encode()


def _reject_reason(msg: Any, required: dict[str, tuple[str, tuple[str, ...]]] | None = None, *,
                   stream: str = "", wrong_type: str = "has a field of the wrong type") -> str:
    """Why a message was rejected, for every stream: ``required`` maps a type to (name, required
    keys) (the stocks stream's by default); ``stream`` names the stream in an unknown-type reason."""
    if not isinstance(msg, dict):
        return f"message is not a map: {type(msg).__name__}"
    kind = msg.get("T")
    if kind is None:
        return "message without 'T'"
    spec = (_REQUIRED if required is None else required).get(kind) if isinstance(kind, str) else None
    if spec is None:
        return f"unknown message type {kind!r}" + (f" on the {stream} stream" if stream else "")
    name, keys = spec
    for key in keys:
        if key not in msg:
            return f"{name} missing field {key!r}"
    return f"{name} {wrong_type}"


def _repair(msg: dict) -> bool:
    """Slow path: turn a string time into int ns in place. True if anything changed."""
    t = msg.get("t")
    if isinstance(t, str):
        msg["t"] = rfc3339_to_ns(t)
        return True
    return False


def _decode_messages(msgs: list, out: DecodedFrame, use_msgpack: bool) -> None:
    # Bound local names once: attribute and global lookups are the cost in this loop.
    trades = out.trades.append
    quotes = out.quotes.append
    bars = out.bars.append
    updated = out.updated_bars.append
    daily = out.daily_bars.append
    corrections = out.corrections.append
    cancels = out.cancels.append
    statuses = out.statuses.append
    lulds = out.lulds.append
    control = out.control.append
    control_types = _CONTROL_TYPES
    pending = msgs
    while pending:
        retry: list = []
        for m in pending:
            # Cheap type guards: ``t | 0`` and ``i | 0`` accept only ints, ``p + 0.0`` only numbers,
            # ``S + ""`` only str. A failure (KeyError/TypeError) drops to the slow path below.
            try:
                T = m["T"]
                if T == "t":
                    trades(
                        (
                            m["t"] | 0,
                            m["S"] + "",
                            m["i"] | 0,
                            m["x"],
                            m["p"] + 0.0,
                            m["s"] + 0,
                            m.get("c"),
                            m.get("z"),
                        )
                    )
                elif T == "q":
                    quotes(
                        (
                            m["t"] | 0,
                            m["S"] + "",
                            m["bx"],
                            m["bp"] + 0.0,
                            m["bs"] + 0,
                            m["ax"],
                            m["ap"] + 0.0,
                            m["as"] + 0,
                            m.get("c"),
                            m.get("z"),
                        )
                    )
                elif T == "b" or T == "u" or T == "d":
                    row = (
                        m["t"] | 0,
                        m["S"] + "",
                        m["o"] + 0.0,
                        m["h"] + 0.0,
                        m["l"] + 0.0,
                        m["c"] + 0.0,
                        m["v"] + 0,
                        m.get("n"),
                        m.get("vw"),
                    )
                    (bars if T == "b" else updated if T == "u" else daily)(row)
                elif T == "c":
                    corrections(
                        (
                            m["t"] | 0,
                            m["S"] + "",
                            m["x"],
                            m["oi"] | 0,
                            m["op"] + 0.0,
                            m["os"] + 0,
                            m.get("oc"),
                            m["ci"] | 0,
                            m["cp"] + 0.0,
                            m["cs"] + 0,
                            m.get("cc"),
                            m.get("z"),
                        )
                    )
                elif T == "x":
                    cancels(
                        (
                            m["t"] | 0,
                            m["S"] + "",
                            m["i"] | 0,
                            m["x"],
                            m["p"] + 0.0,
                            m["s"] + 0,
                            m["a"],
                            m.get("z"),
                        )
                    )
                elif T == "s":
                    statuses((m["t"] | 0, m["S"] + "", m["sc"], m["sm"], m["rc"], m["rm"], m.get("z")))
                elif T == "l":
                    lulds((m["t"] | 0, m["S"] + "", m["u"] + 0.0, m["d"] + 0.0, m["i"], m.get("z")))
                elif T in control_types:
                    control(m)
                else:
                    out.rejects.append(Reject(f"unknown message type {T!r}", _reencode(m, use_msgpack)))
            except Exception:  # noqa: BLE001 - slow path for this one message only
                try:
                    repaired = _repair(m)
                except Exception:  # noqa: BLE001
                    repaired = False
                if repaired:
                    retry.append(m)
                else:
                    out.rejects.append(Reject(_reject_reason(m), _reencode(m, use_msgpack)))
        pending = retry


def decode_frame(data: bytes | str) -> DecodedFrame:
    """Decode one server frame: ``bytes`` are msgpack, ``str`` is JSON. Never raises.

    A frame is an array of message maps (a lone map is accepted as a one-message frame). Rows are
    tuples in the ``*_FIELDS`` order with ``time_ns`` as int ns; conditions stay a list of str (or
    None); sizes stay int when the wire has int. A malformed message becomes one :class:`Reject`
    (its re-encoded bytes) and the rest of the frame is kept; an undecodable frame becomes one
    Reject holding the whole payload. Cost: one C-level unpack plus well under 1 µs of Python per
    message; memory O(len(data)).
    """
    out = DecodedFrame()
    msgs = _load_frame(data, out)
    if msgs is not None:
        _decode_messages(msgs, out, not isinstance(data, str))
    return out


def _load_frame(data: bytes | str, out: DecodedFrame) -> list | None:
    """The frame's messages (msgpack, or JSON with its RFC 3339 times already as int ns), or None
    after adding the whole-frame Reject to ``out``. Shared with :mod:`tickvault.alpaca.columnar`."""
    use_msgpack = not isinstance(data, str)
    try:
        if use_msgpack:
            msgs = _unpackb(data, raw=False, timestamp=2, strict_map_key=False)
        else:
            msgs = json.loads(data)
            for m in msgs if isinstance(msgs, list) else (msgs,):
                if type(m) is dict:
                    t = m.get("t")
                    if t.__class__ is str:
                        try:
                            m["t"] = rfc3339_to_ns(t)
                        except ValueError:
                            pass  # left as str: the message is rejected by the loop
    except Exception as exc:  # noqa: BLE001 - never raise on server input
        payload = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else bytes(data)
        out.rejects.append(Reject(f"undecodable frame: {type(exc).__name__}: {exc}", payload))
        return None
    if type(msgs) is dict:
        return [msgs]
    if type(msgs) is not list:
        payload = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else bytes(data)
        out.rejects.append(Reject(f"undecodable frame: not an array but {type(msgs).__name__}", payload))
        return None
    return msgs


# --------------------------------------------------------------------------------------------
# Encoding (the simulator's side, and tests).

_Timestamp = msgpack.Timestamp


def encode_frame(messages: list[dict], *, use_msgpack: bool = True) -> bytes | str:
    """Encode server messages as one frame (an array). ``"t"`` given as int ns is written as a msgpack
    Timestamp (ext −1, ns precision) or, in JSON, as RFC 3339 with 9 fraction digits and ``Z``;
    a ``msgpack.Timestamp`` is passed through. The input dicts are not modified."""
    out = []
    append = out.append
    if use_msgpack:
        for m in messages:
            t = m.get("t") if m.__class__ is dict else None
            if t.__class__ is int:
                m = dict(m)
                m["t"] = _Timestamp.from_unix_nano(t)
            append(m)
        return _packb(out)
    for m in messages:
        t = m.get("t") if m.__class__ is dict else None
        if t.__class__ is int:
            m = dict(m)
            m["t"] = ns_to_rfc3339(t)
        elif isinstance(t, _Timestamp):
            m = dict(m)
            m["t"] = ns_to_rfc3339(t.to_unix_nano())
        append(m)
    return json.dumps(out, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Client messages.

_SUB_CHANNELS = (
    ("trades", "trades"),
    ("quotes", "quotes"),
    ("bars", "bars"),
    ("updated_bars", "updatedBars"),
    ("daily_bars", "dailyBars"),
    ("statuses", "statuses"),
    ("lulds", "lulds"),
)

#: Wire names of the channels a client may subscribe to.
SUBSCRIBE_CHANNELS = tuple(wire for _, wire in _SUB_CHANNELS)


def auth_message(key: str, secret: str) -> dict:
    """The auth action. It carries the secret: never log it."""
    return {"action": "auth", "key": key, "secret": secret}


def subscribe_message(
    *,
    trades=(),
    quotes=(),
    bars=(),
    updated_bars=(),
    daily_bars=(),
    statuses=(),
    lulds=(),
    action: str = "subscribe",
) -> dict:
    """A subscribe (or ``action="unsubscribe"``) message; only non-empty lists are included."""
    if action not in ("subscribe", "unsubscribe"):
        raise ValueError(f"action must be subscribe or unsubscribe, not {action!r}")
    values = locals()
    msg: dict[str, Any] = {"action": action}
    for arg, wire in _SUB_CHANNELS:
        symbols = list(values[arg])
        if symbols:
            msg[wire] = symbols
    return msg


def encode_client_message(msg: dict, *, use_msgpack: bool = True) -> bytes | str:
    """Encode a client action (msgpack bytes, or a JSON str)."""
    return _packb(msg) if use_msgpack else json.dumps(msg, separators=(",", ":"))


def decode_client_message(data: bytes | str) -> dict:
    """Decode a client action (msgpack bytes or JSON str). Raises :class:`ProtocolError` on anything
    that is not a map with a string ``"action"``."""
    try:
        if isinstance(data, str):
            msg = json.loads(data)
        else:
            msg = _unpackb(data, raw=False, timestamp=2)
    except Exception as exc:  # noqa: BLE001
        raise ProtocolError(f"undecodable client message: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("action"), str):
        raise ProtocolError("client message must be a map with a string 'action'")
    return msg
