"""Columnar decoding: a frame's trades and quotes as PostgreSQL binary COPY data, not Python rows.

:func:`decode_columnar` is :func:`~tickvault.alpaca.protocol.decode_frame` for the worker's hot
path. Each frame's trades become one :class:`TradeColumns` (and its quotes one
:class:`QuoteColumns`): the binary COPY tuple data of every row in the ``TRADES`` /
``QUOTES`` column order of :mod:`tickvault.db.tables`, the time range, and the newest row per symbol as a ``*_FIELDS`` tuple
(what the price cache needs). Every other message (bars, corrections, cancels, statuses, LULDs,
control) and every :class:`~tickvault.alpaca.protocol.Reject` is in ``rest``, a ``DecodedFrame``
exactly as ``decode_frame`` gives it.

How: the compiled ``tickvault._columnar`` walks the msgpack frame once, bounds-checking every read,
and writes each well-typed trade and quote straight into the copy buffer. It judges nothing else:
any other message goes back here as a byte range and runs through the protocol module's own loop
(``_decode_messages``: the same fast path, string-time repair and reject reasons); a frame C
cannot take whole (JSON, not an array, truncated, garbage) goes through ``decode_frame``'s path
entirely. Without the extension (no compiler at install time) everything takes the Python path:
same results, about as slow as ``decode_frame`` plus the Python COPY encoder.

The promise: for every input, the rows, ``rest`` and rejects equal ``decode_frame``'s (rows in its
order: a string-time trade it repairs comes after the others), with ONE deliberate difference: a
trade or quote that ``decode_frame`` keeps but PostgreSQL could not store (an exchange or tape that
is not text, a NUL byte in text, conditions that are not a list of text, an integer outside int8,
a time beyond int64 ns, a float size) is a ``Reject`` here, with ``decode_frame``'s reason for a
badly typed field (``"trade has a field of the wrong type"``) and the same payload. ``decode_frame``
would hand such a row to the writer, whose COPY would then fail the whole batch.

Must never: raise on server input, log per message (the one warning is at import when the extension
is missing), or keep anything across frames. Bounds: memory is O(frame size) - the copy bytes are
at most ~12 bytes per input byte, ``latest`` one tuple per distinct symbol - and all of it is freed
with the returned :class:`ColumnarFrame`; the extension frees its own buffers before it returns.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from tickvault.alpaca.protocol import DecodedFrame, _decode_messages, _load_frame

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "HAVE_EXTENSION",
    "ColumnarFrame",
    "QuoteColumns",
    "TradeColumns",
    "UnstorableRow",
    "columns_of",
    "extension_result",
    "join_columns",
    "decode_columnar",
    "encode_quote_copy",
    "encode_trade_copy",
    "quote_columns",
    "trade_columns",
]

log = logging.getLogger("tickvault.columnar")

#: Binary COPY stream header: signature, flags int32 0, header-extension length int32 0.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
#: Binary COPY stream trailer: a field count of -1.
COPY_TRAILER = b"\xff\xff"

_FORMAT_VERSION = 2  # the tuple layout tickvault._columnar.decode returns; a stale build is not used
try:
    from tickvault import _columnar

    if getattr(_columnar, "FORMAT_VERSION", None) != _FORMAT_VERSION:
        raise ImportError(f"tickvault._columnar has format {getattr(_columnar, 'FORMAT_VERSION', None)}, "
                          f"this module needs {_FORMAT_VERSION}: rebuild with `pip install -e .`")
    _c_decode = _columnar.decode
    _c_decode_crypto = _columnar.decode_crypto  # used by tickvault.alpaca.crypto
    HAVE_EXTENSION = True
except ImportError as exc:
    _c_decode = _c_decode_crypto = None
    HAVE_EXTENSION = False
    log.warning("tickvault._columnar is not available (%s); columnar decoding runs in Python (slower)", exc)


class UnstorableRow(ValueError):
    """A trade or quote tuple binary COPY cannot carry into its table (the message says which field)."""


@dataclass(slots=True)
class TradeColumns:
    """One frame's trades: binary COPY tuple data (no header or trailer) in ``tables.TRADES`` order."""

    n: int
    copy: bytes
    time_min_ns: int
    time_max_ns: int
    time_last_ns: int  # time of the last row in row order
    latest: dict[str, tuple]  # symbol -> its newest trade as a TRADE_FIELDS tuple (a tie: the later)


