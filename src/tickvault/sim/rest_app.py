"""The simulator's REST app: Alpaca's data and trading paths behind auth and the REST faults, plus the
``/_sim`` control paths (faults, truth, stats: no auth, no faults, loopback only).

Market data is :mod:`tickvault.sim.data`, trading :mod:`tickvault.sim.trading`; this module wraps each
endpoint (:meth:`SimREST.endpoint`): latency and failure faults first, then the key headers, then the
handler, errors as Alpaca's JSON bodies. It owns the REST fault state (``rest_fail``, ``rest_latency``,
``rest_fail_rate``); :mod:`tickvault.sim.faults` sets it. Never logs a key; holds no request state.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msgpack import Timestamp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns
from tickvault.sim.broker import BrokerError
from tickvault.sim.data import CryptoDataAPI, MarketDataAPI, OptionsDataAPI
from tickvault.sim.market_stream import NEWS_PATH

if TYPE_CHECKING:
    from tickvault.sim.server import Simulator

__all__ = ["SimREST"]


class SimREST:
    """The REST side of one :class:`~tickvault.sim.server.Simulator`."""

    def __init__(self, sim: Simulator, seed: int) -> None:
        self.sim = sim
        self.stats = sim.stats
        self.in_flight = 0
        # Fault state (set by tickvault.sim.faults).
        self.fail: tuple[int, int, float | None] = (0, 0, None)  # (status, count, retry_after)
        self.latency_s = 0.0
        self.fail_rates: dict[int, float] = {}  # status → share of REST requests answered with it
        self.fault_rng = random.Random(seed)  # draws for rate-based faults: a seed repeats a run's faults

    def app(self) -> Starlette:
        sim = self.sim
        routes = [
            *MarketDataAPI(sim.market).routes(self.endpoint),
            *CryptoDataAPI(sim.crypto_market).routes(self.endpoint),
            *(OptionsDataAPI(sim.options_market, sim.underlying_price, sim.clock).routes(self.endpoint)
              if sim.options_market else []),
            Route(NEWS_PATH, self.endpoint(self._news_history)),
            *sim.trading.routes(self.endpoint),
            *sim.trading.control_routes(),
            Route("/_sim/faults", self._sim_faults, methods=["POST"]),
            Route("/_sim/truth", self._sim_truth),
            Route("/_sim/stats", self._sim_stats),
        ]
        return Starlette(routes=routes)

    def draw_fault(self) -> int:
        """The status a rate-based fault answers this request with (0: none), from the seeded generator."""
        draw = self.fault_rng.random()
        for status, rate in self.fail_rates.items():
            if draw < rate:
                return status
            draw -= rate
        return 0

    def endpoint(self, fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Wrap an Alpaca endpoint: latency and failure faults, auth headers, errors as Alpaca's JSON."""
        sim = self.sim

        async def endpoint(request: Request) -> Response:
            self.stats["rest_requests"] += 1
            self.in_flight += 1  # concurrency is observed here, not inferred from timings
            self.stats["rest_in_flight_max"] = max(self.stats["rest_in_flight_max"], self.in_flight)
            try:
                return await answer(request)
            finally:
                self.in_flight -= 1

        async def answer(request: Request) -> Response:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            status, count, retry_after = self.fail
            if count <= 0 and self.fail_rates:
                status = self.draw_fault()
                count = 1 if status else 0
            elif count > 0:
                self.fail = (status, count - 1, retry_after)
            if count > 0:
                self.stats["rest_faults"] += 1
                headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
                message = "too many requests." if status == 429 else "internal server error (simulated)"
                return JSONResponse({"code": status * 100000, "message": message}, status, headers=headers)
            if (
                request.headers.get("APCA-API-KEY-ID") != sim.key
                or request.headers.get("APCA-API-SECRET-KEY") != sim.secret
            ):
                return JSONResponse({"code": 40110000, "message": "request is not authorized"}, 401)
            sim.broker.advance()  # the simulated clock acts before the request is answered
            try:
                result = fn(request)
                if asyncio.iscoroutine(result):
                    result = await result
            except BrokerError as exc:
                return JSONResponse(exc.body(), exc.status)
            except (ValueError, KeyError) as exc:
                return JSONResponse({"code": 42210000, "message": f"invalid request: {exc}"}, 422)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return endpoint

    def _news_history(self, request: Request) -> dict:
        """``GET /v1beta1/news``: the newest version of each article, Alpaca's parameters and paging."""
        q = request.query_params
        symbols = {s.strip().upper() for s in (q.get("symbols") or "").split(",") if s.strip()} or None
        sort = q.get("sort") or "desc"
        if sort not in ("asc", "desc"):
            raise ValueError("sort must be asc or desc")
        return self.sim.news.page(
            symbols=symbols, start_ns=rfc3339_to_ns(q["start"]) if q.get("start") else 0,
            end_ns=rfc3339_to_ns(q["end"]) if q.get("end") else 2**62, limit=int(q.get("limit") or 10),
            asc=sort == "asc", token=q.get("page_token") or None,
            include_content=(q.get("include_content") or "").lower() == "true",
        )

    # --- simulator control (no auth, no faults: loopback only)
    async def _sim_faults(self, request: Request) -> Response:
        try:
            body = await request.json()
            specs = body if isinstance(body, list) else [body]
            results = [self.sim.apply_fault(spec) for spec in specs]
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"message": str(exc)}, 422)
        return JSONResponse({"applied": len(results), "results": [_jsonable(r) for r in results]})

    def _sim_truth(self, request: Request) -> Response:
        sim = self.sim
        sym = request.query_params.get("symbol")
        sums = {sym: sim.truth_checksum(sym)} if sym else sim.truth_checksum()
        return JSONResponse(
            {
                "count": sim.truth_count(sym) if sym else sim.truth_count(),
                "finished": sim.finished.is_set(),
                "formula": "count, sum(trade_id), sum(time_ns % 1000003), sum((time_ns/1000) % 1000003), "
                "sum(round(price*100)), sum(size)",
                "symbols": {s: cs._asdict() for s, cs in sums.items()},
                "corrections": len(sim.corrections),
                "cancels": len(sim.cancels),
            }
        )

    def _sim_stats(self, request: Request) -> Response:
        sim = self.sim
        return JSONResponse(dict(self.stats, clients=len(sim.market_stream.clients), truth_count=sim.truth_count()))


def _jsonable(value: Any) -> Any:
    """A fault's result as JSON: wire messages hold msgpack Timestamps, shown as RFC 3339 (Alpaca's JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Timestamp):
        return ns_to_rfc3339(value.to_unix_nano())
    return repr(value)
