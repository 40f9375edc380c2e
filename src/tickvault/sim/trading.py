"""The simulator's trading REST: Alpaca's paths over the simulated broker, calendar and clock.

Each handler parses the request as Alpaca documents it and hands it to
:class:`tickvault.sim.broker.Broker`; refusals leave as Alpaca's ``{"code", "message"}`` bodies with
Alpaca's statuses (404 unknown order/position/asset, 422 invalid request, 403 buying power or
qty, 207 for the multi-order answers). The simulator's own control of time, ``/_sim/clock``, lives
here too, as it moves the broker's day forward.

What it must never do: keep state of its own (the broker and the clock hold it all), or read the
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns
from tickvault.sim import calendar
from tickvault.sim.broker import BrokerError, Venue, asset_id, position_symbol
from tickvault.sim.crypto import SIZE_SCALE
from tickvault.sim.options import select_contracts

if TYPE_CHECKING:
    from tickvault.sim.server import Simulator

ASSET_EXCHANGE = "NASDAQ"  # listing exchange the simulated assets report (trades print on IEX, "V")


def _flag(value: str | None) -> bool:
    """A boolean query parameter as alpaca-py (requests) writes it: ``True``/``true``/``1``."""
    return (value or "").lower() in ("true", "1", "yes")


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BrokerError(400, 40010000, "request body is not valid JSON") from None


class TradingAPI:
    """``/v2/orders``, ``/v2/positions``, ``/v2/account*``, ``/v2/assets``, ``/v2/clock``, ``/v2/calendar``
    of one simulator. ``routes(endpoint)`` wraps each handler with the simulator's auth and faults."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.broker = sim.broker
        # The crypto pairs and option contracts the simulator quotes are tradable too, each on its market.
        crypto = sim.crypto_market
        self.broker.add_venue(Venue("crypto", "CRYPTO", _price_of(crypto), crypto.last_quote, SIZE_SCALE),
                              list(sim.crypto_pairs))
        if sim.options_market is not None:
            options = sim.options_market
            self.broker.add_venue(Venue("us_option", "", _price_of(options), options.last_quote, multiplier=100),
                                  list(sim.option_symbols))

    def routes(self, endpoint: Callable[[Callable[[Request], Any]], Any]) -> list[Route]:
        e = endpoint
        return [
            Route("/v2/account", e(lambda r: self.broker.account())),
            Route("/v2/account/configurations", e(self._configurations), methods=["GET", "PATCH"]),
            Route("/v2/account/portfolio/history", e(self._portfolio_history)),
            Route("/v2/account/activities/{activity_type}", e(self._activities)),
            Route("/v2/account/activities", e(self._activities)),
            Route("/v2/positions", e(self._positions), methods=["GET", "DELETE"]),
            Route("/v2/positions/{symbol_or_contract_id}/exercise", e(self._exercise), methods=["POST"]),
            Route("/v2/positions/{symbol_or_asset_id:path}", e(self._position), methods=["GET", "DELETE"]),
            Route("/v2/orders", e(self._orders), methods=["GET", "POST", "DELETE"]),
            Route("/v2/orders:by_client_order_id", e(self._order_by_client_id)),
            Route("/v2/orders/{order_id}", e(self._order), methods=["GET", "PATCH", "DELETE"]),
            Route("/v2/assets", e(self._assets)),
            Route("/v2/assets/{symbol_or_asset_id:path}", e(self._asset)),
            Route("/v2/options/contracts", e(self._option_contracts)),
            Route("/v2/options/contracts/{symbol_or_id}", e(self._option_contract)),
            Route("/v2/clock", e(self._clock)),
            Route("/v2/calendar", e(self._calendar)),
        ]

    def control_routes(self) -> list[Route]:
        """The simulator's own controls (no auth, no faults: loopback only)."""
        return [Route("/_sim/clock", self._sim_clock, methods=["GET", "POST"]),
                Route("/_sim/activities", self._sim_activity, methods=["POST"])]

    # --- account
    async def _configurations(self, request: Request) -> dict:
        if request.method == "PATCH":
            return self.broker.configure(await _json_body(request))
        return dict(self.broker.configuration)

    def _portfolio_history(self, request: Request) -> dict:
        q = request.query_params
        return self.broker.portfolio_history(period=q.get("period"), timeframe=q.get("timeframe"),
                                             start=q.get("start"), end=q.get("end"),
                                             cashflow_types=q.get("cashflow_types"))

    def _activities(self, request: Request) -> list[dict]:
        """``/v2/account/activities/{activity_type}`` or ``/v2/account/activities?activity_types=A,B``
        (every type when neither is given, as Alpaca answers)."""
        q = request.query_params
        kinds = request.path_params.get("activity_type") or q.get("activity_types")
        return self.broker.activities(
            activity_types=kinds.split(",") if kinds else None,
            category=q.get("category"),
            date=q.get("date"),
            after=q.get("after"),
            until=q.get("until"),
            direction=q.get("direction") or "desc",
            page_size=int(q.get("page_size") or 100),
            page_token=q.get("page_token"),
        )

    # --- positions
    def _positions(self, request: Request) -> Any:
        if request.method == "DELETE":
            cancel = _flag(request.query_params.get("cancel_orders"))
            return JSONResponse(self.broker.close_all_positions(cancel_orders=cancel), 207)
        return self.broker.position_list()

    def _position(self, request: Request) -> dict:
        key = request.path_params["symbol_or_asset_id"]
        if request.method == "DELETE":
            q = request.query_params
            return self.broker.close_position(key, qty=q.get("qty"), percentage=q.get("percentage"))
        return self.broker.position(key)

    def _exercise(self, request: Request) -> Response:
        """Exercise a long option position now (alpaca-py ``exercise_options_position``); an empty 200."""
        self.broker.exercise(request.path_params["symbol_or_contract_id"])
        return Response(status_code=200)

    # --- orders
    async def _orders(self, request: Request) -> Any:
        if request.method == "POST":
            return self.broker.submit(await _json_body(request))
        if request.method == "DELETE":
            return JSONResponse(self.broker.cancel_all(), 207)
        q = request.query_params
        symbols = [s for s in (q.get("symbols") or "").split(",") if s] or None
        return self.broker.list_orders(
            status=q.get("status") or "open",
            limit=int(q.get("limit") or 50),
            after=q.get("after"),
            until=q.get("until"),
            direction=q.get("direction") or "desc",
            symbols=symbols,
            side=q.get("side"),
            nested=_flag(q.get("nested")),
        )

    def _order_by_client_id(self, request: Request) -> dict:
        cid = request.query_params.get("client_order_id")
        if not cid:
            raise ValueError("client_order_id is required")
        return self.broker.get_by_client_id(cid)

    async def _order(self, request: Request) -> Any:
        order_id = request.path_params["order_id"]
        if request.method == "DELETE":
            self.broker.cancel(order_id)
            return Response(status_code=204)
        if request.method == "PATCH":
            return self.broker.replace(order_id, await _json_body(request))
        nested = request.query_params.get("nested")
        return self.broker.get(order_id, nested=nested is None or _flag(nested))

    # --- assets
    def _assets(self, request: Request) -> list[dict]:
        """``GET /v2/assets``: every simulated stock symbol is an active, tradable US equity, every
        simulated pair (``asset_class=crypto``) a crypto asset (like Alpaca, an unset status means
        every status; an unknown status or class is a 422). Option contracts are not assets at Alpaca:
        they are ``/v2/options/contracts``."""
        q = request.query_params
        status = q.get("status")
        asset_class = q.get("asset_class") or "us_equity"
        if status not in (None, "", "active", "inactive"):
            raise ValueError(f"status must be active or inactive, not {status!r}")
        if asset_class not in ("us_equity", "us_option", "crypto"):
            raise ValueError(f"asset_class must be us_equity, us_option or crypto, not {asset_class!r}")
        exchange = q.get("exchange")
        if status == "inactive":
            return []
        if asset_class == "crypto":
            return [crypto_asset_json(p) for p in self.sim.crypto_pairs] if exchange in (None, "", "CRYPTO") else []
        if asset_class != "us_equity" or exchange not in (None, "", ASSET_EXCHANGE):
            return []
        return [asset_json(s) for s in self.sim.symbols]

    def _asset(self, request: Request) -> dict:
        """``GET /v2/assets/{symbol or id}``: a stock, or a pair as ``BTC/USD``, ``BTCUSD`` or its id."""
        key = request.path_params["symbol_or_asset_id"]
        for symbol in self.sim.symbols:
            if symbol == key.upper() or asset_id(symbol) == key:
                return asset_json(symbol)
        for pair in self.sim.crypto_pairs:
            if position_symbol(pair) == position_symbol(key.upper()) or asset_id(pair) == key:
                return crypto_asset_json(pair)
        raise BrokerError(404, 40410000, f"asset not found for {key}")

    # --- option contracts
    MAX_CONTRACTS_PAGE = 10_000

    def _contract_symbols(self) -> list[str]:
        market = self.sim.options_market
        return market.symbols if market is not None else []

    def _option_contracts(self, request: Request) -> dict:
        """``GET /v2/options/contracts``: the simulated contracts Alpaca's filters keep
        (``underlying_symbols``, ``status``, ``type``, ``style``, strikes, expirations, ``root_symbol``),
        ``limit`` (default 100, ≤ 10,000) a page, continued by ``page_token``; a bad filter is a 422."""
        q = request.query_params
        status = q.get("status") or "active"
        if status not in ("active", "inactive"):
            raise ValueError(f"status must be active or inactive, not {status!r}")
        style = q.get("style")
        if style not in (None, "", "american", "european"):
            raise ValueError(f"style must be american or european, not {style!r}")
        limit = int(q.get("limit") or 100)
        if not 1 <= limit <= self.MAX_CONTRACTS_PAGE:
            raise ValueError(f"limit must be 1..{self.MAX_CONTRACTS_PAGE}")
        underlyings = [u.strip() for u in (q.get("underlying_symbols") or "").split(",") if u.strip()] or None
        chosen = select_contracts(self._contract_symbols(), q, underlyings)
        now = self.sim.clock()
        # Every simulated contract is American; it is active until it expires (then inactive, untradable).
        chosen = [c for c in chosen if self.broker.contract_expired(c, now) == (status == "inactive")]
        if style == "european":
            chosen = []
        after = q.get("page_token")
        if after:
            chosen = [c for c in chosen if c > after]
        page = chosen[:limit]
        more = len(chosen) > limit
        return {"option_contracts": [self._contract_json(c) for c in page],
                "next_page_token": page[-1] if more else None}

    def _option_contract(self, request: Request) -> dict:
        """``GET /v2/options/contracts/{symbol or id}``; a 404 for one the simulator does not list."""
        key = request.path_params["symbol_or_id"]
        for c in self._contract_symbols():
            if c == key.upper() or asset_id(c) == key:
                return self._contract_json(c)
        raise BrokerError(404, 40410000, f"option contract not found for {key}")

    def _contract_json(self, symbol: str) -> dict:
        """Alpaca's option contract: American style, 100 shares a contract, the close price the last
        simulated trade's (and its New York date)."""
        from tickvault.alpaca.options import parse_occ

        occ = parse_occ(symbol)
        book = self.sim.options_market.books[symbol]
        last = None
        if book.times:
            last = datetime.fromtimestamp(book.times[-1] / 1e9, calendar.NEW_YORK)
        kind = "call" if occ.option_type == "C" else "put"
        strike = format(occ.strike.normalize(), "f")
        active = not self.broker.contract_expired(symbol)
        return {
            "id": asset_id(symbol),
            "symbol": symbol,
            "name": f"{occ.underlying} {occ.expiration:%b %d %Y} {strike} {kind.capitalize()}",
            "status": "active" if active else "inactive",
            "tradable": active,
            "expiration_date": occ.expiration.isoformat(),
            "root_symbol": occ.underlying,
            "underlying_symbol": occ.underlying,
            "underlying_asset_id": asset_id(occ.underlying),
            "type": kind,
            "style": "american",
            "strike_price": strike,
            "multiplier": "100",
            "size": "100",
            "open_interest": None,
            "open_interest_date": None,
            "close_price": f"{book.cents[-1] / 100:.2f}" if last else None,
            "close_price_date": last.date().isoformat() if last else None,
        }

    # --- time
    def _clock(self, request: Request) -> dict:
        now = self.sim.clock()
        return {
            "timestamp": ns_to_rfc3339(now),
            "is_open": self.broker.is_open(now),
            "next_open": ns_to_rfc3339(self.broker.calendar.next_open(now) or 0),
            "next_close": ns_to_rfc3339(self.broker.calendar.next_close(now) or 0),
        }

    def _calendar(self, request: Request) -> list[dict]:
        q = request.query_params
        try:
            start = date.fromisoformat(q["start"][:10]) if q.get("start") else date(calendar.FIRST_YEAR, 1, 1)
            end = date.fromisoformat(q["end"][:10]) if q.get("end") else date(calendar.LAST_YEAR, 12, 31)
        except ValueError:
            raise ValueError("start and end are dates (YYYY-MM-DD)") from None
        cal = self.broker.calendar
        return [cal.day_json(s) for s in cal.sessions(start, end)]

    # --- the simulator's account control
    async def _sim_activity(self, request: Request) -> Response:
        """``POST /_sim/activities`` ``{"activity_type": "CSD"|"CSW"|"FEE"|"DIV", "amount": "…",
        "symbol": (DIV), "description": …}``: book a cash movement now; answers the activity as
        ``/v2/account/activities`` will list it (422/403 with Alpaca's error body when refused)."""
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise BrokerError(422, 40010001, "the body is a JSON object")
            self.broker.advance()
            activity = self.broker.cash_activity(body.get("activity_type") or "", body.get("amount", ""),
                                                 symbol=body.get("symbol"), description=body.get("description"))
        except BrokerError as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse(activity)

    # --- the simulator's clock control
    async def _sim_clock(self, request: Request) -> Response:
        """``GET /_sim/clock``: the simulated time; ``POST`` ``{"set": RFC3339}``, ``{"advance": seconds}``,
        ``{"to": "next_open"|"next_close"}`` and/or ``{"scale": x}`` move it (forward only: 409 otherwise)."""
        clock = self.sim.clock
        if request.method == "POST":
            if not isinstance(clock, calendar.SimClock):
                return JSONResponse({"message": "this simulator runs on a clock function it cannot move"}, 409)
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("the body is a JSON object")
                if body.get("scale") is not None:
                    clock.set_scale(float(body["scale"]))
                if body.get("set") is not None:
                    clock.set(rfc3339_to_ns(body["set"]))
                if body.get("advance") is not None:
                    clock.advance(float(body["advance"]))
                if body.get("to") is not None:
                    cal = self.broker.calendar
                    target = {"next_open": cal.next_open, "next_close": cal.next_close}.get(body["to"])
                    if target is None:
                        raise ValueError("to is next_open or next_close")
                    clock.set(target(clock()) or clock())
            except (ValueError, TypeError) as exc:
                return JSONResponse({"message": str(exc)}, 409 if "forward" in str(exc) else 422)
            self.broker.advance()
        now = clock()
        return JSONResponse({
            "now": ns_to_rfc3339(now),
            "scale": getattr(clock, "scale", 1.0),
            "hours": self.broker.hours,
            "is_open": self.broker.is_open(now),
            "next_open": ns_to_rfc3339(self.broker.calendar.next_open(now) or 0),
            "next_close": ns_to_rfc3339(self.broker.calendar.next_close(now) or 0),
        })


