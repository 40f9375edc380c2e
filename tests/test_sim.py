"""The simulator over real sockets on 127.0.0.1: protocol, ground truth, REST history, faults, broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.waiting import wait_until
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tickvault.alpaca.protocol import (
    auth_message,
    decode_frame,
    encode_client_message,
    rfc3339_to_ns,
    subscribe_message,
)
from tickvault.sim import Simulator, TruthChecksum
from tickvault.sim.calendar import SimClock

KEY, SECRET = "key", "secret"
HEADERS = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
MSGPACK = {"Content-Type": "application/msgpack"}


async def recv_control(ws: ClientConnection) -> dict:
    async with asyncio.timeout(5):
        frame = decode_frame(await ws.recv())
    assert frame.control, frame
    return frame.control[0]


async def open_stream(
    sim: Simulator, *, msgpack: bool = True, subscribe: dict | None = None
) -> ClientConnection:
    ws = await connect(sim.stream_url("iex"), additional_headers=MSGPACK if msgpack else None)
    assert await recv_control(ws) == {"T": "success", "msg": "connected"}
    await ws.send(encode_client_message(auth_message(KEY, SECRET), use_msgpack=msgpack))
    assert await recv_control(ws) == {"T": "success", "msg": "authenticated"}
    if subscribe is not None:
        await ws.send(encode_client_message(subscribe_message(**subscribe), use_msgpack=msgpack))
        assert (await recv_control(ws))["T"] == "subscription"
    return ws


def checksum_of(rows: list[tuple]) -> dict[str, TruthChecksum]:
    """The ground-truth formula over received trade rows (TRADE_FIELDS order)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    for t, sym, tid, _x, price, size, _c, _z in rows:
        a = acc[sym]
        a[0] += 1
        a[1] += tid
        a[2] += t % 1_000_003
        a[3] += (t // 1000) % 1_000_003
        a[4] += round(price * 100)
        a[5] += size
    return {sym: TruthChecksum(*a) for sym, a in acc.items()}


async def read_trades(ws: ClientConnection, count: int, timeout: float = 20) -> list[tuple]:
    rows: list[tuple] = []
    async with asyncio.timeout(timeout):
        while len(rows) < count:
            frame = decode_frame(await ws.recv())
            assert not frame.rejects, frame.rejects
            rows.extend(frame.trades)
    return rows


def rest(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sim.rest_url, headers=HEADERS, timeout=10)


# ---------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("msgpack", [True, False], ids=["msgpack", "json"])
async def test_handshake_auth_and_subscription_ack(msgpack: bool) -> None:
    async with Simulator(symbols=3, rate=1000) as sim:
        ws = await connect(sim.stream_url("sip"), additional_headers=MSGPACK if msgpack else None)
        async with ws:
            first = await ws.recv()
            assert isinstance(first, bytes if msgpack else str)
            assert decode_frame(first).control == [{"T": "success", "msg": "connected"}]
            await ws.send(encode_client_message(auth_message(KEY, SECRET), use_msgpack=msgpack))
            assert await recv_control(ws) == {"T": "success", "msg": "authenticated"}
            await ws.send(
                encode_client_message(subscribe_message(trades=["AAPL"], bars=["*"]), use_msgpack=msgpack)
            )
            ack = await recv_control(ws)
            assert ack == {
                "T": "subscription",
                "trades": ["AAPL"],
                "quotes": [],
                "bars": ["*"],
                "updatedBars": [],
                "dailyBars": [],
                "statuses": [],
                "lulds": [],
                "corrections": ["AAPL"],
                "cancelErrors": ["AAPL"],
            }
            await ws.send(
                encode_client_message(
                    subscribe_message(trades=["AAPL"], action="unsubscribe"), use_msgpack=msgpack
                )
            )
            while (ack := await recv_control(ws))["T"] != "subscription":
                pass
            assert ack["trades"] == [] and ack["bars"] == ["*"]


async def test_wrong_key_is_refused_with_402_and_closed() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        async with connect(sim.stream_url(), additional_headers=MSGPACK) as ws:
            await recv_control(ws)
            await ws.send(encode_client_message(auth_message(KEY, "wrong")))
            assert await recv_control(ws) == {"T": "error", "code": 402, "msg": "auth failed"}
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await ws.recv()


async def test_a_subscription_past_the_symbol_limit_gets_405_and_keeps_the_old_one(monkeypatch) -> None:
    """Any symbol string is accepted, so one connection's subscription is capped (error 405 past it)."""
    import tickvault.sim.market_stream as market_stream

    monkeypatch.setattr(market_stream, "MAX_SUBSCRIBED_SYMBOLS", 3)
    async with Simulator(symbols=2, rate=100) as sim:
        async with await open_stream(sim, subscribe={"trades": ["AAA", "BBB"]}) as ws:
            await ws.send(encode_client_message(subscribe_message(trades=["CCC", "DDD"])))
            assert await recv_control(ws) == {"T": "error", "code": 405, "msg": "symbol limit exceeded"}
            await ws.send(encode_client_message(subscribe_message(trades=["CCC"])))  # within the cap: taken
            ack = await recv_control(ws)
            assert ack["T"] == "subscription" and sorted(ack["trades"]) == ["AAA", "BBB", "CCC"]


async def test_second_connection_for_same_key_gets_406() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        first = await open_stream(sim)
        async with first, connect(sim.stream_url(), additional_headers=MSGPACK) as second:
            await recv_control(second)
            await second.send(encode_client_message(auth_message(KEY, SECRET)))
            assert await recv_control(second) == {
                "T": "error",
                "code": 406,
                "msg": "connection limit exceeded",
            }
        # Once the first is gone, a new connection is welcome.
        async with asyncio.timeout(5):
            while sim._authed.get((KEY, "iex")):
                await asyncio.sleep(0.01)
        third = await open_stream(sim)
        await third.close()


async def test_subscribe_before_auth_gets_401_and_garbage_gets_400() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        async with connect(sim.stream_url(), additional_headers=MSGPACK) as ws:
            await recv_control(ws)
            await ws.send(encode_client_message(subscribe_message(trades=["*"])))
            assert await recv_control(ws) == {"T": "error", "code": 401, "msg": "not authenticated"}
            await ws.send(b"\xc1 garbage")
            assert (await recv_control(ws))["code"] == 400


async def test_fail_next_auth_refuses_once() -> None:
    async with Simulator(symbols=2, rate=100) as sim:
        sim.fail_next_auth()
        async with connect(sim.stream_url(), additional_headers=MSGPACK) as ws:
            await recv_control(ws)
            await ws.send(encode_client_message(auth_message(KEY, SECRET)))
            assert (await recv_control(ws))["code"] == 402
        ws = await open_stream(sim)
        await ws.close()


# ---------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("msgpack", [True, False], ids=["msgpack", "json"])
async def test_stream_delivers_exactly_the_ground_truth(msgpack: bool) -> None:
    n = 20_000
    async with Simulator(symbols=7, rate=None, max_trades=n, frame_size=250, seed=7) as sim:
        ws = await open_stream(sim, msgpack=msgpack, subscribe={"trades": ["*"]})
        async with ws:
            rows = await read_trades(ws, n)
        await asyncio.wait_for(sim.finished.wait(), 5)
        assert len(rows) == n == sim.truth_count()
        assert checksum_of(rows) == sim.truth_checksum()
        for sym in sim.symbols:
            mine = [(r[2], r[0], r[4], r[5]) for r in rows if r[1] == sym]
            assert mine == list(sim.truth_trades(sym))
            assert all(a[1] < b[1] for a, b in pairwise(mine))  # strictly increasing ns per symbol
        ids = [r[2] for r in rows]
        assert len(set(ids)) == n


async def test_same_seed_same_prices_and_sizes() -> None:
    prices = []
    for _ in range(2):
        async with Simulator(symbols=3, rate=None, max_trades=500, seed=11) as sim:
            ws = await open_stream(sim, subscribe={"trades": ["*"]})
            async with ws:
                rows = await read_trades(ws, 500)
            prices.append([(r[1], r[2], r[4], r[5]) for r in rows])
    assert prices[0] == prices[1]


async def test_subscription_filters_symbols_and_frames_respect_frame_size() -> None:
    async with Simulator(
        symbols=["AAA", "BBB", "CCC"], rate=None, max_trades=3000, frame_size=50, quotes_per_trade=1.0
    ) as sim:
        ws = await open_stream(sim, subscribe={"trades": ["BBB"], "quotes": ["BBB"]})
        async with ws:
            want = None
            rows: list[tuple] = []
            quotes = 0
            async with asyncio.timeout(20):
                while want is None or len(rows) < want:
                    frame = decode_frame(raw := await ws.recv())
                    assert frame.market_count() <= 50, len(raw)
                    rows.extend(frame.trades)
                    quotes += len(frame.quotes)
                    if sim.finished.is_set():
                        want = sim.truth_count("BBB")
        assert {r[1] for r in rows} == {"BBB"}
        assert len(rows) == sim.truth_count("BBB")
        assert checksum_of(rows)["BBB"] == sim.truth_checksum("BBB")
        assert quotes > 0


async def test_minute_bars_are_sent_and_match_rest_bars() -> None:
    async with Simulator(symbols=["AAA"], rate=2000, clock=SimClock(scale=600)) as sim:  # a minute per 0.1 s
        ws = await open_stream(sim, subscribe={"bars": ["AAA"]})
        async with ws, asyncio.timeout(10):
            bars: list[tuple] = []
            while len(bars) < 3:
                bars.extend(decode_frame(await ws.recv()).bars)
        async with rest(sim) as http:
            body = (
                await http.get(
                    "/v2/stocks/bars", params={"symbols": "AAA", "timeframe": "1Min", "limit": 10000}
                )
            ).json()
        by_time = {rfc3339_to_ns(b["t"]): b for b in body["bars"]["AAA"]}
        for bar in bars:
            rb = by_time[bar[0]]
            assert (rb["o"], rb["h"], rb["l"], rb["c"], rb["v"], rb["n"], rb["vw"]) == bar[2:]
        assert sim.send_updated_bar("AAA") is not None


async def test_rest_trade_pages_equal_the_ground_truth() -> None:
    async with Simulator(symbols=4, rate=None, max_trades=12_345, seed=3) as sim:
        ws = await open_stream(sim, subscribe={"trades": ["*"]})
        async with ws:
            await read_trades(ws, 12_345)
        symbols = ",".join(sim.symbols)
        got: dict[str, list] = defaultdict(list)
        pages = 0
        token = None
        async with rest(sim) as http:
            while True:
                params = {"symbols": symbols, "limit": 1000, "feed": "iex", "start": "2000-01-01T00:00:00Z"}
                if token:
                    params["page_token"] = token
                body = (await http.get("/v2/stocks/trades", params=params)).json()
                pages += 1
                assert sum(len(v) for v in body["trades"].values()) <= 1000
                for sym, trades in body["trades"].items():
                    got[sym].extend((t["i"], rfc3339_to_ns(t["t"]), t["p"], t["s"]) for t in trades)
                token = body["next_page_token"]
                if token is None:
                    break
            assert pages == 13
            for sym in sim.symbols:
                assert got[sym] == list(sim.truth_trades(sym))
            # A window in the middle: exactly the truth trades inside it, inclusive bounds.
            truth = list(sim.truth_trades(sim.symbols[0]))
            lo, hi = truth[100][1], truth[200][1]
            from tickvault.alpaca.protocol import ns_to_rfc3339

            body = (
                await http.get(
                    "/v2/stocks/trades",
                    params={
                        "symbols": sim.symbols[0],
                        "start": ns_to_rfc3339(lo),
                        "end": ns_to_rfc3339(hi),
                        "limit": 10000,
                    },
                )
            ).json()
            assert [t["i"] for t in body["trades"][sim.symbols[0]]] == [t[0] for t in truth[100:201]]
            # Descending order, paged, gives the same trades reversed.
            desc: list[int] = []
            token = None
            while True:
                params = {"symbols": sim.symbols[0], "limit": 777, "sort": "desc"}
                if token:
                    params["page_token"] = token
                body = (await http.get("/v2/stocks/trades", params=params)).json()
                desc.extend(t["i"] for t in body["trades"].get(sim.symbols[0], []))
                token = body["next_page_token"]
                if token is None:
                    break
            assert desc == [t[0] for t in reversed(truth)]
            # Bars aggregate the same trades; latest trade is the last truth trade.
            bars = (
                await http.get(
                    "/v2/stocks/bars", params={"symbols": symbols, "timeframe": "1Day", "limit": 10000}
                )
            ).json()["bars"]
            for sym in sim.symbols:
                cs = sim.truth_checksum(sym)
                assert sum(b["n"] for b in bars[sym]) == cs.count
                assert sum(b["v"] for b in bars[sym]) == cs.sum_size
            latest = (await http.get("/v2/stocks/trades/latest", params={"symbols": symbols})).json()[
                "trades"
            ]
            assert latest[sim.symbols[1]]["i"] == list(sim.truth_trades(sim.symbols[1]))[-1][0]
            quotes = (await http.get("/v2/stocks/quotes", params={"symbols": symbols, "limit": 5})).json()
            assert sum(len(v) for v in quotes["quotes"].values()) == 5 and quotes["next_page_token"]
            assert (
                await http.get("/v2/stocks/trades", params={"symbols": symbols, "limit": 10001})
            ).status_code == 422


async def test_stream_plus_rest_backfill_equals_truth_after_a_drop() -> None:
    # The market trades until finish(): the gap below happens while it trades, however slow the machine.
    async with Simulator(symbols=5, rate=20_000, max_trades=None, frame_size=100) as sim:
        seen: dict[int, tuple] = {}
        ws = await open_stream(sim, subscribe={"trades": ["*"]})
        rows = await read_trades(ws, 1000)
        seen.update((r[2], r) for r in rows)
        assert sim.drop_connections() == 1
        with pytest.raises(ConnectionClosedError):  # abrupt: no close frame
            async with asyncio.timeout(60):
                while True:
                    for r in decode_frame(await ws.recv()).trades:
                        seen[r[2]] = r
        dropped_at = sim.truth_count()
        async with asyncio.timeout(60):  # stay away while the market makes 500 trades: a real gap
            while sim._authed.get((KEY, "iex")) or sim.truth_count() < dropped_at + 500:
                await asyncio.sleep(0.01)
        ws = await open_stream(sim, subscribe={"trades": ["*"]})
        async with ws:
            rows = await read_trades(ws, 500, timeout=60)
            seen.update((r[2], r) for r in rows)
            sim.finish()
            last_id = max(tid for sym in sim.symbols for tid, _t, _p, _s in sim.truth_trades(sym))
            async with asyncio.timeout(60):  # drained when the market's last trade has arrived
                while last_id not in seen:
                    for r in decode_frame(await ws.recv()).trades:
                        seen[r[2]] = r
        n = sim.truth_count()
        assert len(seen) < n  # the drop lost trades on the stream...
        async with rest(sim) as http:  # ...which REST has
            token = None
            while True:
                params = {"symbols": ",".join(sim.symbols), "limit": 10000}
                if token:
                    params["page_token"] = token
                body = (await http.get("/v2/stocks/trades", params=params)).json()
                for sym, trades in body["trades"].items():
                    for t in trades:
                        seen.setdefault(
                            t["i"],
                            (rfc3339_to_ns(t["t"]), sym, t["i"], t["x"], t["p"], t["s"], t["c"], t["z"]),
                        )
                token = body["next_page_token"]
                if token is None:
                    break
        assert checksum_of(list(seen.values())) == sim.truth_checksum()


async def test_finish_stops_an_endless_market_and_freezes_the_ground_truth() -> None:
    async with Simulator(symbols=3, rate=20_000, max_trades=None) as sim:
        async with asyncio.timeout(60):
            while sim.truth_count() < 1_000:
                await asyncio.sleep(0.01)
        assert not sim.finished.is_set()
        sim.finish()
        assert sim.finished.is_set()
        frozen = sim.truth_count()
        async with rest(sim) as http:  # the loop turns many times; the market makes nothing more
            for _ in range(20):
                truth = (await http.get("/_sim/truth")).json()
                assert truth["count"] == frozen and truth["finished"]
        assert sim.truth_count() == frozen


# ---------------------------------------------------------------------------- faults
async def test_malformed_frame_and_unknown_type_arrive_among_good_frames() -> None:
    async with Simulator(symbols=2, rate=None, max_trades=2000, frame_size=100) as sim:
        sim.send_malformed()
        sim.send_unknown_type()
        ws = await open_stream(sim, subscribe={"trades": ["*"]})
        trades = 0
        rejects = []
        async with ws, asyncio.timeout(10):
            while trades < 2000:
                frame = decode_frame(await ws.recv())
                trades += len(frame.trades)
                rejects.extend(r.reason for r in frame.rejects)
        assert trades == 2000  # nothing lost: the bad frame is extra
        assert len(rejects) == 2
        assert rejects[0].startswith("undecodable frame")
        assert rejects[1] == "unknown message type 'Z'"


async def test_stall_stops_frames_but_keeps_the_socket() -> None:
    async with Simulator(symbols=2, rate=5000, frame_size=50) as sim:
        ws = await open_stream(sim, subscribe={"trades": ["*"]})
        async with ws:
            await read_trades(ws, 200)
            sim.stall(0.6)
            stalled_at = time.monotonic()
            # Frames already in flight may still arrive; the next gap must be the stall.
            gap = 0.0
            async with asyncio.timeout(5):
                last = time.monotonic()
                while time.monotonic() - stalled_at < 1.0:
                    await ws.recv()
                    now = time.monotonic()
                    gap = max(gap, now - last)
                    last = now
            assert gap >= 0.45
            assert sim.stats["stall_dropped_frames"] > 0


async def test_rest_faults_429_with_retry_after_500_and_latency() -> None:
    async with Simulator(symbols=2, rate=1000) as sim, rest(sim) as http:
        sim.rest_fail(429, count=2, retry_after=1.5)
        for _ in range(2):
            r = await http.get("/v2/account")
            assert r.status_code == 429 and r.headers["Retry-After"] == "1.5"
        assert (await http.get("/v2/account")).status_code == 200
        # The same switches over HTTP, as another process drives them.
        r = await http.post(
            "/_sim/faults",
            json=[{"fault": "rest_fail", "status": 500, "count": 1}, {"fault": "rest_latency", "ms": 300}],
        )
        assert r.status_code == 200 and r.json()["applied"] == 2
        r = await http.get("/v2/stocks/trades/latest", params={"symbols": "AAPL"})
        assert r.status_code == 500 and "Retry-After" not in r.headers
        t0 = time.monotonic()
        assert (await http.get("/v2/positions")).status_code == 200
        assert time.monotonic() - t0 >= 0.3
        await http.post("/_sim/faults", json={"fault": "rest_latency", "ms": 0})
        assert (await http.post("/_sim/faults", json={"fault": "nope"})).status_code == 422
        assert (await http.get("/v2/account", headers={"APCA-API-SECRET-KEY": "bad"})).status_code == 401
        truth = (await http.get("/_sim/truth")).json()
        assert truth["count"] == sum(s["count"] for s in truth["symbols"].values())


async def test_correction_cancel_and_updated_bar_are_sent_and_recorded() -> None:
    # The simulated clock starts one second into a minute: on the wall clock, 300 trades made across a
    # minute boundary (23:59:59.999 → 00:00:00.000) completed a minute bar, and the last assertion failed.
    minute = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()) * 10**9  # any whole minute
    clock = SimClock(start_ns=minute + 10**9)
    async with Simulator(symbols=["AAA"], rate=None, max_trades=300, clock=clock) as sim:
        ws = await open_stream(sim, subscribe={"trades": ["AAA"], "updated_bars": ["AAA"]})
        async with ws:
            rows = await read_trades(ws, 300)
            await asyncio.wait_for(sim.finished.wait(), 5)
            async with rest(sim) as http:
                r = await http.post(
                    "/_sim/faults",
                    json=[
                        {"fault": "send_correction", "symbol": "AAA"},
                        {"fault": "send_cancel", "symbol": "AAA"},
                    ],
                )
                assert r.status_code == 200
            corrections, cancels = [], []
            async with asyncio.timeout(5):
                while not (corrections and cancels):
                    frame = decode_frame(await ws.recv())
                    corrections += frame.corrections
                    cancels += frame.cancels
        last = rows[-1]
        assert corrections[0][3] == last[2] and corrections[0][4] == last[4]  # orig id and price
        assert round(corrections[0][8] * 100) == round(last[4] * 100) + 1
        assert cancels[0][2] == last[2] and cancels[0][6] == "C"
        assert len(sim.corrections) == len(sim.cancels) == 1
        assert sim.truth_count() == 300  # truth keeps the original trades
        assert sim.send_updated_bar("AAA") is None  # no minute bar was completed in this short run


