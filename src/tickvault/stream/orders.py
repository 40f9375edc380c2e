"""The order gateway and the trade-updates listener.

Gateway: strategy intents → orders at the broker, never twice. Each intent gets a deterministic
``client_order_id`` (a hash of the strategy, the bar time and every field of the intent), is recorded in
``orders`` as ``pending_submit`` *before* the request (ON CONFLICT DO NOTHING: a duplicate intent
after a restart finds the row and is skipped), then submitted through the REST client, which
retries an ambiguous failure and recognises Alpaca's "client_order_id must be unique" as "the
first attempt landed". An intent the broker refuses outright (422, or a 403 trading refusal such as
buying power or a crypto order's time in force) leaves its row ``rejected`` with Alpaca's reason in
``raw``, and the error is raised. Quantities are Decimal end to end: a crypto intent's fractional qty
(``BTC/USD``, ``0.012345678``, ``gtc``/``ioc``) reaches the broker and the ``numeric`` columns exactly. Submit→ack latency is stored on the order. Intents wait in a bounded queue
(``MAX_PENDING_INTENTS``); past it an intent is dropped, counted and logged — a strategy emitting
more than that per bar is broken, and blocking ingest for it would be worse. While the
dashboard's kill switch holds a halt (a ``trading_halts`` row not lifted, migration 008), the
gateway submits nothing: each intent is dropped before it is recorded, counted in ``drops`` and
logged.

Listener: Alpaca's trade-updates stream (JSON) → order status updates and ``fills`` rows keyed by
(order_id, cum_qty), so a fill seen here and again by reconciliation lands once. The protocol
(authenticate → authorized → listen → listening → events) is
:class:`tickvault.alpaca.session.TradeUpdatesClientSession`; refused keys stop the listener
(``PermissionError``), anything else reconnects with :data:`tickvault.retry.RECONNECT` (as the
reader: 0.25 s doubling to 30 s, full jitter, reset once authorized).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import fields
from datetime import datetime, timezone
from decimal import Decimal

from psycopg.types.json import Jsonb
from websockets.asyncio.client import connect

from tickvault.alpaca import session
from tickvault.alpaca.errors import AlpacaError, AuthError, UnprocessableError
from tickvault.alpaca.models import Order, OrderRequest
from tickvault.alpaca.protocol import StreamError
from tickvault.db.tables import INSERT_FILL, record_order
from tickvault.retry import RECONNECT
from tickvault.stream.metrics import Metrics
from tickvault.stream.strategy import Bar, OrderIntent

log = logging.getLogger("tickvault.orders")

MAX_PENDING_INTENTS = 1000

# One probe of the partial index trading_halts_active_idx, on the connection the intent uses anyway.
HALTED = "SELECT reason FROM trading_halts WHERE lifted_at IS NULL ORDER BY halted_at DESC LIMIT 1"

# The intent fields the id was first made of, in their place in the key.
_FIRST_KEY_FIELDS = frozenset({"symbol", "side", "qty", "type", "limit_price", "tag"})


def client_order_id(strategy: str, bar: Bar, intent: OrderIntent) -> str:
    """Deterministic id: the same intent on the same bar always maps to the same order, and two intents
    that would make different orders never share one (the second would be skipped as already sent).

    Every field of :class:`OrderIntent` is in the key. Those added after the first key (``time_in_force``,
    and any field added later, without anyone remembering to list it here) join it only when they differ
    from their default, so an intent that always had its own id keeps it across an upgrade: a worker
    restarted mid-bar on the new version finds its order instead of sending it again."""
    key = f"{strategy}|{intent.symbol}|{bar.time_ns}|{intent.side}|{intent.qty}|{intent.type}|{intent.limit_price}|{intent.tag}"
    for f in fields(intent):
        value = getattr(intent, f.name)
        if f.name not in _FIRST_KEY_FIELDS and value != f.default:
            key += f"|{f.name}={value}"
    return "tv-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class OrderGateway:
    def __init__(self, rest, pool, metrics: Metrics) -> None:
        self.rest = rest
        self.pool = pool
        self.metrics = metrics
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=MAX_PENDING_INTENTS)
        self._closing = False

    def enqueue(self, strategy: str, bar: Bar, intent: OrderIntent) -> None:
        """Called inline by the processor: never blocks."""
        try:
            self._queue.put_nowait((strategy, bar, intent))
        except asyncio.QueueFull:
            self.metrics.add("drops")
            log.error("order intent dropped (more than %d pending): %s %s %s", MAX_PENDING_INTENTS,
                      intent.side, intent.qty, intent.symbol)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._closing = True
        self._queue.put_nowait(None) if not self._queue.full() else None

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            strategy, bar, intent = item
            try:
                await self.submit(strategy, bar, intent)
            except Exception:  # noqa: BLE001 - logged with context; the order row says pending_submit
                log.exception("submitting %s %s %s failed", intent.side, intent.qty, intent.symbol)

    async def submit(self, strategy: str, bar: Bar, intent: OrderIntent) -> Order | None:
        cid = client_order_id(strategy, bar, intent)
        async with self.pool.connection() as conn:
            halt = await (await conn.execute(HALTED)).fetchone()
            if halt is not None:
                self.metrics.add("drops")
                log.warning("trading halted (%s): intent %s %s %s not submitted", halt[0], intent.side,
                            intent.qty, intent.symbol)
                return None
            cur = await conn.execute(
                "INSERT INTO orders (client_order_id, symbol, side, order_type, time_in_force, qty, limit_price, "
                "status, source, strategy) VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending_submit', 'worker', %s) "
                "ON CONFLICT (client_order_id) DO NOTHING RETURNING 1",
                (cid, intent.symbol, intent.side, intent.type, intent.time_in_force, intent.qty,
                 intent.limit_price, strategy),
            )
            fresh = await cur.fetchone()
            if not fresh:
                row = await (await conn.execute("SELECT status FROM orders WHERE client_order_id = %s", (cid,))).fetchone()
                if row and row[0] != "pending_submit":
                    log.info("intent %s already submitted (status %s); not submitting again", cid, row[0])
                    return None
        if not fresh:
            # pending_submit left by a run that stopped mid-submit: did the broker get it?
            from tickvault.alpaca.errors import NotFoundError

            try:
                order = await self.rest.get_order_by_client_id(cid)
            except NotFoundError:
                order = None
            if order is not None:
                async with self.pool.connection() as conn:
                    await record_order(conn, order)
                log.info("intent %s had reached the broker before a restart; recorded, not resubmitted", cid)
                return order
        request = OrderRequest(
            symbol=intent.symbol, side=intent.side, qty=intent.qty, type=intent.type,
            time_in_force=intent.time_in_force, limit_price=intent.limit_price, client_order_id=cid,
        )
        started = time.perf_counter()
        try:
            order = await self.rest.submit_order(request)
        except AlpacaError as exc:
            if _refused(exc):
                await self._record_refusal(cid, exc)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        async with self.pool.connection() as conn, conn.transaction():  # one commit, not two
            await record_order(conn, order)
            await conn.execute("UPDATE orders SET submit_latency_ms = %s, strategy = coalesce(strategy, %s) "
                               "WHERE client_order_id = %s", (latency_ms, strategy, cid))
        self.metrics.add("orders_submitted")
        return order


    async def _record_refusal(self, cid: str, exc: AlpacaError) -> None:
        """The broker refused the order outright (no order exists): the row says ``rejected`` and why,
        so neither a restart nor reconciliation submits it again."""
        reason = {"refused": {"status": exc.status, "code": exc.code, "message": exc.alpaca_message}}
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE orders SET status = 'rejected', updated_at = now(), raw = %s "
                "WHERE client_order_id = %s AND status = 'pending_submit'", (Jsonb(reason), cid))
        log.error("order %s refused by the broker (HTTP %s, code %s): %s", cid, exc.status, exc.code,
                  exc.alpaca_message)


def _refused(exc: AlpacaError) -> bool:
    """A definitive refusal of the order itself: 422, or 403 with a trading code (40310000: buying
    power, qty, a closed asset class), not a bad key (401, or a 403 without Alpaca's code)."""
    if isinstance(exc, UnprocessableError):
        return True
    return isinstance(exc, AuthError) and exc.status == 403 and str(exc.code or "").startswith("403")


class TradeUpdatesListener:
    """Alpaca's trade-updates stream → orders and fills. Reconnects with backoff; no replay, so
    reconciliation (the Prefect flow) fetches fills missed while disconnected."""

    def __init__(self, url: str, key: str, secret: str, pool, metrics: Metrics) -> None:
        self.url = url
        self._key = key
        self._secret = secret
        self.pool = pool
        self.metrics = metrics
        self.listening = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        backoff = RECONNECT.start()
        while not self._stop.is_set():
            try:
                async with connect(self.url, open_timeout=10, max_size=2**22) as ws:
                    protocol = session.TradeUpdatesClientSession(self._key, self._secret)
                    await self._perform(ws, protocol.start())
                    # The authorization answer, within 10 s; the session then asks to listen.
                    await self._perform(ws, protocol.receive(json.loads(await asyncio.wait_for(ws.recv(), 10))))
                    backoff.reset()
                    stop_wait = asyncio.create_task(self._stop.wait())
                    try:
                        while True:
                            recv = asyncio.create_task(ws.recv())
                            done, _ = await asyncio.wait({recv, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                            if stop_wait in done:
                                recv.cancel()
                                return
                            await self._perform(ws, protocol.receive(json.loads(recv.result())))
                    finally:
                        stop_wait.cancel()
            except PermissionError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect on anything the network throws
                if self._stop.is_set():
                    return
                log.warning("trade updates stream lost (%s); reconnecting", exc)
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff.next_delay())
                except asyncio.TimeoutError:
                    pass

    async def _perform(self, ws, events: list) -> None:
        for event in events:
            if isinstance(event, session.Send):
                await ws.send(json.dumps(event.message))
            elif isinstance(event, session.StreamFailure):
                if event.fatal:
                    raise PermissionError(event.message)
                raise StreamError(event.code, event.message)
            elif isinstance(event, session.Listening):
                self.listening.set()
            elif isinstance(event, session.TradeUpdate):
                await self.record(event.data)

    async def record(self, data: dict) -> None:
        """One ``trade_updates`` event → its order row and (fills) a ``fills`` row, in one transaction."""
        order = Order.model_validate(data["order"])
        event = data.get("event")
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await record_order(conn, order, source="stream")
                if event in ("fill", "partial_fill"):
                    ts = data.get("timestamp")
                    when = datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else datetime.now(timezone.utc)
                    cur = await conn.execute(
                        INSERT_FILL,
                        (order.id, order.filled_qty, data.get("execution_id"), order.client_order_id, order.symbol,
                         order.side, Decimal(str(data.get("qty"))), Decimal(str(data.get("price"))),
                         (order.qty - order.filled_qty) if order.qty is not None else None,
                         "fill" if event == "fill" else "partial_fill", when, "stream"),
                    )
                    if cur.rowcount:
                        self.metrics.add("fills_recorded")
