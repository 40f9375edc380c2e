"""Typed results of Alpaca's REST API: money and quantities as ``Decimal``, times as aware UTC.

Two families, for two workloads:

* Trading objects (:class:`Account`, :class:`Asset`, :class:`Position`, :class:`Order`, :class:`FillActivity`,
  :class:`OptionActivity`, :class:`OrderRequest`) are pydantic v2 models: few per call, validated field
  by field, unknown fields Alpaca adds later ignored (``extra="ignore"``), never fatal.
* Historical ticks (:class:`HistTrade`, :class:`HistQuote`, :class:`HistBar`) are slotted frozen
  dataclasses built straight from the parsed JSON: a page holds up to 10,000 of them, so they skip
  per-field validation machinery. Their time is kept as exact int nanoseconds since the epoch
  (``time_ns``, parsed from the RFC 3339 text by :func:`parse_rfc3339_ns`, never through
  ``datetime``, which stops at microseconds); ``timestamp`` gives the aware UTC datetime.

Exactness: the REST client parses every JSON body once with ``parse_float=Decimal``, so a price
sent as the number ``123.4500000001`` arrives as exactly that ``Decimal``, never through a float.

What this module must never do: turn a price or quantity into a float, or fail a whole page
because Alpaca added a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tickvault.alpaca.protocol import ns_to_datetime, ns_to_rfc3339, rfc3339_to_ns

NEW_YORK = ZoneInfo("America/New_York")  # the zone of Alpaca's activity id stamps

__all__ = [
    "Account",
    "Asset",
    "FillActivity",
    "HistBar",
    "HistQuote",
    "HistTrade",
    "OPTION_ACTIVITY_TYPES",
    "OptionActivity",
    "Order",
    "OrderRequest",
    "Position",
    "UtcDatetime",
    "format_rfc3339",
    "parse_rfc3339_ns",
]

# ---------------------------------------------------------------------------------------------
# time


# One exact parser and converter for the whole project: the wire module's.
parse_rfc3339_ns = rfc3339_to_ns


def format_rfc3339(value: datetime | str | int) -> str:
    """RFC 3339 text for a query parameter: an aware datetime (naive means UTC), epoch ns, or text as-is."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return ns_to_rfc3339(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_to_utc)]
"""A datetime normalised to aware UTC (naive input is taken as UTC)."""


def _decimal_or_none(value: Any) -> Any:
    # Alpaca sends "" for some absent money fields; treat it as absent rather than failing.
    return None if value == "" else value


OptDecimal = Annotated[Decimal | None, BeforeValidator(_decimal_or_none)]

# ---------------------------------------------------------------------------------------------
# trading objects


class _AlpacaModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Account(_AlpacaModel):
    id: str
    account_number: str
    status: str
    currency: str = "USD"
    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    portfolio_value: OptDecimal = None
    last_equity: OptDecimal = None
    long_market_value: OptDecimal = None
    short_market_value: OptDecimal = None
    initial_margin: OptDecimal = None
    maintenance_margin: OptDecimal = None
    daytrading_buying_power: OptDecimal = None
    regt_buying_power: OptDecimal = None
    multiplier: OptDecimal = None
    daytrade_count: int | None = None
    pattern_day_trader: bool | None = None
    trading_blocked: bool | None = None
    transfers_blocked: bool | None = None
    account_blocked: bool | None = None
    shorting_enabled: bool | None = None
    created_at: UtcDatetime | None = None


class Asset(_AlpacaModel):
    """One entry of ``GET /v2/assets``: Alpaca's master list of what it trades and serves data for."""

    id: str
    asset_class: str = Field(alias="class")
    exchange: str
    symbol: str
    name: str | None = None
    status: str
    tradable: bool
    marginable: bool
    shortable: bool
    easy_to_borrow: bool
    fractionable: bool
    attributes: list[str] | None = None


class Position(_AlpacaModel):
    asset_id: str
    symbol: str
    exchange: str | None = None
    asset_class: str | None = None
    avg_entry_price: Decimal
    qty: Decimal
    qty_available: OptDecimal = None
    side: str
    cost_basis: Decimal
    market_value: OptDecimal = None
    unrealized_pl: OptDecimal = None
    unrealized_plpc: OptDecimal = None
    unrealized_intraday_pl: OptDecimal = None
    current_price: OptDecimal = None
    lastday_price: OptDecimal = None
    change_today: OptDecimal = None


