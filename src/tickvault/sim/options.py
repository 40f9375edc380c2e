"""The simulated options market: contracts on the first stock symbols, trading on the same seeded walk.

An :class:`OptionsMarket` is a :class:`~tickvault.sim.market.Market` over OCC symbols: for each of the
first ``underlyings`` stock symbols, calls and puts at two strikes ($100, $150) and two monthly expiries
(:func:`expiries`: always ahead of the day the market is made; 8 contracts each).
It speaks Alpaca's options stream (``alpaca/options.py``'s wire notes): trades ``{T,S,t,p,s,x,c}``
(whole contracts, one condition letter, no trade id) and a quote every other trade ``{T,S,t,bx,bp,bs,ax,
ap,as,c}``; no bars on the stream. Items are tagged ``options:trades`` / ``options:quotes`` so only
options connections get them. The truth arrays keep an internal sequence number in ``ids`` (never sent)
and each trade's exchange index in ``venues``. Memory: as :class:`Market`, plus 1 B per trade.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

from msgpack import Timestamp

from tickvault.sim.calendar import _nth_weekday
from tickvault.sim.market import Market, SymbolBook

__all__ = ["OPTION_EXCHANGES", "OptionsMarket", "expiries", "occ_symbol", "select_contracts"]

OPTION_EXCHANGES = ("C", "X", "I", "N")  # CBOE, PHLX, ISE, NYSE Arca: a few OPRA participant codes


def expiries(today: date) -> tuple[str, str]:
    """Two monthly expirations (third Fridays, YYMMDD) always ahead of ``today``: the month after next
    and three months after that, so no contract expires unless the simulated clock is moved past it (the
    broker then settles it at that close: :meth:`tickvault.sim.broker.Broker.contract_expiry_ns`)."""
    out = []
    for ahead in (2, 5):
        y, m = divmod(today.month - 1 + ahead, 12)
        out.append(_nth_weekday(today.year + y, m + 1, 4, 3).strftime("%y%m%d"))
    return out[0], out[1]


def occ_symbol(underlying: str, yymmdd: str, kind: str, strike_thousandths: int) -> str:
    return f"{underlying}{yymmdd}{kind}{strike_thousandths:08d}"


def select_contracts(symbols, query: Mapping[str, str], underlyings: Sequence[str] | None = None) -> list[str]:
    """The OCC ``symbols`` Alpaca's filters keep (the option chain's and ``/v2/options/contracts``'s):
    ``type`` (call/put), ``strike_price_gte|lte``, ``expiration_date`` or ``expiration_date_gte|lte``,
    ``root_symbol``, and the ``underlyings`` asked for (None: any). Sorted. A bad filter raises
    ``ValueError`` naming it."""
    from tickvault.alpaca.options import parse_occ

    kind = query.get("type") or None
    if kind not in (None, "call", "put"):
        raise ValueError("type must be call or put")

    def number(name: str) -> Decimal | None:
        try:
            return Decimal(query[name]) if query.get(name) else None
        except ArithmeticError:
            raise ValueError(f"{name} must be a number") from None

    def day(name: str) -> date | None:
        try:
            return date.fromisoformat(query[name]) if query.get(name) else None
        except ValueError:
            raise ValueError(f"{name} must be a date (YYYY-MM-DD)") from None

    lo, hi = number("strike_price_gte"), number("strike_price_lte")
    on, after, before = day("expiration_date"), day("expiration_date_gte"), day("expiration_date_lte")
    root = (query.get("root_symbol") or "").upper() or None
    wanted = {u.upper() for u in underlyings} if underlyings is not None else None
    out = []
    for s in symbols:
        occ = parse_occ(s)  # the simulator's contracts: root = underlying
        if (wanted is not None and occ.underlying not in wanted) or (root and occ.underlying != root):
            continue
        if kind and occ.option_type != kind[0].upper():
            continue
        if (lo is not None and occ.strike < lo) or (hi is not None and occ.strike > hi):
            continue
        if (on and occ.expiration != on) or (after and occ.expiration < after) or (before and occ.expiration > before):
            continue
        out.append(s)
    return sorted(out)


class _OptionBook(SymbolBook):
    __slots__ = ("venues",)

    def __init__(self, symbol: str, price_cents: int) -> None:
        super().__init__(symbol, price_cents)
        self.venues = array("b")

    def trim_half(self) -> None:
        k = len(self.ids) // 2
        super().trim_half()
        del self.venues[:k]


class OptionsMarket(Market):
    """Contracts on ``underlyings`` (stock symbols); ``generate(n, now_ns)`` makes ``n`` option trades,
    calling ``on_trade(contract, cents, time_ns, contracts)`` and ``on_quote(contract, time_ns)`` (the
    broker's fills) per trade and quote."""

    def __init__(self, underlyings: list[str], *, seed: int = 9, truth_limit: int = 1_000_000,
                 today: date | None = None) -> None:
        contracts = []
        for u in underlyings:
            for expiry in expiries(today or datetime.now(UTC).date()):
                for kind in ("C", "P"):
                    for strike in (100_000, 150_000):  # $100 and $150
                        contracts.append(occ_symbol(u, expiry, kind, strike))
        super().__init__(contracts, seed=seed, quotes_per_trade=0.5, truth_limit=truth_limit)
        for s in self.symbols:
            self.books[s] = _OptionBook(s, self.rng.randrange(50, 3_000))  # $0.50 .. $30 premiums
        self._book_list = [self.books[s] for s in self.symbols]

    def generate(self, n: int, now_ns: int, on_trade=None, on_quote=None) -> list[tuple[str, str, dict]]:
        rng, books = self.rng, self._book_list
        out: list[tuple[str, str, dict]] = []
        for _ in range(n):
            book = books[rng.randrange(len(books))]
            book.price_cents = max(1, book.price_cents + rng.choice((-1, 0, 1)) * max(1, book.price_cents // 200))
            size = rng.randrange(1, 21)
            venue = rng.randrange(len(OPTION_EXCHANGES))
            t = book.last_ns = max(book.last_ns + 1, now_ns)
            book.ids.append(self.next_id)
            self.next_id += 1
            book.times.append(t)
            book.cents.append(book.price_cents)
            book.sizes.append(size)
            book.venues.append(venue)
            out.append(("options:trades", book.symbol, {
                "T": "t", "S": book.symbol, "t": Timestamp.from_unix_nano(t), "p": book.price_cents / 100,
                "s": size, "x": OPTION_EXCHANGES[venue], "c": "I"}))
            if on_trade is not None:
                on_trade(book.symbol, book.price_cents, t, size)
            book.quote_credit += self.quotes_per_trade
            if book.quote_credit >= 1.0:
                book.quote_credit -= 1.0
                price = book.price_cents
                bid, ask = max(1, price - 5), price + 5
                qt = book.last_ns = book.last_ns + 1
                book.q_times.append(qt)
                book.q_bid.append(bid)
                book.q_ask.append(ask)
                bsz, asz = rng.randrange(1, 100), rng.randrange(1, 100)
                book.q_bid_size.append(bsz)
                book.q_ask_size.append(asz)
                self.quotes_total += 1
                out.append(("options:quotes", book.symbol, {
                    "T": "q", "S": book.symbol, "t": Timestamp.from_unix_nano(qt), "bx": "C", "bp": bid / 100,
                    "bs": bsz, "ax": "X", "ap": ask / 100, "as": asz, "c": "A"}))
                if on_quote is not None:
                    on_quote(book.symbol, qt)
        self.total += n
        self.retained += n
        if self.retained > self.truth_limit:
            for book in books:
                book.trim_half()
            self.retained = sum(len(b.ids) for b in books)
        return out

    def truth_trades_full(self, symbol: str) -> Iterator[tuple[int, int, int, str]]:
        """Retained trades: ``(time_ns, price_cents, size, exchange)``, ascending time."""
        b = self.books[symbol]
        for t, c, s, v in zip(b.times, b.cents, b.sizes, b.venues, strict=True):  # type: ignore[attr-defined]
            yield t, c, s, OPTION_EXCHANGES[v]
