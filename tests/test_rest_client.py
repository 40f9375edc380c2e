"""AlpacaREST and the shared HTTP client against a real scripted HTTP server on 127.0.0.1.

The server is a small Starlette app under uvicorn, in its own thread and event loop, on a port the
kernel picks. It speaks the Alpaca REST paths tickvault uses, answers scripted sequences per
(method, path) — 429 with Retry-After, 5xx, hangs past the client's timeout, 504 after the order was
really created — and counts TCP connections by the client's source port (``scope["client"]``).
No mocks, no ``httpx.MockTransport``: every byte goes over loopback.

Synchronisation: the listening socket is bound and listening before the server thread starts, so
the kernel queues connections until uvicorn accepts them; hung handlers wait on an event released
at reset. Nothing sleeps to wait for something else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import statistics
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tickvault.alpaca.errors import (
    AlpacaError,
    AuthError,
    ClientError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    UnprocessableError,
)
from tickvault.alpaca.models import (
    HistTrade,
    OrderRequest,
    format_rfc3339,
    parse_rfc3339_ns,
)
from tickvault.alpaca.rest import AlpacaREST, RetryPolicy, collect, parse_retry_after
from tickvault.config import Settings
from tickvault.http import aclose_http_client, build_http_client, get_http_client, pool_stats

KEY_ID = "PKTESTKEYID7Q3Z"
SECRET = "sEcReT-9f8e7d6c5b4a-never-print-me"
POOL = 5
MAX_RETRIES = 3

# --------------------------------------------------------------------------------------------
# the scripted Alpaca server


@dataclass
class Step:
    """One scripted answer. ``process``: run the real handler first (the order is created) and then
    answer ``status`` anyway — the ambiguous failure. ``hang``: never answer (until reset)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    process: bool = False
    hang: bool = False


