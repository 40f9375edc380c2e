"""Alpaca's options stream (``/v1beta1/{indicative,opra}``, **msgpack only**) and OCC option symbols.

Wire (Alpaca's docs; alpaca-py's ``OptionDataStream``): trades ``{T:"t", S, t, p, s, x, c}`` and quotes
``{T:"q", S, t, bx, bp, bs, ax, ap, as, c}`` on OCC symbols such as ``AAPL250117C00200000``; sizes are
whole contracts, ``c`` one condition code (a string), and trades carry **no trade id**. The server
sends msgpack only: a JSON (text) frame is rejected whole.

OCC symbol: the underlying root (1-6 characters, no padding in Alpaca's form), the expiration
``YYMMDD``, ``C`` or ``P``, and the strike × 1000 in 8 digits: ``AAPL250117C00200000`` is the AAPL call
expiring 2025-01-17 at 200.000. :func:`parse_occ` turns it into those parts (the table keeps them as
columns a trader filters on); a symbol that is not OCC is refused with a clear error, and a message
carrying one is rejected alone.

Columnar form as for crypto (:mod:`tickvault.alpaca.crypto`): trades and quotes become binary COPY tuple
data for :data:`tickvault.db.tables.OPTION_TRADES` / ``OPTION_QUOTES`` in Python (the compiled fast
path is stocks-only). Never raises on server input, never blocks or logs. Bounds: memory O(frame), plus
the OCC cache of contracts seen (``CONTRACTS_CACHE_MAX`` entries, cleared when full).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from psycopg.types.numeric import dump_decimal_to_numeric_binary

from tickvault.alpaca.columnar import QuoteColumns, TradeColumns, UnstorableRow, _float8, _int8, _text, _time, columns_of
from tickvault.alpaca.protocol import _CONTROL_TYPES, Reject, _load_frame, _reencode, _reject_reason, _repair

__all__ = [
    "OPTION_FEEDS",
    "OPTION_QUOTE_FIELDS",
    "OPTION_TRADE_FIELDS",
    "OccSymbol",
    "OccSymbolError",
    "OptionsFrame",
    "decode_options",
    "option_trade_columns",
    "parse_occ",
    "trade_row_from_rest",
]

OPTION_FEEDS = ("indicative", "opra")
OPTION_TRADE_FIELDS = ("time_ns", "symbol", "price", "size", "exchange", "condition")
OPTION_QUOTE_FIELDS = ("time_ns", "symbol", "bid_exchange", "bid_price", "bid_size", "ask_exchange", "ask_price",
                       "ask_size", "condition")

_OCC = re.compile(r"([A-Z][A-Z0-9.]{0,5})(\d{2})(\d{2})(\d{2})([CP])(\d{8})")


class OccSymbolError(ValueError):
    """A symbol that is not an OCC option symbol (the message shows the expected form)."""


@dataclass(frozen=True, slots=True)
class OccSymbol:
    underlying: str
    expiration: date
    option_type: str  # "C" call, "P" put
    strike: Decimal


def parse_occ(symbol: str) -> OccSymbol:
    """``AAPL250117C00200000`` → ``OccSymbol("AAPL", date(2025, 1, 17), "C", Decimal("200.000"))``."""
    m = _OCC.fullmatch(symbol) if symbol.__class__ is str else None
    if m is None:
        raise OccSymbolError(f"{symbol!r} is not an OCC option symbol (root, YYMMDD, C or P, strike×1000 in 8 "
                             "digits, e.g. AAPL250117C00200000)")
    root, yy, mm, dd, kind, strike = m.groups()
    try:
        expiration = date(2000 + int(yy), int(mm), int(dd))
    except ValueError:
        raise OccSymbolError(f"{symbol!r} has no valid expiration date ({yy}{mm}{dd})") from None
    return OccSymbol(root, expiration, kind, Decimal(strike).scaleb(-3))


@dataclass(slots=True)
class OptionsRest:
    control: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def market_count(self) -> int:
        return 0


@dataclass(slots=True)
class OptionsFrame:
    """One decoded options frame: trades and quotes as COPY columns (None when none), control, rejects."""

    trades: TradeColumns | None
    quotes: QuoteColumns | None
    rest: OptionsRest = field(default_factory=OptionsRest)

    def market_count(self) -> int:
        return (self.trades.n if self.trades is not None else 0) + (self.quotes.n if self.quotes is not None else 0)


# --------------------------------------------------------------------------------------------
# Binary COPY: (time, symbol, underlying, expiration, option_type, strike, <message columns>, time_ns).

_i32 = struct.Struct("!i").pack
_NULL = _i32(-1)
_TRADE_TUPLE = struct.pack("!h", 11)
_QUOTE_TUPLE = struct.pack("!h", 14)
_PG_EPOCH_DATE = date(2000, 1, 1).toordinal()


# The OCC columns of each contract seen, encoded once (parsing a symbol costs a regex, a date and a
# Decimal): kept across frames, since most messages of a frame name a different contract. Bound:
# CONTRACTS_CACHE_MAX entries of ~60 bytes; cleared when full (the option universe is ~1M contracts).
CONTRACTS_CACHE_MAX = 100_000
_CONTRACTS: dict[str, bytes] = {}


def _contract(symbol: str, cache: dict) -> bytes:
    data = cache.get(symbol)
    if data is None:
        if len(cache) >= CONTRACTS_CACHE_MAX:
            cache.clear()
        occ = parse_occ(symbol)
        strike = bytes(dump_decimal_to_numeric_binary(occ.strike))
        data = b"".join((_text(symbol, False), _text(occ.underlying, False),
                         _i32(4) + _i32(occ.expiration.toordinal() - _PG_EPOCH_DATE), _text(occ.option_type, False),
                         _i32(len(strike)) + strike))
        cache[symbol] = data
    return data


def _size(value: int) -> bytes:
    if value.__class__ is not int or value < 0:
        raise TypeError("size must be a whole number of contracts")
    return _int8(8, value)


def _trade_row(row: tuple, cache: dict) -> bytes:
    try:
        t, symbol, price, size, exchange, condition = row
        return b"".join((_TRADE_TUPLE, _time(t), _contract(symbol, cache), _float8(8, price), _size(size),
                         _text(exchange, True), _text(condition, True), _int8(8, t)))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise UnstorableRow(f"option trade row cannot be stored ({exc}): {row!r}"[:300]) from None


def _quote_row(row: tuple, cache: dict) -> bytes:
    try:
        t, symbol, bx, bp, bs, ax, ap, as_, condition = row
        return b"".join((_QUOTE_TUPLE, _time(t), _contract(symbol, cache), _text(bx, True), _float8(8, bp), _size(bs),
                         _text(ax, True), _float8(8, ap), _size(as_), _text(condition, True), _int8(8, t)))
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise UnstorableRow(f"option quote row cannot be stored ({exc}): {row!r}"[:300]) from None


def option_trade_columns(rows: list[tuple]) -> TradeColumns | None:
    """Columns from OPTION_TRADE_FIELDS tuples (REST backfill, spill files); raises UnstorableRow."""
    if not rows:
        return None
    cache = _CONTRACTS
    return columns_of(TradeColumns, rows, b"".join([_trade_row(r, cache) for r in rows]))


def option_quote_columns(rows: list[tuple]) -> QuoteColumns | None:
    if not rows:
        return None
    cache = _CONTRACTS
    return columns_of(QuoteColumns, rows, b"".join([_quote_row(r, cache) for r in rows]))


def trade_row_from_rest(symbol: str, raw: dict) -> tuple:
    """One REST option trade ``{t, x, p, s, c}`` as an OPTION_TRADE_FIELDS tuple (the stream's row)."""
    from tickvault.alpaca.protocol import rfc3339_to_ns

    size = raw["s"]
    return (rfc3339_to_ns(raw["t"]), symbol, float(raw["p"]), int(size) if int(size) == size else size,
            raw.get("x"), raw.get("c"))


# --------------------------------------------------------------------------------------------
# Decoding.


_OPTION_REQUIRED = {"t": ("option trade", ("t", "S", "p", "s")),
                    "q": ("option quote", ("t", "S", "bp", "bs", "ap", "as"))}
_CANNOT_STORE = "has a field of the wrong type or a value the table cannot store"


def _reason(msg) -> str:
    reason = _reject_reason(msg, _OPTION_REQUIRED, stream="options", wrong_type=_CANNOT_STORE)
    symbol = msg.get("S") if isinstance(msg, dict) else None
    if reason.endswith(_CANNOT_STORE) and isinstance(symbol, str) and _OCC.fullmatch(symbol) is None:
        return f"{reason[:-len(_CANNOT_STORE) - 1]} on {symbol!r}, which is not an OCC option symbol"
    return reason


def decode_options(data: bytes | str) -> OptionsFrame:
    """Decode one options frame. msgpack ``bytes`` only: a ``str`` (JSON) frame is one Reject, since the
    options stream never sends JSON. Never raises."""
    rest = OptionsRest()
    if isinstance(data, str):
        rest.rejects.append(Reject("the options stream is msgpack only: a JSON frame was received",
                                   data.encode("utf-8", "backslashreplace")))
        return OptionsFrame(None, None, rest)
    msgs = _load_frame(data, rest)  # type: ignore[arg-type]  # needs only .rejects
    trades: list[tuple] = []
    trade_copy: list[bytes] = []
    quotes: list[tuple] = []
    quote_copy: list[bytes] = []
    cache = _CONTRACTS
    pending = msgs or []
    while pending:
        retry = []
        for m in pending:
            try:
                T = m["T"]
                if T == "t":
                    row = (m["t"] | 0, m["S"] + "", m["p"] + 0.0, m["s"], m.get("x"), m.get("c"))
                    trade_copy.append(_trade_row(row, cache))
                    trades.append(row)
                elif T == "q":
                    row = (m["t"] | 0, m["S"] + "", m.get("bx"), m["bp"] + 0.0, m["bs"], m.get("ax"), m["ap"] + 0.0,
                           m["as"], m.get("c"))
                    quote_copy.append(_quote_row(row, cache))
                    quotes.append(row)
                elif T in _CONTROL_TYPES:
                    rest.control.append(m)
                else:
                    rest.rejects.append(Reject(_reason(m), _reencode(m, True)))
            except Exception:  # noqa: BLE001 - this message only
                try:
                    repaired = _repair(m)
                except Exception:  # noqa: BLE001
                    repaired = False
                if repaired:
                    retry.append(m)
                else:
                    rest.rejects.append(Reject(_reason(m), _reencode(m, True)))
        pending = retry
    return OptionsFrame(columns_of(TradeColumns, trades, b"".join(trade_copy)),
                        columns_of(QuoteColumns, quotes, b"".join(quote_copy)), rest)