async def test_every_fault_kind_is_accepted_over_http_and_answers_json() -> None:
    """POST /_sim/faults answers 200 with a JSON result for each fault the simulator knows (an
    updated bar's Timestamp used to make it answer 500), and the updated bar reaches a subscriber."""
    from tickvault.sim.server import FAULTS

    # Simulated time runs 120x faster, so a minute bar is completed every half second.
    async with Simulator(symbols=["AAA"], rate=2000, clock=SimClock(scale=120)) as sim:
        ws = await open_stream(sim, subscribe={"trades": ["AAA"], "updated_bars": ["AAA"]})
        async with ws, rest(sim) as http:

            async def bar_done() -> bool:
                return sim.market.books["AAA"].last_bar is not None

            async with asyncio.timeout(10):
                while not await bar_done():
                    await ws.recv()  # the market runs; wait for it to complete a minute bar
            cases = {
                "send_updated_bar": {"symbol": "AAA"},
                "send_correction": {"symbol": "AAA"},
                "send_cancel": {"symbol": "AAA"},
                "send_malformed": {},
                "send_unknown_type": {},
                "stall": {"seconds": 0.01},
                "rest_latency": {"ms": 0},
                "rest_fail": {"status": 503, "count": 1},  # /_sim paths are exempt
                "fail_next_auth": {"count": 1},
                "reject_next_orders": {"count": 0},
                "rest_fail_rate": {"status": 429, "rate": 0},
                "chaos": {},  # every periodic fault off
                "drop_connections": {},  # last: it closes our socket
            }
            assert set(cases) == FAULTS, "a fault without a case here is untested"
            results = {}
            for name, args in cases.items():
                if name == "drop_connections":
                    updated = []
                    async with asyncio.timeout(10):
                        while not updated:
                            updated += decode_frame(await ws.recv()).updated_bars
                r = await http.post("/_sim/faults", json={"fault": name, **args})
                assert r.status_code == 200, (name, r.text)
                results[name] = r.json()["results"][0]
    bar = results["send_updated_bar"]
    assert bar["T"] == "u" and bar["S"] == "AAA"
    assert rfc3339_to_ns(bar["t"]) % 60_000_000_000 == 0  # the bar's minute, as Alpaca writes times in JSON
    assert updated[0][1] == "AAA" and updated[0][0] == rfc3339_to_ns(bar["t"])
    assert results["send_correction"]["T"] == "c" and results["send_cancel"]["T"] == "x"
    assert results["drop_connections"] == 1