def _alpaca_error(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


SYMBOLS = ("AAA", "BBB", "CCC")
N_TRADES = 2_500  # per symbol: pages of 1,000 cross symbol boundaries mid-page
N_FILLS = 250


def _trade_rows() -> list[tuple[str, int, str]]:
    """(symbol, exact ns, JSON text) sorted as Alpaca pages them: by symbol, then time."""
    rows = []
    base = parse_rfc3339_ns("2024-03-04T14:30:00Z")
    for k, sym in enumerate(SYMBOLS):
        for i in range(N_TRADES):
            ns = base + i * 1_000_003_007 + k  # odd nanoseconds: any float detour would show
            sec, frac = divmod(ns, 1_000_000_000)
            t = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
            # 18 significant digits: more than a float holds, so exactness is visible.
            price = f"{100 + k}.{i:06d}123456789"
            rows.append(
                (
                    sym,
                    ns,
                    f'{{"t":"{t}","x":"V","p":{price},"s":{i % 500 + 1},"c":["@"],"i":{i + 1},"z":"C"}}',
                )
            )
    return rows


TRADE_ROWS = _trade_rows()


class ScriptedAlpaca:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.reset()

    def reset(self) -> None:
        self.scripts: dict[tuple[str, str], deque[Step]] = defaultdict(deque)
        self.hits: Counter[tuple[str, str]] = Counter()
        self.queries: list[tuple[str, str, dict[str, str]]] = []
        self.client_ports: set[int] = set()
        self.auth_seen: set[tuple[str | None, str | None]] = set()
        self.orders: dict[str, dict[str, Any]] = {}
        self.latency_s = 0.0
        self.release = asyncio.Event()
        self.created = 0

    def script(self, method: str, path: str, *steps: Step) -> None:
        self.scripts[(method, path)].extend(steps)

    def release_hangs(self) -> None:
        self.loop.call_soon_threadsafe(self.release.set)

    # ---- ASGI
    def asgi(self):
        inner = Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["GET", "POST", "DELETE"])])

        async def app(scope, receive, send):
            if scope["type"] == "http":
                self.client_ports.add(scope["client"][1])  # one source port = one TCP connection
            await inner(scope, receive, send)

        return app

    async def endpoint(self, request: Request) -> Response:
        key = (request.method, request.url.path)
        self.hits[key] += 1
        self.queries.append((request.method, request.url.path, dict(request.query_params)))
        self.auth_seen.add(
            (request.headers.get("apca-api-key-id"), request.headers.get("apca-api-secret-key"))
        )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)  # simulated service time, not synchronisation
        queue = self.scripts.get(key)
        step = queue.popleft() if queue else None
        if step is None:
            return await self.default(request)
        if step.process:
            await self.default(request)
        if step.hang:
            await self.release.wait()
        return Response(step.body, step.status, headers=step.headers, media_type="application/json")

    # ---- default Alpaca behaviour
    async def default(self, request: Request) -> Response:
        path, method, q = request.url.path, request.method, request.query_params
        if (request.headers.get("apca-api-key-id"), request.headers.get("apca-api-secret-key")) != (
            KEY_ID,
            SECRET,
        ):
            return _json(_alpaca_error(40110000, "request is not authorized"), 401)
        if path == "/v2/account":
            return _json(
                b'{"id":"acc-1","account_number":"PA1","status":"ACTIVE","currency":"USD",'
                b'"cash":"12345678901234567890.123456789","equity":"100000.01","buying_power":"200000.02",'
                b'"portfolio_value":"100000.01","pattern_day_trader":false,"some_new_field":{"x":1}}'
            )
        if path == "/v2/positions":
            return _json(
                b'[{"asset_id":"a1","symbol":"AAA","exchange":"NASDAQ","asset_class":"us_equity",'
                b'"avg_entry_price":"101.10","qty":"3.000000001","side":"long","cost_basis":"303.30",'
                b'"market_value":"310.00","unrealized_pl":"6.70","qty_available":"3"}]'
            )
        if path == "/v2/orders" and method == "POST":
            body = json.loads(await request.body())
            cid = body.get("client_order_id") or f"auto-{len(self.orders)}"
            if cid in self.orders:
                return _json(_alpaca_error(40010001, "client_order_id must be unique"), 422)
            self.created += 1
            order = {
                "id": f"ord-{self.created}",
                "client_order_id": cid,
                "created_at": "2024-03-04T14:30:00.123456789Z",
                "updated_at": "2024-03-04T14:30:00.123456789Z",
                "submitted_at": "2024-03-04T14:30:00.123456789Z",
                "filled_at": None,
                "symbol": body["symbol"],
                "qty": body.get("qty"),
                "notional": body.get("notional"),
                "filled_qty": "0",
                "filled_avg_price": None,
                "order_class": "",
                "order_type": body["type"],
                "type": body["type"],
                "side": body["side"],
                "time_in_force": body["time_in_force"],
                "limit_price": body.get("limit_price"),
                "status": "accepted",
                "extended_hours": False,
                "legs": None,
            }
            self.orders[cid] = order
            return _json(json.dumps(order).encode())
        if path == "/v2/orders" and method == "GET":
            return _json(json.dumps(list(self.orders.values())).encode())
        if path == "/v2/orders:by_client_order_id":
            order = self.orders.get(q.get("client_order_id", ""))
            if order is None:
                return _json(_alpaca_error(40410000, "order not found"), 404)
            return _json(json.dumps(order).encode())
        if path.startswith("/v2/orders/"):
            oid = path.rsplit("/", 1)[1]
            match = [o for o in self.orders.values() if o["id"] == oid]
            if not match:
                return _json(_alpaca_error(40410000, "order not found"), 404)
            if method == "DELETE":
                match[0]["status"] = "canceled"
                return Response(status_code=204)
            return _json(json.dumps(match[0]).encode())
        if path == "/v2/account/activities/FILL":
            size = int(q.get("page_size", "100"))
            start = int(q["page_token"].split("-")[1]) + 1 if "page_token" in q else 0
            rows = [
                f'{{"id":"fill-{i:05d}","activity_type":"FILL","transaction_time":"2024-03-04T15:00:{i % 60:02d}.5Z",'
                f'"type":"fill","price":"10.{i:04d}","qty":"1","side":"buy","symbol":"AAA","leaves_qty":"0",'
                f'"order_id":"o{i}","cum_qty":"1","order_status":"filled"}}'
                for i in range(start, min(start + size, N_FILLS))
            ]
            return _json(("[" + ",".join(rows) + "]").encode())
        if path == "/v2/stocks/trades":
            wanted = set(q["symbols"].split(","))
            start, end = parse_rfc3339_ns(q["start"]), parse_rfc3339_ns(q["end"])
            rows = [r for r in TRADE_ROWS if r[0] in wanted and start <= r[1] <= end]
            offset = int(q.get("page_token") or 0)
            limit = int(q["limit"])
            page = rows[offset : offset + limit]
            grouped: dict[str, list[str]] = defaultdict(list)
            for sym, _, text in page:
                grouped[sym].append(text)
            token = f'"{offset + limit}"' if offset + limit < len(rows) else "null"
            inner = ",".join(f'"{s}":[{",".join(items)}]' for s, items in grouped.items())
            return _json(f'{{"trades":{{{inner}}},"next_page_token":{token}}}'.encode())
        if path == "/v2/stocks/trades/latest":
            items = ",".join(
                f'"{s}":{{"t":"2024-03-04T15:59:59.999999999Z","x":"V","p":123.4500000000000001,"s":7,'
                f'"c":["@"],"i":99,"z":"C","new_field":1}}'
                for s in q["symbols"].split(",")
            )
            return _json(f'{{"trades":{{{items}}}}}'.encode())
        if path == "/v2/stocks/quotes/latest":
            items = ",".join(
                f'"{s}":{{"t":"2024-03-04T15:59:59.000000001Z","bx":"V","bp":99.99,"bs":1,"ax":"V",'
                f'"ap":100.0100000000000000001,"as":2,"c":["R"],"z":"C"}}'
                for s in q["symbols"].split(",")
            )
            return _json(f'{{"quotes":{{{items}}}}}'.encode())
        return _json(_alpaca_error(40410000, "endpoint not found"), 404)


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type="application/json")


