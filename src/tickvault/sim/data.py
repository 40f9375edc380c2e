"""The simulator's market-data REST: historical and latest trades, quotes and bars, and snapshots.

Served from the market's retained ground truth (:class:`tickvault.sim.market.Market`), paged like
Alpaca: at most ``MAX_PAGE`` items a page across all requested symbols, in symbol order, with an
opaque ``next_page_token`` (symbol and time of the next item) that alpaca-py follows until null.

What it must never do: copy a symbol's history to answer a page (it bisects the time-sorted columns
and reads only the rows it returns), or read the environment.
"""

from __future__ import annotations

import base64
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns
from tickvault.sim.broker import BrokerError
from tickvault.alpaca.crypto import CRYPTO_LOCATIONS
from tickvault.sim.crypto import SIZE_SCALE
from tickvault.sim.market import CONDITIONS, EXCHANGE, MINUTE_NS, TAPE, Market

MAX_PAGE = 10_000  # Alpaca's page limit for historical market data
_TIMEFRAME = re.compile(r"(\d+)(Min|T|Hour|H|Day|D)")
_TF_UNIT_NS = {
    "Min": MINUTE_NS,
    "T": MINUTE_NS,
    "Hour": 60 * MINUTE_NS,
    "H": 60 * MINUTE_NS,
    "Day": 1440 * MINUTE_NS,
    "D": 1440 * MINUTE_NS,
}
_FAR_FUTURE = 2**62
DAY_NS = 1440 * MINUTE_NS


