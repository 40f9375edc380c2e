"""Alpaca's stream sessions as state machines, sans I/O: the market-data handshake, subscribe/ack and
error codes, and the trade-updates protocol, for the client and the server side.

Messages in, events out. Nothing here touches a socket, awaits, reads a clock or logs; the I/O shells
drive it — the reader (:mod:`tickvault.stream.reader`) and the trade-updates listener
(:mod:`tickvault.stream.orders`) on the client side, the simulator (:mod:`tickvault.sim.market_stream`,
:mod:`tickvault.sim.trade_updates`) on the server side — the way ``websockets``' ``protocol.py`` is
driven by its connection classes. Frames are decoded and encoded by :mod:`tickvault.alpaca.protocol`;
a session sees decoded control messages (market data) or decoded JSON maps (trade updates).

Market data (``alpaca-protocol.md``)::

    client  CONNECTING ─connected→ AUTHENTICATING ─authenticated→ SUBSCRIBING ─subscription→ STREAMING
            any state ─error→ CLOSED (an :class:`StreamFailure`: fatal or retryable, see ERROR_POLICY)
    server  AWAITING_AUTH ─auth (accepted)→ AUTHENTICATED ; refused, timed out → CLOSED

Trade updates::

    client  AUTHENTICATING ─authorization: authorized→ LISTEN_REQUESTED ─listening→ LISTENING
    server  AWAITING_AUTH ─authenticate (accepted)→ AUTHORIZED

A message a state does not allow (a second ``connected``, an ack before ``authenticated``, a
``listening`` before ``authorized``) raises :class:`SessionError` naming the state and the message. A
session holds only its state and, on the server, the connection's acknowledged subscription (at most
``max_symbols`` symbols per channel: the bound that keeps one connection's memory finite).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tickvault.alpaca.protocol import ERROR_CODES, ProtocolError, auth_message

__all__ = [
    "ERROR_POLICY",
    "AuthRequest",
    "Authenticated",
    "Close",
    "Connected",
    "Listening",
    "MarketDataClientSession",
    "MarketDataServerSession",
    "Send",
    "SessionError",
    "State",
    "StreamFailure",
    "Subscribed",
    "SubscriptionChange",
    "TradeUpdate",
    "TradeUpdatesClientSession",
    "TradeUpdatesServerSession",
]


class SessionError(ProtocolError):
    """A message the session's state does not allow (out of order, duplicated, unknown)."""


class State(enum.Enum):
    CONNECTING = "connecting"  # client: waiting for "connected"
    AUTHENTICATING = "authenticating"  # client: auth sent, waiting for the answer
    SUBSCRIBING = "subscribing"  # client: subscribe sent, waiting for the ack
    STREAMING = "streaming"  # client: acknowledged; data and further acks
    AWAITING_AUTH = "awaiting auth"  # server: connected, not yet authenticated
    AUTHENTICATED = "authenticated"  # server: may subscribe
    LISTEN_REQUESTED = "listen requested"  # trade-updates client: listen sent
    LISTENING = "listening"  # trade-updates client: events flow
    AUTHORIZED = "authorized"  # trade-updates server: may listen
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Send:
    """Send this message to the peer (a client action, or a server control message)."""

    message: dict


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection (after sending what came before)."""


@dataclass(frozen=True, slots=True)
class Connected:
    """The server greeted us."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The server accepted the keys."""


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription ack (``{"T":"subscription",...}``): what the server now sends us."""

    ack: dict


@dataclass(frozen=True, slots=True)
class StreamFailure:
    """The server sent ``{"T":"error"}`` (or the session failed). ``fatal``: retrying cannot help (the
    keys were refused); else reconnect, waiting at least ``retry_after_s`` when set."""

    code: int
    message: str
    fatal: bool
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Server side: the client sent keys; answer with :meth:`MarketDataServerSession.accept` or ``refuse``."""

    key: Any
    secret: Any = field(repr=False)  # never in a repr, never in a log


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """Server side: the client's subscription becomes ``subscription`` once ``ack`` is sent."""

    subscription: dict[str, frozenset[str]]
    previous: dict[str, frozenset[str]]
    added: bool
    ack: dict


