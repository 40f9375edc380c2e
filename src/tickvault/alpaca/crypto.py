"""Alpaca's crypto market-data stream (``/v1beta3/crypto/{us,us-1,eu-1}``) as pure functions over bytes.

The same guarantees as :mod:`tickvault.alpaca.protocol` for stocks: a frame decodes as one unit,
``t`` becomes exact int nanoseconds (msgpack Timestamp, or RFC 3339 in JSON), a bad message becomes
one :class:`~tickvault.alpaca.protocol.Reject` holding its bytes while the rest of the frame is kept,
and nothing here ever raises on server input, blocks, logs or touches a socket.

What differs from stocks (Alpaca's docs; alpaca-py's ``CryptoDataStream``):

* trades ``t``: ``S``, ``i`` id, ``p``, ``s`` **fractional** size, ``tks`` taker side (``B``/``S``;
  alpaca-py's ``Trade`` drops it, we keep it), ``t``. No exchange, conditions or tape.
* quotes ``q``: ``S``, ``bp``, ``bs``, ``ap``, ``as`` (fractional sizes), ``t``.
* bars ``b`` / updated bars ``u`` / daily bars ``d``: like stocks, ``v`` fractional.
* orderbooks ``o``: ``S``, ``t``, ``b`` bids and ``a`` asks as ``[{"p": price, "s": size}, ...]``,
  ``r`` true when the message is the full book (a reset: drop what you hold), else changed levels
  only (size 0 removes a level).
* no statuses, LULDs, corrections or cancels: a ``c``/``x``/``s``/``l`` here is rejected as unknown.

Columnar form (what the worker queues): trades and quotes become PostgreSQL binary COPY tuple data
for :data:`tickvault.db.tables.CRYPTO_TRADES` / :data:`~tickvault.db.tables.CRYPTO_QUOTES` in the
same :class:`~tickvault.alpaca.columnar.TradeColumns` / ``QuoteColumns`` containers the stock path
uses; bars and orderbooks stay tuples (a few per second). A msgpack frame's trades and quotes are
encoded by the compiled ``tickvault._columnar.decode_crypto`` when it is built (the stocks' fast
path, the same rules: it takes only the one well-typed shape of a trade or quote and leaves every
other message to this module's loop as a byte range; a trade or quote it declines sends the whole
frame through Python); without it, or for JSON, the Python encoder here (a few µs per trade) does it.
Both give the same COPY bytes, rows and rejects for every frame (``tests/test_crypto_protocol.py``).

Sizes are stored as ``numeric``: a float size such as 0.0012 is written as the shortest decimal that
reads back as the same float (``repr``), which is the decimal the exchange printed whenever it has at
most 15 significant digits (IEEE 754's guarantee), so ``sum(size)`` over a day is exact where a float8
sum would drift in the last digits.

Bounds: memory O(frame size), freed with the returned :class:`CryptoFrame`; nothing kept across frames.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg.types.numeric import dump_decimal_to_numeric_binary

from tickvault.alpaca.columnar import (
    QuoteColumns,
    TradeColumns,
    UnstorableRow,
    _c_decode_crypto,
    _float8,
    _int8,
    columns_of,
    decode_fast_or_python,
    extension_result,
    join_columns,
    _text,
    _time,
)
from tickvault.alpaca.protocol import (
    _reject_reason,
    _CONTROL_TYPES,
    Reject,
    _load_frame,
    _reencode,
    _repair,
    rfc3339_to_ns,
)

__all__ = [
    "CRYPTO_BAR_FIELDS",
    "CRYPTO_CHANNELS",
    "CRYPTO_LOCATIONS",
    "CRYPTO_ORDERBOOK_FIELDS",
    "CRYPTO_QUOTE_FIELDS",
    "CRYPTO_TRADE_FIELDS",
    "CryptoFrame",
    "CryptoRest",
    "crypto_quote_columns",
    "crypto_trade_columns",
    "decode_crypto",
    "encode_crypto_quote_copy",
    "encode_crypto_trade_copy",
    "size_decimal",
    "trade_row_from_rest",
    "bar_row_from_rest",
]

CRYPTO_LOCATIONS = ("us", "us-1", "eu-1")
#: Wire names of the channels a crypto client may subscribe to.
CRYPTO_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks")

CRYPTO_TRADE_FIELDS = ("time_ns", "symbol", "trade_id", "price", "size", "taker_side")
CRYPTO_QUOTE_FIELDS = ("time_ns", "symbol", "bid_price", "bid_size", "ask_price", "ask_size")
CRYPTO_BAR_FIELDS = ("time_ns", "symbol", "open", "high", "low", "close", "volume", "trade_count", "vwap")
CRYPTO_ORDERBOOK_FIELDS = ("time_ns", "symbol", "reset", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes")

_REQUIRED: dict[str, tuple[str, tuple[str, ...]]] = {
    "t": ("crypto trade", ("t", "S", "i", "p", "s")),
    "q": ("crypto quote", ("t", "S", "bp", "bs", "ap", "as")),
    "b": ("crypto bar", ("t", "S", "o", "h", "l", "c", "v")),
    "u": ("crypto updated bar", ("t", "S", "o", "h", "l", "c", "v")),
    "d": ("crypto daily bar", ("t", "S", "o", "h", "l", "c", "v")),
    "o": ("crypto orderbook", ("t", "S", "b", "a")),
}


@dataclass(slots=True)
class CryptoRest:
    """A crypto frame's messages other than trades and quotes, as tuples (``CRYPTO_*_FIELDS`` order)."""

    bars: list[tuple] = field(default_factory=list)
    updated_bars: list[tuple] = field(default_factory=list)
    daily_bars: list[tuple] = field(default_factory=list)
    orderbooks: list[tuple] = field(default_factory=list)
    control: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def market_count(self) -> int:
        return len(self.bars) + len(self.updated_bars) + len(self.daily_bars) + len(self.orderbooks)