@dataclass(slots=True)
class QuoteColumns:
    """One frame's quotes: binary COPY tuple data (no header or trailer) in ``tables.QUOTES`` order."""

    n: int
    copy: bytes
    time_min_ns: int
    time_max_ns: int
    time_last_ns: int
    latest: dict[str, tuple]  # symbol -> its newest quote as a QUOTE_FIELDS tuple


@dataclass(slots=True)
class ColumnarFrame:
    """One decoded frame: trades and quotes as columns (None when none), everything else in ``rest``."""

    trades: TradeColumns | None
    quotes: QuoteColumns | None
    rest: DecodedFrame = field(default_factory=DecodedFrame)  # rest.trades and rest.quotes stay empty

    def market_count(self) -> int:
        """Market messages decoded, as ``DecodedFrame.market_count`` counts them."""
        return (
            (self.trades.n if self.trades is not None else 0)
            + (self.quotes.n if self.quotes is not None else 0)
            + self.rest.market_count()
        )


# --------------------------------------------------------------------------------------------
# The Python encoder: TRADE_FIELDS / QUOTE_FIELDS tuples -> binary COPY tuple data, byte for byte
# what the writer's psycopg dumpers (_NsTimestamptz, _CachedTextArray, text, int8, float8) write.

_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix µs
_TEXT_OID = 25
_i32 = struct.Struct("!i").pack
_int8 = struct.Struct("!iq").pack  # (8, value): an int8 or timestamptz field with its length
_float8 = struct.Struct("!id").pack
_NULL = _i32(-1)
_TRADE_TUPLE = struct.Struct("!h").pack(9)
_QUOTE_TUPLE = struct.Struct("!h").pack(11)
_EMPTY_ARRAY = struct.pack("!iiii", 12, 0, 0, _TEXT_OID)  # ndim 0: what psycopg writes for []
_array_header = struct.Struct("!iiiiii").pack
# Condition sets repeat endlessly ("@", "@ F" ...): their encoding is cached, as in the writer.
# Bound: CONDITIONS_CACHE_MAX entries of a few dozen bytes; cleared when full.
CONDITIONS_CACHE_MAX = 4096
_conditions_cache: dict[tuple, bytes] = {}


def _text(value: object, nullable: bool) -> bytes:
    if value is None:
        if nullable:
            return _NULL
        raise TypeError("NULL in a NOT NULL text column")
    if value.__class__ is not str:
        raise TypeError(f"text expected, got {type(value).__name__}")
    raw = value.encode()  # a lone surrogate (JSON "\ud800") raises UnicodeEncodeError
    if b"\0" in raw:
        raise ValueError("NUL byte in text")
    return _i32(len(raw)) + raw


def _conditions(value: object) -> bytes:
    if value is None:
        return _NULL
    if value.__class__ is not list and value.__class__ is not tuple:
        raise TypeError(f"conditions must be a list of str, got {type(value).__name__}")
    key = tuple(value)
    data = _conditions_cache.get(key) if all(v.__class__ is str for v in key) else None
    if data is None:
        if not value:
            data = _EMPTY_ARRAY
        else:
            items = [_text(v, nullable=False) for v in value]
            body = b"".join(items)
            data = _array_header(20 + len(body), 1, 0, _TEXT_OID, len(items), 1) + body
        if len(_conditions_cache) >= CONDITIONS_CACHE_MAX:
            _conditions_cache.clear()
        _conditions_cache[key] = data
    return data