@dataclass(frozen=True, slots=True)
class Listening:
    """Trade updates: the server listens to these streams for us."""

    streams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """Trade updates: one order event (``data`` of a ``trade_updates`` message)."""

    data: dict


# What a market-data error code means to a client: (fatal, seconds to wait at least before reconnecting).
# Fatal: what a new connection would meet again — refused keys, a plan without this feed (409), a
# subscription over the plan's symbol limit (405); reconnecting forever would only hide a setting to
# fix. Every other code is about this connection, and a new one may fare better (406: another
# connection holds the feed; give it 5 s to go before trying again).
ERROR_POLICY: dict[int, tuple[bool, float | None]] = {
    400: (False, None),  # invalid syntax
    401: (False, None),  # not authenticated (fatal when it answers our auth: see below)
    402: (False, None),  # auth failed (fatal when it answers our auth)
    403: (False, None),  # already authenticated
    404: (False, None),  # auth timeout
    405: (True, None),  # symbol limit exceeded: the same subscription fails again
    406: (False, 5.0),  # connection limit exceeded
    407: (False, None),  # slow client
    409: (True, None),  # insufficient subscription: the plan does not include this feed
    500: (False, None),  # internal error
}
_AUTH_REFUSED = (401, 402)  # answering our auth: the keys are wrong, retrying will not help


def _failure(msg: Mapping, state: State) -> StreamFailure:
    code = msg.get("code")
    code = code if isinstance(code, int) else 500
    text = str(msg.get("msg") or ERROR_CODES.get(code, "unknown error"))
    fatal, wait = ERROR_POLICY.get(code, (False, None))
    if state is State.AUTHENTICATING and code in _AUTH_REFUSED:
        fatal = True
    return StreamFailure(code, text, fatal, wait)


# ---------------------------------------------------------------------------------------- market data
class MarketDataClientSession:
    """The client side of one market-data connection. ``subscription``: the subscribe action to send
    once authenticated. Feed it each server frame's control messages with :meth:`receive`; data
    messages are the caller's, allowed from SUBSCRIBING on (:attr:`accepts_data`)."""

    __slots__ = ("state", "_auth", "_subscription")

    def __init__(self, key: str, secret: str, subscription: dict) -> None:
        self.state = State.CONNECTING
        self._auth = auth_message(key, secret)
        self._subscription = subscription

    @property
    def accepts_data(self) -> bool:
        """Market data may flow (it may precede the ack: the caller keeps it)."""
        return self.state in (State.SUBSCRIBING, State.STREAMING)

    def receive(self, control: Sequence[dict]) -> list[Any]:
        """Events for one frame's control messages, in order. Before the subscription, each frame must
        carry the awaited message (Alpaca sends each alone): a frame without it is a SessionError."""
        events: list[Any] = []
        awaited = self.state in (State.CONNECTING, State.AUTHENTICATING)
        for msg in control:
            if self.state is State.CLOSED:
                raise SessionError(f"message after the session failed: {msg!r}")
            kind = msg.get("T")
            if kind == "error":
                failure = _failure(msg, self.state)
                self.state = State.CLOSED
                events.append(failure)
                return events
            if kind == "success" and msg.get("msg") == "connected" and self.state is State.CONNECTING:
                self.state = State.AUTHENTICATING
                events += [Connected(), Send(self._auth)]
                awaited = False
            elif kind == "success" and msg.get("msg") == "authenticated" and self.state is State.AUTHENTICATING:
                self.state = State.SUBSCRIBING
                events += [Authenticated(), Send(self._subscription)]
                awaited = False
            elif kind == "subscription" and self.state in (State.SUBSCRIBING, State.STREAMING):
                self.state = State.STREAMING
                events.append(Subscribed(msg))
            else:
                raise SessionError(f"{_describe(msg)} is not allowed while {self.state.value}")
        if awaited:
            expected = "connected" if self.state is State.CONNECTING else "authenticated"
            raise SessionError(f"expected '{expected}', got {list(control)!r}")
        return events