class Order(_AlpacaModel):
    id: str
    client_order_id: str
    created_at: UtcDatetime
    updated_at: UtcDatetime | None = None
    submitted_at: UtcDatetime | None = None
    filled_at: UtcDatetime | None = None
    expired_at: UtcDatetime | None = None
    canceled_at: UtcDatetime | None = None
    failed_at: UtcDatetime | None = None
    replaced_at: UtcDatetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    asset_id: str | None = None
    symbol: str
    asset_class: str | None = None
    qty: OptDecimal = None
    notional: OptDecimal = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: OptDecimal = None
    order_class: str | None = None
    order_type: str | None = None
    type: str | None = None
    side: str
    time_in_force: str
    limit_price: OptDecimal = None
    stop_price: OptDecimal = None
    trail_price: OptDecimal = None
    trail_percent: OptDecimal = None
    status: str
    extended_hours: bool = False

    @model_validator(mode="after")
    def _type_and_order_type(self) -> Order:
        # Alpaca sends both `type` and the older `order_type`; fill whichever is missing.
        if self.type is None and self.order_type is not None:
            object.__setattr__(self, "type", self.order_type)
        elif self.order_type is None and self.type is not None:
            object.__setattr__(self, "order_type", self.type)
        return self


class FillActivity(_AlpacaModel):
    id: str
    activity_type: str = "FILL"
    transaction_time: UtcDatetime
    type: str  # fill | partial_fill
    price: Decimal
    qty: Decimal
    side: str
    symbol: str
    leaves_qty: Decimal
    order_id: str
    cum_qty: Decimal
    order_status: str | None = None


#: Alpaca's non-trade activities of an option's end ("Non-Trade Activities for Option Events"): the
#: contract leaves the account by exercise (OPEXC), assignment (OPASN) or expiry (OPEXP) and, on exercise
#: or assignment, the underlying's shares move at the strike (OPTRD).
OPTION_ACTIVITY_TYPES = ("OPEXC", "OPASN", "OPEXP", "OPTRD")


class OptionActivity(_AlpacaModel):
    """One option event as Alpaca reports it among the account's non-trade activities.

    ``qty`` is the change to the position in ``symbol``: contracts for ``OPEXC``/``OPASN``/``OPEXP``
    (``-2``: two long contracts exercised or expired; ``1``: one short contract assigned), shares of the
    underlying for ``OPTRD`` (``200`` bought, ``-100`` sold). ``net_amount`` is the cash it moved
    (``OPTRD``: ``-qty × price``; 0 for the contract's own event), ``price`` the strike (``OPTRD`` only).
    These activities carry a ``date``, not a transaction time; :attr:`time` reads the stamp their id
    starts with.
    """

    id: str
    activity_type: str
    date: date
    net_amount: Decimal
    symbol: str
    qty: Decimal
    price: OptDecimal = None
    description: str | None = None
    status: str | None = None

    @property
    def time(self) -> datetime:
        """The stamp Alpaca's id starts with (``YYYYMMDDhhmmssmmm::uuid``), in UTC. The stamp is New York
        time: Alpaca's documented FILL activity ``20210510100104650::…`` has ``transaction_time``
        ``2021-05-10T14:01:04.650275Z``. When the id has none, midnight New York of :attr:`date`.
        Alpaca's option events often carry only the date there."""
        stamp = self.id.split("::", 1)[0]
        try:
            local = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(microsecond=int(stamp[14:17]) * 1000)
        except ValueError:
            local = datetime(self.date.year, self.date.month, self.date.day)
        return local.replace(tzinfo=NEW_YORK).astimezone(UTC)


