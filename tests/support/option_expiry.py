"""An options expiry at the simulator, for tests of what comes after it (the option events, reconcile).

:func:`plant_expiring_book` gives the account, in the simulator's nearest expiry of one underlying, an
in-the-money long call (exercised at the close), an out-of-the-money long put (expires worthless) and an
in-the-money short call (assigned); :func:`close_expiry` moves the simulated clock to that close, where
the broker settles them (``OPEXC``/``OPASN``/``OPEXP`` and the ``OPTRD`` share deliveries). The positions
are planted, cash untouched, and the short call covered by no shares (the exercised call's delivery, settled
first, gives the 100 its assignment takes): the tests are about what the broker reports afterwards. Writing
through orders, as Alpaca's options level 1 does, is tests/test_sim_sell_to_open.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tickvault.alpaca.options import parse_occ
from tickvault.sim import Simulator


@dataclass(frozen=True)
class ExpiringBook:
    underlying: str
    exercised: str  # long 2 calls at $100, in the money: 200 shares bought at $100
    expired: str  # long 1 put at $100, out of the money: expires worthless
    assigned: str  # short 1 call at $150, in the money: 100 shares sold at $150

    @property
    def contracts(self) -> dict[str, Decimal]:
        """Each contract and the position planted in it."""
        return {self.exercised: Decimal(2), self.expired: Decimal(1), self.assigned: Decimal(-1)}


def plant_expiring_book(sim: Simulator, underlying: str = "AAPL") -> ExpiringBook:
    """Plant the three positions in ``underlying``'s nearest expiry (its price must stand above $150,
    asserted, so both calls are in the money and the put out of it)."""
    spot = Decimal(sim.market.last_price_cents(underlying)) / 100
    assert spot > 150, f"{underlying} at ${spot}: the book needs it above $150"
    nearest = min(parse_occ(s).expiration for s in sim.option_symbols if s.startswith(underlying))
    by_kind = {(o.option_type, o.strike): s for s in sim.option_symbols
               if (o := parse_occ(s)).underlying == underlying and o.expiration == nearest}
    book = ExpiringBook(underlying, by_kind["C", 100], by_kind["P", 100], by_kind["C", 150])
    for contract, qty in book.contracts.items():
        sim.broker.set_position(contract, qty, "2.50")
    return book


def close_expiry(sim: Simulator, book: ExpiringBook) -> int:
    """Move the simulated clock to the book's expiration close, where the broker settles the contracts;
    the close's epoch nanoseconds."""
    expiry_ns = sim.broker.contract_expiry_ns(book.exercised)
    sim.clock.set(expiry_ns)  # type: ignore[attr-defined]  # a SimClock, the simulator's default
    sim.broker.advance()
    return expiry_ns
