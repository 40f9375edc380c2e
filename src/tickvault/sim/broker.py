"""The simulated broker: one paper account, positions, orders, fills, trade-update events.

Market orders fill at once at the symbol's latest simulated price; limit orders rest until a
generated trade crosses the limit (then fill at that trade's price, which is at or better than the
limit); stop orders trigger on a trade at or through the stop and fill at that trade's price;
stop-limit orders become limit orders when triggered. One fill per order (no partial fills);
``ioc``/``fok`` limit orders that cannot fill at once are canceled.

What this module must never do: grow without bound in a long run. Orders are kept up to
``max_orders`` (the oldest closed order is forgotten first, with its client_order_id), fills up to
``max_fills`` (oldest first); open orders are bounded by ``max_open_orders`` (more → 403, as Alpaca
limits open orders). Money is Decimal throughout and leaves as decimal strings.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.000000001")  # Alpaca's fractional qty precision (9 decimals)
_ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
_TIFS = ("day", "gtc", "ioc", "fok", "opg", "cls")
_OPEN = ("new", "accepted", "partially_filled", "pending_new")


class BrokerError(Exception):
    """A refused request; the REST layer answers ``status`` with ``{"code", "message"}`` like Alpaca."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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
    text = format(d.normalize(), "f")
    return text


class _Order:
    __slots__ = (
        "id",
        "client_order_id",
        "created_ns",
        "updated_ns",
        "filled_ns",
        "canceled_ns",
        "symbol",
        "qty",
        "notional",
        "filled_qty",
        "filled_avg_price",
        "type",
        "side",
        "time_in_force",
        "limit_price",
        "stop_price",
        "status",
        "extended_hours",
        "triggered",
    )

    def to_json(self) -> dict:
        created = ns_to_rfc3339(self.created_ns)
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": created,
            "updated_at": ns_to_rfc3339(self.updated_ns),
            "submitted_at": created,
            "filled_at": ns_to_rfc3339(self.filled_ns) if self.filled_ns else None,
            "expired_at": None,
            "canceled_at": ns_to_rfc3339(self.canceled_ns) if self.canceled_ns else None,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"tickvault-sim/{self.symbol}")),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": _s(self.notional),
            "qty": _s(self.qty),
            "filled_qty": _s(self.filled_qty),
            "filled_avg_price": _s(self.filled_avg_price),
            "order_class": "simple",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": ("buy_to_open" if self.side == "buy" else "sell_to_close"),
            "time_in_force": self.time_in_force,
            "limit_price": _s(self.limit_price),
            "stop_price": _s(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }


