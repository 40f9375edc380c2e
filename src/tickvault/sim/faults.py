"""The simulator's fault switches: one method per row of docs/simulator.md's fault table, and chaos.

:class:`FaultSwitches` is a base of :class:`~tickvault.sim.server.Simulator` (``sim.stall(2)``,
``sim.fail_next_auth()``...; ``POST /_sim/faults`` calls :meth:`FaultSwitches.apply_fault`). The switches
only set state that its owner acts on: the market-data stream's (:class:`~tickvault.sim.market_stream.
MarketDataServer`: stalls, malformed frames, failed auths, slipped-in messages), the REST app's
(:class:`~tickvault.sim.rest_app.SimREST`: failures, latency) and the broker's (rejections). Chaos fires
the switches periodically from the housekeeping task. Never blocks; no state grows without a caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tickvault.sim.broker import BrokerError
from tickvault.sim.market import CONDITIONS, EXCHANGE, TAPE

if TYPE_CHECKING:
    from tickvault.sim.broker import Broker
    from tickvault.sim.market import Market
    from tickvault.sim.market_stream import MarketDataServer
    from tickvault.sim.rest_app import SimREST

log = logging.getLogger("tickvault.sim.server")

__all__ = ["FAULTS", "HOUSEKEEPING_S", "FaultSwitches"]

HOUSEKEEPING_S = 0.05  # how often the clock's events (open, close, chaos faults) are checked when idle

# The fault methods POST /_sim/faults may call (``{"fault": name, **kwargs}``), one per row of docs/simulator.md's fault table.
FAULTS = frozenset({
    "drop_connections",
    "stall",
    "send_malformed",
    "send_unknown_type",
    "fail_next_auth",
    "rest_fail",
    "rest_latency",
    "send_updated_bar",
    "send_correction",
    "send_cancel",
    "reject_next_orders",
    "rest_fail_rate",
    "chaos",
})


class FaultSwitches:
    """The fault methods of :class:`~tickvault.sim.server.Simulator` (which provides the attributes below)."""

    market: Market
    market_stream: MarketDataServer
    rest: SimREST
    broker: Broker
    clock: Callable[[], int]
    stats: dict[str, int]
    corrections: list[dict]
    cancels: list[dict]

    def _init_faults(self) -> None:
        self._chaos: dict[str, float] = {}  # periodic faults: drop_every, stall_every, stall_seconds, malformed_every
        self._chaos_due: dict[str, float] = {}  # fault → loop time it next fires

    def drop_connections(self) -> int:
        """Abort every market-data connection (no close frame, like a network failure). Returns how many."""
        n = self.market_stream.drop_all()
        self.stats["drops"] += n
        return n

    def stall(self, seconds: float) -> None:
        """Stop sending market data for ``seconds`` (sockets stay open). With a ``rate``, what the market
        makes meanwhile is not delivered (REST has it); with ``rate=None`` the market waits."""
        self.market_stream.stall_until = asyncio.get_running_loop().time() + seconds

    def send_malformed(self) -> None:
        """Each client's next data frame is preceded by one undecodable frame."""
        self.market_stream.pending_garbage += 1

    def send_unknown_type(self) -> None:
        """The next data frame carries one extra message with unknown ``T`` ("Z") among good ones."""
        self.market_stream.pending_unknown += 1

    def fail_next_auth(self, count: int = 1) -> None:
        """The next ``count`` auth attempts answer 402 even with the right key."""
        self.market_stream.fail_auth += count

    def rest_fail(self, status: int = 500, count: int = 1, retry_after: float | None = None) -> None:
        """The next ``count`` REST requests (not ``/_sim``) answer ``status`` (+ ``Retry-After`` if given)."""
        self.rest.fail = (status, count, retry_after)

    def rest_latency(self, ms: float) -> None:
        """Add ``ms`` milliseconds before every REST answer (0 turns it off)."""
        self.rest.latency_s = max(0.0, ms) / 1000

    def send_updated_bar(self, symbol: str) -> dict | None:
        """Send a ``u`` updated bar for ``symbol``'s last sent minute bar (same values: the sim has no late
        trades). None if no bar was sent yet."""
        bar = self.market.books[symbol].last_bar
        if bar is None:
            return None
        msg = dict(bar, T="u")
        self.market_stream.pending_extra.append(("updatedBars", symbol, msg))
        return msg

    def send_correction(self, symbol: str) -> dict | None:
        """Send a ``c`` correction of ``symbol``'s latest trade (price +1 cent, new id); recorded in
        :attr:`corrections`. The ground-truth trades are not changed. None if it has no trade yet."""
        book = self.market.books[symbol]
        if not book.ids:
            return None
        tid, cents, size = book.ids[-1], book.cents[-1], book.sizes[-1]
        corr_id = self.market.next_id
        self.market.next_id += 1
        t = book.last_ns = max(book.last_ns + 1, self.clock())
        msg = {
            "T": "c",
            "S": symbol,
            "x": EXCHANGE,
            "oi": tid,
            "op": cents / 100,
            "os": size,
            "oc": list(CONDITIONS),
            "ci": corr_id,
            "cp": (cents + 1) / 100,
            "cs": size,
            "cc": list(CONDITIONS),
            "z": TAPE,
            "t": t,
        }
        self.corrections.append(msg)
        self.market_stream.pending_extra.append(("trades", symbol, msg))
        return msg

    def send_cancel(self, symbol: str) -> dict | None:
        """Send an ``x`` cancel of ``symbol``'s latest trade; recorded in :attr:`cancels`, truth unchanged."""
        book = self.market.books[symbol]
        if not book.ids:
            return None
        t = book.last_ns = max(book.last_ns + 1, self.clock())
        msg = {
            "T": "x",
            "S": symbol,
            "i": book.ids[-1],
            "x": EXCHANGE,
            "p": book.cents[-1] / 100,
            "s": book.sizes[-1],
            "a": "C",
            "z": TAPE,
            "t": t,
        }
        self.cancels.append(msg)
        self.market_stream.pending_extra.append(("trades", symbol, msg))
        return msg

    def reject_next_orders(self, count: int = 1) -> None:
        """The next ``count`` submitted orders are rejected after validation: the answer carries status
        ``rejected`` and trade updates a ``rejected`` event (as when Alpaca's risk checks refuse one)."""
        self.broker.reject_next += count

    def rest_fail_rate(self, status: int = 429, rate: float = 0.0) -> None:
        """Answer this share (0..1) of REST requests (not ``/_sim``) with ``status``, drawn from the seeded
        fault generator; 0 turns that status off."""
        if not 0 <= rate <= 1:
            raise ValueError("rate is a share between 0 and 1")
        if rate:
            self.rest.fail_rates[int(status)] = float(rate)
        else:
            self.rest.fail_rates.pop(int(status), None)

    def chaos(self, drop_every: float = 0, stall_every: float = 0, stall_seconds: float = 0,
              malformed_every: float = 0) -> dict:
        """Periodic faults, every N seconds of wall time (0: off): drop every connection, stall the feed
        for ``stall_seconds``, precede a frame with a malformed one. Returns the settings in force."""
        if stall_every and stall_seconds <= 0:
            raise ValueError("stall_every needs stall_seconds > 0")
        settings = {"drop_every": drop_every, "stall_every": stall_every, "malformed_every": malformed_every}
        for name, every in settings.items():
            if every < 0:
                raise ValueError(f"{name} must be >= 0")
        self._chaos = {k: float(v) for k, v in settings.items() if v}
        if stall_seconds:
            self._chaos["stall_seconds"] = float(stall_seconds)
        self._chaos_due = {}
        return dict(self._chaos)

    def _run_chaos(self, now: float) -> None:
        actions = {"drop_every": self.drop_connections, "malformed_every": self.send_malformed,
                   "stall_every": lambda: self.stall(self._chaos["stall_seconds"])}
        for name, action in actions.items():
            every = self._chaos.get(name)
            if not every:
                continue
            due = self._chaos_due.setdefault(name, now + every)
            if now >= due:
                self._chaos_due[name] = now + every
                action()

    async def _housekeeping(self) -> None:
        """The clock's events while nothing else happens: the open, the close, periodic faults."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.broker.advance()
            except BrokerError as exc:  # e.g. a position planted in a symbol the market does not have
                log.warning("simulated clock: %s", exc.message)
            if self._chaos:
                self._run_chaos(loop.time())
            await asyncio.sleep(HOUSEKEEPING_S)

    def apply_fault(self, spec: dict) -> Any:
        """Apply ``{"fault": name, **kwargs}`` (what ``POST /_sim/faults`` receives)."""
        name = spec.get("fault")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; one of {sorted(FAULTS)}")
        kwargs = {k: v for k, v in spec.items() if k != "fault"}
        return getattr(self, name)(**kwargs)