class ServerThread:
    """uvicorn in a daemon thread, on a socket bound and listening before the thread starts."""

    def __init__(self, state: ScriptedAlpaca) -> None:
        self.state = state
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says so; with proto 0 the server's header and body writes meet Nagle + delayed ACK (+40 ms).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            state.asgi(), lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="scripted-alpaca", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.state.loop)
        self.state.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.state.release_hangs()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.state.loop.close()


@pytest.fixture(scope="module")
def server():
    state = ScriptedAlpaca()
    thread = ServerThread(state).start()
    yield thread
    thread.stop()


@pytest.fixture
def alpaca(server):
    """The scripted server's state, fresh for each test."""
    server.state.reset()
    yield server.state
    server.state.release_hangs()


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "alpaca_key_id": KEY_ID,
        "alpaca_secret_key": SECRET,
        "alpaca_trading_url": url,
        "alpaca_data_url": url,
        "http_timeout_s": 2.0,
        "http_max_connections": POOL,
        "http_max_retries": MAX_RETRIES,
    }
    values.update(overrides)
    return Settings(**values)


FAST_RETRY = RetryPolicy(max_retries=MAX_RETRIES, backoff_base_s=0.01, backoff_cap_s=0.05)


@pytest.fixture
def settings(server) -> Settings:
    return make_settings(server.url)


@pytest_asyncio.fixture(loop_scope="function")
async def rest(settings, alpaca):
    client = build_http_client(settings)
    try:
        yield AlpacaREST(settings, client, retry=FAST_RETRY)
    finally:
        await client.aclose()


def hits(alpaca: ScriptedAlpaca, method: str, path: str) -> int:
    return alpaca.hits[(method, path)]


# --------------------------------------------------------------------------------------------
# retries


async def test_server_error_then_success_is_retried(rest, alpaca):
    alpaca.script("GET", "/v2/account", Step(500), Step(502), Step(503))
    account = await rest.get_account()
    assert account.id == "acc-1"
    assert hits(alpaca, "GET", "/v2/account") == 4


async def test_server_error_after_all_retries_raises_server_error_with_attempts(rest, alpaca):
    alpaca.script(
        "GET", "/v2/positions", *[Step(503, _alpaca_error(50300000, "try later"))] * (MAX_RETRIES + 1)
    )
    with pytest.raises(ServerError) as info:
        await rest.get_positions()
    err = info.value
    assert (err.status, err.attempts, err.code, err.alpaca_message) == (
        503,
        MAX_RETRIES + 1,
        50300000,
        "try later",
    )
    assert "GET /v2/positions" in str(err) and f"after {MAX_RETRIES + 1} attempts" in str(err)
    assert hits(alpaca, "GET", "/v2/positions") == MAX_RETRIES + 1