def _describe(msg: Mapping) -> str:
    kind = msg.get("T")
    return f"'{msg.get('msg')}'" if kind == "success" else f"a {kind!r} message"


class MarketDataServerSession:
    """The server side of one market-data connection on a stream whose channels are ``channels``.

    Feed it each decoded client action (or the :class:`ProtocolError` decoding raised, as ``None``)
    with :meth:`receive`; answer an :class:`AuthRequest` with :meth:`accept` or :meth:`refuse`; call
    :meth:`auth_timed_out` when no auth came in time. ``stocks``: the ack also lists ``corrections``
    and ``cancelErrors`` (they follow the trades subscription)."""

    __slots__ = ("state", "channels", "stocks", "max_symbols", "subscription")

    def __init__(self, channels: Sequence[str], *, stocks: bool = False, max_symbols: int = 20_000) -> None:
        self.state = State.AWAITING_AUTH
        self.channels = tuple(channels)
        self.stocks = stocks
        self.max_symbols = max_symbols  # per channel: past it a subscribe is answered 405, unchanged
        self.subscription: dict[str, frozenset[str]] = {ch: frozenset() for ch in self.channels}

    @staticmethod
    def welcome() -> list[Any]:
        return [Send({"T": "success", "msg": "connected"})]

    @staticmethod
    def error(code: int) -> Send:
        return Send({"T": "error", "code": code, "msg": ERROR_CODES[code]})

    def receive(self, msg: dict | None) -> list[Any]:
        """Events for one client action; ``None``: it did not decode (answered 400)."""
        if self.state is State.CLOSED:
            raise SessionError("client message after the session closed")
        if msg is None:
            return [self.error(400)]
        action = msg.get("action")
        if action == "auth":
            if self.state is State.AUTHENTICATED:
                return [self.error(403)]
            return [AuthRequest(msg.get("key"), msg.get("secret"))]
        if action in ("subscribe", "unsubscribe"):
            if self.state is not State.AUTHENTICATED:
                return [self.error(401)]
            return self._subscribe(msg, action == "subscribe")
        return [self.error(400)]

    def accept(self) -> list[Any]:
        if self.state is not State.AWAITING_AUTH:
            raise SessionError(f"accepting an auth while {self.state.value}")
        self.state = State.AUTHENTICATED
        return [Send({"T": "success", "msg": "authenticated"})]

    def refuse(self, code: int) -> list[Any]:
        """Refuse the keys (402) or the connection (406): the error, then close."""
        if self.state is not State.AWAITING_AUTH:
            raise SessionError(f"refusing an auth while {self.state.value}")
        self.state = State.CLOSED
        return [self.error(code), Close()]

    def auth_timed_out(self) -> list[Any]:
        if self.state is not State.AWAITING_AUTH:
            raise SessionError(f"auth timeout while {self.state.value}")
        self.state = State.CLOSED
        return [self.error(404), Close()]

    def _subscribe(self, msg: dict, add: bool) -> list[Any]:
        new = {ch: set(syms) for ch, syms in self.subscription.items()}
        for ch in self.channels:
            symbols = msg.get(ch)
            if not symbols:
                continue
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                return [self.error(400)]
            symbols = {s.upper() for s in symbols}
            if add:
                new[ch] |= symbols
            else:
                new[ch] -= symbols
        if any(len(syms) > self.max_symbols for syms in new.values()):
            return [self.error(405)]  # Alpaca's "symbol limit exceeded": the subscription is unchanged
        previous = self.subscription
        self.subscription = {ch: frozenset(s) for ch, s in new.items()}
        return [SubscriptionChange(self.subscription, previous, add, self.ack())]

    def ack(self) -> dict:
        msg: dict[str, Any] = {"T": "subscription"}
        for ch in self.channels:
            msg[ch] = sorted(self.subscription[ch])
        if self.stocks:
            msg["corrections"] = sorted(self.subscription["trades"])
            msg["cancelErrors"] = sorted(self.subscription["trades"])
        return msg