class MarketDataAPI:
    """``/v2/stocks/...`` over one :class:`Market`. ``routes(endpoint)`` wraps each handler with the
    simulator's auth and fault layer."""

    size_scale = 1  # sizes in the truth arrays are whole shares

    def __init__(self, market: Market) -> None:
        self.market = market

    def _trade_item(self, b, i: int) -> dict:
        return _trade_json(b.times[i], b.cents[i], b.sizes[i], b.ids[i])

    def _quote_item(self, b, i: int) -> dict:
        return _quote_json(b.q_times[i], b.q_bid[i], b.q_bid_size[i], b.q_ask[i], b.q_ask_size[i])

    def routes(self, endpoint: Callable[[Callable[[Request], Any]], Any]) -> list[Route]:
        e = endpoint
        return [
            Route("/v2/stocks/trades", e(self._hist_trades)),
            Route("/v2/stocks/quotes", e(self._hist_quotes)),
            Route("/v2/stocks/bars", e(self._hist_bars)),
            Route("/v2/stocks/trades/latest", e(self._latest_trades)),
            Route("/v2/stocks/quotes/latest", e(self._latest_quotes)),
            Route("/v2/stocks/bars/latest", e(self._latest_bars)),
            Route("/v2/stocks/snapshots", e(self._snapshots)),
            Route("/v2/stocks/{symbol}/snapshot", e(self._snapshot)),
        ]

    def _window(self, request: Request) -> tuple[list[str], int, int, int, bool, tuple[str, int] | None]:
        q = request.query_params
        symbols_text = q.get("symbols") or request.path_params.get("symbol") or ""
        symbols = sorted({s.strip().upper() for s in symbols_text.split(",") if s.strip()})
        if not symbols:
            raise ValueError("symbols is required")
        start = rfc3339_to_ns(q["start"]) if q.get("start") else 0
        end = rfc3339_to_ns(q["end"]) if q.get("end") else _FAR_FUTURE
        limit = int(q.get("limit") or 1000)
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        sort = q.get("sort") or "asc"
        if sort not in ("asc", "desc"):
            raise ValueError("sort must be asc or desc")
        token = _decode_token(q["page_token"]) if q.get("page_token") else None
        return symbols, start, end, limit, sort == "asc", token

    def _page(
        self,
        symbols: list[str],
        limit: int,
        asc: bool,
        token: tuple[str, int] | None,
        ranges: Callable[[str], tuple[Any, int, int]],
        row: Callable[[Any, int], dict],
    ) -> tuple[dict[str, list[dict]], str | None]:
        """Page over per-symbol, time-sorted sequences. ``ranges(symbol)`` → (times, lo, hi) of the
        window; the token is (symbol, time of the next item), times being unique per symbol."""
        if not asc:
            symbols = symbols[::-1]
        out: dict[str, list[dict]] = {}
        remaining = limit
        for sym in symbols:
            if token is not None:
                tsym = token[0]
                if (asc and sym < tsym) or (not asc and sym > tsym):
                    continue
            if sym not in self.market.books:
                continue
            times, lo, hi = ranges(sym)
            if token is not None and sym == token[0]:
                if asc:
                    lo = max(lo, bisect_left(times, token[1]))
                else:
                    hi = min(hi, bisect_right(times, token[1]))
            if hi <= lo:
                continue
            if remaining == 0:
                return out, _encode_token(sym, times[lo] if asc else times[hi - 1])
            take = min(hi - lo, remaining)
            idx = range(lo, lo + take) if asc else range(hi - 1, hi - 1 - take, -1)
            out[sym] = [row(sym, i) for i in idx]
            remaining -= take
            if take < hi - lo:
                return out, _encode_token(sym, times[lo + take] if asc else times[hi - 1 - take])
        return out, None

    def _hist_trades(self, request: Request) -> dict:
        symbols, start, end, limit, asc, token = self._window(request)
        books = self.market.books

        def ranges(sym: str) -> tuple[Any, int, int]:
            lo, hi = self.market.trade_range(sym, start, end)
            return books[sym].times, lo, hi

        def row(sym: str, i: int) -> dict:
            b = books[sym]
            return self._trade_item(b, i)

        data, next_token = self._page(symbols, limit, asc, token, ranges, row)
        return {"trades": data, "next_page_token": next_token}

    def _hist_quotes(self, request: Request) -> dict:
        symbols, start, end, limit, asc, token = self._window(request)
        books = self.market.books

        def ranges(sym: str) -> tuple[Any, int, int]:
            lo, hi = self.market.quote_range(sym, start, end)
            return books[sym].q_times, lo, hi

        def row(sym: str, i: int) -> dict:
            b = books[sym]
            return self._quote_item(b, i)

        data, next_token = self._page(symbols, limit, asc, token, ranges, row)
        return {"quotes": data, "next_page_token": next_token}

    def _bars_for(self, symbol: str, start: int, end: int, tf_ns: int) -> tuple[list[int], list[dict]]:
        """Bars aggregated from the retained truth trades, bar start times in [start, end]."""
        book = self.market.books[symbol]
        first = -(-start // tf_ns) * tf_ns  # first bar start >= start
        lo, hi = self.market.trade_range(symbol, first, (end // tf_ns + 1) * tf_ns - 1)
        starts: list[int] = []
        bars: list[dict] = []
        times, cents, sizes = book.times, book.cents, book.sizes
        i = lo
        while i < hi:
            bucket = times[i] - times[i] % tf_ns
            nxt = bucket + tf_ns
            o = h = low = cents[i]
            v = n = pv = 0
            c = o
            while i < hi and times[i] < nxt:
                p, s = cents[i], sizes[i]
                if p > h:
                    h = p
                if p < low:
                    low = p
                c = p
                v += s
                n += 1
                pv += p * s
                i += 1
            starts.append(bucket)
            bars.append(
                {
                    "t": ns_to_rfc3339(bucket),
                    "o": o / 100,
                    "h": h / 100,
                    "l": low / 100,
                    "c": c / 100,
                    "v": v / self.size_scale,
                    "n": n,
                    "vw": pv / v / 100,
                }
            )
        return starts, bars

    def _hist_bars(self, request: Request) -> dict:
        symbols, start, end, limit, asc, token = self._window(request)
        tf = request.query_params.get("timeframe") or "1Min"
        m = _TIMEFRAME.fullmatch(tf)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(f"unsupported timeframe {tf!r} (the simulator serves NMin, NHour, NDay)")
        tf_ns = int(m.group(1)) * _TF_UNIT_NS[m.group(2)]
        cache: dict[str, tuple[list[int], list[dict]]] = {}

        def ranges(sym: str) -> tuple[Any, int, int]:
            cache[sym] = self._bars_for(sym, start, end, tf_ns)
            return cache[sym][0], 0, len(cache[sym][0])

        data, next_token = self._page(symbols, limit, asc, token, ranges, lambda sym, i: cache[sym][1][i])
        return {"bars": data, "next_page_token": next_token}

    def _latest_symbols(self, request: Request) -> list[str]:
        text = request.query_params.get("symbols") or ""
        symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
        if not symbols:
            raise ValueError("symbols is required")
        return [s for s in symbols if s in self.market.books]

    def _latest_trades(self, request: Request) -> dict:
        out = {}
        for s in self._latest_symbols(request):
            b = self.market.books[s]
            if b.ids:
                out[s] = self._trade_item(b, -1)
        return {"trades": out}

    def _latest_quotes(self, request: Request) -> dict:
        out = {}
        for s in self._latest_symbols(request):
            b = self.market.books[s]
            if b.q_times:
                out[s] = self._quote_item(b, -1)
        return {"quotes": out}

    def _latest_bars(self, request: Request) -> dict:
        out = {}
        for s in self._latest_symbols(request):
            b = self.market.books[s]
            if b.times:
                minute = b.times[-1] - b.times[-1] % MINUTE_NS
                _, bars = self._bars_for(s, minute, minute, MINUTE_NS)
                out[s] = bars[-1]
        return {"bars": out}

    # --- snapshots
    def _snapshot_of(self, symbol: str) -> dict | None:
        """Alpaca's snapshot: latest trade and quote, the latest minute bar, the bar of the latest trade's
        day and of the day before it (days as the ``1Day`` bars count them)."""
        b = self.market.books.get(symbol)
        if b is None or not b.times:
            return None
        last = b.times[-1]
        minute = last - last % MINUTE_NS
        day = last - last % DAY_NS
        _, minute_bars = self._bars_for(symbol, minute, minute, MINUTE_NS)
        _, day_bars = self._bars_for(symbol, day - DAY_NS, day, DAY_NS)
        out = {
            "latestTrade": self._trade_item(b, -1),
            "latestQuote": self._quote_item(b, -1) if b.q_times else None,
            "minuteBar": minute_bars[-1],
            "dailyBar": day_bars[-1],
            "prevDailyBar": day_bars[-2] if len(day_bars) > 1 else None,
        }
        return out

    def _snapshots(self, request: Request) -> dict:
        """``GET /v2/stocks/snapshots?symbols=A,B`` → ``{symbol: snapshot}`` (no wrapping key, as Alpaca)."""
        out = {}
        for s in self._latest_symbols(request):
            snap = self._snapshot_of(s)
            if snap is not None:
                out[s] = snap
        return out

    def _snapshot(self, request: Request) -> dict:
        symbol = request.path_params["symbol"].upper()
        snap = self._snapshot_of(symbol) if symbol in self.market.books else None
        if snap is None:
            raise BrokerError(404, 40410000, f"no snapshot for {symbol}")
        return {"symbol": symbol, **snap}


class CryptoDataAPI(MarketDataAPI):
    """``/v1beta3/crypto/{loc}/...`` over a :class:`~tickvault.sim.crypto.CryptoMarket`: historical trades
    (with ``tks``), quotes and bars (fractional volume), latest trades/quotes/bars/orderbooks and
    snapshots, paged exactly like the stock paths. Every location serves the one simulated venue."""

    size_scale = SIZE_SCALE

    def routes(self, endpoint: Callable[[Callable[[Request], Any]], Any]) -> list[Route]:
        e = endpoint
        base = "/v1beta3/crypto/{loc}"
        return [
            Route(f"{base}/trades", e(self._located(self._hist_trades))),
            Route(f"{base}/quotes", e(self._located(self._hist_quotes))),
            Route(f"{base}/bars", e(self._located(self._hist_bars))),
            Route(f"{base}/latest/trades", e(self._located(self._latest_trades))),
            Route(f"{base}/latest/quotes", e(self._located(self._latest_quotes))),
            Route(f"{base}/latest/bars", e(self._located(self._latest_bars))),
            Route(f"{base}/latest/orderbooks", e(self._located(self._latest_orderbooks))),
            Route(f"{base}/snapshots", e(self._located(self._snapshots))),
        ]

    @staticmethod
    def _located(fn: Callable[[Request], dict]) -> Callable[[Request], dict]:
        def handler(request: Request) -> dict:
            if request.path_params["loc"] not in CRYPTO_LOCATIONS:
                raise BrokerError(404, 40410000, f"unknown crypto location {request.path_params['loc']!r}")
            return fn(request)

        return handler

    def _trade_item(self, b, i: int) -> dict:
        return {"t": ns_to_rfc3339(b.times[i]), "p": b.cents[i] / 100, "s": b.sizes[i] / SIZE_SCALE,
                "i": b.ids[i], "tks": "B" if b.sides[i] else "S"}

    def _quote_item(self, b, i: int) -> dict:
        return {"t": ns_to_rfc3339(b.q_times[i]), "bp": b.q_bid[i] / 100, "bs": b.q_bid_size[i] / SIZE_SCALE,
                "ap": b.q_ask[i] / 100, "as": b.q_ask_size[i] / SIZE_SCALE}

    def _latest_orderbooks(self, request: Request) -> dict:
        out = {}
        for s in self._latest_symbols(request):
            book = self.market.orderbook_snapshot(s)
            if book is not None:
                out[s] = {"t": ns_to_rfc3339(book["t"]), "b": book["b"], "a": book["a"]}
        return {"orderbooks": out}

    def _snapshots(self, request: Request) -> dict:
        """Crypto snapshots come wrapped in ``snapshots`` (stocks' are not)."""
        return {"snapshots": super()._snapshots(request)}


class OptionsDataAPI(MarketDataAPI):
    """``/v1beta1/options/...`` over an :class:`~tickvault.sim.options.OptionsMarket`: historical trades
    (no trade id, as Alpaca's) and bars, latest trades and quotes, paged like the stock paths; snapshots
    (``/snapshots?symbols=``) and the option chain of an underlying (``/snapshots/{underlying}``, with
    Alpaca's filters), each contract's latest trade and quote with its Black-Scholes implied volatility
    and greeks against the underlying's last simulated price (:mod:`tickvault.sim.greeks`), paged by
    ``limit`` (≤ 1000) and ``page_token``. The ``feed`` parameter (indicative/opra) is accepted and
    ignored: one simulated tape."""

    MAX_PAGE = 1000

    def __init__(self, market: Market, underlying_price: Callable[[str], float | None] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        super().__init__(market)
        self.underlying_price = underlying_price or (lambda _symbol: None)
        self.clock = clock or time.time_ns

    def routes(self, endpoint: Callable[[Callable[[Request], Any]], Any]) -> list[Route]:
        e = endpoint
        return [
            Route("/v1beta1/options/trades", e(self._hist_trades)),
            Route("/v1beta1/options/bars", e(self._hist_bars)),
            Route("/v1beta1/options/trades/latest", e(self._latest_trades)),
            Route("/v1beta1/options/quotes/latest", e(self._latest_quotes)),
            Route("/v1beta1/options/snapshots", e(self._option_snapshots)),
            Route("/v1beta1/options/snapshots/{underlying}", e(self._option_chain)),
        ]

    def _option_snapshot(self, symbol: str) -> dict | None:
        from tickvault.alpaca.options import parse_occ
        from tickvault.sim import greeks as bs

        b = self.market.books.get(symbol)
        if b is None or not b.times:
            return None
        quote = self._quote_item(b, -1) if b.q_times else None
        out: dict[str, Any] = {"latestTrade": self._trade_item(b, -1), "latestQuote": quote}
        occ = parse_occ(symbol)
        spot = self.underlying_price(occ.underlying)
        t = bs.years_to_expiry(occ.expiration, self.clock())
        price = (quote["bp"] + quote["ap"]) / 2 if quote and quote["bp"] > 0 and quote["ap"] > 0 \
            else out["latestTrade"]["p"]
        call, strike = occ.option_type == "C", float(occ.strike)
        iv = bs.implied_volatility(call, price, spot, strike, t) if spot else None
        if iv is not None:  # Alpaca leaves both out when the price has no implied volatility
            out["impliedVolatility"] = iv
            out["greeks"] = bs.greeks(call, spot, strike, t, iv)._asdict()
        return out

    def _snapshot_page(self, request: Request, symbols: list[str]) -> dict:
        q = request.query_params
        limit = int(q.get("limit") or self.MAX_PAGE)
        if not 1 <= limit <= self.MAX_PAGE:
            raise ValueError(f"limit must be 1..{self.MAX_PAGE}")
        after = q.get("page_token")
        symbols = sorted(s for s in symbols if after is None or s > after)
        out: dict[str, dict] = {}
        for s in symbols:
            snap = self._option_snapshot(s)
            if snap is None:
                continue
            if len(out) == limit:
                return {"snapshots": out, "next_page_token": next(reversed(out))}
            out[s] = snap
        return {"snapshots": out, "next_page_token": None}

    def _option_snapshots(self, request: Request) -> dict:
        """``GET /v1beta1/options/snapshots?symbols=...``: the named contracts (unknown ones left out)."""
        return self._snapshot_page(request, self._latest_symbols(request))

    def _option_chain(self, request: Request) -> dict:
        """``GET /v1beta1/options/snapshots/{underlying}``: every contract on it that Alpaca's filters keep
        (:func:`~tickvault.sim.options.select_contracts`); a bad filter is refused (422) naming it."""
        from tickvault.sim.options import select_contracts

        underlying = request.path_params["underlying"].upper()
        return self._snapshot_page(request, select_contracts(self.market.books, request.query_params, [underlying]))

    def _trade_item(self, b, i: int) -> dict:
        from tickvault.sim.options import OPTION_EXCHANGES

        return {"t": ns_to_rfc3339(b.times[i]), "x": OPTION_EXCHANGES[b.venues[i]], "p": b.cents[i] / 100,
                "s": b.sizes[i], "c": "I"}

    def _quote_item(self, b, i: int) -> dict:
        return {"t": ns_to_rfc3339(b.q_times[i]), "bx": "C", "bp": b.q_bid[i] / 100, "bs": b.q_bid_size[i],
                "ax": "X", "ap": b.q_ask[i] / 100, "as": b.q_ask_size[i], "c": "A"}


# ---------------------------------------------------------------------- helpers
def _trade_json(t: int, cents: int, size: int, tid: int) -> dict:
    return {
        "t": ns_to_rfc3339(t),
        "x": EXCHANGE,
        "p": cents / 100,
        "s": size,
        "c": list(CONDITIONS),
        "i": tid,
        "z": TAPE,
    }


def _quote_json(t: int, bid: int, bid_size: int, ask: int, ask_size: int) -> dict:
    return {
        "t": ns_to_rfc3339(t),
        "ax": EXCHANGE,
        "ap": ask / 100,
        "as": ask_size,
        "bx": EXCHANGE,
        "bp": bid / 100,
        "bs": bid_size,
        "c": ["R"],
        "z": TAPE,
    }


def _encode_token(symbol: str, time_ns: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{time_ns}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, t = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return symbol, int(t)
    except Exception:  # noqa: BLE001
        raise ValueError("invalid page_token") from None