def _price_of(market) -> Callable[[str], int | None]:
    """A market's last trade price in cents (None: a symbol it does not list)."""

    def price_cents(symbol: str) -> int | None:
        book = market.books.get(symbol)
        return None if book is None else book.price_cents

    return price_cents


def asset_json(symbol: str) -> dict:
    """Alpaca's asset object for a simulated symbol; the id is stable (the one its positions and orders carry)."""
    return {
        "id": asset_id(symbol),
        "class": "us_equity",
        "exchange": ASSET_EXCHANGE,
        "symbol": symbol,
        "name": f"{symbol} Simulated Inc. Common Stock",
        "status": "active",
        "tradable": True,
        "marginable": True,
        "maintenance_margin_requirement": 30,
        "margin_requirement_long": "30",
        "margin_requirement_short": "30",
        "shortable": True,
        "easy_to_borrow": True,
        "fractionable": True,
        "attributes": [],
    }


def crypto_asset_json(pair: str) -> dict:
    """Alpaca's asset object for a simulated crypto pair (its id is the one its orders and position carry)."""
    base = pair.split("/")[0]
    return {
        "id": asset_id(pair),
        "class": "crypto",
        "exchange": "CRYPTO",
        "symbol": pair,
        "name": f"{base} / US Dollar",
        "status": "active",
        "tradable": True,
        "marginable": False,
        "maintenance_margin_requirement": 100,
        "shortable": False,
        "easy_to_borrow": False,
        "fractionable": True,
        "min_order_size": "0.000000001",
        "min_trade_increment": "0.000000001",
        "price_increment": "0.01",
        "attributes": [],
    }
