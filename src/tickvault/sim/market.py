"""The simulated market: a seeded random walk per symbol, and the ground truth of every trade.

What this module must never do: block the event loop for long (one :meth:`Market.generate` call
does a bounded batch), or keep one Python object per trade (the ground truth is columnar ``array``
storage: 32 bytes per trade, 40 bytes per quote).

Ground-truth checksum (per symbol; reproducible in SQL)::

    count(*), sum(trade_id), sum(time_ns % 1000003), sum((time_ns / 1000) % 1000003),
    sum(round(price * 100)), sum(size)

``time_ns / 1000`` is integer division (the microsecond, for a store that keeps timestamptz only).
In PostgreSQL over a table with ``time_ns bigint`` (or ``time timestamptz``)::

    SELECT symbol, count(*), sum(trade_id), sum(time_ns % 1000003), sum((time_ns / 1000) % 1000003),
           sum(round(price * 100)::bigint), sum(size)
    FROM trades GROUP BY symbol;
    -- with only a timestamptz column ``time``, the microsecond term is
    -- sum((extract(epoch from time) * 1000000)::bigint % 1000003)
"""

from __future__ import annotations

import random
from math import floor
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from msgpack import Timestamp

MINUTE_NS = 60_000_000_000
TIME_MOD = 1_000_003

# The first simulated symbols read like real tickers; past these, generated 4-letter names.
_TICKERS = (
    "AAPL",
    "MSFT",
    "AMZN",
    "GOOG",
    "META",
    "NVDA",
    "TSLA",
    "AMD",
    "INTC",
    "NFLX",
    "ORCL",
    "IBM",
    "CSCO",
    "ADBE",
    "CRM",
    "QCOM",
    "TXN",
    "AVGO",
    "PYPL",
    "UBER",
)

EXCHANGE = "V"  # IEX's exchange code, what the iex feed reports
TAPE = "C"
CONDITIONS = ("@",)


def symbol_names(n: int) -> list[str]:
    """``n`` distinct, deterministic ticker-like names."""
    names = list(_TICKERS[:n])
    i = 0
    while len(names) < n:
        a, rem = divmod(i, 26**3)
        b, rem = divmod(rem, 26**2)
        c, d = divmod(rem, 26)
        name = "Z" + "".join(chr(65 + x) for x in (a % 26, b, c, d))
        if name not in names:
            names.append(name)
        i += 1
    return names


class TruthChecksum(NamedTuple):
    """The ground-truth checksum of one symbol's trades (see the module docstring for the SQL)."""

    count: int
    sum_trade_id: int
    sum_time_mod: int
    sum_time_us_mod: int
    sum_price_cents: int
    sum_size: int

    def __add__(self, other: object) -> TruthChecksum:  # type: ignore[override]
        if not isinstance(other, TruthChecksum):
            return NotImplemented
        return TruthChecksum(*(a + b for a, b in zip(self, other, strict=True)))


ZERO = TruthChecksum(0, 0, 0, 0, 0, 0)