async def test_429_retry_after_seconds_is_honoured(rest, alpaca):
    alpaca.script("GET", "/v2/account", Step(429, headers={"Retry-After": "0.2"}))
    started = time.monotonic()
    await rest.get_account()
    assert time.monotonic() - started >= 0.2
    assert hits(alpaca, "GET", "/v2/account") == 2


async def test_429_on_every_attempt_raises_rate_limit_error(rest, alpaca):
    alpaca.script("GET", "/v2/account", *[Step(429, headers={"Retry-After": "0"})] * (MAX_RETRIES + 1))
    with pytest.raises(RateLimitError) as info:
        await rest.get_account()
    assert info.value.attempts == MAX_RETRIES + 1 and info.value.retry_after == 0
    assert hits(alpaca, "GET", "/v2/account") == MAX_RETRIES + 1


async def test_retry_after_longer_than_policy_fails_fast_with_retry_after(settings, alpaca):
    client = build_http_client(settings)
    rest = AlpacaREST(settings, client, retry=RetryPolicy(max_retries=3, max_retry_after_s=1.0))
    alpaca.script("GET", "/v2/account", Step(429, headers={"Retry-After": "120"}))
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        await rest.get_account()
    await client.aclose()
    # Not slept through: far below the 120 s asked (a generous bound, not a speed requirement).
    assert time.monotonic() - started < 60
    assert info.value.retry_after == 120 and info.value.attempts == 1


def test_retry_after_http_date_and_backoff_bounds():
    now = datetime(2024, 3, 4, 14, 30, tzinfo=UTC).timestamp()
    assert parse_retry_after("Mon, 04 Mar 2024 14:30:03 GMT", now=now) == 3.0
    assert parse_retry_after("Mon, 04 Mar 2024 14:29:00 GMT", now=now) == 0.0
    assert (
        parse_retry_after("1.5") == 1.5
        and parse_retry_after("soon") is None
        and parse_retry_after(None) is None
    )
    policy = RetryPolicy(backoff_base_s=0.25, backoff_cap_s=2.0)
    for n, ceiling in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (8, 2.0)]:
        samples = [policy.backoff(n) for _ in range(2000)]
        assert 0 <= min(samples) and max(samples) <= ceiling
        assert (
            ceiling * 0.4 < statistics.fmean(samples) < ceiling * 0.6
        )  # full jitter: uniform on [0, ceiling]


async def test_read_timeout_is_retried(server, alpaca):
    settings = make_settings(server.url, http_timeout_s=0.25)
    client = build_http_client(settings)
    rest = AlpacaREST(settings, client, retry=FAST_RETRY)
    alpaca.script("GET", "/v2/account", Step(hang=True))
    started = time.monotonic()
    account = await rest.get_account()
    assert account.cash == Decimal("12345678901234567890.123456789")
    assert time.monotonic() - started >= 0.25
    assert hits(alpaca, "GET", "/v2/account") == 2
    alpaca.script("GET", "/v2/positions", *[Step(hang=True)] * (MAX_RETRIES + 1))
    with pytest.raises(TransportError) as info:
        await rest.get_positions()
    assert info.value.attempts == MAX_RETRIES + 1 and "ReadTimeout" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    await client.aclose()


async def test_connect_error_is_retried_then_raises_transport_error():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()  # nothing listens there now: connection refused
    settings = make_settings(dead_url)
    client = build_http_client(settings)
    rest = AlpacaREST(settings, client, retry=FAST_RETRY)
    with pytest.raises(TransportError) as info:
        await rest.get_account()
    await client.aclose()
    assert info.value.attempts == MAX_RETRIES + 1 and info.value.status is None
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, AuthError), (403, AuthError), (404, NotFoundError), (422, UnprocessableError), (400, ClientError)],
)
async def test_non_retryable_status_raises_its_class_at_once(rest, alpaca, status, cls):
    alpaca.script("GET", "/v2/account", Step(status, _alpaca_error(status * 100000, f"refused {status}")))
    with pytest.raises(cls) as info:
        await rest.get_account()
    assert info.value.status == status and info.value.attempts == 1
    assert info.value.alpaca_message == f"refused {status}" and info.value.code == status * 100000
    assert hits(alpaca, "GET", "/v2/account") == 1


