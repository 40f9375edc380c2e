"""Which symbols a gap backfill asks Alpaca's REST history for.

With explicit ``TICKVAULT_SYMBOLS`` the answer is that list. With a wildcard subscription (no
symbols, or ``*``) the stream names no symbol in advance — Alpaca's subscription ack says ``*`` too,
so it adds nothing — and a gap's symbols are the union of:

* the symbols with trades stored in the resume window (the last three days; a restart resumes from
  the newest of those trades, so its gap is made of these symbols), read once at start;
* the symbols this process received trades for (the reader adds each frame's, before the frame is
  queued, so a gap's symbols and its start come from the same frames);
* on a first start with ``TICKVAULT_BACKFILL_FROM`` and nothing stored: the broker's tradable assets
  (``GET /v2/assets?status=active&asset_class=us_equity``), fetched when that backfill first runs
  (a failure is retried with the backfill) and kept.

A symbol outside all three (its first trade in three days falls inside a gap) is not backfilled.
The union only grows; a gap costs ⌈symbols / 100⌉ requests for trades and as many for bars, plus
their pages.

Bound: at most ``max_symbols`` symbols (20,000; Alpaca lists ~12k tradable US equities), plus at most
one frame's trades past it, ~60 B each (≈ 1.2 MB); symbols past the bound are not added, and that is
logged as an error once. What this module must never do: allocate per message on the hot path
(:meth:`BackfillUniverse.observe` is one C-level set update per frame).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

log = logging.getLogger("tickvault.universe")

MAX_SYMBOLS = 20_000  # Alpaca lists ~12k tradable US equities: a universe past this is not a stock feed
WILDCARD = "*"


TradableFetcher = Callable[[], Awaitable[Iterable[str]]]


class BackfillUniverse:
    """The symbols of the next gap backfill; see the module docstring for where they come from."""

    __slots__ = ("wildcard", "max_symbols", "_explicit", "_known", "_fetch_tradable", "_tradable_lock", "_full")

    def __init__(self, configured: Sequence[str], *, max_symbols: int = MAX_SYMBOLS) -> None:
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1, not {max_symbols}")
        self.wildcard = not configured or WILDCARD in configured
        self.max_symbols = max_symbols
        # Explicit symbols keep the configured order (requests of 100 follow it).
        self._explicit = list(dict.fromkeys(s for s in configured if s != WILDCARD))
        self._known: set[str] = set(self._explicit)
        self._fetch_tradable: TradableFetcher | None = None
        self._tradable_lock = asyncio.Lock()
        self._full = False

    def __len__(self) -> int:
        return len(self._known)

    def add(self, symbols: Iterable[str], source: str) -> None:
        """Add symbols from ``source`` (named in the log if the bound is hit)."""
        if not self.wildcard:
            return
        known = self._known
        for s in symbols:
            if len(known) >= self.max_symbols and s not in known:
                self._bound_hit(source)
                return
            known.add(s)

    def observe(self, symbols: Iterable[str]) -> None:
        """The reader's per-frame call: remember the symbols of a frame's trades (≤ one frame past the bound)."""
        if self.wildcard and not self._full:
            known = self._known
            known.update(symbols)
            if len(known) >= self.max_symbols:
                self._bound_hit("the stream")

    def fetch_tradable_once(self, fetch: TradableFetcher) -> None:
        """On the next :meth:`resolve`, add what ``fetch`` returns (the broker's tradable assets)."""
        if self.wildcard:
            self._fetch_tradable = fetch

    async def resolve(self) -> list[str]:
        """The symbols to backfill now: the explicit list, or the wildcard union, sorted."""
        if not self.wildcard:
            return list(self._explicit)
        if self._fetch_tradable is not None:
            async with self._tradable_lock:  # two backfills at once fetch the list once
                fetch = self._fetch_tradable
                if fetch is not None:
                    tradable = list(await fetch())  # raises: the backfill retries, the fetcher stays
                    self.add(tradable, "the tradable assets")
                    self._fetch_tradable = None
                    log.info("gap backfills include the broker's %d tradable assets", len(tradable))
        return sorted(self._known)

    def _bound_hit(self, source: str) -> None:
        if not self._full:
            self._full = True
            log.error("the wildcard backfill universe reached its bound of %d symbols (adding from %s): "
                      "gaps of further symbols are not backfilled", self.max_symbols, source)