class OrderRequest(_AlpacaModel):
    """An order to submit. Exactly one of ``qty``/``notional``.

    Give a ``client_order_id`` (up to 128 characters; ``new_client_order_id()`` makes one) to make
    the submit idempotent: the client then retries it after timeouts and 5xx answers and, if the
    first attempt turns out to have landed, returns that order instead of failing. Without one, a
    submit is retried only when the request provably never reached Alpaca.
    """

    symbol: str
    side: Literal["buy", "sell"]
    qty: Decimal | None = None
    notional: Decimal | None = None
    type: Literal["market", "limit", "stop", "stop_limit", "trailing_stop"] = "market"
    time_in_force: Literal["day", "gtc", "ioc", "fok", "opg", "cls"] = "day"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    client_order_id: str | None = Field(None, min_length=1, max_length=128)
    extended_hours: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OrderRequest:
        if (self.qty is None) == (self.notional is None):
            raise ValueError("give exactly one of qty or notional")
        for amount in (self.qty, self.notional):
            if amount is not None and amount <= 0:
                raise ValueError("qty/notional must be positive")
        if self.type in ("limit", "stop_limit") and self.limit_price is None:
            raise ValueError(f"a {self.type} order needs limit_price")
        if self.type in ("stop", "stop_limit") and self.stop_price is None:
            raise ValueError(f"a {self.type} order needs stop_price")
        if self.type == "trailing_stop" and (self.trail_price is None) == (self.trail_percent is None):
            raise ValueError("a trailing_stop order needs exactly one of trail_price or trail_percent")
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``POST /v2/orders``: decimals as strings (exact), absent fields omitted."""
        body: dict[str, Any] = {}
        for name, value in self:
            if value is None:
                continue
            body[name] = str(value) if isinstance(value, Decimal) else value
        return body

    @staticmethod
    def new_client_order_id(prefix: str = "tv") -> str:
        import uuid

        return f"{prefix}-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------
# historical market data (hot path: built by hand from parsed JSON, no validation machinery)


def _dec(value: Any) -> Decimal:
    # Numbers already arrive as Decimal (parse_float=Decimal) or int; strings are parsed exactly.
    return value if isinstance(value, Decimal) else Decimal(value)


@dataclass(slots=True, frozen=True)
class HistTrade:
    symbol: str
    time_ns: int
    price: Decimal
    size: Decimal
    exchange: str
    id: int | None
    conditions: tuple[str, ...]
    tape: str | None

    @property
    def timestamp(self) -> datetime:
        return ns_to_datetime(self.time_ns)

    @classmethod
    def from_wire(cls, symbol: str, raw: dict[str, Any]) -> HistTrade:
        c = raw.get("c")
        i = raw.get("i")
        return cls(
            symbol,
            parse_rfc3339_ns(raw["t"]),
            _dec(raw["p"]),
            _dec(raw["s"]),
            raw.get("x", ""),
            int(i) if i is not None else None,
            tuple(c) if c else (),
            raw.get("z"),
        )


@dataclass(slots=True, frozen=True)
class HistQuote:
    symbol: str
    time_ns: int
    bid_price: Decimal
    bid_size: Decimal
    bid_exchange: str
    ask_price: Decimal
    ask_size: Decimal
    ask_exchange: str
    conditions: tuple[str, ...]
    tape: str | None

    @property
    def timestamp(self) -> datetime:
        return ns_to_datetime(self.time_ns)

    @classmethod
    def from_wire(cls, symbol: str, raw: dict[str, Any]) -> HistQuote:
        c = raw.get("c")
        return cls(
            symbol,
            parse_rfc3339_ns(raw["t"]),
            _dec(raw["bp"]),
            _dec(raw["bs"]),
            raw.get("bx", ""),
            _dec(raw["ap"]),
            _dec(raw["as"]),
            raw.get("ax", ""),
            tuple(c) if c else (),
            raw.get("z"),
        )


@dataclass(slots=True, frozen=True)
class HistBar:
    symbol: str
    time_ns: int  # bar start
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trade_count: int | None
    vwap: Decimal | None

    @property
    def timestamp(self) -> datetime:
        return ns_to_datetime(self.time_ns)

    @classmethod
    def from_wire(cls, symbol: str, raw: dict[str, Any]) -> HistBar:
        n = raw.get("n")
        vw = raw.get("vw")
        return cls(
            symbol,
            parse_rfc3339_ns(raw["t"]),
            _dec(raw["o"]),
            _dec(raw["h"]),
            _dec(raw["l"]),
            _dec(raw["c"]),
            _dec(raw["v"]),
            int(n) if n is not None else None,
            _dec(vw) if vw is not None else None,
        )