# ---------------------------------------------------------------------------- broker
async def listen_trade_updates(sim: Simulator) -> ClientConnection:
    ws = await connect(sim.trade_updates_url)
    await ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
    assert json.loads(await ws.recv()) == {
        "stream": "authorization",
        "data": {"action": "authenticate", "status": "authorized"},
    }
    await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
    assert json.loads(await ws.recv()) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    return ws


async def next_event(ws: ClientConnection, event: str, order_id: str, timeout: float = 20) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            data = msg["data"]
            if (
                msg["stream"] == "trade_updates"
                and data["event"] == event
                and data["order"]["id"] == order_id
            ):
                return data


async def test_market_order_fills_at_latest_price_and_shows_everywhere() -> None:
    async with Simulator(symbols=["AAA"], rate=2000) as sim, rest(sim) as http:
        updates = await listen_trade_updates(sim)
        async with updates:
            r = await http.post(
                "/v2/orders",
                json={
                    "symbol": "AAA",
                    "qty": "3",
                    "side": "buy",
                    "type": "market",
                    "time_in_force": "day",
                    "client_order_id": "m-1",
                },
            )
            assert r.status_code == 200, r.text
            order = r.json()
            assert (
                order["status"] == "filled"
                and order["filled_qty"] == "3"
                and order["client_order_id"] == "m-1"
            )
            price = order["filled_avg_price"]
            new = await next_event(updates, "new", order["id"])
            fill = await next_event(updates, "fill", order["id"])
            assert new["order"]["client_order_id"] == "m-1"
            assert fill["price"] == price and fill["qty"] == "3" and fill["position_qty"] == "3"
        positions = (await http.get("/v2/positions")).json()
        assert [(p["symbol"], p["qty"], Decimal(p["avg_entry_price"])) for p in positions] == [
            ("AAA", "3", Decimal(price))
        ]
        account = (await http.get("/v2/account")).json()
        assert Decimal(account["cash"]) == Decimal(100000) - 3 * Decimal(price)
        acts = (await http.get("/v2/account/activities/FILL", params={"direction": "asc"})).json()
        assert [(a["order_id"], a["type"], a["qty"], a["price"], a["side"]) for a in acts] == [
            (order["id"], "fill", "3", price, "buy")
        ]
        again = await http.post(
            "/v2/orders",
            json={
                "symbol": "AAA",
                "qty": "1",
                "side": "sell",
                "type": "market",
                "time_in_force": "day",
                "client_order_id": "m-1",
            },
        )
        assert again.status_code == 422 and again.json()["message"] == "client_order_id must be unique"
        assert (await http.get("/v2/orders:by_client_order_id", params={"client_order_id": "m-1"})).json()[
            "id"
        ] == order["id"]