@dataclass(slots=True)
class CryptoFrame:
    """One decoded crypto frame: trades and quotes as COPY columns (None when none), the rest as tuples."""

    trades: TradeColumns | None
    quotes: QuoteColumns | None
    rest: CryptoRest = field(default_factory=CryptoRest)

    def market_count(self) -> int:
        return ((self.trades.n if self.trades is not None else 0)
                + (self.quotes.n if self.quotes is not None else 0) + self.rest.market_count())


# --------------------------------------------------------------------------------------------
# Binary COPY encoding.

_CRYPTO_TRADE_TUPLE = struct.pack("!h", 7)
_CRYPTO_QUOTE_TUPLE = struct.pack("!h", 7)
_i32 = struct.Struct("!i").pack
_NULL = _i32(-1)


def size_decimal(value: float | int) -> Decimal:
    """A wire size as the decimal it was printed as (``repr``: the shortest that reads back the same).
    Raises ValueError for a negative, NaN or infinite size."""
    if value.__class__ is bool or not (value.__class__ is float or value.__class__ is int):
        raise TypeError(f"size must be a number, got {type(value).__name__}")
    if value.__class__ is float and not math.isfinite(value):
        raise ValueError(f"size must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"size must be >= 0, got {value!r}")
    return Decimal(repr(value)) if value.__class__ is float else Decimal(value)


def _numeric(value: float | int) -> bytes:
    data = dump_decimal_to_numeric_binary(size_decimal(value))
    return _i32(len(data)) + bytes(data)


def _trade_row(row: tuple) -> bytes:
    try:
        t, symbol, trade_id, price, size, taker = row
        if taker is not None and taker not in ("B", "S"):
            raise ValueError(f"taker side must be B or S, got {taker!r}")
        return b"".join((
            _CRYPTO_TRADE_TUPLE, _time(t), _text(symbol, False), _int8(8, trade_id), _float8(8, price),
            _numeric(size), _text(taker, True), _int8(8, t),
        ))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error, ArithmeticError) as exc:
        raise UnstorableRow(f"crypto trade row cannot be stored ({exc}): {row!r}"[:300]) from None


