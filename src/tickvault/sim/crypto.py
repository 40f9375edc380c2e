"""The simulated crypto market: pairs such as ``BTC/USD`` on the same seeded random walk as stocks,
with fractional sizes, a taker side on every trade, and an order book; its ground truth.

A :class:`CryptoMarket` is a :class:`~tickvault.sim.market.Market` whose messages speak Alpaca's crypto
stream (``alpaca/crypto.py``'s wire notes): trades ``{T,S,i,p,s,tks,t}``, quotes ``{T,S,bp,bs,ap,as,t}``
(one per four trades), an orderbook update ``o`` with each quote (the top level each side), minute
bars with fractional volume. The market never closes. Sizes are kept as integers of
:data:`SIZE_SCALE` (10⁻⁸, a satoshi) in the truth arrays and sent as ``units / 1e8`` floats, whose
shortest decimal form is exactly ``units × 10⁻⁸`` (at most 15 significant digits), so a store that
keeps the printed decimal can equal the truth exactly.

Channels of the items it returns are prefixed ``crypto:`` (``crypto:trades``...) so the server sends
them only to crypto connections. Memory: as :class:`Market` (the ``sides`` array adds 1 B per trade).
"""

from __future__ import annotations

from array import array
from math import floor
from collections.abc import Iterator

from msgpack import Timestamp

from tickvault.sim.market import MINUTE_NS, Market, SymbolBook, TruthChecksum, _checksum

__all__ = ["CRYPTO_PAIRS", "SIZE_SCALE", "CryptoBook", "CryptoMarket"]

SIZE_SCALE = 100_000_000  # sizes in units of 1e-8 (a satoshi for BTC): the venue's finest lot
# Pairs a simulator trades by default, with start prices in cents.
CRYPTO_PAIRS = {"BTC/USD": 9_400_000, "ETH/USD": 310_000, "SOL/USD": 14_000, "LTC/USD": 8_500}


class CryptoBook(SymbolBook):
    """A pair's state and truth: :class:`SymbolBook` plus each trade's taker side (1 buyer, 0 seller)."""

    __slots__ = ("sides",)

    def __init__(self, symbol: str, price_cents: int) -> None:
        super().__init__(symbol, price_cents)
        self.sides = array("b")

    def trim_half(self) -> None:
        k = len(self.ids) // 2
        super().trim_half()
        del self.sides[:k]