async def test_limit_order_rests_then_fills_when_a_trade_crosses() -> None:
    # rate=None: the market stands still until a market-data client reads, so the order surely rests first.
    async with Simulator(symbols=["AAA"], rate=None, seed=5) as sim, rest(sim) as http:
        updates = await listen_trade_updates(sim)
        async with updates:
            last = sim.market.last_price_cents("AAA")
            limit = f"{(last + 3) / 100:.2f}"  # above the market: a sell limit waits for the walk to reach it
            r = await http.post(
                "/v2/orders",
                json={
                    "symbol": "AAA",
                    "qty": "2",
                    "side": "sell",
                    "type": "limit",
                    "limit_price": limit,
                    "time_in_force": "gtc",
                },
            )
            order = r.json()
            assert r.status_code == 200 and order["status"] == "new"
            assert Decimal(order["limit_price"]) == Decimal(limit)
            open_orders = (await http.get("/v2/orders", params={"status": "open"})).json()
            assert [o["id"] for o in open_orders] == [order["id"]]
            market = await open_stream(sim, subscribe={"trades": ["AAA"]})  # now the market moves
            async with market:
                reader = asyncio.create_task(read_trades(market, 10**9))
                try:
                    fill = await next_event(updates, "fill", order["id"])
                finally:
                    reader.cancel()
            assert Decimal(fill["price"]) >= Decimal(limit)
        filled = (await http.get(f"/v2/orders/{order['id']}")).json()
        assert filled["status"] == "filled" and filled["filled_qty"] == "2"
        assert (await http.delete(f"/v2/orders/{order['id']}")).status_code == 422