def _quote_row(row: tuple) -> bytes:
    try:
        t, symbol, bp, bs, ap, as_ = row
        return b"".join((
            _CRYPTO_QUOTE_TUPLE, _time(t), _text(symbol, False), _float8(8, bp), _float8(8, bs),
            _float8(8, ap), _float8(8, as_), _int8(8, t),
        ))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise UnstorableRow(f"crypto quote row cannot be stored ({exc}): {row!r}"[:300]) from None


def encode_crypto_trade_copy(rows) -> bytes:
    """CRYPTO_TRADE_FIELDS tuples -> binary COPY tuple data for ``tables.CRYPTO_TRADES``."""
    return b"".join([_trade_row(r) for r in rows])


def encode_crypto_quote_copy(rows) -> bytes:
    """CRYPTO_QUOTE_FIELDS tuples -> binary COPY tuple data for ``tables.CRYPTO_QUOTES``."""
    return b"".join([_quote_row(r) for r in rows])


def crypto_trade_columns(rows: list[tuple]) -> TradeColumns | None:
    """Columns from CRYPTO_TRADE_FIELDS tuples (REST backfill, spill files); None for no rows.
    Raises :class:`~tickvault.alpaca.columnar.UnstorableRow` on a row the table cannot take."""
    return columns_of(TradeColumns, rows, encode_crypto_trade_copy(rows)) if rows else None


def crypto_quote_columns(rows: list[tuple]) -> QuoteColumns | None:
    return columns_of(QuoteColumns, rows, encode_crypto_quote_copy(rows)) if rows else None


# --------------------------------------------------------------------------------------------
# Decoding.


def _volume(value: Any) -> float | int:
    size_decimal(value)  # raises on a negative, NaN or non-number volume
    return value


def _levels(levels: Any) -> tuple[list[float], list[float]]:
    if levels.__class__ is not list:
        raise TypeError("orderbook side must be a list")
    prices = [lv["p"] + 0.0 for lv in levels]
    sizes = [lv["s"] + 0.0 for lv in levels]
    return prices, sizes


def _reason(msg: Any) -> str:
    return _reject_reason(msg, _REQUIRED, stream="crypto",
                          wrong_type="has a field of the wrong type or a value the table cannot store")


log = logging.getLogger("tickvault.crypto")
_MARKET_TYPES = ("t", "q")


def decode_crypto(data: bytes | str) -> CryptoFrame:
    """Decode one crypto server frame (msgpack ``bytes`` or JSON ``str``). Never raises.

    Trades and quotes are encoded for COPY as they are read, so a value PostgreSQL could not store
    (a negative or NaN size, a taker side other than B/S, text with a NUL) rejects that message
    alone. A string time is repaired (RFC 3339) and the message decoded after the others, as in
    ``decode_frame``. With the compiled extension a msgpack frame's trades and quotes are encoded in
    C (see the module docstring); the result is the same.
    """
    return decode_fast_or_python(data, _c_decode_crypto, _from_extension, _decode_python)


def _from_extension(data: bytes, res: tuple) -> CryptoFrame:
    trades, quotes, msgs = extension_result(data, res)
    rest = CryptoRest()
    if msgs is None:
        return CryptoFrame(trades, quotes, rest)
    # A trade or quote C declined without a string time (a bool, NaN, a negative size...) is judged
    # by Python with the whole frame, so its row or reject keeps its place.
    for m in msgs:
        if type(m) is dict and m.get("T") in _MARKET_TYPES and not isinstance(m.get("t"), str):
            return _decode_python(data)
    more_trades, more_quotes = _decode_messages(msgs, rest, True)
    # Rows left here were repaired (a string time): the Python path puts them after all others too.
    return CryptoFrame(join_columns(trades, more_trades), join_columns(quotes, more_quotes), rest)


def _decode_python(data: bytes | str) -> CryptoFrame:
    rest = CryptoRest()
    msgs = _load_frame(data, rest)  # type: ignore[arg-type]  # needs only .rejects
    trades, quotes = _decode_messages(msgs or [], rest, not isinstance(data, str))
    return CryptoFrame(trades, quotes, rest)