class CryptoMarket(Market):
    """Seeded random walk over crypto pairs. ``generate(n, now_ns)`` returns ``(channel, symbol, msg)``
    with channels ``crypto:trades``, ``crypto:quotes``, ``crypto:orderbooks``, ``crypto:bars``;
    ``on_trade(pair, cents, time_ns, size in 10⁻⁸ units)`` and ``on_quote(pair, time_ns)`` (the
    broker's fills) are called per trade and quote, as the stock market calls them."""

    def __init__(self, pairs: list[str], *, seed: int = 7, quotes_per_trade: float = 0.25,
                 truth_limit: int = 1_000_000) -> None:
        super().__init__(pairs, seed=seed, quotes_per_trade=quotes_per_trade, truth_limit=truth_limit)
        for s in self.symbols:
            self.books[s] = CryptoBook(s, CRYPTO_PAIRS.get(s, self.rng.randrange(100, 10_000_000)))
        self._book_list = [self.books[s] for s in self.symbols]

    def generate(self, n: int, now_ns: int, on_trade=None, on_quote=None) -> list[tuple[str, str, dict]]:
        rng = self.rng
        books = self._book_list
        out: list[tuple[str, str, dict]] = []
        append = out.append
        minute_now = now_ns // MINUTE_NS
        if minute_now != self._flushed_minute:
            self._flush_bars(minute_now, append)
        for _ in range(n):
            book = books[rng.randrange(len(books))]
            price = book.price_cents
            price = max(1, price + floor((rng.random() - 0.5) * price * 0.001 + 0.5))  # ±~5 bp a trade, unbiased
            book.price_cents = price
            units = int(rng.expovariate(1 / 20_000_000)) + 1  # mean 0.2 of a coin, at least 1e-8
            buyer = rng.random() < 0.5
            t = max(book.last_ns + 1, now_ns)
            book.last_ns = t
            minute = t // MINUTE_NS
            if minute != book.bar_minute:
                if book.bar_minute >= 0:
                    self._emit_bar(book, append)
                book.bar_minute = minute
                book.bar_o = book.bar_h = book.bar_l = price
                book.bar_v = book.bar_n = book.bar_pv = 0
            book.bar_h = max(book.bar_h, price)
            book.bar_l = min(book.bar_l, price)
            book.bar_c = price
            book.bar_v += units
            book.bar_n += 1
            book.bar_pv += price * units
            tid = self.next_id
            self.next_id += 1
            book.ids.append(tid)
            book.times.append(t)
            book.cents.append(price)
            book.sizes.append(units)
            book.sides.append(1 if buyer else 0)
            append(("crypto:trades", book.symbol, {
                "T": "t", "S": book.symbol, "i": tid, "p": price / 100, "s": units / SIZE_SCALE,
                "tks": "B" if buyer else "S", "t": Timestamp.from_unix_nano(t),
            }))
            if on_trade is not None:
                on_trade(book.symbol, price, t, units)
            if self.quotes_per_trade:
                book.quote_credit += self.quotes_per_trade
                while book.quote_credit >= 1.0:
                    book.quote_credit -= 1.0
                    quote = self._quote(book, rng.randrange)
                    append(("crypto:quotes", book.symbol, quote))
                    if on_quote is not None:
                        on_quote(book.symbol, book.last_ns)
                    append(("crypto:orderbooks", book.symbol, {
                        "T": "o", "S": book.symbol, "t": quote["t"], "b": [{"p": quote["bp"], "s": quote["bs"]}],
                        "a": [{"p": quote["ap"], "s": quote["as"]}],
                    }))
        self.total += n
        self.retained += n
        if self.retained > self.truth_limit:
            for book in books:
                book.trim_half()
            self.retained = sum(len(b.ids) for b in books)
        return out

    def _quote(self, book: SymbolBook, randrange) -> dict:
        price = book.price_cents
        half_spread = randrange(1, 1 + max(1, price // 20_000))  # ~0.5 bp wide at most
        bid, ask = max(1, price - half_spread), price + half_spread
        bsz, asz = randrange(1, 500_000_000), randrange(1, 500_000_000)  # up to 5 coins a side
        t = book.last_ns = book.last_ns + 1
        book.q_times.append(t)
        book.q_bid.append(bid)
        book.q_ask.append(ask)
        book.q_bid_size.append(bsz)
        book.q_ask_size.append(asz)
        self.quotes_total += 1
        return {"T": "q", "S": book.symbol, "bp": bid / 100, "bs": bsz / SIZE_SCALE, "ap": ask / 100,
                "as": asz / SIZE_SCALE, "t": Timestamp.from_unix_nano(t)}

    def _emit_bar(self, book: SymbolBook, append) -> None:
        v = book.bar_v
        msg = {"T": "b", "S": book.symbol, "o": book.bar_o / 100, "h": book.bar_h / 100, "l": book.bar_l / 100,
               "c": book.bar_c / 100, "v": v / SIZE_SCALE, "n": book.bar_n, "vw": book.bar_pv / v / 100,
               "t": Timestamp.from_unix_nano(book.bar_minute * MINUTE_NS)}
        book.last_bar = msg
        book.bar_minute = -1
        append(("crypto:bars", book.symbol, msg))

    def orderbook_snapshot(self, symbol: str, now_ns: int | None = None) -> dict | None:
        """The full book (``r``: reset) a new orderbooks subscriber gets first: its top level each side.
        A pair not quoted yet is quoted now (at ``now_ns``), as a real venue always has a book; None
        only for a pair not quoted yet when no time is given."""
        quote = self.last_quote(symbol)
        if quote is None:
            if now_ns is None:
                return None
            book = self.books[symbol]
            book.last_ns = max(book.last_ns, now_ns - 1)
            self._quote(book, self.rng.randrange)
            quote = self.last_quote(symbol)
        bid, bsz, ask, asz, t = quote
        return {"T": "o", "S": symbol, "t": t, "b": [{"p": bid / 100, "s": bsz / SIZE_SCALE}],
                "a": [{"p": ask / 100, "s": asz / SIZE_SCALE}], "r": True}

    def truth_trades_full(self, symbol: str) -> Iterator[tuple[int, int, int, int, str]]:
        """Retained trades as ``(trade_id, time_ns, price_cents, size_units, taker_side)``, ascending time."""
        b = self.books[symbol]
        for tid, t, c, s, side in zip(b.ids, b.times, b.cents, b.sizes, b.sides, strict=True):  # type: ignore[attr-defined]
            yield tid, t, c, s, "B" if side else "S"

    def checksum_all(self) -> dict[str, TruthChecksum]:
        """Per pair: count, sum(trade_id), sum(time_ns % 1000003), sum((time_ns/1000) % 1000003),
        sum(price in cents), sum(size in 1e-8 units): ``crypto_trades`` gives the same with
        ``sum((size * 100000000)::bigint)``."""
        return {b.symbol: b.dropped + _checksum(b.ids, b.times, b.cents, b.sizes) for b in self._book_list if b.ids}