async def test_cancel_open_order_and_activities_paging() -> None:
    async with Simulator(symbols=["AAA"], rate=1000) as sim, rest(sim) as http:
        r = await http.post(
            "/v2/orders",
            json={
                "symbol": "AAA",
                "qty": "1",
                "side": "buy",
                "type": "limit",
                "limit_price": "0.01",
                "time_in_force": "day",
            },
        )
        oid = r.json()["id"]
        assert (await http.delete(f"/v2/orders/{oid}")).status_code == 204
        assert (await http.get(f"/v2/orders/{oid}")).json()["status"] == "canceled"
        assert (await http.get("/v2/orders/nope")).status_code == 404
        for i in range(5):
            r = await http.post(
                "/v2/orders",
                json={
                    "symbol": "AAA",
                    "qty": "1",
                    "side": "buy",
                    "type": "market",
                    "time_in_force": "day",
                    "client_order_id": f"p-{i}",
                },
            )
            assert r.status_code == 200
        ids: list[str] = []
        token = None
        while True:
            params = {"direction": "asc", "page_size": 2}
            if token:
                params["page_token"] = token
            page = (await http.get("/v2/account/activities/FILL", params=params)).json()
            if not page:
                break
            ids.extend(a["order_id"] for a in page)
            token = page[-1]["id"]
        closed = (await http.get("/v2/orders", params={"status": "closed", "direction": "asc"})).json()
        assert ids == [o["id"] for o in closed if o["status"] == "filled"]
        assert len(ids) == 5
        sim.broker.set_position("AAA", "-10", "12.5")
        pos = (await http.get("/v2/positions")).json()
        assert (pos[0]["side"], pos[0]["qty"], pos[0]["avg_entry_price"]) == ("short", "-10", "12.5")