# ---------------------------------------------------------------------------------------- trade updates
TRADE_UPDATES = "trade_updates"


def _reply(stream: str, data: dict) -> Send:
    return Send({"stream": stream, "data": data})


class TradeUpdatesClientSession:
    """The client side of Alpaca's trade-updates stream (``/stream``): :meth:`start` gives the
    authenticate action; :meth:`receive` each decoded server message."""

    __slots__ = ("state", "_key", "_secret")

    def __init__(self, key: str, secret: str) -> None:
        self.state = State.AUTHENTICATING
        self._key = key
        self._secret = secret

    def start(self) -> list[Any]:
        return [Send({"action": "authenticate", "data": {"key_id": self._key, "secret_key": self._secret}})]

    def receive(self, msg: Any) -> list[Any]:
        if not isinstance(msg, dict):
            raise SessionError(f"a trade-updates message must be a map, got {type(msg).__name__}")
        if self.state is State.CLOSED:
            raise SessionError("message after the session failed")
        stream = msg.get("stream")
        data = msg.get("data") or {}
        if stream == "authorization" and self.state is State.AUTHENTICATING:
            if data.get("status") != "authorized":
                self.state = State.CLOSED
                return [StreamFailure(402, f"trade updates stream refused the keys: {data}", True)]
            self.state = State.LISTEN_REQUESTED
            return [Authenticated(), Send({"action": "listen", "data": {"streams": [TRADE_UPDATES]}})]
        if stream == "listening" and self.state in (State.LISTEN_REQUESTED, State.LISTENING):
            self.state = State.LISTENING
            return [Listening(tuple(data.get("streams") or ()))]
        if stream == TRADE_UPDATES and self.state in (State.LISTEN_REQUESTED, State.LISTENING):
            return [TradeUpdate(data)]
        if stream == "error":
            return [StreamFailure(400, str(data.get("error_message") or data), False)]
        if stream in ("authorization", "listening", TRADE_UPDATES):
            raise SessionError(f"a {stream!r} message is not allowed while {self.state.value}")
        return []  # another stream (Alpaca may add some): not ours


class TradeUpdatesServerSession:
    """The server side of one trade-updates connection. :meth:`receive` each client message as
    decoded JSON (``None``: it did not decode); an :class:`AuthRequest` is answered with
    :meth:`authorize`. A :class:`Listening` event says whether to send events (empty: stop)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.AWAITING_AUTH

    def receive(self, msg: Any) -> list[Any]:
        if self.state is State.CLOSED:
            raise SessionError("client message after the session closed")
        if not isinstance(msg, dict) or not isinstance(msg.get("action"), str):
            return [_reply("error", {"error_message": "invalid syntax"})]
        action = msg["action"]
        data = msg.get("data") or {}
        if not isinstance(data, dict):
            return [_reply("error", {"error_message": "invalid syntax"})]
        if action in ("authenticate", "auth"):
            return [AuthRequest(data.get("key_id"), data.get("secret_key"))]
        if action == "listen":
            if self.state is not State.AUTHORIZED:
                return [_reply("authorization", {"action": "listen", "status": "unauthorized"})]
            streams = [s for s in data.get("streams", []) if s == TRADE_UPDATES]
            return [_reply("listening", {"streams": streams}), Listening(tuple(streams))]
        return [_reply("error", {"error_message": f"unknown action {action!r}"})]

    def authorize(self, ok: bool) -> list[Any]:
        """Answer the keys: authorized, or unauthorized and close."""
        if self.state is State.CLOSED:
            raise SessionError("authorizing a closed session")
        reply = _reply("authorization", {"action": "authenticate", "status": "authorized" if ok else "unauthorized"})
        if not ok:
            self.state = State.CLOSED
            return [reply, Close()]
        self.state = State.AUTHORIZED
        return [reply]
