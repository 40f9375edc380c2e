"""The simulated broker: one paper account, its orders, fills, positions and trade-update events.

The fill model, which a strategy tested here can rely on:

- **Market orders** take the simulated quote: a buy fills at the ask, a sell at the bid, for at most
  the quote's size (what earlier orders took from the same quote is gone); the rest waits for the next
  quotes, each filling what its size allows, at its price. Every piece is a ``partial_fill`` event and
  the last one a ``fill``; ``filled_avg_price`` is the size-weighted mean.
- **Limit orders** that are marketable on arrival fill like market orders at the quote (never worse
  than the limit); otherwise they rest and fill at the limit when a trade prints at or through it
  (up to that trade's size) or a later quote crosses it (at the quote, up to its size).
- **Stop orders** trigger on a trade at or through the stop and become market orders (stop-limit:
  limit orders). ``ioc`` fills what it can at once and cancels the rest; ``fok`` fills all at once or
  is canceled.
- **Trailing stops** (``trail_price`` or ``trail_percent``, ``day``/``gtc``): the high-water mark
  ``hwm`` starts at the last trade and follows every trade in the order's favour (up for a sell,
  down for a buy); the stop price keeps its trail from it (cents, half up) and a trade at or through
  it triggers a market order.
- **Replacing** (``PATCH``): the new order takes every field not given from the old one; ``qty`` is
  the order's total, so a partly filled order stays ``replaced`` with what it filled and the new one
  carries the rest.
- **Order classes**: ``bracket`` (entry + take-profit limit + stop-loss, the exits ``held`` until the
  entry fills completely), ``oto`` (entry + one exit) and ``oco`` (take-profit limit + stop-loss, both
  working). As at Alpaca, a working pair's take-profit shows ``new`` and its stop stays ``held`` (it
  watches the market; a trigger makes it ``new``); canceling either cancels the other. When an exit
  fills in part, the other exit's qty shrinks to what is left of the position; when it fills
  completely, the other is canceled. The two hold the position's shares once. A qty the broker
  changes (that shrink; the held exits of an entry replaced with a new qty) goes out as a
  ``replaced`` event whose order, same id and status, carries the new qty.
- **Hours**: with ``hours="always"`` the exchange never closes; ``day`` orders do not expire. With
  ``hours="calendar"`` (see :mod:`tickvault.sim.calendar`) an order sent while the market is closed is
  ``accepted`` and goes to work (``new``) at the next open; a ``day`` order expires at its session's
  close (``expires_at``), an early one on a half day. ``calendar`` adds one-off closures and early
  closes to NYSE's.
- **Options' end** (Alpaca's options trading pages): a contract expires at the close of the session on
  its expiration date (the session before when that day is a holiday), by the simulated clock, whatever
  ``hours``. Its open orders are canceled; a long position in the money by $0.01 or more against the
  underlying's last simulated price is exercised (``OPEXC``, and ``OPTRD``: 100 shares a contract at the
  strike, cash with them) — or, when the account lacks the buying power (call) or the shares (put),
  liquidated at the contract's bid, as Alpaca liquidates it; a short one in the money is assigned
  (``OPASN`` + ``OPTRD``); the rest expire worthless (``OPEXP``). From 30 minutes before that close no
  order may open a position in it (422), and after it no order at all (422 ``is expired``).
  :meth:`Broker.exercise` exercises a long position early, during market hours, in the money only.
- **Account rules** (Alpaca's answers): a buy that opens or adds costs ``qty × (limit or ask)`` of
  buying power (403 ``insufficient buying power``); a sell beyond the long position's available qty,
  or a buy beyond the short's, is refused (403 ``insufficient qty available for order``; a position
  is never flipped in one order); a short sale needs shorting enabled, a whole qty and buying power
  for ``qty × price`` (shorts are carried at 100 % margin: ``buying_power = cash − 2 × |short market
  value| − open orders' reservations − written puts' strikes``, multiplier 1).
- **Written options** (Alpaca's options level 1): a sell of a contract not held long opens a short only when
  covered — a call by 100 shares of its underlying a contract that no sell order or other written call
  holds, a put by strike × 100 a contract of buying power (403 with Alpaca's bodies otherwise). It fills
  like any sell (at the bid), the premium is cash, and the cover stays reserved while the order is open and
  the position short: until bought back, expired or assigned. Levels: 0 nothing, 1 writes, 2 also buys to
  open (``options_level``, capped by ``max_options_trading_level``); closing is never refused for the level.

What this module must never do: grow without bound in a long run (orders up to ``max_orders``, the
oldest closed ones forgotten first with their client_order_id; activities up to ``max_activities``; working
orders up to ``max_open_orders``, more → 403 as Alpaca limits them; equity marks up to
``max_marks``), or hold money in floats: Decimal throughout, decimal strings on the wire.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import date as datetime_date
from datetime import datetime
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import chain
from typing import Any, NamedTuple

from tickvault.alpaca.options import OccSymbol, parse_occ
from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns
from tickvault.sim.calendar import NEW_YORK, NYSE, Calendar, new_york_date

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.000000001")  # Alpaca's fractional qty precision (9 decimals)
_ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
_TIFS = ("day", "gtc", "ioc", "fok", "opg", "cls")
_CLASSES = ("simple", "bracket", "oco", "oto")
OPEN_STATUSES = ("new", "accepted", "partially_filled", "pending_new", "held")
HOURS = ("always", "calendar")
# (bid_cents, bid_size, ask_cents, ask_size, quote time ns): what the market quotes for a symbol.
Quote = tuple[int, int, int, int, int]
_FALLBACK_SIZE = 100  # shares (contracts, coins) each side of the quote made up before a real quote


class Venue(NamedTuple):
    """A market the broker trades in and what its numbers mean: ``price_cents(symbol)`` (None: not
    listed here) and ``quote(symbol)`` read it; its trade and quote sizes are ``size_scale`` per unit
    of qty (crypto: 10⁸, sizes in satoshis); a price moves ``multiplier`` × price in cash per unit
    (an option contract: 100 shares)."""

    asset_class: str  # us_equity | crypto | us_option: Alpaca's asset class
    exchange: str  # what positions report as their exchange
    price_cents: Callable[[str], int | None]
    quote: Callable[[str], Quote | None]
    size_scale: int = 1
    multiplier: int = 1


def position_symbol(symbol: str) -> str:
    """Alpaca names a crypto position without the slash of its pair: ``BTC/USD`` → ``BTCUSD``."""
    return symbol.replace("/", "")
MARK_EVERY_NS = 60 * 10**9  # one equity mark per simulated minute for the portfolio history
# The non-trade activities the simulator books (``Broker.cash_activity``) and their default description.
CASH_ACTIVITIES = {"CSD": "cash deposit", "CSW": "cash withdrawal", "FEE": "fee", "DIV": "cash dividend"}
OPTIONS_APPROVED_LEVEL = 3  # Alpaca's paper accounts come approved for level 3 (spreads)
POSITION_INTENTS = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")
# The non-trade activities of an option's end (Alpaca's "Non-Trade Activities for Option Events") and their
# descriptions: the contract leaves the account (OPEXC exercised, OPASN assigned, OPEXP expired) and, on
# exercise or assignment, the underlying moves at the strike (OPTRD).
OPTION_ACTIVITIES = {"OPEXC": "Option Exercise", "OPASN": "Option Assignment", "OPEXP": "Option Expiry",
                     "OPTRD": "Option Trade"}
# Alpaca stops accepting orders that open or add to a position in a contract expiring today from 15:30 New
# York time: 30 minutes before a regular close (the simulator keeps the 30 minutes on an early close).
OPENING_CUTOFF_NS = 30 * 60 * 10**9
SHARES_PER_CONTRACT = 100  # the deliverable of a standard US equity option
TRANSFERS = ("CSD", "CSW")  # cash moved by the owner: no part of profit and loss
# Every activity type Alpaca documents (alpaca-py's ActivityType): filters may name any of them.
ACTIVITY_TYPES = frozenset(
    "FILL ACATC ACATS CFEE CIL CSD CSW DIV DIVCGL DIVCGS DIVNRA DIVROC DIVTXEX DIVWH EXTRD FEE FXTRD INT INTPNL "
    "JNLC JNLS MA MEM NC OCT OPASN OPCSH OPEXC OPEXP OPTRD PTC REORG SPIN SPLIT SWP VOF WH".split()
)


class BrokerError(Exception):
    """A refused request; the REST layer answers ``status`` with ``{"code", "message", **extra}`` like Alpaca."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, **self.extra}