def test_the_random_walk_has_no_drift():
    """Steps round to the nearest cent both ways: int() truncated the down steps toward zero, and a $108
    stock ended near $545 after 100k trades. Deterministic (seeded); the bound is far from either case."""
    import math

    from tickvault.sim.crypto import CryptoMarket
    from tickvault.sim.market import Market, symbol_names

    stocks = Market(symbol_names(20), seed=11)
    crypto = CryptoMarket(["BTC/USD", "ETH/USD", "SOL/USD"], seed=11)
    for market, n in ((stocks, 400_000), (crypto, 60_000)):
        start = {s: b.price_cents for s, b in market.books.items()}
        market.generate(n, time.time_ns())
        logs = [math.log(b.price_cents / start[s]) for s, b in market.books.items()]
        assert abs(sum(logs) / len(logs)) < 0.25, (type(market).__name__, logs)


async def test_trade_updates_listen_again_after_an_unlisten_gets_events_again() -> None:
    """listen → listen to nothing → listen: the third gets events again (the client was never re-added)."""
    async with Simulator(symbols=["AAA"], rate=2000) as sim, rest(sim) as http:
        updates = await listen_trade_updates(sim)
        async with updates:
            await updates.send(json.dumps({"action": "listen", "data": {"streams": []}}))
            assert json.loads(await updates.recv()) == {"stream": "listening", "data": {"streams": []}}
            await updates.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
            assert json.loads(await updates.recv())["data"] == {"streams": ["trade_updates"]}
            r = await http.post("/v2/orders", json={"symbol": "AAA", "qty": "1", "side": "buy", "type": "market",
                                                    "time_in_force": "day"})
            assert r.status_code == 200, r.text
            assert (await next_event(updates, "fill", r.json()["id"]))["qty"] == "1"


async def test_a_correction_sent_during_a_stall_is_delivered_after_it() -> None:
    """A stall drops the market's messages (REST has them), never the fault messages queued meanwhile."""
    async with Simulator(symbols=["AAA"], rate=2000, frame_size=10) as sim:
        async with connect(sim.stream_url("iex")) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "key": KEY, "secret": SECRET}))
            await ws.recv()
            await ws.send(json.dumps({"action": "subscribe", "trades": ["AAA"]}))
            await wait_until(lambda: sim.truth_count("AAA") > 10, 30, "trades")
            sim.stall(0.5)
            sent = sim.send_correction("AAA")
            assert sent is not None
            async with asyncio.timeout(20):
                while True:
                    msgs = json.loads(await ws.recv())
                    if any(m.get("T") == "c" and m.get("ci") == sent["ci"] for m in msgs):
                        break