def _decode_messages(msgs: list, rest: CryptoRest, use_msgpack: bool) -> tuple[TradeColumns | None,
                                                                              QuoteColumns | None]:
    """The crypto decoding loop: trades and quotes as columns, the rest into ``rest``."""
    trades: list[tuple] = []
    trade_copy: list[bytes] = []
    quotes: list[tuple] = []
    quote_copy: list[bytes] = []
    pending = msgs
    while pending:
        retry: list = []
        for m in pending:
            try:
                T = m["T"]
                if T == "t":
                    tks = m.get("tks")
                    row = (m["t"] | 0, m["S"] + "", m["i"] | 0, m["p"] + 0.0, m["s"] + 0,
                           None if tks is None else tks + "")
                    trade_copy.append(_trade_row(row))
                    trades.append(row)
                elif T == "q":
                    row = (m["t"] | 0, m["S"] + "", m["bp"] + 0.0, m["bs"] + 0.0, m["ap"] + 0.0, m["as"] + 0.0)
                    quote_copy.append(_quote_row(row))
                    quotes.append(row)
                elif T == "b" or T == "u" or T == "d":
                    n = m.get("n")
                    vw = m.get("vw")
                    row = (m["t"] | 0, m["S"] + "", m["o"] + 0.0, m["h"] + 0.0, m["l"] + 0.0, m["c"] + 0.0,
                           _volume(m["v"]), None if n is None else n | 0,
                           None if vw is None else vw + 0.0)
                    (rest.bars if T == "b" else rest.updated_bars if T == "u" else rest.daily_bars).append(row)
                elif T == "o":
                    bp, bs = _levels(m["b"])
                    ap, as_ = _levels(m["a"])
                    rest.orderbooks.append((m["t"] | 0, m["S"] + "", bool(m.get("r", False)), bp, bs, ap, as_))
                elif T in _CONTROL_TYPES:
                    rest.control.append(m)
                else:
                    rest.rejects.append(Reject(_reason(m), _reencode(m, use_msgpack)))
            except Exception:  # noqa: BLE001 - slow path for this one message only
                try:
                    repaired = _repair(m)
                except Exception:  # noqa: BLE001
                    repaired = False
                if repaired:
                    retry.append(m)
                else:
                    rest.rejects.append(Reject(_reason(m), _reencode(m, use_msgpack)))
        pending = retry
    return (columns_of(TradeColumns, trades, b"".join(trade_copy)),
            columns_of(QuoteColumns, quotes, b"".join(quote_copy)))


# --------------------------------------------------------------------------------------------
# REST history (``GET /v1beta3/crypto/{loc}/trades|bars``): the same tuples as the stream.


def _wire_number(value: Any) -> float | int:
    """A REST number (the REST client parses JSON numbers as Decimal) as the stream carries it: an int
    stays an int, anything else becomes the float the stream would have sent (same shortest decimal)."""
    if value.__class__ is int:
        return value
    if isinstance(value, (Decimal, float)):
        return float(value)
    raise TypeError(f"a number expected, got {type(value).__name__}")


def trade_row_from_rest(symbol: str, raw: dict) -> tuple:
    """One REST trade ``{t, p, s, i, tks}`` as a CRYPTO_TRADE_FIELDS tuple, equal to the stream's row for
    the same trade. Raises on a bad item."""
    tks = raw.get("tks")
    return (rfc3339_to_ns(raw["t"]), symbol, int(raw["i"]), float(raw["p"]), _wire_number(raw["s"]),
            None if tks is None else str(tks))


def bar_row_from_rest(symbol: str, raw: dict) -> tuple:
    """One REST bar ``{t, o, h, l, c, v, n, vw}`` as a CRYPTO_BAR_FIELDS tuple."""
    n, vw = raw.get("n"), raw.get("vw")
    return (rfc3339_to_ns(raw["t"]), symbol, float(raw["o"]), float(raw["h"]), float(raw["l"]), float(raw["c"]),
            _wire_number(raw["v"]), None if n is None else int(n), None if vw is None else float(vw))