def _dec(value: Any, name: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BrokerError(422, 40010001, f"invalid {name}: {value!r}") from None
    if not d.is_finite():
        raise BrokerError(422, 40010001, f"invalid {name}: {value!r}")
    return d


def _s(d: Decimal | None) -> str | None:
    """Decimal → Alpaca-style decimal string (no exponent, trailing zeros trimmed)."""
    if d is None:
        return None
    return format(d.normalize(), "f")


def _iso(ns: int) -> str | None:
    return ns_to_rfc3339(ns) if ns else None


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tickvault-sim/{symbol}"))


class _Order:
    __slots__ = (
        "id", "client_order_id", "created_ns", "updated_ns", "submitted_ns", "filled_ns", "canceled_ns",
        "expired_ns", "failed_ns", "replaced_ns", "expires_ns", "activate_ns", "symbol", "qty", "notional",
        "filled_qty", "filled_value", "type", "side", "time_in_force", "limit_price", "stop_price", "status",
        "extended_hours", "triggered", "order_class", "legs", "parent", "sibling", "replaced_by", "replaces",
        "position_intent", "trail_price", "trail_percent", "hwm", "asset_class",
    )

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def filled_avg_price(self) -> Decimal | None:
        if not self.filled_qty:
            return None
        return (self.filled_value / self.filled_qty).quantize(QTY_STEP, ROUND_HALF_UP)

    def to_json(self, *, legs: bool = True) -> dict:
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": ns_to_rfc3339(self.created_ns),
            "updated_at": ns_to_rfc3339(self.updated_ns),
            "submitted_at": ns_to_rfc3339(self.submitted_ns),
            "filled_at": _iso(self.filled_ns),
            "expired_at": _iso(self.expired_ns),
            "expires_at": _iso(self.expires_ns),
            "canceled_at": _iso(self.canceled_ns),
            "failed_at": _iso(self.failed_ns),
            "replaced_at": _iso(self.replaced_ns),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": self.asset_class,
            "notional": _s(self.notional),
            "qty": _s(self.qty) if self.notional is None or self.filled_qty else None,
            "filled_qty": _s(self.filled_qty),
            "filled_avg_price": _s(self.filled_avg_price),
            "order_class": self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": _s(self.limit_price),
            "stop_price": _s(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": [leg.to_json(legs=False) for leg in self.legs] if legs and self.legs else None,
            "trail_percent": _s(self.trail_percent),
            "trail_price": _s(self.trail_price),
            "hwm": _s(self.hwm),
        }

    def trail_to(self, price: Decimal) -> None:
        """A trailing stop follows the market: the high-water mark (sell; the low-water mark for a buy)
        moves only in the order's favour, and the stop price keeps its trail from it."""
        if self.hwm is not None and (price <= self.hwm if self.side == "sell" else price >= self.hwm):
            return
        self.hwm = price
        up = -1 if self.side == "sell" else 1
        if self.trail_price is not None:
            stop = price + up * self.trail_price
        else:
            stop = price * (1 + up * self.trail_percent / 100)
        self.stop_price = stop.quantize(CENT, ROUND_HALF_UP)


class Broker:
    """One paper account; see the module docstring for the fill model and the account rules.

    ``price_cents(symbol)``: the latest simulated trade price (None: unknown symbol). ``quote(symbol)``:
    the latest simulated quote (None: none yet; a quote of ±1 cent and 100 shares is made up).
    ``clock()``: simulated time in ns. Every event (``new``, ``accepted``, ``partial_fill``, ``fill``,
    ``canceled``, ``expired``, ``replaced``, ``rejected``) goes to each function in ``listeners`` as the
    ``data`` object of a ``trade_updates`` message.
    """

    def __init__(
        self,
        price_cents: Callable[[str], int | None],
        *,
        quote: Callable[[str], Quote | None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        hours: str = "always",
        calendar: Calendar | None = None,
        cash: Decimal | str = "100000",
        max_orders: int = 10_000,
        max_activities: int = 100_000,
        max_open_orders: int = 1_000,
        max_marks: int = 100_000,
        options_level: int = OPTIONS_APPROVED_LEVEL,
    ) -> None:
        if hours not in HOURS:
            raise ValueError(f"hours must be one of {HOURS}")
        if options_level not in range(4):
            raise ValueError("options_level must be 0, 1, 2 or 3 (Alpaca's options trading levels)")
        self.options_approved_level = options_level
        # Stocks by default; add_venue() lists crypto pairs and option contracts with their own markets.
        self.stocks = Venue("us_equity", "NASDAQ", price_cents, quote or (lambda symbol: None))
        self._venues: dict[str, Venue] = {}  # symbol (a pair, an OCC contract) → its venue; ≤ listed symbols
        self._pairs: dict[str, str] = {}  # crypto position symbol (BTCUSD) → pair (BTC/USD)
        self.clock = clock
        self.hours = hours
        self.calendar = calendar or NYSE  # sessions with hours="calendar"; its one-off changes included
        self.account_id = str(uuid.uuid4())
        self.account_number = "PA" + self.account_id.replace("-", "")[:10].upper()
        self.cash = Decimal(cash)
        self.max_orders = max_orders
        self.max_activities = max_activities
        self.max_open_orders = max_open_orders
        self.orders: OrderedDict[str, _Order] = OrderedDict()  # ≤ max_orders, oldest first
        self.by_client_id: dict[str, str] = {}  # client_order_id → id, same entries as orders
        self.working: dict[str, list[_Order]] = {}  # symbol → orders the market can fill; ≤ max_open_orders
        self.pending: list[_Order] = []  # accepted while closed, or day orders: waiting on the clock
        self.positions: dict[str, list[Decimal]] = {}  # symbol → [qty (signed), cost basis]; ≤ symbols
        # Account activities (fills and cash movements), oldest first: (seq, time ns, activity JSON).
        self.activity_log: deque[tuple[int, int, dict]] = deque(maxlen=max_activities)
        self._activity_seq = 0  # sequence of the newest activity
        self._activity_index: dict[str, int] = {}  # activity id → seq, same entries as activity_log
        self._liquidity: dict[str, list[int]] = {}  # symbol → [quote time, bid left, ask left]: ≤ symbols
        self.marks: deque[tuple[int, Decimal]] = deque(maxlen=max_marks)  # (ns, equity), oldest first
        self._next_mark = 0
        self.configuration: dict[str, Any] = {
            "dtbp_check": "entry",
            "trade_confirm_email": "all",
            "suspend_trade": False,
            "no_shorting": False,
            "fractional_trading": True,
            "max_margin_multiplier": "1",
            "pdt_check": "entry",
            "ptp_no_exception_entry": False,
            "max_options_trading_level": options_level,
        }
        self.reject_next = 0  # fault: the next N submitted orders are rejected (a ``rejected`` event)
        self.listeners: list[Callable[[dict], None]] = []
        self.created_ns = clock()
        self.base_equity = self.cash  # equity at the start: the portfolio history's base value
        self._expiry_ns: dict[str, int] = {}  # option contract → its expiry (a close); ≤ listed contracts
        # Contracts expire only at a session's close: the clock looks for expired ones when it passes one.
        self._next_expiry_check = self.calendar.next_close(self.created_ns) or 0

    # ------------------------------------------------------------------ state for tests
    def set_position(
        self, symbol: str, qty: Decimal | str | int, avg_entry_price: Decimal | str | float
    ) -> None:
        """Plant a position (qty signed: negative is short); qty 0 removes it. Cash is not touched."""
        q = Decimal(str(qty))
        key = position_symbol(symbol)
        if q == 0:
            self.positions.pop(key, None)
        else:
            multiplier = self.venue(self._market_symbol(key)).multiplier
            self.positions[key] = [q, q * Decimal(str(avg_entry_price)) * multiplier]

    def add_venue(self, venue: Venue, symbols: list[str]) -> None:
        """Trade ``symbols`` (crypto pairs such as ``BTC/USD``, OCC option contracts) on ``venue``."""
        for symbol in symbols:
            self._venues[symbol] = venue
            if venue.asset_class == "crypto":
                self._pairs[position_symbol(symbol)] = symbol

    def venue(self, symbol: str) -> Venue:
        return self._venues.get(symbol, self.stocks)

    def _market_symbol(self, symbol: str) -> str:
        """The symbol a market quotes: a crypto pair may be named without its slash (BTCUSD)."""
        return self._pairs.get(symbol, symbol)

    def set_cash(self, cash: Decimal | str | int) -> None:
        self.cash = Decimal(str(cash))

    @property
    def open_count(self) -> int:
        """Orders still open (working, accepted or held)."""
        return sum(1 for o in self.orders.values() if o.is_open)

    # ------------------------------------------------------------------ prices
    def _price(self, symbol: str) -> Decimal:
        symbol = self._market_symbol(symbol)
        cents = self.venue(symbol).price_cents(symbol)
        if cents is None:
            raise BrokerError(422, 40010001, f'asset "{symbol}" not found')
        return Decimal(cents) / 100

    def _book(self, symbol: str) -> tuple[Decimal, Decimal, list[int]]:
        """(bid, ask, liquidity [quote time, bid left, ask left]) of the symbol's current quote; the
        liquidity in the venue's size units."""
        venue = self.venue(symbol)
        q = venue.quote(symbol)
        if q is None:
            cents = venue.price_cents(symbol) or 1
            size = _FALLBACK_SIZE * venue.size_scale
            q = (max(1, cents - 1), size, cents + 1, size, 0)
        bid, bid_size, ask, ask_size, t = q
        liq = self._liquidity.get(symbol)
        if liq is None or liq[0] != t:
            liq = self._liquidity[symbol] = [t, bid_size, ask_size]
        return Decimal(bid) / 100, Decimal(ask) / 100, liq

    def is_open(self, now: int | None = None) -> bool:
        return self.hours == "always" or self.calendar.is_open(self.clock() if now is None else now)

    def _trading(self, o: _Order, now: int) -> bool:
        """Whether ``o``'s market trades now: crypto around the clock, the rest by the hours."""
        return o.asset_class == "crypto" or o.extended_hours or self.is_open(now)

    # ------------------------------------------------------------------ account
    def _market_values(self) -> tuple[Decimal, Decimal]:
        long_mv = short_mv = Decimal(0)
        for symbol, (qty, _) in self.positions.items():
            mv = qty * self._price(symbol) * self.venue(self._market_symbol(symbol)).multiplier
            if qty > 0:
                long_mv += mv
            else:
                short_mv += mv
        return long_mv, short_mv

    def equity(self) -> Decimal:
        long_mv, short_mv = self._market_values()
        return self.cash + long_mv + short_mv

    @property
    def options_trading_level(self) -> int:
        """Alpaca's ``options_trading_level``: the lower of the approved level and the account configuration's
        ``max_options_trading_level`` (an account may downgrade itself)."""
        return min(self.options_approved_level, int(self.configuration["max_options_trading_level"] or 0))

    def _reserved(self, skip: _Order | None = None) -> Decimal:
        """Buying power held by open orders that open or add to a position (a written option's is its cover:
        :meth:`_short_options`)."""
        total = Decimal(0)
        for o in self.orders.values():
            if not o.is_open or o is skip or o.status == "held" or o.position_intent.endswith("close"):
                continue
            if o.position_intent == "sell_to_open" and o.asset_class == "us_option":
                continue
            if o.side == "buy":
                price = o.limit_price if o.limit_price is not None else self._book(o.symbol)[1]
            else:
                price = o.limit_price if o.limit_price is not None else self._price(o.symbol)
            total += o.remaining * price * self.venue(o.symbol).multiplier
        return total

    def buying_power(self, skip: _Order | None = None) -> Decimal:
        """Cash, less twice the short stock and crypto (100 % margin), less what open orders reserve, less the
        strike of every cash-secured put written or being written (its premium, once received, is cash)."""
        short_mv = sum((qty * self._price(symbol) for symbol, (qty, _) in self.positions.items()
                        if qty < 0 and self.venue(self._market_symbol(symbol)).asset_class != "us_option"),
                       Decimal(0))
        return max(Decimal(0), self.cash + 2 * short_mv - self._reserved(skip) - self._put_collateral(skip))

    def _short_options(self, skip: _Order | None = None) -> list[tuple[OccSymbol, Decimal]]:
        """Every option written (short positions) or being written (open sell-to-open orders but ``skip``), as
        (contract, contracts): what the account must cover, a call with 100 shares of its underlying a contract,
        a put with its strike's cash (Alpaca's options level 1, covered calls and cash-secured puts)."""
        out = [(parse_occ(symbol), -qty) for symbol, (qty, _) in self.positions.items()
               if qty < 0 and self.venue(symbol).asset_class == "us_option"]
        out += [(parse_occ(o.symbol), o.remaining) for o in self.orders.values()
                if o.is_open and o is not skip and o.position_intent == "sell_to_open"
                and o.asset_class == "us_option"]
        return out

    def _covering_shares(self, underlying: str, skip: _Order | None = None) -> Decimal:
        """Shares of ``underlying`` that cover written calls: they cannot be sold while they cover."""
        return sum((n * SHARES_PER_CONTRACT for occ, n in self._short_options(skip)
                    if occ.option_type == "C" and occ.underlying == underlying), Decimal(0))

    def _put_collateral(self, skip: _Order | None = None) -> Decimal:
        """The cash that secures written puts: strike × 100 a contract, reserved from buying power."""
        return sum((occ.strike * SHARES_PER_CONTRACT * n for occ, n in self._short_options(skip)
                    if occ.option_type == "P"), Decimal(0))

    def account(self) -> dict:
        long_mv, short_mv = self._market_values()
        equity = self.cash + long_mv + short_mv
        bp = self.buying_power().quantize(CENT)
        return {
            "id": self.account_id,
            "account_number": self.account_number,
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": _s(bp),
            "regt_buying_power": _s(bp),
            "daytrading_buying_power": "0",
            "non_marginable_buying_power": _s(bp),
            "options_buying_power": _s(bp),
            "options_approved_level": self.options_approved_level,
            "options_trading_level": self.options_trading_level,
            "cash": _s(self.cash.quantize(CENT)),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "portfolio_value": _s(equity.quantize(CENT)),
            "pattern_day_trader": False,
            "trading_blocked": bool(self.configuration["suspend_trade"]),
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": ns_to_rfc3339(self.created_ns),
            "trade_suspended_by_user": bool(self.configuration["suspend_trade"]),
            "multiplier": "1",
            "shorting_enabled": not self.configuration["no_shorting"],
            "equity": _s(equity.quantize(CENT)),
            "last_equity": _s(self.base_equity.quantize(CENT)),
            "long_market_value": _s(long_mv.quantize(CENT)),
            "short_market_value": _s(short_mv.quantize(CENT)),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "daytrade_count": 0,
        }

    def configure(self, changes: dict) -> dict:
        """``PATCH /v2/account/configurations``: known keys only (422 otherwise)."""
        if not isinstance(changes, dict):
            raise BrokerError(422, 40010001, "request body must be a JSON object")
        for key, value in changes.items():
            if key not in self.configuration:
                raise BrokerError(422, 40010001, f"unknown configuration {key!r}")
            self.configuration[key] = value
        return dict(self.configuration)

    # ------------------------------------------------------------------ positions
    def _held_for_orders(self, symbol: str, side: str, skip: _Order | None = None) -> Decimal:
        """What the position in ``symbol`` holds for open orders on ``side`` — and, on the sell side of a stock,
        the shares that cover written calls. Two exits that cancel each other (OCO, bracket) hold the same
        shares once: the stop of the pair is not counted again."""
        covering = self._covering_shares(symbol, skip) if side == "sell" else Decimal(0)
        return covering + sum(
            (o.remaining for o in self.orders.values()
             if o.is_open and position_symbol(o.symbol) == symbol and o.side == side and o.status != "held"
             and not (o.sibling is not None and o.sibling.is_open and o.sibling.status != "held"
                      and o.stop_price is not None)),
            Decimal(0),
        )

    def _position_json(self, symbol: str) -> dict:
        qty, cost = self.positions[symbol]
        market = self._market_symbol(symbol)
        venue = self.venue(market)
        price = self._price(market)
        mv = qty * price * venue.multiplier
        upl = mv - cost
        plpc = _s((upl / abs(cost)).quantize(Decimal("0.0001"))) if cost else "0"
        closing_side = "sell" if qty > 0 else "buy"
        available = abs(qty) - self._held_for_orders(symbol, closing_side)
        return {
            "asset_id": asset_id(market),
            "symbol": symbol,
            "exchange": venue.exchange,
            "asset_class": venue.asset_class,
            "asset_marginable": venue.asset_class == "us_equity",
            "avg_entry_price": _s((cost / qty / venue.multiplier).quantize(Decimal("0.0001"), ROUND_HALF_UP)),
            "qty": _s(qty),
            "qty_available": _s(available if qty > 0 else -available),
            "side": "long" if qty > 0 else "short",
            "market_value": _s(mv.quantize(CENT)),
            "cost_basis": _s(cost.quantize(CENT)),
            "unrealized_pl": _s(upl.quantize(CENT)),
            "unrealized_plpc": plpc,
            "unrealized_intraday_pl": _s(upl.quantize(CENT)),
            "unrealized_intraday_plpc": plpc,
            "current_price": _s(price),
            "lastday_price": _s(price),
            "change_today": "0",
        }

    def position_list(self) -> list[dict]:
        return [self._position_json(s) for s in sorted(self.positions)]

    def _position_symbol(self, symbol_or_asset_id: str) -> str:
        key = position_symbol(symbol_or_asset_id.upper())
        if key in self.positions:
            return key
        for symbol in self.positions:
            if asset_id(self._market_symbol(symbol)) == symbol_or_asset_id:
                return symbol
        raise BrokerError(404, 40410000, "position does not exist")

    def position(self, symbol_or_asset_id: str) -> dict:
        return self._position_json(self._position_symbol(symbol_or_asset_id))

    def close_position(self, symbol_or_asset_id: str, qty: str | None = None, percentage: str | None = None) -> dict:
        """``DELETE /v2/positions/{symbol}``: a market order for all (or ``qty``, or ``percentage`` %)."""
        symbol = self._position_symbol(symbol_or_asset_id)
        held = self.positions[symbol][0]
        if qty is not None and percentage is not None:
            raise BrokerError(422, 40010001, "only one of qty or percentage may be given")
        amount = abs(held)
        if qty is not None:
            amount = _dec(qty, "qty")
        elif percentage is not None:
            pct = _dec(percentage, "percentage")
            if not 0 < pct <= 100:
                raise BrokerError(422, 40010001, "percentage must be in (0, 100]")
            amount = (abs(held) * pct / 100).quantize(QTY_STEP)
        tif = "gtc" if self.venue(self._market_symbol(symbol)).asset_class == "crypto" else "day"
        body = {"symbol": self._market_symbol(symbol), "qty": str(amount), "side": "sell" if held > 0 else "buy",
                "type": "market", "time_in_force": tif}
        return self.submit(body)

    def close_all_positions(self, cancel_orders: bool = False) -> list[dict]:
        """``DELETE /v2/positions``: one answer per position (Alpaca's 207 multi-status items)."""
        if cancel_orders:
            self.cancel_all()
        out = []
        for symbol in sorted(self.positions):
            try:
                out.append({"symbol": symbol, "status": 200, "body": self.close_position(symbol)})
            except BrokerError as exc:
                out.append({"symbol": symbol, "status": exc.status, "body": {**exc.body(), "symbol": symbol}})
        return out

    # ------------------------------------------------------------------ orders: submit
    def submit(self, body: dict) -> dict:
        """Validate and accept an order (``POST /v2/orders`` body); returns the order JSON."""
        if not isinstance(body, dict):
            raise BrokerError(422, 40010001, "request body must be a JSON object")
        if self.configuration["suspend_trade"]:
            raise BrokerError(403, 40310000, "trading is suspended for this account")
        order_class = body.get("order_class") or "simple"
        if order_class not in _CLASSES:
            raise BrokerError(422, 40010001, f"order_class {order_class!r} is not supported by the simulator")
        parent = self._validated(body, order_class)
        now = self.clock()
        legs = self._legs(parent, body, order_class) if order_class != "simple" else []
        self._check_account(parent)
        if self.open_count + 1 + len(legs) > self.max_open_orders:
            raise BrokerError(403, 40310000, f"open order limit reached ({self.max_open_orders})")
        for o in (parent, *legs):
            o.created_ns = o.updated_ns = o.submitted_ns = now
            self._remember(o)
        if self.reject_next > 0:
            self.reject_next -= 1
            parent.status = "rejected"
            parent.failed_ns = now
            for leg in legs:
                leg.status = "canceled"
                leg.canceled_ns = now
            self._emit("rejected", parent)
            return parent.to_json()
        if order_class == "oco":
            for o in (parent, *legs):
                self._start(o, now)
        else:
            self._start(parent, now)
        return parent.to_json()

    def _new_order(self) -> _Order:
        o = _Order()
        o.id = str(uuid.uuid4())
        o.client_order_id = str(uuid.uuid4())
        o.created_ns = o.updated_ns = o.submitted_ns = 0
        o.filled_ns = o.canceled_ns = o.expired_ns = o.failed_ns = o.replaced_ns = 0
        o.expires_ns = o.activate_ns = 0
        o.notional = None
        o.filled_qty = Decimal(0)
        o.filled_value = Decimal(0)
        o.limit_price = o.stop_price = None
        o.status = "new"
        o.extended_hours = False
        o.triggered = False
        o.order_class = "simple"
        o.legs = []
        o.parent = o.sibling = None
        o.replaced_by = o.replaces = None
        o.position_intent = ""
        o.trail_price = o.trail_percent = o.hwm = None
        o.asset_class = "us_equity"
        return o

    def _validated(self, body: dict, order_class: str) -> _Order:
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise BrokerError(422, 40010001, "symbol is required")
        symbol = self._market_symbol(symbol.upper())
        price = self._price(symbol)
        venue = self.venue(symbol)
        intent = body.get("position_intent")
        if intent is not None and intent not in POSITION_INTENTS:
            raise BrokerError(422, 40010001, f"invalid position_intent: {intent!r} ({', '.join(POSITION_INTENTS)})")
        side = body.get("side") or (intent.split("_")[0] if intent else None)
        if intent and not intent.startswith(f"{side}_"):
            raise BrokerError(422, 40010001, f"position_intent {intent} does not agree with side {side}")
        if side not in ("buy", "sell"):
            raise BrokerError(422, 40010001, f"invalid side: {side!r}")
        otype = body.get("type") or body.get("order_type") or "market"
        if otype not in _ORDER_TYPES:
            raise BrokerError(422, 40010001, f"order type {otype!r} is not supported by the simulator")
        tif = body.get("time_in_force") or "day"
        if tif not in _TIFS:
            raise BrokerError(422, 40010001, f"invalid time_in_force: {tif!r}")
        if order_class != "simple" and tif not in ("day", "gtc"):
            raise BrokerError(422, 40010001, "time_in_force must be day or gtc for advanced orders")
        if venue.asset_class != "us_equity":
            self._validate_class(venue, body, otype, tif, order_class)
        if self.contract_expired(symbol):
            raise BrokerError(422, 42210000, f'contract "{symbol}" is expired')
        qty, notional = body.get("qty"), body.get("notional")
        if (qty is None) == (notional is None):
            raise BrokerError(422, 40010001, "qty or notional is required (exactly one)")
        o = self._new_order()
        if notional is not None:
            o.notional = _dec(notional, "notional")
            if o.notional <= 0:
                raise BrokerError(422, 40010001, "notional must be > 0")
            if otype != "market" or order_class != "simple":
                raise BrokerError(422, 40010001, "notional orders must be simple market orders")
            bid, ask, _ = self._book(symbol)
            # The qty the notional buys (sells) at the quote it will take: filled at once, it costs the notional.
            o.qty = (o.notional / (ask if side == "buy" else bid)).quantize(QTY_STEP, ROUND_DOWN)
        else:
            o.qty = _dec(qty, "qty")
            if o.qty <= 0:
                raise BrokerError(422, 40010001, "qty must be > 0")
        if o.qty != o.qty.to_integral_value() and venue.asset_class == "us_equity":
            if not self.configuration["fractional_trading"]:
                raise BrokerError(422, 40010001, "fractional trading is disabled for this account")
            if tif != "day" or order_class != "simple":
                raise BrokerError(422, 42210000, "fractional orders must be DAY orders")
        if body.get("limit_price") is not None:
            o.limit_price = _dec(body["limit_price"], "limit_price")
        if body.get("stop_price") is not None:
            o.stop_price = _dec(body["stop_price"], "stop_price")
        if otype == "trailing_stop":
            self._validate_trail(o, body, tif, order_class)
        elif body.get("trail_price") is not None or body.get("trail_percent") is not None:
            raise BrokerError(422, 40010001, "trail_price and trail_percent apply to trailing_stop orders only")
        if otype in ("limit", "stop_limit") and o.limit_price is None:
            raise BrokerError(422, 40010001, "limit_price is required for limit orders")
        if otype in ("stop", "stop_limit") and o.stop_price is None:
            raise BrokerError(422, 40010001, "stop_price is required for stop orders")
        for p in (o.limit_price, o.stop_price):
            if p is not None and p <= 0:
                raise BrokerError(422, 40010001, "prices must be > 0")
        extended = bool(body.get("extended_hours", False))
        if extended and (otype != "limit" or tif != "day"):
            raise BrokerError(422, 42210000, "extended hours order must be DAY limit orders")
        cid = body.get("client_order_id") or o.client_order_id
        if not isinstance(cid, str) or len(cid) > 128:
            raise BrokerError(422, 40010001, "client_order_id must be a string of at most 128 characters")
        if cid in self.by_client_id:
            raise BrokerError(422, 40010001, "client_order_id must be unique")
        o.client_order_id = cid
        o.symbol, o.side, o.type, o.time_in_force = symbol, side, otype, tif
        o.asset_class = venue.asset_class
        o.position_intent = intent or ""  # what the order asks; _check_account sets what it does
        o.extended_hours = extended
        o.order_class = order_class
        if otype == "trailing_stop":
            o.trail_to(price)  # the high-water mark starts at the last trade
        return o

    def _validate_class(self, venue: Venue, body: dict, otype: str, tif: str, order_class: str) -> None:
        """Alpaca's rules for crypto (gtc/ioc; market, limit, stop_limit; simple orders) and options
        (day; market or limit; whole contracts, no notional; simple orders); the options level is
        :meth:`_check_option_level`'s."""
        if order_class != "simple":
            raise BrokerError(422, 40010001, f"{venue.asset_class} orders must be simple orders")
        if venue.asset_class == "crypto":
            if tif not in ("gtc", "ioc"):
                raise BrokerError(422, 40010001, f"invalid crypto time_in_force: {tif} (gtc or ioc)")
            if otype not in ("market", "limit", "stop_limit"):
                raise BrokerError(422, 40010001, f"invalid crypto order type: {otype} (market, limit or stop_limit)")
            return
        if tif != "day":
            raise BrokerError(422, 40010001, f"invalid options time_in_force: {tif} (day only)")
        if otype not in ("market", "limit"):
            raise BrokerError(422, 40010001, f"invalid options order type: {otype} (market or limit)")
        if body.get("notional") is not None:
            raise BrokerError(422, 40010001, "options orders take a qty of contracts, not a notional")
        qty = _dec(body.get("qty"), "qty")
        if qty != qty.to_integral_value():
            raise BrokerError(422, 40010001, "qty must be a whole number of contracts for options")
        if body.get("extended_hours"):
            raise BrokerError(422, 40010001, "options orders cannot trade in extended hours")

    @staticmethod
    def _validate_trail(o: _Order, body: dict, tif: str, order_class: str) -> None:
        """Alpaca's rules for a trailing stop: exactly one of trail_price/trail_percent, no limit or stop
        price of its own (the stop follows the high-water mark), day or gtc, a simple order."""
        trail_price, trail_percent = body.get("trail_price"), body.get("trail_percent")
        if (trail_price is None) == (trail_percent is None):
            raise BrokerError(422, 40010001, "trailing_stop orders need exactly one of trail_price or trail_percent")
        if o.limit_price is not None or o.stop_price is not None:
            raise BrokerError(422, 40010001, "trailing_stop orders take no limit_price or stop_price")
        if tif not in ("day", "gtc"):
            raise BrokerError(422, 40010001, "trailing_stop orders must be day or gtc")
        if order_class != "simple" or o.notional is not None:
            raise BrokerError(422, 40010001, "trailing_stop orders must be simple orders with a qty")
        if trail_price is not None:
            o.trail_price = _dec(trail_price, "trail_price")
            if o.trail_price <= 0:
                raise BrokerError(422, 40010001, "trail_price must be > 0")
        else:
            o.trail_percent = _dec(trail_percent, "trail_percent")
            if not 0 < o.trail_percent < 100:
                raise BrokerError(422, 40010001, "trail_percent must be in (0, 100)")

    def _legs(self, parent: _Order, body: dict, order_class: str) -> list[_Order]:
        take, stop = body.get("take_profit"), body.get("stop_loss")
        if order_class == "bracket" and not (take and stop):
            raise BrokerError(422, 40010001, "bracket orders need both take_profit and stop_loss")
        if order_class == "oco":
            if not (take and stop) or parent.type != "limit":
                raise BrokerError(422, 40010001, "oco orders are a limit order with take_profit and stop_loss")
        if order_class == "oto" and bool(take) == bool(stop):
            raise BrokerError(422, 40010001, "oto orders need exactly one of take_profit or stop_loss")
        # A bracket's or OTO's exits close what the entry opens; an OCO's stop leg exits with its parent.
        exit_side = parent.side if order_class == "oco" else "sell" if parent.side == "buy" else "buy"
        base = parent.limit_price if parent.limit_price is not None else self._price(parent.symbol)
        legs = []
        tp_price = sl_price = None
        if take:
            tp_price = _dec(take.get("limit_price"), "take_profit.limit_price")
        if stop:
            sl_price = _dec(stop.get("stop_price"), "stop_loss.stop_price")
        if order_class == "oco":
            # The parent is the take-profit limit; its one leg is the stop loss. Both exit a position.
            parent.limit_price = tp_price if parent.limit_price is None else parent.limit_price
            tp_price = None
            base = None
        up = 1 if parent.side == "buy" else -1
        if tp_price is not None and base is not None and (tp_price - base) * up < CENT:
            side_word = "greater" if up > 0 else "less"
            raise BrokerError(422, 42210000, f"take_profit.limit_price must be {side_word} than base_price + 0.01"
                              if up > 0 else f"take_profit.limit_price must be {side_word} than base_price - 0.01")
        if sl_price is not None and base is not None and (base - sl_price) * up < CENT:
            raise BrokerError(422, 42210000, "stop_loss.stop_price must be less than base_price - 0.01"
                              if up > 0 else "stop_loss.stop_price must be greater than base_price + 0.01")
        if tp_price is not None:
            tp = self._leg(parent, exit_side, "limit")
            tp.limit_price = tp_price
            legs.append(tp)
        if sl_price is not None:
            sl = self._leg(parent, exit_side, "stop")
            sl.stop_price = sl_price
            if stop.get("limit_price") is not None:
                sl.type = "stop_limit"
                sl.limit_price = _dec(stop["limit_price"], "stop_loss.limit_price")
            legs.append(sl)
        parent.legs = legs
        if order_class == "oco":
            parent.sibling, legs[0].sibling = legs[0], parent
        elif len(legs) == 2:
            legs[0].sibling, legs[1].sibling = legs[1], legs[0]
        return legs

    def _leg(self, parent: _Order, side: str, otype: str) -> _Order:
        leg = self._new_order()
        leg.symbol, leg.side, leg.type = parent.symbol, side, otype
        leg.qty = parent.qty
        leg.time_in_force = parent.time_in_force
        leg.order_class = parent.order_class
        leg.parent = parent
        leg.status = "held"
        leg.position_intent = "sell_to_close" if side == "sell" else "buy_to_close"
        return leg

    def _check_account(self, o: _Order) -> None:
        """Alpaca's refusals for qty and buying power (403), and the order's position intent."""
        held = self.positions.get(position_symbol(o.symbol), [Decimal(0)])[0]
        venue = self.venue(o.symbol)
        if o.order_class == "oco":
            # An OCO exits an existing position: its qty must be available on the closing side.
            if (held > 0) != (o.side == "sell") or held == 0:
                raise BrokerError(403, 40310000, f"insufficient qty available for order (requested: {_s(o.qty)}, "
                                  "available: 0)")
        signed = o.qty if o.side == "buy" else -o.qty
        closing = held != 0 and (held > 0) != (signed > 0)
        intent = f"{o.side}_to_{'close' if closing else 'open'}"
        if o.position_intent and o.position_intent != intent:
            raise BrokerError(422, 40010001, f"position_intent {o.position_intent} does not match the position: "
                              f"{'no' if held == 0 else _s(abs(held))} {'long' if held > 0 else 'short'} "
                              f"{o.symbol} held, so this order is {intent}")
        if venue.asset_class == "us_option":
            self._check_option_level(o, closing)
        if closing:
            closing_side = o.side
            available = abs(held) - self._held_for_orders(position_symbol(o.symbol), closing_side)
            if o.qty > available and venue.asset_class == "crypto":
                raise BrokerError(403, 40310000, f"insufficient balance for {o.symbol.split('/')[0]} (requested: "
                                  f"{_s(o.qty)}, available: {_s(max(available, Decimal(0)))})")
            if o.qty > available:
                raise BrokerError(403, 40310000, f"insufficient qty available for order (requested: {_s(o.qty)}, "
                                  f"available: {_s(max(available, Decimal(0)))})",
                                  symbol=o.symbol, available=_s(max(available, Decimal(0))),
                                  existing_qty=_s(abs(held)), held_for_orders=_s(abs(held) - available))
            o.position_intent = f"{o.side}_to_close"
            for leg in o.legs:
                leg.position_intent = f"{leg.side}_to_close" if o.order_class == "oco" else f"{leg.side}_to_open"
            return
        o.position_intent = f"{o.side}_to_open"
        expiry = self.contract_expiry_ns(o.symbol)
        if expiry and self.clock() >= expiry - OPENING_CUTOFF_NS:
            raise BrokerError(422, 42210000, f'contract "{o.symbol}" expires soon, unable to open new positions')
        if o.side == "sell" and venue.asset_class == "crypto":
            raise BrokerError(403, 40310000, f"insufficient balance for {o.symbol.split('/')[0]} (requested: "
                              f"{_s(o.qty)}, available: 0)")
        if o.side == "sell" and venue.asset_class == "us_option":
            self._check_cover(o)
            return
        if o.side == "sell":
            if self.configuration["no_shorting"]:
                raise BrokerError(403, 40310000, "account is not allowed to short")
            if o.qty != o.qty.to_integral_value():
                raise BrokerError(403, 40310000, "fractional orders cannot be sold short")
        if self._opening_cost(o) > self.buying_power():
            raise BrokerError(403, 40310000, "insufficient buying power")

    def _opening_cost(self, o: _Order) -> Decimal:
        """The buying power an order that opens a long (or a short stock position) takes: qty × its limit (else
        the ask to buy, the last price to sell short) × the contract multiplier. Submit and replace both ask it."""
        if o.limit_price is not None:
            price = o.limit_price
        else:
            price = self._book(o.symbol)[1] if o.side == "buy" else self._price(o.symbol)
        return o.qty * price * self.venue(o.symbol).multiplier

    def _check_option_level(self, o: _Order, closing: bool) -> None:
        """Alpaca's options trading levels: 0 none, 1 writes covered calls and cash-secured puts, 2 also buys calls
        and puts (3: spreads, which the simulator does not take). Closing a position is never refused for its
        level."""
        level = self.options_trading_level
        if closing:
            return
        if level < 1:
            raise BrokerError(403, 40310000, "account not authorized to trade options (options trading level 0)")
        if o.side == "buy" and level < 2:
            raise BrokerError(403, 40310000, f"account not eligible to trade this option strategy: buying calls and "
                              f"puts takes options trading level 2 (the account's is {level})")

    def _check_cover(self, o: _Order, skip: _Order | None = None) -> None:
        """A written option must be covered, as at Alpaca's level 1: a call by 100 shares of the underlying a
        contract that no order or other written call holds (they stay held until the call is bought back,
        expires or is assigned), a put by strike × 100 a contract of options buying power (reserved likewise).
        Alpaca's 403 bodies otherwise."""
        occ = parse_occ(o.symbol)
        if occ.option_type == "C":
            required = o.qty * SHARES_PER_CONTRACT
            held = max(Decimal(0), self.positions.get(occ.underlying, [Decimal(0)])[0])
            available = max(Decimal(0), held - self._held_for_orders(occ.underlying, "sell", skip))
            if required > available:
                raise BrokerError(403, 40310000, f"insufficient underlying qty available for covered call (required: "
                                  f"{_s(required)}, available: {_s(available)})", available_qty=_s(available),
                                  required_qty=_s(required), symbol=o.symbol,
                                  underlying_asset_id=asset_id(occ.underlying))
            return
        required = o.qty * SHARES_PER_CONTRACT * occ.strike
        available = self.buying_power(skip)
        if required > available:
            raise BrokerError(403, 40310000, f"insufficient options buying power for cash-secured put (required: "
                              f"{_s(required)}, available: {_s(available.quantize(CENT))})")

    def _remember(self, o: _Order) -> None:
        self.orders[o.id] = o
        self.by_client_id[o.client_order_id] = o.id
        while len(self.orders) > self.max_orders:
            victim = next((oid for oid, old in self.orders.items() if not old.is_open), None)
            if victim is None:
                break
            old = self.orders.pop(victim)
            self.by_client_id.pop(old.client_order_id, None)

    def _start(self, o: _Order, now: int) -> None:
        """A new (or activated) order: expiry, then to work now or at the next open."""
        if o.time_in_force == "day" and self.hours == "calendar" and not o.expires_ns:
            o.expires_ns = self.calendar.next_close(now) or 0
        if not self._trading(o, now):
            o.status = "accepted"
            o.activate_ns = self.calendar.next_open(now) or 0
            self.pending.append(o)
            self._emit("accepted", o)
            return
        o.updated_ns = now
        if o.expires_ns:
            self.pending.append(o)
        if o.parent is not None and o.sibling is not None and o.stop_price is not None:
            # The stop of a take-profit/stop-loss pair stays ``held`` while it watches the market, as at
            # Alpaca; it shows ``new`` when a trade triggers it.
            o.status = "held"
            self.working.setdefault(o.symbol, []).append(o)
            return
        o.status = "new"
        self._emit("new", o)
        self._work(o, now)

    def _armed(self, o: _Order) -> bool:
        """A held stop exit at work (its entry filled), not one waiting for its entry."""
        return o.status == "held" and o in self.working.get(o.symbol, ())

    def _work(self, o: _Order, now: int) -> None:
        """Fill what the current quote allows; the rest rests (or is canceled for ioc/fok)."""
        if o.time_in_force == "fok" and self._quote_fill_qty(o) < o.remaining:
            self._cancel(o, now)
            return
        if o.type in ("market", "limit") or o.triggered:
            self._fill_from_quote(o, now)
        if not o.is_open:
            return
        if o.time_in_force in ("ioc", "fok"):
            self._cancel(o, now)
            return
        self.working.setdefault(o.symbol, []).append(o)

    def _marketable_price(self, o: _Order) -> Decimal | None:
        """The quote price this order would take now, or None when the quote does not reach it."""
        if o.stop_price is not None and not o.triggered:
            return None
        bid, ask, _ = self._book(o.symbol)
        price = ask if o.side == "buy" else bid
        if o.limit_price is not None and (price > o.limit_price if o.side == "buy" else price < o.limit_price):
            return None
        return price

    def _quote_fill_qty(self, o: _Order) -> Decimal:
        if self._marketable_price(o) is None:
            return Decimal(0)
        liq = self._book(o.symbol)[2]
        return min(o.remaining, Decimal(liq[2] if o.side == "buy" else liq[1]) / self.venue(o.symbol).size_scale)

    def _fill_from_quote(self, o: _Order, now: int) -> None:
        price = self._marketable_price(o)
        if price is None:
            return
        liq = self._book(o.symbol)[2]
        scale = self.venue(o.symbol).size_scale
        side_index = 2 if o.side == "buy" else 1
        size = min(o.remaining, Decimal(liq[side_index]) / scale)
        if size <= 0:
            return
        taken = (size * scale).to_integral_value(ROUND_CEILING)  # a fractional share takes a whole one
        liq[side_index] = max(0, liq[side_index] - int(taken))
        self._fill(o, price, now, size)

    # ------------------------------------------------------------------ the market drives these
    def on_quote(self, symbol: str, t_ns: int) -> None:
        """A new quote: working market orders (and marketable limits) take what it offers."""
        orders = self.working.get(symbol)
        if not orders:
            return
        self._clock_first(orders, t_ns)
        for o in list(orders):
            if o.is_open:
                self._fill_from_quote(o, t_ns)
        self._prune(symbol)

    def on_trade(self, symbol: str, cents: int, t_ns: int, size: int = 10**9) -> None:
        """A generated trade: stops trigger; resting limits it reaches fill at their limit (up to its
        size, in the venue's units)."""
        orders = self.working.get(symbol)
        if not orders:
            return
        self._clock_first(orders, t_ns)
        price = Decimal(cents) / 100
        left = Decimal(size) / self.venue(symbol).size_scale
        for o in list(orders):
            if not o.is_open:
                continue
            if o.stop_price is not None and not o.triggered:
                if o.type == "trailing_stop":
                    o.trail_to(price)
                hit = price >= o.stop_price if o.side == "buy" else price <= o.stop_price
                if not hit:
                    continue
                o.triggered = True
                if o.status == "held":  # an armed stop exit goes to work
                    o.status = "new"
                    o.updated_ns = t_ns
                    self._emit("new", o)
                if o.type in ("stop", "trailing_stop"):
                    self._fill_from_quote(o, t_ns)
                    continue
            if o.limit_price is not None and left > 0:
                crossed = price <= o.limit_price if o.side == "buy" else price >= o.limit_price
                if crossed:
                    take = min(o.remaining, left)
                    left -= take
                    self._fill(o, o.limit_price, t_ns, take)
        self._prune(symbol)

    def _clock_first(self, orders: list[_Order], t_ns: int) -> None:
        """What the clock does up to ``t_ns`` (a working order's expiry at the close, a contract's
        expiry) happens before a message of ``t_ns`` fills anything: the clock otherwise acts only on a
        request or the market loop's next housekeeping turn, and an order must not fill after it
        expired. Checked only for the few orders working on the message's symbol."""
        if (self._next_expiry_check and t_ns >= self._next_expiry_check) or any(
                o.expires_ns and o.expires_ns <= t_ns for o in orders):
            self.advance(t_ns)

    def _prune(self, symbol: str) -> None:
        orders = self.working.get(symbol)
        if orders is None:
            return
        keep = [o for o in orders if o.is_open]
        if keep:
            self.working[symbol] = keep
        else:
            del self.working[symbol]

    def advance(self, now: int | None = None) -> None:
        """Let the clock act: accepted orders go to work at the open, day orders expire at the close,
        option contracts at their expiration day's close, the equity is marked once a simulated minute. Called by the market loop and on every request."""
        now = self.clock() if now is None else now
        if self.pending:
            due = [o for o in self.pending if (o.status == "accepted" and o.activate_ns and o.activate_ns <= now)
                   or (o.expires_ns and o.expires_ns <= now) or not o.is_open]
            if due:
                self.pending = [o for o in self.pending if o not in due]
                for o in due:
                    if not o.is_open:
                        continue
                    if o.expires_ns and o.expires_ns <= now:
                        self._expire(o, o.expires_ns)
                    else:
                        o.activate_ns = 0
                        self._start(o, now)
        if self._next_expiry_check and now >= self._next_expiry_check:
            self._expire_contracts(now)
            self._next_expiry_check = self.calendar.next_close(now) or 0
        if now >= self._next_mark:
            self._next_mark = now - now % MARK_EVERY_NS + MARK_EVERY_NS
            self.marks.append((now, self.equity()))

    # ------------------------------------------------------------------ fills and state changes
    def _fill(self, o: _Order, price: Decimal, t_ns: int, qty: Decimal) -> None:
        signed = qty if o.side == "buy" else -qty
        value = price * self.venue(o.symbol).multiplier  # cash per unit of qty
        self.cash -= signed * value
        key = position_symbol(o.symbol)
        self._book_position(key, signed, value)
        o.filled_qty += qty
        o.filled_value += qty * price
        done = o.filled_qty >= o.qty
        o.status = "filled" if done else "partially_filled"
        o.updated_ns = t_ns
        if done:
            o.filled_ns = t_ns
        self._record_fill(o, price, qty, t_ns)
        pos = self.positions.get(key)
        self._emit("fill" if done else "partial_fill", o, price=price, qty=qty, t_ns=t_ns,
                   position_qty=pos[0] if pos else Decimal(0))
        self.marks.append((t_ns, self.equity()))
        sibling = o.sibling
        if sibling is not None and sibling.is_open:
            if done:
                self._cancel(sibling, t_ns, cascade=False)  # one-cancels-other: the sibling goes with the last fill
            elif sibling.remaining > o.remaining:
                # A partly filled exit: the other exit now covers only what is left of the position.
                self._resize(sibling, sibling.filled_qty + o.remaining, t_ns)
        if done and o.parent is None and o.order_class in ("bracket", "oto"):
            for leg in o.legs:  # the exits go to work once the entry is completely filled
                if leg.status == "held":
                    if leg.time_in_force == "day" and o.expires_ns:
                        leg.expires_ns = o.expires_ns
                    self._start(leg, t_ns)

    def _book_position(self, key: str, signed: Decimal, value: Decimal) -> None:
        """``signed`` units of qty into (buy) or out of (sell) the position ``key`` at ``value`` cash a unit:
        adding raises the cost basis by what it cost, reducing keeps the average entry."""
        pos = self.positions.get(key)
        if pos is None:
            self.positions[key] = [signed, signed * value]
            return
        old_qty, cost = pos
        new_qty = old_qty + signed
        if new_qty == 0:
            del self.positions[key]
        elif (old_qty > 0) == (signed > 0):
            pos[0], pos[1] = new_qty, cost + signed * value  # adding to the position
        elif (old_qty > 0) == (new_qty > 0):
            pos[0], pos[1] = new_qty, cost * new_qty / old_qty  # reducing: avg entry unchanged
        else:
            pos[0], pos[1] = new_qty, new_qty * value  # flipped through zero (an assignment, planted positions)

    def _record_activity(self, t_ns: int, activity: dict) -> dict:
        """Give the activity Alpaca's id (``YYYYMMDDhhmmssmmm::uuid``, the stamp in New York time as
        Alpaca's are) and keep it (the oldest go first)."""
        self._activity_seq += 1
        stamp = datetime.fromtimestamp(t_ns // 10**9, NEW_YORK).strftime("%Y%m%d%H%M%S")
        activity = {"id": f"{stamp}{(t_ns // 10**6) % 1000:03d}::{uuid.uuid4()}", "account_id": self.account_id,
                    **activity}
        if len(self.activity_log) == self.activity_log.maxlen:
            self._activity_index.pop(self.activity_log[0][2]["id"], None)
        self.activity_log.append((self._activity_seq, t_ns, activity))
        self._activity_index[activity["id"]] = self._activity_seq
        return activity

    def _record_fill(self, o: _Order, price: Decimal, qty: Decimal, t_ns: int) -> None:
        done = o.filled_qty >= o.qty
        self._record_activity(t_ns, {
            "activity_type": "FILL",
            "transaction_time": ns_to_rfc3339(t_ns),
            "type": "fill" if done else "partial_fill",
            "price": _s(price),
            "qty": _s(qty),
            "side": o.side if o.position_intent != "sell_to_open" else "sell_short",
            "symbol": o.symbol,
            "leaves_qty": _s(o.qty - o.filled_qty),
            "order_id": o.id,
            "cum_qty": _s(o.filled_qty),
            "order_status": o.status,
        })

    def cash_activity(self, activity_type: str, amount: Decimal | str | int, *, symbol: str | None = None,
                      description: str | None = None) -> dict:
        """A non-trade activity that moves cash, as Alpaca books it: ``CSD`` (deposit) and ``CSW``
        (withdrawal) of ``amount``, ``FEE`` (``amount`` charged), ``DIV`` (``amount`` a share, paid on
        the long position in ``symbol``). ``net_amount`` carries the sign; the equity marks and the
        portfolio history's ``cashflow`` follow."""
        if activity_type not in CASH_ACTIVITIES:
            raise BrokerError(422, 40010001, f"activity_type must be one of {', '.join(CASH_ACTIVITIES)}")
        value = _dec(amount, "amount")
        if value <= 0:
            raise BrokerError(422, 40010001, "amount must be > 0")
        now = self.clock()
        extra: dict[str, Any] = {}
        if activity_type == "DIV":
            held = self.positions.get((symbol or "").upper(), [Decimal(0)])[0]
            if held <= 0:
                raise BrokerError(422, 40010001, f"no long position in {symbol!r} to pay a dividend on")
            extra = {"symbol": symbol.upper(), "qty": _s(held), "per_share_amount": _s(value)}  # type: ignore[union-attr]
            net = (held * value).quantize(CENT, ROUND_HALF_UP)
        else:
            net = value.quantize(CENT, ROUND_HALF_UP) * (1 if activity_type == "CSD" else -1)
        if activity_type == "CSW" and -net > self.cash:
            raise BrokerError(403, 40310000, "insufficient cash for the withdrawal")
        self.cash += net
        activity = self._record_activity(now, {
            "activity_type": activity_type,
            "date": new_york_date(now).isoformat(),
            "net_amount": _s(net),
            "description": description if description is not None else CASH_ACTIVITIES[activity_type],
            "status": "executed",
            **extra,
        })
        self.marks.append((now, self.equity()))
        return activity

    def _cancel(self, o: _Order, now: int, *, cascade: bool = True) -> None:
        o.status = "canceled"
        o.canceled_ns = o.updated_ns = now
        self._emit("canceled", o)
        if cascade:
            self._close_children(o, now)

    def _resize(self, o: _Order, qty: Decimal, now: int) -> None:
        """The broker changes a working order's qty (an exit whose sibling filled in part, the held exits of
        a replaced entry): Alpaca reports such an update as ``replaced`` (its order status documents
        "replaced by another order, or updated due to a market event"); the order keeps its id and status,
        and the event's order carries the new ``qty`` and ``replaced_at``."""
        o.qty = qty
        o.updated_ns = o.replaced_ns = now
        self._emit("replaced", o)

    def _expire(self, o: _Order, now: int) -> None:
        o.status = "expired"
        o.expired_ns = o.updated_ns = now
        self._emit("expired", o)
        self._close_children(o, now)

    def _close_children(self, o: _Order, now: int) -> None:
        """A parent that ends unfilled takes its held exits with it; an exit of a take-profit/stop-loss
        pair (bracket, OCO) its sibling, as canceling one leg cancels the other at Alpaca."""
        for leg in o.legs:
            if leg.status == "held":
                self._cancel(leg, now, cascade=False)
        if o.sibling is not None and o.sibling.is_open:
            self._cancel(o.sibling, now, cascade=False)

    def _emit(self, event: str, o: _Order, *, price=None, qty=None, t_ns=None, position_qty=None) -> None:
        if not self.listeners:
            return
        data: dict[str, Any] = {
            "event": event,
            "order": o.to_json(),
            "timestamp": ns_to_rfc3339(t_ns or o.updated_ns),
        }
        if event in ("fill", "partial_fill"):
            data.update(
                price=_s(price), qty=_s(qty), position_qty=_s(position_qty), execution_id=str(uuid.uuid4())
            )
        for listener in list(self.listeners):
            listener(data)

    # ------------------------------------------------------------------ options: expiry, exercise, assignment
    def contract_expiry_ns(self, symbol: str) -> int | None:
        """When an option contract the broker trades expires: the close of the session on its expiration
        date (the last session before it when the exchange is closed that day); None for anything else."""
        if self.venue(symbol).asset_class != "us_option":
            return None
        ns = self._expiry_ns.get(symbol)
        if ns is None:
            day = parse_occ(symbol).expiration
            session = None
            for _ in range(10):  # a holiday Friday moves the expiry to the day before (never 10 days back)
                session = self.calendar.session_on(day)
                if session is not None:
                    break
                day -= timedelta(days=1)
            ns = self._expiry_ns[symbol] = session.close_ns if session is not None else 0
        return ns

    def contract_expired(self, symbol: str, now: int | None = None) -> bool:
        expiry = self.contract_expiry_ns(symbol)
        return bool(expiry) and expiry <= (self.clock() if now is None else now)  # type: ignore[operator]

    def _moneyness(self, occ: OccSymbol) -> Decimal:
        """How far in the money a contract is against its underlying's last simulated price (< 0: out)."""
        spot = Decimal(self.stocks.price_cents(occ.underlying) or 0) / 100
        return spot - occ.strike if occ.option_type == "C" else occ.strike - spot

    def _expire_contracts(self, now: int) -> None:
        """Every contract expired by ``now``: its open orders canceled, then its position settled as Alpaca
        settles it after the close (:meth:`_settle_contract`), each at the contract's own expiry time."""
        symbols = {s for s in chain(self.positions, self.working, (o.symbol for o in self.pending))
                   if self.contract_expired(s, now)}
        for symbol in sorted(symbols):
            at = self._expiry_ns[symbol]
            for o in [o for o in chain(self.working.get(symbol, ()), self.pending) if o.symbol == symbol]:
                if o.is_open:
                    self._cancel(o, at)
            self._prune(symbol)
            self.pending = [o for o in self.pending if o.is_open]
            if symbol in self.positions:
                self._settle_contract(symbol, at)

    def _settle_contract(self, symbol: str, at: int) -> None:
        """An expired contract leaves the account: in the money by $0.01 or more, a long one is exercised
        (sold at its bid instead when the account cannot take the delivery, as Alpaca liquidates it) and a
        short one assigned; otherwise it expires worthless (``OPEXP``)."""
        qty = self.positions[symbol][0]
        occ = parse_occ(symbol)
        if self._moneyness(occ) < CENT:
            self._book_position(symbol, -qty, Decimal(0))
            self._record_option_activity("OPEXP", symbol, -qty, at)
        elif qty < 0:
            self._deliver(symbol, occ, qty, "OPASN", at)
        elif self._exercise_refusal(occ, qty) is not None:
            self._liquidate(symbol, qty, at)
        else:
            self._deliver(symbol, occ, qty, "OPEXC", at)
        self.marks.append((at, self.equity()))

    def _delivery(self, occ: OccSymbol, contracts: Decimal) -> Decimal:
        """Shares of the underlying ``contracts`` (signed: long > 0) deliver into the account: a long call
        or a short put buys them, a long put or a short call sells them."""
        shares = abs(contracts) * SHARES_PER_CONTRACT
        return shares if (occ.option_type == "C") == (contracts > 0) else -shares

    def _exercise_refusal(self, occ: OccSymbol, contracts: Decimal) -> BrokerError | None:
        """Why the account cannot exercise ``contracts`` long contracts (Alpaca's 403), or None: a call
        needs the strike's cash in buying power, a put the shares it sells."""
        shares = self._delivery(occ, contracts)
        if shares > 0:
            required = shares * occ.strike
            available = self.buying_power()
            if required > available:
                return BrokerError(403, 40310000, f"insufficient cash available (required: {_s(required)}, "
                                   f"available: {_s(available.quantize(CENT))})")
            return None
        held = max(Decimal(0), self.positions.get(occ.underlying, [Decimal(0)])[0])
        available = max(Decimal(0), held - self._held_for_orders(occ.underlying, "sell"))
        if -shares > available:
            return BrokerError(403, 40310000, f"insufficient underlying qty available for deliverable: "
                               f"{occ.underlying} (requested: {_s(-shares)}, available: {_s(available)})")
        return None

    def _deliver(self, symbol: str, occ: OccSymbol, contracts: Decimal, kind: str, at: int) -> None:
        """``contracts`` (signed) of ``symbol`` leave the account by exercise (``OPEXC``) or assignment
        (``OPASN``), and their shares of the underlying move at the strike (``OPTRD``), cash with them."""
        shares = self._delivery(occ, contracts)
        net = -shares * occ.strike
        self._book_position(symbol, -contracts, Decimal(0))
        self.cash += net
        self._book_position(occ.underlying, shares, occ.strike)
        self._record_option_activity(kind, symbol, -contracts, at)
        self._record_option_activity("OPTRD", occ.underlying, shares, at, net_amount=net, price=occ.strike)

    def _record_option_activity(self, kind: str, symbol: str, qty: Decimal, at: int, *,
                                net_amount: Decimal = Decimal(0), price: Decimal | None = None) -> None:
        """Alpaca's option event activity: ``qty`` is the change to the position in ``symbol`` (contracts,
        or shares for ``OPTRD``), ``net_amount`` the cash it moved."""
        activity = {"activity_type": kind, "date": new_york_date(at).isoformat(), "net_amount": _s(net_amount),
                    "description": OPTION_ACTIVITIES[kind], "symbol": symbol, "qty": _s(qty)}
        if price is not None:
            activity["price"] = _s(price)
        self._record_activity(at, {**activity, "status": "executed"})

    def _liquidate(self, symbol: str, contracts: Decimal, at: int) -> None:
        """Alpaca's liquidation of an in-the-money long the account cannot exercise: a market sell of the
        whole position, filled at the contract's bid (all of it, whatever the bid's size)."""
        o = self._new_order()
        o.symbol, o.side, o.type, o.time_in_force, o.qty = symbol, "sell", "market", "day", contracts
        o.asset_class, o.position_intent = "us_option", "sell_to_close"
        o.created_ns = o.updated_ns = o.submitted_ns = at
        self._remember(o)
        self._emit("new", o)
        self._fill(o, self._book(symbol)[0], at, contracts)

    def exercise(self, symbol_or_contract_id: str) -> None:
        """``POST /v2/positions/{symbol_or_contract_id}/exercise``: every available contract of a long
        position exercised now, in the money only and while the market is open, as Alpaca takes it
        (its 403s and 404 otherwise)."""
        wanted = symbol_or_contract_id
        symbol = next((s for s, (qty, _) in self.positions.items()
                       if qty > 0 and self.venue(s).asset_class == "us_option"
                       and (s == wanted.upper() or asset_id(s) == wanted)), None)
        if symbol is None:
            raise BrokerError(404, 40410000, f"long position not found: {symbol_or_contract_id}")
        now = self.clock()
        if not self.is_open(now):
            raise BrokerError(403, 40310000,
                              "exercise requests are not accepted after market close until midnight")
        occ = parse_occ(symbol)
        available = self.positions[symbol][0] - self._held_for_orders(symbol, "sell")
        if available <= 0:
            raise BrokerError(403, 40310000, "no qty available to exercise")
        if self._moneyness(occ) < CENT:
            raise BrokerError(403, 40310000, "you are attempting to exercise an out of the money option contract, "
                              "please contact support@alpaca.markets to complete this request")
        refusal = self._exercise_refusal(occ, available)
        if refusal is not None:
            raise refusal
        self._deliver(symbol, occ, available, "OPEXC", now)
        self.marks.append((now, self.equity()))

    # ------------------------------------------------------------------ orders: read, change, cancel
    def _order(self, order_id: str) -> _Order:
        o = self.orders.get(order_id)
        if o is None:
            raise BrokerError(404, 40410000, "order not found")
        return o

    def get(self, order_id: str, nested: bool = True) -> dict:
        return self._order(order_id).to_json(legs=nested)

    def get_by_client_id(self, client_order_id: str) -> dict:
        oid = self.by_client_id.get(client_order_id)
        if oid is None:
            raise BrokerError(404, 40410000, "order not found")
        return self.orders[oid].to_json()

    def cancel(self, order_id: str) -> None:
        o = self._order(order_id)
        if not o.is_open:
            raise BrokerError(422, 42210000, f"order is not cancelable (status {o.status})")
        if o.status == "held" and not self._armed(o):
            raise BrokerError(422, 42210000, "a held leg is canceled with its parent order")
        self._cancel(o, self.clock())
        self._prune(o.symbol)

    def cancel_all(self) -> list[dict]:
        """``DELETE /v2/orders``: Alpaca's 207 multi-status items, one per open order."""
        out = []
        for o in list(self.orders.values()):
            if o.is_open and not (o.status == "held" and o.parent is not None):
                self.cancel(o.id)  # an exit's held stop goes with its take-profit
                out.append({"id": o.id, "status": 200, "body": o.to_json()})
        return out

    def replace(self, order_id: str, body: dict) -> dict:
        """``PATCH /v2/orders/{id}``: a new order takes the old one's place (``replaces``/``replaced_by``);
        events ``replaced`` (the old order) and ``new`` (the new one).

        Each given field overrides the old order's; ``qty`` is the order's total, as on the old order. A
        partially filled order keeps what it filled (status ``replaced``, its ``filled_qty``) and the new
        order carries the rest: ``qty − filled_qty`` of the old one (a ``qty`` not above what already
        filled is refused). ``trail`` sets a trailing stop's trail_price or trail_percent, whichever it has."""
        o = self._order(order_id)
        if not isinstance(body, dict) or not body:
            raise BrokerError(422, 40010001, "nothing to replace: give qty, time_in_force, limit_price, stop_price, "
                              "trail or client_order_id")
        if not o.is_open or o.status == "accepted" or (o.status == "held" and not self._armed(o)):
            raise BrokerError(422, 42210000, f"order is not replaceable (status {o.status})")
        if o.type == "market":
            raise BrokerError(422, 42210000, "market orders cannot be replaced")
        if o.notional is not None:
            raise BrokerError(422, 42210000, "notional orders cannot be replaced")
        new = self._new_order()
        for name in ("symbol", "side", "type", "time_in_force", "limit_price", "stop_price", "qty",
                     "extended_hours", "order_class", "parent", "sibling", "legs", "position_intent", "expires_ns",
                     "trail_price", "trail_percent", "hwm", "triggered", "asset_class"):
            setattr(new, name, getattr(o, name))
        total = o.qty
        if body.get("qty") is not None:
            total = _dec(body["qty"], "qty")
            if total <= 0:
                raise BrokerError(422, 40010001, "qty must be > 0")
            if total != total.to_integral_value() or o.qty != o.qty.to_integral_value():
                raise BrokerError(422, 40010001, "qty of fractional orders cannot be changed")
        if total <= o.filled_qty:
            raise BrokerError(422, 40010001, f"qty must be greater than the filled qty ({_s(o.filled_qty)})")
        new.qty = total - o.filled_qty
        if body.get("trail") is not None:
            if new.type != "trailing_stop":
                raise BrokerError(422, 40010001, "trail applies to trailing_stop orders only")
            trail = _dec(body["trail"], "trail")
            if trail <= 0 or (new.trail_percent is not None and trail >= 100):
                raise BrokerError(422, 40010001, "trail must be > 0 (and a trail_percent < 100)")
            if new.trail_price is not None:
                new.trail_price = trail
            else:
                new.trail_percent = trail
            hwm, new.hwm = new.hwm, None
            new.trail_to(hwm)
        if body.get("time_in_force") is not None:
            if body["time_in_force"] not in _TIFS:
                raise BrokerError(422, 40010001, f"invalid time_in_force: {body['time_in_force']!r}")
            new.time_in_force = body["time_in_force"]
            if new.time_in_force != "day":
                new.expires_ns = 0
        if body.get("limit_price") is not None:
            if new.limit_price is None:
                raise BrokerError(422, 40010001, "limit_price applies to limit and stop_limit orders only")
            new.limit_price = _dec(body["limit_price"], "limit_price")
        if body.get("stop_price") is not None:
            if new.stop_price is None or new.type == "trailing_stop":
                raise BrokerError(422, 40010001, "stop_price applies to stop and stop_limit orders only")
            new.stop_price = _dec(body["stop_price"], "stop_price")
        cid = body.get("client_order_id") or new.client_order_id
        if cid in self.by_client_id:
            raise BrokerError(422, 40010001, "client_order_id must be unique")
        new.client_order_id = cid
        opens_stock_short = new.position_intent == "sell_to_open" and new.asset_class == "us_equity"
        if (new.side == "buy" and new.position_intent == "buy_to_open") or opens_stock_short:
            if self._opening_cost(new) > self.buying_power(skip=o):
                raise BrokerError(403, 40310000, "insufficient buying power")
        if new.position_intent == "sell_to_open" and new.asset_class == "us_option" and new.qty > o.remaining:
            self._check_cover(new, skip=o)
        if new.position_intent.endswith("_to_close") and new.qty > o.remaining:
            held = abs(self.positions.get(position_symbol(new.symbol), [Decimal(0)])[0])
            available = held - self._held_for_orders(position_symbol(new.symbol), new.side) + o.remaining
            if new.qty > available:
                raise BrokerError(403, 40310000, f"insufficient qty available for order (requested: {_s(new.qty)}, "
                                  f"available: {_s(max(available, Decimal(0)))})")
        now = self.clock()
        new.created_ns = new.updated_ns = new.submitted_ns = now
        new.replaces = o.id
        o.status = "replaced"
        o.replaced_ns = o.updated_ns = now
        o.replaced_by = new.id
        self._remember(new)
        # The new order takes the old one's place among its relatives.
        if o.parent is not None:
            o.parent.legs = [new if leg is o else leg for leg in o.parent.legs]
        for leg in o.legs:
            leg.parent = new
        if o.sibling is not None:
            o.sibling.sibling = new
        self._prune(o.symbol)
        self.pending = [p for p in self.pending if p is not o]
        self._emit("replaced", o)
        for leg in o.legs:
            if leg.status == "held" and leg.qty != total:
                self._resize(leg, total, now)  # the exits close what the whole entry (old fills and new) opens
        self._start(new, now)
        return new.to_json()

    def list_orders(
        self,
        *,
        status: str = "open",
        limit: int = 50,
        after: str | None = None,
        until: str | None = None,
        direction: str = "desc",
        symbols: list[str] | None = None,
        side: str | None = None,
        nested: bool = False,
    ) -> list[dict]:
        if status not in ("open", "closed", "all"):
            raise BrokerError(422, 40010001, f"invalid status: {status!r}")
        if direction not in ("asc", "desc"):
            raise BrokerError(422, 40010001, f"invalid direction: {direction!r}")
        if side not in (None, "buy", "sell"):
            raise BrokerError(422, 40010001, f"invalid side: {side!r}")
        limit = max(1, min(int(limit), 500))
        after_ns = rfc3339_to_ns(after) if after else None
        until_ns = rfc3339_to_ns(until) if until else None
        wanted = {s.upper() for s in symbols} if symbols else None
        items = list(self.orders.values())
        if direction == "desc":
            items.reverse()
        out = []
        for o in items:
            if nested and o.parent is not None:
                continue
            if (status == "open" and not o.is_open) or (status == "closed" and o.is_open):
                continue
            if wanted is not None and o.symbol not in wanted:
                continue
            if side is not None and o.side != side:
                continue
            if after_ns is not None and o.submitted_ns <= after_ns:
                continue
            if until_ns is not None and o.submitted_ns >= until_ns:
                continue
            out.append(o.to_json(legs=nested))
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ activities and history
    def activities(
        self,
        *,
        activity_types: list[str] | None = None,
        category: str | None = None,
        date: str | None = None,
        after: str | None = None,
        until: str | None = None,
        direction: str = "desc",
        page_size: int = 100,
        page_token: str | None = None,
    ) -> list[dict]:
        """``GET /v2/account/activities[/{type}]``: activities of the given types (all when None) or
        ``category`` (``trade_activity``: fills; ``non_trade_activity``: the rest), on New York ``date``
        or strictly between ``after`` and ``until``, paged: ``page_token`` is the id of the last item
        of the previous page. Unknown types, categories or tokens are refused (422)."""
        if direction not in ("asc", "desc"):
            raise BrokerError(422, 40010001, f"invalid direction: {direction!r}")
        wanted = {t.strip().upper() for t in activity_types or () if t.strip()} or None
        if wanted is not None and not wanted <= ACTIVITY_TYPES:
            raise BrokerError(422, 40010001, f"invalid activity type: {', '.join(sorted(wanted - ACTIVITY_TYPES))}")
        if category not in (None, "trade_activity", "non_trade_activity"):
            raise BrokerError(422, 40010001, "category must be trade_activity or non_trade_activity")
        if category is not None and wanted is not None:
            raise BrokerError(422, 40010001, "give activity_types or category, not both")
        try:
            day = datetime_date.fromisoformat(date) if date else None
        except ValueError:
            raise BrokerError(422, 40010001, f"invalid date: {date!r}") from None
        page_size = max(1, min(int(page_size), 100))
        after_ns = rfc3339_to_ns(after) if after else None
        until_ns = rfc3339_to_ns(until) if until else None
        token_seq = None
        if page_token:
            token_seq = self._activity_index.get(page_token)
            if token_seq is None:
                raise BrokerError(422, 40010001, "invalid page_token")
        items = reversed(self.activity_log) if direction == "desc" else iter(self.activity_log)
        out = []
        for seq, t, a in items:
            if token_seq is not None and (seq <= token_seq if direction == "asc" else seq >= token_seq):
                continue
            kind = a["activity_type"]
            if wanted is not None and kind not in wanted:
                continue
            if category is not None and (kind == "FILL") != (category == "trade_activity"):
                continue
            if (after_ns is not None and t <= after_ns) or (until_ns is not None and t >= until_ns):
                continue
            if day is not None and new_york_date(t) != day:
                continue
            out.append(a)
            if len(out) >= page_size:
                break
        return out

    def portfolio_history(self, *, period: str | None = None, timeframe: str | None = None,
                          start: str | None = None, end: str | None = None,
                          cashflow_types: str | None = None) -> dict:
        """``GET /v2/account/portfolio/history`` from the equity marks (one a simulated minute, one a
        fill or cash activity): the last equity in each ``timeframe`` bucket of the window; ``cashflow``:
        per non-trade activity type (``cashflow_types``: ``ALL``, the default, ``NONE`` or a comma list),
        the net amount booked in each bucket. Profit/loss is against the window's first value and leaves
        out the cash transferred in or out after it: a deposit is no gain (a fee is a loss, a dividend a gain)."""
        units = {"D": 86_400, "W": 7 * 86_400, "M": 30 * 86_400, "A": 365 * 86_400}
        frames = {"1Min": 60, "5Min": 300, "15Min": 900, "1H": 3600, "1D": 86_400}
        now = self.clock()
        self.advance(now)
        period = period or "1M"
        try:
            span = int(period[:-1]) * units[period[-1]] * 10**9
        except (ValueError, KeyError):
            raise BrokerError(422, 40010001, f"invalid period: {period!r}") from None
        if timeframe is None:
            timeframe = "1Min" if span < 7 * 86_400 * 10**9 else "15Min" if span < 30 * 86_400 * 10**9 else "1D"
        if timeframe not in frames:
            raise BrokerError(422, 40010001, f"invalid timeframe: {timeframe!r}")
        step = frames[timeframe] * 10**9
        end_ns = rfc3339_to_ns(end) if end else now
        start_ns = rfc3339_to_ns(start) if start else max(end_ns - span, self.created_ns - self.created_ns % step)
        kinds = (cashflow_types or "ALL").upper()
        flow_types: set[str] | None = None if kinds == "ALL" else set() if kinds == "NONE" else {
            k.strip() for k in kinds.split(",") if k.strip()}
        if flow_types is not None and not flow_types <= ACTIVITY_TYPES:
            raise BrokerError(422, 40010001, f"invalid cashflow_types: {cashflow_types!r}")
        marks = [(t, e) for t, e in self.marks if t <= end_ns]
        flows = [(t, a["activity_type"], Decimal(a["net_amount"])) for _, t, a in self.activity_log
                 if "net_amount" in a and t <= end_ns]
        timestamps: list[int] = []
        equity: list[Decimal] = []
        bucket_flows: list[dict[str, Decimal]] = []
        value = self.base_equity
        i = j = 0
        for bucket in range(start_ns - start_ns % step, end_ns + 1, step):
            booked: dict[str, Decimal] = {}
            while i < len(marks) and marks[i][0] < bucket + step:
                value = marks[i][1]
                i += 1
            while j < len(flows) and flows[j][0] < bucket + step:
                t, kind, net = flows[j]
                if t >= bucket:
                    booked[kind] = booked.get(kind, Decimal(0)) + net
                j += 1
            if bucket + step <= self.created_ns:
                continue
            timestamps.append(bucket // 10**9)
            equity.append(value.quantize(CENT))
            bucket_flows.append(booked)
        base = equity[0] if equity else self.base_equity
        pl: list[float] = []
        pct: list[float] = []
        flowed = Decimal(0)  # transfers in (+) or out (−) after the first bucket, which the base already holds
        for n, (e, booked) in enumerate(zip(equity, bucket_flows, strict=True)):
            if n:
                flowed += sum((v for k, v in booked.items() if k in TRANSFERS), Decimal(0))
            gain = e - base - flowed
            pl.append(float(gain.quantize(CENT)))
            capital = base + flowed
            pct.append(float((gain / capital).quantize(Decimal("0.000001"))) if capital else 0.0)
        shown = {k for booked in bucket_flows for k in booked} if flow_types is None else flow_types
        cashflow = {k: [float(booked.get(k, 0)) for booked in bucket_flows] for k in sorted(shown)}
        return {"timestamp": timestamps, "equity": [float(e) for e in equity], "profit_loss": pl,
                "profit_loss_pct": pct, "base_value": float(base), "timeframe": timeframe, "cashflow": cashflow}