def _time(t: object) -> bytes:
    if t.__class__ is not int:
        raise TypeError(f"time_ns must be int, got {type(t).__name__}")
    return _int8(8, t // 1000 - _PG_EPOCH_US)  # floor, also before 1970; struct range-checks


def _trade_row(row: tuple) -> bytes:
    try:
        t, symbol, trade_id, exchange, price, size, conditions, tape = row
        if size.__class__ is float:
            raise TypeError("size must be an integer")
        return b"".join((
            _TRADE_TUPLE,
            _time(t),
            _text(symbol, False),
            _int8(8, trade_id),
            _text(exchange, False),
            _float8(8, price),
            _int8(8, size),
            _conditions(conditions),
            _text(tape, True),
            _int8(8, t),
        ))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise UnstorableRow(f"trade row cannot be stored ({exc}): {row!r}"[:300]) from None


def _nullable_int8(value: object) -> bytes:
    if value is None:
        return _NULL
    if value.__class__ is float:
        raise TypeError("size must be an integer")
    return _int8(8, value)


def _nullable_float8(value: object) -> bytes:
    return _NULL if value is None else _float8(8, value)


def _quote_row(row: tuple) -> bytes:
    try:
        (t, symbol, bid_exchange, bid_price, bid_size, ask_exchange, ask_price, ask_size, conditions,
         tape) = row
        return b"".join((
            _QUOTE_TUPLE,
            _time(t),
            _text(symbol, False),
            _text(bid_exchange, True),
            _nullable_float8(bid_price),
            _nullable_int8(bid_size),
            _text(ask_exchange, True),
            _nullable_float8(ask_price),
            _nullable_int8(ask_size),
            _conditions(conditions),
            _text(tape, True),
            _int8(8, t),
        ))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise UnstorableRow(f"quote row cannot be stored ({exc}): {row!r}"[:300]) from None


def encode_trade_copy(rows: Iterable[tuple]) -> bytes:
    """TRADE_FIELDS tuples -> binary COPY tuple data for ``tables.TRADES`` (no header/trailer).
    Raises :class:`UnstorableRow` on a row the trades table cannot take. Pure Python, a few µs/row."""
    return b"".join([_trade_row(r) for r in rows])


def encode_quote_copy(rows: Iterable[tuple]) -> bytes:
    """QUOTE_FIELDS tuples -> binary COPY tuple data for ``tables.QUOTES``. Raises :class:`UnstorableRow`."""
    return b"".join([_quote_row(r) for r in rows])


def _summary(rows: list[tuple]) -> tuple[int, int, dict[str, tuple]]:
    tmin = tmax = rows[0][0]
    latest: dict[str, tuple] = {}
    get = latest.get
    for r in rows:
        t = r[0]
        if t < tmin:
            tmin = t
        elif t > tmax:
            tmax = t
        cur = get(r[1])
        if cur is None or t >= cur[0]:
            latest[r[1]] = r
    return tmin, tmax, latest


def columns_of(cls, rows: list[tuple], copy: bytes):
    """``cls`` (TradeColumns or QuoteColumns) for ``rows`` (time first, symbol second, in row order)
    whose COPY data is ``copy``; None for no rows. Every stream's decoder builds its columns here."""
    if not rows:
        return None
    tmin, tmax, latest = _summary(rows)
    return cls(len(rows), copy, tmin, tmax, rows[-1][0], latest)


def trade_columns(rows: list[tuple]) -> TradeColumns | None:
    """Columns from TRADE_FIELDS tuples (backfill, JSON frames, spill files); None for no rows.
    Raises :class:`UnstorableRow` on a row the trades table cannot take."""
    return columns_of(TradeColumns, rows, encode_trade_copy(rows)) if rows else None


def quote_columns(rows: list[tuple]) -> QuoteColumns | None:
    """Columns from QUOTE_FIELDS tuples; None for no rows. Raises :class:`UnstorableRow`."""
    return columns_of(QuoteColumns, rows, encode_quote_copy(rows)) if rows else None


# --------------------------------------------------------------------------------------------
# Decoding.


class _StorableRows(list):
    """A row list for ``_decode_messages`` that encodes each row as it is appended. An unstorable
    row raises inside the protocol loop's ``try``, so its message is rejected there like any badly
    typed one (same reason, same payload)."""

    __slots__ = ("_encode", "chunks")

    def __init__(self, encode) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self._encode = encode

    def append(self, row: tuple) -> None:
        self.chunks.append(self._encode(row))
        list.append(self, row)


def _storable_frame() -> DecodedFrame:
    return DecodedFrame(trades=_StorableRows(_trade_row), quotes=_StorableRows(_quote_row))


def _columns(cls, rows: _StorableRows):
    if not rows:
        return None
    tmin, tmax, latest = _summary(rows)
    return cls(len(rows), b"".join(rows.chunks), tmin, tmax, rows[-1][0], latest)


def _split(out: DecodedFrame) -> ColumnarFrame:
    trades = _columns(TradeColumns, out.trades)
    quotes = _columns(QuoteColumns, out.quotes)
    out.trades = []
    out.quotes = []
    return ColumnarFrame(trades, quotes, out)


def _decode_python(data: bytes | str) -> ColumnarFrame:
    """decode_frame's own path, the rows encoded as they are made."""
    out = _storable_frame()
    msgs = _load_frame(data, out)
    if msgs is not None:
        _decode_messages(msgs, out, not isinstance(data, str))
    return _split(out)


def _append(cols, rows: _StorableRows, cls):
    """Rows that come after every row of ``cols`` (a repaired message: decode_frame's second pass)."""
    return join_columns(cols, _columns(cls, rows))


def join_columns(cols, extra):
    """``cols`` followed by ``extra`` (either may be None); ``cols`` is extended in place."""
    if cols is None or extra is None:
        return cols if extra is None else extra
    cols.n += extra.n
    cols.copy += extra.copy
    cols.time_min_ns = min(cols.time_min_ns, extra.time_min_ns)
    cols.time_max_ns = max(cols.time_max_ns, extra.time_max_ns)
    cols.time_last_ns = extra.time_last_ns
    latest = cols.latest
    for symbol, row in extra.latest.items():
        cur = latest.get(symbol)
        if cur is None or row[0] >= cur[0]:
            latest[symbol] = row
    return cols


_unpackb = msgpack.unpackb
_MARKET_TYPES = ("t", "q")


def extension_result(data: bytes, res: tuple) -> tuple[TradeColumns | None, QuoteColumns | None, list | None]:
    """What the extension's ``decode``/``decode_crypto`` returned for ``data``: its trades and quotes as
    columns, and the messages it left to Python (None: none). The extension checked everything that
    could make unpackb fail (UTF-8, Timestamp exts, hashable keys, bounds), so each left message's
    byte range decodes alone as it would in the whole frame."""
    tn, tcopy, tmin, tmax, tlast, tlatest, qn, qcopy, qmin, qmax, qlast, qlatest, deferred = res
    trades = TradeColumns(tn, tcopy, tmin, tmax, tlast, tlatest) if tn else None
    quotes = QuoteColumns(qn, qcopy, qmin, qmax, qlast, qlatest) if qn else None
    if deferred is None:
        return trades, quotes, None
    msgs = [_unpackb(data[s:e], raw=False, timestamp=2, strict_map_key=False) for s, e in deferred]
    return trades, quotes, msgs


def _from_extension(data: bytes, res: tuple) -> ColumnarFrame:
    trades, quotes, msgs = extension_result(data, res)
    if msgs is None:
        return ColumnarFrame(trades, quotes, DecodedFrame())
    for m in msgs:
        # A trade/quote C declined but Python's fast path takes (a bool for an int, an int time,
        # a repeated key) sits among C's rows in decode_frame's order. Rare: decode it all in Python.
        if type(m) is dict and m.get("T") in _MARKET_TYPES and not isinstance(m.get("t"), str):
            probe = _storable_frame()
            _decode_messages([m], probe, True)
            if probe.trades or probe.quotes:
                return _decode_python(data)
    out = _storable_frame()
    _decode_messages(msgs, out, True)
    # Rows left here were repaired (a string time): decode_frame puts them after all others.
    trades = _append(trades, out.trades, TradeColumns)
    quotes = _append(quotes, out.quotes, QuoteColumns)
    out.trades = []
    out.quotes = []
    return ColumnarFrame(trades, quotes, out)


def decode_columnar(data: bytes | str) -> ColumnarFrame:
    """Decode one server frame (msgpack ``bytes`` or JSON ``str``) into columns. Never raises.

    Same rows and rejects as ``decode_frame(data)`` (see the module docstring for the one
    difference: rows PostgreSQL cannot store are rejected). Cost with the extension, measured by
    ``bench/bench_columnar.py`` on the 2-core dev host: ~0.26 µs per trade in 1000-message frames,
    ~0.39 µs in 100-message ones (the per-symbol ``latest`` tuples are a per-frame cost), against
    1.4-2 µs for ``decode_frame``; other messages cost what they cost in ``decode_frame``, and a
    frame C declines costs ``decode_frame`` plus the Python encoder. Memory O(len(data)).
    """
    return decode_fast_or_python(data, _c_decode, _from_extension, _decode_python)


def decode_fast_or_python(data: bytes | str, c_decode, from_extension, decode_python):
    """A msgpack frame through the compiled decoder ``c_decode`` (None: not built) when it answers,
    else, and for JSON text, through ``decode_python``. Never raises for the fast path's sake."""
    if c_decode is not None and not isinstance(data, str):
        try:
            res = c_decode(data)
            if res is not None:
                return from_extension(data, res)
        except Exception:  # MemoryError, or a bug: the Python path still answers
            log.debug("compiled fast path failed; decoding the frame in Python", exc_info=True)
    return decode_python(data)