async def test_wrong_keys_raise_auth_error(server, alpaca):
    settings = make_settings(server.url, alpaca_secret_key="wrong-secret-value")
    client = build_http_client(settings)
    with pytest.raises(AuthError, match="request is not authorized"):
        await AlpacaREST(settings, client, retry=FAST_RETRY).get_account()
    await client.aclose()
    assert hits(alpaca, "GET", "/v2/account") == 1


# --------------------------------------------------------------------------------------------
# order submission


def _order(cid: str | None = "cid-1") -> OrderRequest:
    return OrderRequest(
        symbol="AAA",
        side="buy",
        qty=Decimal("2.5"),
        type="limit",
        limit_price=Decimal("101.17"),
        client_order_id=cid,
    )


async def test_submit_is_idempotent_after_ambiguous_504(rest, alpaca):
    alpaca.script("POST", "/v2/orders", Step(504, process=True))  # the order landed, the answer did not
    order = await rest.submit_order(_order("cid-504"))
    assert order.client_order_id == "cid-504" and order.id == "ord-1"
    assert order.qty == Decimal("2.5") and order.limit_price == Decimal("101.17")
    assert order.created_at == datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)
    assert alpaca.created == 1
    assert hits(alpaca, "POST", "/v2/orders") == 2  # the retry was refused as a duplicate ...
    assert hits(alpaca, "GET", "/v2/orders:by_client_order_id") == 1  # ... so the order was fetched


async def test_submit_is_idempotent_after_read_timeout(server, alpaca):
    settings = make_settings(server.url, http_timeout_s=0.25)
    client = build_http_client(settings)
    alpaca.script("POST", "/v2/orders", Step(process=True, hang=True))
    order = await AlpacaREST(settings, client, retry=FAST_RETRY).submit_order(_order("cid-timeout"))
    await client.aclose()
    assert order.id == "ord-1" and alpaca.created == 1
    assert hits(alpaca, "POST", "/v2/orders") == 2


async def test_submit_without_client_order_id_is_not_retried_after_ambiguous_failure(rest, alpaca):
    alpaca.script("POST", "/v2/orders", Step(504, process=True))
    with pytest.raises(ServerError) as info:
        await rest.submit_order(_order(None))
    assert info.value.attempts == 1 and hits(alpaca, "POST", "/v2/orders") == 1 and alpaca.created == 1


async def test_submit_without_client_order_id_is_retried_on_429(rest, alpaca):
    alpaca.script("POST", "/v2/orders", Step(429, headers={"Retry-After": "0"}))
    order = await rest.submit_order(_order(None))
    assert order.status == "accepted" and hits(alpaca, "POST", "/v2/orders") == 2 and alpaca.created == 1


async def test_reusing_a_client_order_id_is_an_error_without_ambiguity(rest, alpaca):
    await rest.submit_order(_order("cid-dup"))
    with pytest.raises(UnprocessableError, match="client_order_id must be unique"):
        await rest.submit_order(_order("cid-dup"))
    assert hits(alpaca, "POST", "/v2/orders") == 2 and alpaca.created == 1


async def test_orders_round_trip(rest, alpaca):
    placed = await rest.submit_order(_order("cid-rt"))
    assert (await rest.get_order(placed.id)) == placed
    assert (await rest.get_order_by_client_id("cid-rt")) == placed
    listed = await rest.list_orders(
        status="all", after="2024-03-01T00:00:00Z", symbols=["AAA", "BBB"], limit=7
    )
    assert [o.id for o in listed] == [placed.id]
    assert alpaca.queries[-1][2] == {
        "status": "all",
        "limit": "7",
        "direction": "desc",
        "after": "2024-03-01T00:00:00Z",
        "symbols": "AAA,BBB",
    }
    assert await rest.cancel_order(placed.id) is None
    assert (await rest.get_order(placed.id)).status == "canceled"
    with pytest.raises(NotFoundError):
        await rest.get_order("no-such-order")


