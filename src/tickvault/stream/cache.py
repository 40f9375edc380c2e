"""Latest trade and quote per symbol, with a time-to-live.

Bound: one entry per symbol the feed sends (the subscribed universe: ≤ ~12k US equities, a few
crypto pairs), each the decoder's own row tuple. Updated once per symbol per frame (the newest
message wins), never per message object. Rows are taken as the decoder made them, with the names
of their fields (the stocks' ``TRADE_FIELDS``, crypto's ``CRYPTO_TRADE_FIELDS``...): nothing is
rebuilt into another shape. An entry older than ``ttl_s`` (by the worker's monotonic clock) is stale: ``latest_price``
refreshes stale or missing symbols from the REST ``latest`` endpoints, and hits, misses and stale
reads are counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from tickvault.alpaca.crypto import CRYPTO_QUOTE_FIELDS
from tickvault.alpaca.protocol import QUOTE_FIELDS, TRADE_FIELDS
from tickvault.indicators.sessions import is_crypto
from tickvault.stream.metrics import Metrics

LatestFetcher = Callable[[Sequence[str]], Awaitable[dict[str, tuple[int, float]]]]  # symbol → (time_ns, price)
_FETCHED_FIELDS = ("time_ns", "price")  # what a REST latest trade is kept as


class PriceCache:
    def __init__(self, ttl_s: float, metrics: Metrics, fetch_latest: LatestFetcher | None = None) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.metrics = metrics
        self.fetch_latest = fetch_latest
        # symbol → newest row, and symbol → (monotonic ns it was stored, index of the price in the row):
        # two dicts so a frame's update is two C-level dict operations, no Python loop per symbol
        # (~4 % of the worker's CPU before).
        self._trades: dict[str, tuple] = {}
        self._trade_mono: dict[str, tuple[int, int]] = {}
        self._quotes: dict[str, tuple] = {}  # named by quote(): crypto's fields for a pair, the stocks' else

    def __len__(self) -> int:
        return len(self._trades)

    def symbols(self) -> list[str]:
        """Symbols with a cached trade, sorted (with a "*" subscription: the symbols seen so far)."""
        return sorted(self._trades)

    def update_latest_trades(self, latest: dict[str, tuple], mono_ns: int,
                             fields: tuple[str, ...] = TRADE_FIELDS) -> None:
        """Take a frame's newest trade per symbol (``TradeColumns.latest``), rows named by ``fields``
        (which must name a ``price``): one entry per symbol."""
        self._trades.update(latest)
        self._trade_mono.update(dict.fromkeys(latest, (mono_ns, fields.index("price"))))

    def update_latest_quotes(self, latest: dict[str, tuple], mono_ns: int) -> None:
        """Take a frame's newest quote per symbol: one C-level dict update (the hot path's busiest
        message); the rows' field names are the symbol's kind's, found when read (:meth:`quote`)."""
        self._quotes.update(latest)

    def peek(self, symbol: str) -> tuple[float | None, bool]:
        """(price, fresh) without any I/O; counts the read."""
        row = self._trades.get(symbol)
        if row is None:
            self.metrics.add("cache_misses")
            return None, False
        stored, price_at = self._trade_mono[symbol]
        if time.monotonic_ns() - stored > self.ttl_ns:
            self.metrics.add("cache_stale")
            return row[price_at], False
        self.metrics.add("cache_hits")
        return row[price_at], True

    def quote(self, symbol: str) -> dict | None:
        """The newest quote of ``symbol`` by field name (``bid_price``, ``ask_price``...), or None."""
        row = self._quotes.get(symbol)
        return None if row is None else dict(zip(CRYPTO_QUOTE_FIELDS if is_crypto(symbol) else QUOTE_FIELDS, row))

    async def latest_price(self, symbol: str) -> float | None:
        """The freshest price: the cache when fresh, else the REST latest trade (then cached)."""
        price, fresh = self.peek(symbol)
        if fresh or self.fetch_latest is None:
            return price
        fetched = await self.fetch_latest([symbol])
        if symbol in fetched:
            t_ns, p = fetched[symbol]
            self._trades[symbol] = (t_ns, p)
            self._trade_mono[symbol] = (time.monotonic_ns(), _FETCHED_FIELDS.index("price"))
            return p
        return price