def _checksum(ids: array, times: array, cents: array, sizes: array) -> TruthChecksum:
    if not ids:
        return ZERO
    t = np.frombuffer(times, dtype=np.int64)
    return TruthChecksum(
        len(ids),
        int(np.frombuffer(ids, dtype=np.int64).sum()),
        int((t % TIME_MOD).sum()),
        int(((t // 1000) % TIME_MOD).sum()),
        int(np.frombuffer(cents, dtype=np.int64).sum()),
        int(np.frombuffer(sizes, dtype=np.int64).sum()),
    )


class SymbolBook:
    """One symbol's state and ground truth. Arrays are append-only, time-sorted, trimmed from the
    front only when the market's ``truth_limit`` is reached (the trimmed part stays in ``dropped``)."""

    __slots__ = (
        "symbol",
        "price_cents",
        "last_ns",
        "quote_credit",
        "ids",
        "times",
        "cents",
        "sizes",
        "q_times",
        "q_bid",
        "q_ask",
        "q_bid_size",
        "q_ask_size",
        "bar_minute",
        "bar_o",
        "bar_h",
        "bar_l",
        "bar_c",
        "bar_v",
        "bar_n",
        "bar_pv",
        "last_bar",
        "dropped",
    )

    def __init__(self, symbol: str, price_cents: int) -> None:
        self.symbol = symbol
        self.price_cents = price_cents
        self.last_ns = 0  # every trade and quote of this symbol gets a strictly later ns than this
        self.quote_credit = 0.0
        self.ids = array("q")
        self.times = array("q")
        self.cents = array("q")
        self.sizes = array("q")
        self.q_times = array("q")
        self.q_bid = array("q")
        self.q_ask = array("q")
        self.q_bid_size = array("q")
        self.q_ask_size = array("q")
        self.bar_minute = -1  # minute (ns // MINUTE_NS) of the bar being built; -1: none
        self.bar_o = self.bar_h = self.bar_l = self.bar_c = 0
        self.bar_v = self.bar_n = self.bar_pv = 0
        self.last_bar: dict | None = None  # the last minute bar sent (for `u` updated-bar faults)
        self.dropped = ZERO

    def checksum(self) -> TruthChecksum:
        return self.dropped + _checksum(self.ids, self.times, self.cents, self.sizes)

    def trim_half(self) -> None:
        """Forget the oldest half of the retained trades (and the quotes before them); keep their checksum."""
        k = len(self.ids) // 2
        if k == 0:
            return
        self.dropped = self.dropped + _checksum(self.ids[:k], self.times[:k], self.cents[:k], self.sizes[:k])
        cutoff = self.times[k]
        for arr in (self.ids, self.times, self.cents, self.sizes):
            del arr[:k]
        qk = bisect_left(self.q_times, cutoff)
        for arr in (self.q_times, self.q_bid, self.q_ask, self.q_bid_size, self.q_ask_size):
            del arr[:qk]


def bar_message(
    kind: str, symbol: str, minute_ns: int, o: int, h: int, low: int, c: int, v: int, n: int, pv: int
) -> dict:
    """A bar message from integer cents; vwap = sum(cents*size)/volume/100, identical for stream and REST."""
    return {
        "T": kind,
        "S": symbol,
        "o": o / 100,
        "h": h / 100,
        "l": low / 100,
        "c": c / 100,
        "v": v,
        "n": n,
        "vw": pv / v / 100,
        "t": Timestamp.from_unix_nano(minute_ns),
    }


class Market:
    """Seeded random walk over ``symbols``; :meth:`generate` makes trades (and quotes, bars) and
    records them. Memory: 32 B per retained trade + 40 B per retained quote, at most
    ``truth_limit`` trades retained (then each symbol forgets its oldest half)."""

    def __init__(
        self,
        symbols: list[str],
        *,
        seed: int = 42,
        quotes_per_trade: float = 0.25,
        truth_limit: int = 5_000_000,
        allow_empty: bool = False,
    ) -> None:
        if not symbols and not allow_empty:  # a replayed market learns its symbols from the recording
            raise ValueError("the market needs at least one symbol")
        self.rng = random.Random(seed)
        self.symbols = list(symbols)
        self.books: dict[str, SymbolBook] = {}  # one per symbol, fixed at construction
        for s in self.symbols:
            self.books[s] = SymbolBook(s, self.rng.randrange(2_000, 50_000))  # $20 .. $500
        self._book_list = [self.books[s] for s in self.symbols]
        self.quotes_per_trade = quotes_per_trade
        self.truth_limit = truth_limit
        self.next_id = 1  # trade ids: unique across the market, increasing per symbol
        self.total = 0  # trades ever generated
        self.retained = 0  # trades currently held in the arrays
        self.quotes_total = 0
        self._flushed_minute = -1

    # ---------------------------------------------------------------- generation
    def generate(self, n: int, now_ns: int, on_trade=None, on_quote=None) -> list[tuple[str, str, dict]]:
        """Make ``n`` trades at wall-clock ``now_ns`` and return the stream messages in order, as
        ``(channel, symbol, message)`` with channel ``trades``/``quotes``/``bars``. ``on_trade(symbol,
        cents, time_ns, size)`` and ``on_quote(symbol, time_ns)`` (the broker's fills) are called per
        trade and per quote when given."""
        rng_random = self.rng.random
        randrange = self.rng.randrange
        expovariate = self.rng.expovariate
        books = self._book_list
        nbooks = len(books)
        out: list[tuple[str, str, dict]] = []
        append = out.append
        qpt = self.quotes_per_trade
        minute_now = now_ns // MINUTE_NS
        if minute_now != self._flushed_minute:
            self._flush_bars(minute_now, append)
        next_id = self.next_id
        for _ in range(n):
            book = books[randrange(nbooks)] if nbooks > 1 else books[0]
            price = book.price_cents
            # Random walk: ±~5 bp per trade, at least one cent; rounded to the nearest cent (floor, not
            # int(): int() truncates toward zero, which lifted every down step and drifted prices up).
            step = (
                floor((rng_random() - 0.5) * price * 0.001 + 0.5)
                if price > 200
                else (1 if rng_random() < 0.5 else -1)
            )
            price = max(1, price + step)
            book.price_cents = price
            size = int(expovariate(0.01)) + 1
            t = book.last_ns + 1
            if t < now_ns:
                t = now_ns
            book.last_ns = t
            minute = t // MINUTE_NS
            if minute != book.bar_minute:
                if book.bar_minute >= 0:
                    self._emit_bar(book, append)
                book.bar_minute = minute
                book.bar_o = book.bar_h = book.bar_l = price
                book.bar_v = book.bar_n = book.bar_pv = 0
            if price > book.bar_h:
                book.bar_h = price
            elif price < book.bar_l:
                book.bar_l = price
            book.bar_c = price
            book.bar_v += size
            book.bar_n += 1
            book.bar_pv += price * size
            tid = next_id
            next_id += 1
            book.ids.append(tid)
            book.times.append(t)
            book.cents.append(price)
            book.sizes.append(size)
            sym = book.symbol
            append(
                (
                    "trades",
                    sym,
                    {
                        "T": "t",
                        "S": sym,
                        "i": tid,
                        "x": EXCHANGE,
                        "p": price / 100,
                        "s": size,
                        "c": ["@"],
                        "z": TAPE,
                        "t": Timestamp.from_unix_nano(t),
                    },
                )
            )
            if on_trade is not None:
                on_trade(sym, price, t, size)
            if qpt:
                book.quote_credit += qpt
                while book.quote_credit >= 1.0:
                    book.quote_credit -= 1.0
                    append(("quotes", sym, self._quote(book, randrange)))
                    if on_quote is not None:
                        on_quote(sym, book.last_ns)
        self.next_id = next_id
        self.total += n
        self.retained += n
        if self.retained > self.truth_limit:
            for book in books:
                book.trim_half()
            self.retained = sum(len(b.ids) for b in books)
        return out

    def ingest(self, messages: list[dict], on_trade=None, on_quote=None) -> list[tuple[str, str, dict]]:
        """Take recorded messages (``t`` as int ns) as the market's own: trades and quotes join the
        ground truth (a time not after the symbol's last one is moved 1 ns past it, so the columns stay
        sorted), symbols never seen get a book. Returns ``(channel, symbol, message)`` like
        :meth:`generate`; unknown types go to every subscriber of the symbol's trades."""
        out: list[tuple[str, str, dict]] = []
        channels = {"t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars", "d": "dailyBars",
                    "c": "trades", "x": "trades", "s": "statuses", "l": "lulds"}
        for m in messages:
            sym = m.get("S")
            t = m.get("t")
            if not isinstance(sym, str) or not isinstance(t, int):
                continue
            kind = m.get("T")
            book = self.books.get(sym)
            if book is None:
                book = self.books[sym] = SymbolBook(sym, int(round(float(m.get("p") or m.get("ap") or 1) * 100)))
                self.symbols.append(sym)
                self._book_list.append(book)
            if kind == "t":
                ts = max(t, book.last_ns + 1)
                book.last_ns = ts
                cents = int(round(float(m["p"]) * 100))
                size = int(m.get("s") or 0)
                book.price_cents = cents
                book.ids.append(int(m.get("i") or self.next_id))
                self.next_id = max(self.next_id, int(m.get("i") or 0)) + 1
                book.times.append(ts)
                book.cents.append(cents)
                book.sizes.append(size)
                self.total += 1
                self.retained += 1
                if on_trade is not None:
                    on_trade(sym, cents, ts, size)
            elif kind == "q":
                ts = max(t, book.last_ns + 1)
                book.last_ns = ts
                book.q_times.append(ts)
                book.q_bid.append(int(round(float(m.get("bp") or 0) * 100)))
                book.q_ask.append(int(round(float(m.get("ap") or 0) * 100)))
                book.q_bid_size.append(int(m.get("bs") or 0))
                book.q_ask_size.append(int(m.get("as") or 0))
                self.quotes_total += 1
                if on_quote is not None:
                    on_quote(sym, ts)
            elif kind == "b":
                book.last_bar = m
            out.append((channels.get(kind, "trades"), sym, m))
        if self.retained > self.truth_limit:
            for book in self._book_list:
                book.trim_half()
            self.retained = sum(len(b.ids) for b in self._book_list)
        return out

    def _quote(self, book: SymbolBook, randrange) -> dict:
        price = book.price_cents
        half_spread = randrange(1, 4)
        bid = max(1, price - half_spread)
        ask = price + half_spread
        bsz = randrange(1, 20) * 100  # shares, in round lots: 100 .. 1,900 on each side
        asz = randrange(1, 20) * 100
        t = book.last_ns + 1
        book.last_ns = t
        book.q_times.append(t)
        book.q_bid.append(bid)
        book.q_ask.append(ask)
        book.q_bid_size.append(bsz)
        book.q_ask_size.append(asz)
        self.quotes_total += 1
        return {
            "T": "q",
            "S": book.symbol,
            "bx": EXCHANGE,
            "bp": bid / 100,
            "bs": bsz,
            "ax": EXCHANGE,
            "ap": ask / 100,
            "as": asz,
            "c": ["R"],
            "z": TAPE,
            "t": Timestamp.from_unix_nano(t),
        }

    def _emit_bar(self, book: SymbolBook, append) -> None:
        msg = bar_message(
            "b",
            book.symbol,
            book.bar_minute * MINUTE_NS,
            book.bar_o,
            book.bar_h,
            book.bar_l,
            book.bar_c,
            book.bar_v,
            book.bar_n,
            book.bar_pv,
        )
        book.last_bar = msg
        book.bar_minute = -1
        append(("bars", book.symbol, msg))

    def _flush_bars(self, minute_now: int, append) -> None:
        """At a minute boundary, send the finished bar of every symbol that traded in an earlier minute."""
        self._flushed_minute = minute_now
        for book in self._book_list:
            if 0 <= book.bar_minute < minute_now:
                self._emit_bar(book, append)

    def flush_bars(self, now_ns: int) -> list[tuple[str, str, dict]]:
        out: list[tuple[str, str, dict]] = []
        minute_now = now_ns // MINUTE_NS
        if minute_now != self._flushed_minute:
            self._flush_bars(minute_now, out.append)
        return out

    def last_price_cents(self, symbol: str) -> int:
        return self.books[symbol].price_cents

    def last_quote(self, symbol: str) -> tuple[int, int, int, int, int] | None:
        """``(bid_cents, bid_size, ask_cents, ask_size, time_ns)`` of the symbol's latest quote, or None."""
        book = self.books.get(symbol)
        if book is None or not book.q_times:
            return None
        return book.q_bid[-1], book.q_bid_size[-1], book.q_ask[-1], book.q_ask_size[-1], book.q_times[-1]

    # ---------------------------------------------------------------- ground truth
    def truth_count(self, symbol: str | None = None) -> int:
        if symbol is None:
            return self.total
        book = self.books[symbol]
        return book.dropped.count + len(book.ids)

    def truth_checksum(self, symbol: str | None = None) -> TruthChecksum | dict[str, TruthChecksum]:
        if symbol is not None:
            return self.books[symbol].checksum()
        out = {}
        for book in self._book_list:
            cs = book.checksum()
            if cs.count:
                out[book.symbol] = cs
        return out

    def truth_trades(self, symbol: str) -> Iterator[tuple[int, int, float, int]]:
        """Retained trades of ``symbol`` as ``(trade_id, time_ns, price, size)``, ascending time."""
        book = self.books[symbol]
        for tid, t, c, s in zip(book.ids, book.times, book.cents, book.sizes, strict=True):
            yield tid, t, c / 100, s

    def trade_range(self, symbol: str, start_ns: int, end_ns: int) -> tuple[int, int]:
        """Index range [lo, hi) of retained trades with start_ns <= time <= end_ns."""
        times = self.books[symbol].times
        return bisect_left(times, start_ns), bisect_right(times, end_ns)

    def quote_range(self, symbol: str, start_ns: int, end_ns: int) -> tuple[int, int]:
        times = self.books[symbol].q_times
        return bisect_left(times, start_ns), bisect_right(times, end_ns)