def test_order_request_validation_and_wire_form():
    with pytest.raises(ValueError):
        OrderRequest(symbol="A", side="buy")  # neither qty nor notional
    with pytest.raises(ValueError):
        OrderRequest(symbol="A", side="buy", qty=Decimal(1), notional=Decimal(1))
    with pytest.raises(ValueError):
        OrderRequest(symbol="A", side="buy", qty=Decimal(1), type="limit")  # no limit_price
    wire = _order("c").to_wire()
    assert wire == {
        "symbol": "AAA",
        "side": "buy",
        "qty": "2.5",
        "type": "limit",
        "time_in_force": "day",
        "limit_price": "101.17",
        "client_order_id": "c",
    }


# --------------------------------------------------------------------------------------------
# typed results, paging


async def test_account_and_positions_are_exact_decimals(rest, alpaca):
    account, positions = await asyncio.gather(rest.get_account(), rest.get_positions())
    assert account.cash == Decimal("12345678901234567890.123456789")
    assert account.buying_power == Decimal("200000.02") and account.pattern_day_trader is False
    assert positions[0].qty == Decimal("3.000000001") and positions[0].unrealized_pl == Decimal("6.70")
    assert alpaca.auth_seen == {(KEY_ID, SECRET)}


async def test_latest_prices_keep_every_digit_of_json_numbers(rest):
    trades, quotes = await asyncio.gather(rest.latest_trades(["AAA", "BBB"]), rest.latest_quotes("AAA"))
    assert trades["AAA"].price == Decimal("123.4500000000000001")  # 19 significant digits: no float detour
    assert trades["BBB"].time_ns == parse_rfc3339_ns("2024-03-04T15:59:59.999999999Z")
    assert trades["BBB"].time_ns % 1_000_000_000 == 999_999_999
    assert trades["AAA"].timestamp == datetime(2024, 3, 4, 15, 59, 59, 999999, tzinfo=UTC)
    assert quotes["AAA"].ask_price == Decimal("100.0100000000000000001")
    assert quotes["AAA"].time_ns % 1_000_000_000 == 1


async def test_historical_trades_follow_next_page_token_to_the_end(rest, alpaca):
    start, end = "2024-03-04T14:30:00Z", "2024-03-04T16:00:00Z"
    expected_rows = [r for r in TRADE_ROWS if r[0] in ("AAA", "CCC")]
    pages = []
    async for page in rest.historical_trades(["AAA", "CCC"], start, end, feed="iex", limit=1000):
        assert len(page) <= 1000
        pages.append(page)
    trades = [t for page in pages for t in page]
    assert len(pages) == math.ceil(len(expected_rows) / 1000) == hits(alpaca, "GET", "/v2/stocks/trades")
    assert [(t.symbol, t.time_ns) for t in trades] == [(s, ns) for s, ns, _ in expected_rows]
    assert all(isinstance(t, HistTrade) for t in trades)
    t = trades[1234]
    assert (
        t.price == Decimal(f"100.{1234:06d}123456789") and t.size == Decimal(1234 % 500 + 1) and t.id == 1235
    )
    tokens = [q[2].get("page_token") for q in alpaca.queries if q[1] == "/v2/stocks/trades"]
    assert tokens == [None] + [str(1000 * k) for k in range(1, len(pages))]
    first = next(q[2] for q in alpaca.queries if q[1] == "/v2/stocks/trades")
    assert first["feed"] == "iex" and first["sort"] == "asc" and first["symbols"] == "AAA,CCC"


async def test_fill_activities_page_by_last_id(rest, alpaca):
    fills = await collect(rest.fill_activities(after=datetime(2024, 3, 4, tzinfo=UTC), page_size=100))
    assert [f.id for f in fills] == [f"fill-{i:05d}" for i in range(N_FILLS)]
    assert fills[7].price == Decimal("10.0007") and fills[7].transaction_time.tzinfo == UTC
    tokens = [q[2].get("page_token") for q in alpaca.queries if q[1] == "/v2/account/activities/FILL"]
    assert tokens == [None, "fill-00099", "fill-00199"]