class Broker:
    """One paper account. ``price_cents(symbol)`` gives the latest simulated price (None: unknown
    symbol). Every event (``new``/``fill``/``canceled``) is handed to each function in ``listeners``
    as the ``data`` object of a ``trade_updates`` message."""

    def __init__(
        self,
        price_cents: Callable[[str], int | None],
        *,
        cash: Decimal | str = "100000",
        max_orders: int = 10_000,
        max_fills: int = 100_000,
        max_open_orders: int = 1_000,
    ) -> None:
        self._price_cents = price_cents
        self.account_id = str(uuid.uuid4())
        self.account_number = "PA" + self.account_id.replace("-", "")[:10].upper()
        self.cash = Decimal(cash)
        self.max_orders = max_orders
        self.max_fills = max_fills
        self.max_open_orders = max_open_orders
        self.orders: OrderedDict[str, _Order] = OrderedDict()  # ≤ max_orders, oldest first
        self.by_client_id: dict[str, str] = {}  # client_order_id → id, same entries as orders
        self.open_by_symbol: dict[str, list[_Order]] = {}  # resting orders; ≤ max_open_orders in all
        self.open_count = 0
        self.positions: dict[str, list[Decimal]] = {}  # symbol → [qty (signed), cost basis]; ≤ symbols
        self.fills: deque[dict] = deque(maxlen=max_fills)  # activities, oldest first
        self._fill_seq = 0  # sequence of the newest fill; fills[i] has seq first_seq + i
        self._fill_index: dict[str, int] = {}  # activity id → seq, same entries as fills
        self.listeners: list[Callable[[dict], None]] = []

    # ------------------------------------------------------------------ state for tests
    def set_position(
        self, symbol: str, qty: Decimal | str | int, avg_entry_price: Decimal | str | float
    ) -> None:
        """Plant a position (qty signed: negative is short); qty 0 removes it. Cash is not touched."""
        q = Decimal(str(qty))
        if q == 0:
            self.positions.pop(symbol, None)
        else:
            self.positions[symbol] = [q, q * Decimal(str(avg_entry_price))]

    def set_cash(self, cash: Decimal | str | int) -> None:
        self.cash = Decimal(str(cash))

    # ------------------------------------------------------------------ account
    def _price(self, symbol: str) -> Decimal:
        cents = self._price_cents(symbol)
        if cents is None:
            raise BrokerError(422, 40010001, f'asset "{symbol}" not found')
        return Decimal(cents) / 100

    def account(self) -> dict:
        long_mv = short_mv = Decimal(0)
        for symbol, (qty, _) in self.positions.items():
            mv = qty * self._price(symbol)
            if qty > 0:
                long_mv += mv
            else:
                short_mv += mv
        equity = self.cash + long_mv + short_mv
        bp = max(self.cash, Decimal(0))
        return {
            "id": self.account_id,
            "account_number": self.account_number,
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": _s(bp.quantize(CENT)),
            "regt_buying_power": _s(bp.quantize(CENT)),
            "daytrading_buying_power": "0",
            "non_marginable_buying_power": _s(bp.quantize(CENT)),
            "cash": _s(self.cash.quantize(CENT)),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "portfolio_value": _s(equity.quantize(CENT)),
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T14:30:00Z",
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": True,
            "equity": _s(equity.quantize(CENT)),
            "last_equity": _s(equity.quantize(CENT)),
            "long_market_value": _s(long_mv.quantize(CENT)),
            "short_market_value": _s(short_mv.quantize(CENT)),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "daytrade_count": 0,
        }

    def position_list(self) -> list[dict]:
        out = []
        for symbol in sorted(self.positions):
            qty, cost = self.positions[symbol]
            price = self._price(symbol)
            mv = qty * price
            avg = cost / qty
            upl = mv - cost
            out.append(
                {
                    "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"tickvault-sim/{symbol}")),
                    "symbol": symbol,
                    "exchange": "NASDAQ",
                    "asset_class": "us_equity",
                    "asset_marginable": True,
                    "avg_entry_price": _s(avg.quantize(Decimal("0.0001"), ROUND_HALF_UP)),
                    "qty": _s(qty),
                    "qty_available": _s(qty),
                    "side": "long" if qty > 0 else "short",
                    "market_value": _s(mv.quantize(CENT)),
                    "cost_basis": _s(cost.quantize(CENT)),
                    "unrealized_pl": _s(upl.quantize(CENT)),
                    "unrealized_plpc": _s((upl / abs(cost)).quantize(Decimal("0.0001"))) if cost else "0",
                    "unrealized_intraday_pl": _s(upl.quantize(CENT)),
                    "unrealized_intraday_plpc": _s((upl / abs(cost)).quantize(Decimal("0.0001")))
                    if cost
                    else "0",
                    "current_price": _s(price),
                    "lastday_price": _s(price),
                    "change_today": "0",
                }
            )
        return out

    # ------------------------------------------------------------------ orders
    def submit(self, body: dict) -> dict:
        """Validate and accept an order (``POST /v2/orders`` body); returns the order JSON."""
        if not isinstance(body, dict):
            raise BrokerError(422, 40010001, "request body must be a JSON object")
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise BrokerError(422, 40010001, "symbol is required")
        symbol = symbol.upper()
        price = self._price(symbol)
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise BrokerError(422, 40010001, f"invalid side: {side!r}")
        otype = body.get("type") or body.get("order_type") or "market"
        if otype not in _ORDER_TYPES:
            raise BrokerError(422, 40010001, f"order type {otype!r} is not supported by the simulator")
        tif = body.get("time_in_force") or "day"
        if tif not in _TIFS:
            raise BrokerError(422, 40010001, f"invalid time_in_force: {tif!r}")
        qty = body.get("qty")
        notional = body.get("notional")
        if (qty is None) == (notional is None):
            raise BrokerError(422, 40010001, "qty or notional is required (exactly one)")
        notional_d = None
        if notional is not None:
            notional_d = _dec(notional, "notional")
            if notional_d <= 0:
                raise BrokerError(422, 40010001, "notional must be > 0")
            if otype != "market":
                raise BrokerError(422, 40010001, "notional orders must be market orders")
            qty_d = (notional_d / price).quantize(QTY_STEP)
        else:
            qty_d = _dec(qty, "qty")
            if qty_d <= 0:
                raise BrokerError(422, 40010001, "qty must be > 0")
        limit = _dec(body["limit_price"], "limit_price") if body.get("limit_price") is not None else None
        stop = _dec(body["stop_price"], "stop_price") if body.get("stop_price") is not None else None
        if otype in ("limit", "stop_limit") and limit is None:
            raise BrokerError(422, 40010001, "limit_price is required for limit orders")
        if otype in ("stop", "stop_limit") and stop is None:
            raise BrokerError(422, 40010001, "stop_price is required for stop orders")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if not isinstance(cid, str) or len(cid) > 128:
            raise BrokerError(422, 40010001, "client_order_id must be a string of at most 128 characters")
        if cid in self.by_client_id:
            raise BrokerError(422, 40010001, "client_order_id must be unique")
        if side == "buy":
            cost = qty_d * (limit if limit is not None else price)
            if cost > self.cash:
                raise BrokerError(403, 40310000, "insufficient buying power")
        now = time.time_ns()
        o = _Order()
        o.id = str(uuid.uuid4())
        o.client_order_id = cid
        o.created_ns = o.updated_ns = now
        o.filled_ns = o.canceled_ns = 0
        o.symbol = symbol
        o.qty = qty_d if notional_d is None else None
        o.notional = notional_d
        o.filled_qty = Decimal(0)
        o.filled_avg_price = None
        o.type = otype
        o.side = side
        o.time_in_force = tif
        o.limit_price = limit
        o.stop_price = stop
        o.status = "new"
        o.extended_hours = bool(body.get("extended_hours", False))
        o.triggered = False
        self._remember(o)
        self._emit("new", o)
        cents = int(price * 100)
        if otype == "market":
            self._fill(o, price, now, qty_d)
        elif not self._check_resting(o, cents, now, qty_d):
            if tif in ("ioc", "fok"):
                self._cancel(o, now)
            else:
                if self.open_count >= self.max_open_orders:
                    self._cancel(o, now)
                    raise BrokerError(403, 40310000, f"open order limit reached ({self.max_open_orders})")
                self.open_by_symbol.setdefault(symbol, []).append(o)
                self.open_count += 1
        return o.to_json()

    def _remember(self, o: _Order) -> None:
        self.orders[o.id] = o
        self.by_client_id[o.client_order_id] = o.id
        if len(self.orders) > self.max_orders:
            for oid, old in self.orders.items():
                if old.status not in _OPEN:
                    del self.orders[oid]
                    self.by_client_id.pop(old.client_order_id, None)
                    break

    def _check_resting(self, o: _Order, cents: int, t_ns: int, qty: Decimal | None = None) -> bool:
        """Fill ``o`` if a trade at ``cents`` reaches it; True when filled."""
        price = Decimal(cents) / 100
        if o.stop_price is not None and not o.triggered:
            hit = price >= o.stop_price if o.side == "buy" else price <= o.stop_price
            if not hit:
                return False
            o.triggered = True
            if o.type == "stop":
                self._fill(o, price, t_ns, o.qty)
                return True
        if o.limit_price is not None:
            crossed = price <= o.limit_price if o.side == "buy" else price >= o.limit_price
            if crossed:
                self._fill(o, price, t_ns, o.qty)
                return True
        return False

    def on_trade(self, symbol: str, cents: int, t_ns: int) -> None:
        """Called by the market for every generated trade: fill resting orders the trade reaches."""
        resting = self.open_by_symbol.get(symbol)
        if not resting:
            return
        keep = [o for o in resting if not self._check_resting(o, cents, t_ns)]
        self.open_count -= len(resting) - len(keep)
        if keep:
            self.open_by_symbol[symbol] = keep
        else:
            del self.open_by_symbol[symbol]

    def _fill(self, o: _Order, price: Decimal, t_ns: int, qty: Decimal) -> None:
        signed = qty if o.side == "buy" else -qty
        self.cash -= signed * price
        pos = self.positions.get(o.symbol)
        if pos is None:
            self.positions[o.symbol] = [signed, signed * price]
        else:
            old_qty, cost = pos
            new_qty = old_qty + signed
            if new_qty == 0:
                del self.positions[o.symbol]
            elif old_qty == 0 or (old_qty > 0) == (signed > 0):
                pos[0], pos[1] = new_qty, cost + signed * price  # adding to the position
            elif (old_qty > 0) == (new_qty > 0):
                pos[0], pos[1] = new_qty, cost * new_qty / old_qty  # reducing: avg entry unchanged
            else:
                pos[0], pos[1] = new_qty, new_qty * price  # flipped through zero
        o.filled_qty = qty
        o.filled_avg_price = price
        o.status = "filled"
        o.filled_ns = o.updated_ns = t_ns
        self._fill_seq += 1
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t_ns // 10**9))
        activity_id = f"{stamp}{(t_ns // 10**6) % 1000:03d}::{uuid.uuid4()}"  # Alpaca's id shape
        activity = {
            "id": activity_id,
            "account_id": self.account_id,
            "activity_type": "FILL",
            "transaction_time": ns_to_rfc3339(t_ns),
            "type": "fill",
            "price": _s(price),
            "qty": _s(qty),
            "side": o.side,
            "symbol": o.symbol,
            "leaves_qty": "0",
            "order_id": o.id,
            "cum_qty": _s(qty),
            "order_status": "filled",
        }
        if len(self.fills) == self.fills.maxlen:
            self._fill_index.pop(self.fills[0]["id"], None)
        self.fills.append(activity)
        self._fill_index[activity_id] = self._fill_seq
        pos = self.positions.get(o.symbol)
        self._emit("fill", o, price=price, qty=qty, t_ns=t_ns, position_qty=pos[0] if pos else Decimal(0))

    def _cancel(self, o: _Order, now: int) -> None:
        o.status = "canceled"
        o.canceled_ns = o.updated_ns = now
        self._emit("canceled", o)

    def _emit(self, event: str, o: _Order, *, price=None, qty=None, t_ns=None, position_qty=None) -> None:
        if not self.listeners:
            return
        data: dict[str, Any] = {
            "event": event,
            "order": o.to_json(),
            "timestamp": ns_to_rfc3339(t_ns or o.updated_ns),
        }
        if event == "fill":
            data.update(
                price=_s(price), qty=_s(qty), position_qty=_s(position_qty), execution_id=str(uuid.uuid4())
            )
        for listener in list(self.listeners):
            listener(data)

    def get(self, order_id: str) -> dict:
        o = self.orders.get(order_id)
        if o is None:
            raise BrokerError(404, 40410000, "order not found")
        return o.to_json()

    def get_by_client_id(self, client_order_id: str) -> dict:
        oid = self.by_client_id.get(client_order_id)
        if oid is None:
            raise BrokerError(404, 40410000, "order not found")
        return self.orders[oid].to_json()

    def cancel(self, order_id: str) -> None:
        o = self.orders.get(order_id)
        if o is None:
            raise BrokerError(404, 40410000, "order not found")
        if o.status not in _OPEN:
            raise BrokerError(422, 42210000, f"order is not cancelable (status {o.status})")
        resting = self.open_by_symbol.get(o.symbol, [])
        if o in resting:
            resting.remove(o)
            self.open_count -= 1
            if not resting:
                self.open_by_symbol.pop(o.symbol, None)
        self._cancel(o, time.time_ns())

    def list_orders(
        self,
        *,
        status: str = "open",
        limit: int = 50,
        after: str | None = None,
        until: str | None = None,
        direction: str = "desc",
        symbols: list[str] | None = None,
    ) -> list[dict]:
        if status not in ("open", "closed", "all"):
            raise BrokerError(422, 40010001, f"invalid status: {status!r}")
        if direction not in ("asc", "desc"):
            raise BrokerError(422, 40010001, f"invalid direction: {direction!r}")
        limit = max(1, min(int(limit), 500))
        after_ns = rfc3339_to_ns(after) if after else None
        until_ns = rfc3339_to_ns(until) if until else None
        wanted = set(symbols) if symbols else None
        items = list(self.orders.values())
        if direction == "desc":
            items.reverse()
        out = []
        for o in items:
            is_open = o.status in _OPEN
            if (status == "open" and not is_open) or (status == "closed" and is_open):
                continue
            if wanted is not None and o.symbol not in wanted:
                continue
            if after_ns is not None and o.created_ns <= after_ns:
                continue
            if until_ns is not None and o.created_ns >= until_ns:
                continue
            out.append(o.to_json())
            if len(out) >= limit:
                break
        return out

    def activities(
        self,
        *,
        after: str | None = None,
        until: str | None = None,
        direction: str = "desc",
        page_size: int = 100,
        page_token: str | None = None,
    ) -> list[dict]:
        """Fill activities, paged: ``page_token`` is the id of the last item of the previous page."""
        if direction not in ("asc", "desc"):
            raise BrokerError(422, 40010001, f"invalid direction: {direction!r}")
        page_size = max(1, min(int(page_size), 100))
        items = list(self.fills)
        if direction == "desc":
            items.reverse()
        start = 0
        if page_token:
            seq = self._fill_index.get(page_token)
            if seq is None:
                raise BrokerError(422, 40010001, "invalid page_token")
            first_seq = self._fill_seq - len(self.fills) + 1
            pos = seq - first_seq
            start = pos + 1 if direction == "asc" else len(items) - pos
        after_ns = rfc3339_to_ns(after) if after else None
        until_ns = rfc3339_to_ns(until) if until else None
        out = []
        for a in items[start:]:
            if after_ns is not None or until_ns is not None:
                t = rfc3339_to_ns(a["transaction_time"])
                if (after_ns is not None and t <= after_ns) or (until_ns is not None and t >= until_ns):
                    continue
            out.append(a)
            if len(out) >= page_size:
                break
        return out