def test_rfc3339_parser_is_exact_to_the_nanosecond():
    assert parse_rfc3339_ns("1970-01-01T00:00:00Z") == 0
    assert parse_rfc3339_ns("2024-01-02T14:30:00.123456789Z") == 1_704_205_800_123_456_789
    assert parse_rfc3339_ns("2024-01-02T09:30:00.5-05:00") == 1_704_205_800_500_000_000
    assert parse_rfc3339_ns("1969-12-31T23:59:59.999999999Z") == -1
    for ns in (1_704_205_800_123_456_789, 1, 10**18 + 7):
        assert parse_rfc3339_ns(format_rfc3339(ns)) == ns
    for bad in ("2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-01-02 14:30", "2024-01-02T14:30:00.Z"):
        with pytest.raises(ValueError):
            parse_rfc3339_ns(bad)


# --------------------------------------------------------------------------------------------
# secrets


async def test_secrets_never_appear_in_errors_reprs_or_logs(rest, alpaca, caplog):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at DEBUG
    # A hostile server echoing the secret back must not get it into our exception.
    alpaca.script("GET", "/v2/account", Step(500), Step(401, _alpaca_error(40110000, f"bad secret {SECRET}")))
    with pytest.raises(AuthError) as info:
        await rest.get_account()
    alpaca.script("GET", "/v2/positions", *[Step(503, SECRET.encode())] * (MAX_RETRIES + 1))
    with pytest.raises(ServerError) as info2:
        await rest.get_positions()
    texts = [str(info.value), repr(info.value), str(info2.value), repr(info2.value), repr(rest), caplog.text]
    assert "retry 1/3" in caplog.text  # retries were logged ...
    for text in texts:
        assert SECRET not in text and KEY_ID not in text  # ... without a credential anywhere
    assert "****" in str(info.value) and "****" in str(info2.value)


# --------------------------------------------------------------------------------------------
# the shared client and its pool


async def test_hundred_gathered_calls_open_no_more_connections_than_the_pool(settings, alpaca):
    alpaca.latency_s = 0.005  # each call holds its connection a little: the pool is really contended
    client = get_http_client(settings)
    assert get_http_client(settings) is client  # one client for the whole flow run
    rest = AlpacaREST(settings, retry=FAST_RETRY)  # no client given: uses the shared one
    try:
        calls = [rest.get_account() for _ in range(50)] + [rest.get_positions() for _ in range(50)]
        results = await asyncio.gather(*calls)
        assert len(results) == 100
        stats = pool_stats(client)
        assert stats.max_connections == POOL
        assert 1 < len(alpaca.client_ports) <= POOL  # server's view: distinct TCP connections
        assert stats.connections_opened == len(alpaca.client_ports)  # client's view agrees
        assert stats.requests == 100 and stats.open_connections <= POOL
        ports_after_first_burst = set(alpaca.client_ports)
        await asyncio.gather(*[rest.get_account() for _ in range(100)])
        assert alpaca.client_ports == ports_after_first_burst  # keep-alive: the second burst reused them
    finally:
        await aclose_http_client()
    assert client.is_closed and get_http_client(settings) is not client
    await aclose_http_client()


def test_shared_client_is_rebuilt_when_its_event_loop_is_closed(settings):
    async def grab():
        return get_http_client(settings)

    first = asyncio.run(grab())  # asyncio.run closes its loop afterwards
    second = asyncio.run(grab())
    assert first is not second  # a client never outlives its loop

    async def twice():
        a, b = get_http_client(settings), get_http_client(settings)
        await aclose_http_client()
        return a is b

    assert asyncio.run(twice())


async def test_sequential_calls_reuse_one_connection_and_report_their_latency(rest, alpaca, capsys):
    await rest.get_account()  # warm the connection
    samples = []
    for _ in range(500):
        t0 = time.perf_counter()
        await rest.get_account()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    p50, p99 = samples[249] * 1e3, samples[494] * 1e3
    with capsys.disabled():
        print(
            f"\nget_account over loopback, 500 calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {samples[-1] * 1e3:.2f} ms"
        )
    # The figures are printed, not asserted: they measure the machine. What is asserted is the cause
    # of low latency this client controls: sequential calls reuse one keep-alive connection.
    assert len(alpaca.client_ports) == 1


def test_errors_pickle_with_their_context():
    import pickle

    err = RateLimitError(method="GET", path="/v2/account", status=429, attempts=5, retry_after=3.0)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, AlpacaError) and again.attempts == 5 and str(again) == str(err)
