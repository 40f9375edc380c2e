"""The sans-I/O session state machines (tickvault.alpaca.session), driven with messages: no network.

Client and server of the market-data stream are also driven against each other (each side's output
is the other's input, through the real encoder and decoder), so the two agree on the wire.
"""

from __future__ import annotations

import pytest

from tickvault.alpaca import session
from tickvault.alpaca.protocol import (
    ERROR_CODES,
    decode_client_message,
    decode_frame,
    encode_client_message,
    encode_frame,
    subscribe_message,
)
from tickvault.alpaca.session import (
    AuthRequest,
    Authenticated,
    Close,
    Connected,
    Listening,
    Send,
    SessionError,
    State,
    StreamFailure,
    Subscribed,
    SubscriptionChange,
    TradeUpdate,
)

SUBSCRIBE = subscribe_message(trades=["AAPL"], quotes=["AAPL"])
CONNECTED = {"T": "success", "msg": "connected"}
AUTHENTICATED = {"T": "success", "msg": "authenticated"}
ACK = {"T": "subscription", "trades": ["AAPL"], "quotes": ["AAPL"]}


def error(code: int) -> dict:
    return {"T": "error", "code": code, "msg": ERROR_CODES[code]}


def client_at(state: State) -> session.MarketDataClientSession:
    client = session.MarketDataClientSession("key", "secret", SUBSCRIBE)
    steps = {State.AUTHENTICATING: [CONNECTED], State.SUBSCRIBING: [CONNECTED, AUTHENTICATED],
             State.STREAMING: [CONNECTED, AUTHENTICATED, ACK]}
    for msg in steps.get(state, []):
        client.receive([msg])
    assert client.state is state
    return client


# ------------------------------------------------------------------ market-data client
def test_client_handshake_sends_auth_then_subscribe_and_reports_the_ack() -> None:
    client = session.MarketDataClientSession("key", "secret", SUBSCRIBE)
    assert not client.accepts_data
    assert client.receive([CONNECTED]) == [Connected(), Send({"action": "auth", "key": "key", "secret": "secret"})]
    assert client.state is State.AUTHENTICATING and not client.accepts_data
    assert client.receive([AUTHENTICATED]) == [Authenticated(), Send(SUBSCRIBE)]
    assert client.accepts_data  # data may precede the ack
    assert client.receive([ACK]) == [Subscribed(ACK)]
    assert client.state is State.STREAMING
    later = {"T": "subscription", "trades": ["AAPL", "MSFT"], "quotes": ["AAPL"]}
    assert client.receive([later]) == [Subscribed(later)]  # a later (re)subscribe's ack
    assert client.receive([]) == []  # a data frame carries no control


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
@pytest.mark.parametrize("state", [State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.STREAMING])
def test_every_error_code_ends_the_session_fatal_only_when_a_new_connection_fails_the_same(
        code: int, state: State) -> None:
    client = client_at(state)
    [failure] = client.receive([error(code)])
    # refused keys (answering our auth), a plan without the feed, a subscription over the symbol limit
    fatal = (state is State.AUTHENTICATING and code in (401, 402)) or code in (405, 409)
    assert failure == StreamFailure(code, ERROR_CODES[code], fatal, 5.0 if code == 406 else None)
    assert client.state is State.CLOSED
    with pytest.raises(SessionError, match="after the session failed"):
        client.receive([CONNECTED])


def test_an_error_without_a_code_is_an_internal_error() -> None:
    [failure] = client_at(State.STREAMING).receive([{"T": "error"}])
    assert (failure.code, failure.message, failure.fatal) == (500, "internal error", False)
    [failure] = client_at(State.STREAMING).receive([{"T": "error", "code": 499, "msg": "new"}])
    assert (failure.code, failure.message, failure.fatal) == (499, "new", False)


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (State.CONNECTING, AUTHENTICATED),  # authenticated before connected
        (State.CONNECTING, ACK),  # an ack before anything
        (State.AUTHENTICATING, CONNECTED),  # a duplicate connected
        (State.AUTHENTICATING, ACK),  # an ack before authenticated
        (State.SUBSCRIBING, CONNECTED),
        (State.SUBSCRIBING, AUTHENTICATED),  # a duplicate authenticated
        (State.STREAMING, CONNECTED),
        (State.STREAMING, AUTHENTICATED),
        (State.STREAMING, {"T": "success", "msg": "something else"}),
    ],
)
def test_out_of_order_and_duplicate_messages_are_protocol_errors(state: State, msg: dict) -> None:
    with pytest.raises(SessionError, match=f"not allowed while {state.value}"):
        client_at(state).receive([msg])


@pytest.mark.parametrize("state", [State.CONNECTING, State.AUTHENTICATING])
def test_a_handshake_frame_without_the_awaited_message_is_a_protocol_error(state: State) -> None:
    expected = "connected" if state is State.CONNECTING else "authenticated"
    with pytest.raises(SessionError, match=f"expected '{expected}'"):
        client_at(state).receive([])


def test_connected_and_authenticated_in_one_frame_are_taken_in_order() -> None:
    client = session.MarketDataClientSession("key", "secret", SUBSCRIBE)
    events = client.receive([CONNECTED, AUTHENTICATED])
    assert [type(e) for e in events] == [Connected, Send, Authenticated, Send]
    assert client.state is State.SUBSCRIBING


def test_the_secret_is_not_in_an_auth_requests_repr() -> None:
    assert "s3cret" not in repr(AuthRequest("key", "s3cret"))


# ------------------------------------------------------------------ market-data server
def server(max_symbols: int = 20_000) -> session.MarketDataServerSession:
    return session.MarketDataServerSession(("trades", "quotes", "bars"), stocks=True, max_symbols=max_symbols)


def authed_server(max_symbols: int = 20_000) -> session.MarketDataServerSession:
    srv = server(max_symbols)
    [request] = srv.receive({"action": "auth", "key": "k", "secret": "s"})
    assert request == AuthRequest("k", "s")
    assert srv.accept() == [Send(AUTHENTICATED)]
    return srv


def test_server_greets_authenticates_and_acknowledges_a_subscription() -> None:
    srv = server()
    assert srv.welcome() == [Send(CONNECTED)]
    srv = authed_server()
    [change] = srv.receive({"action": "subscribe", "trades": ["aapl", "MSFT"], "bars": ["*"]})
    assert isinstance(change, SubscriptionChange) and change.added
    assert change.ack == {"T": "subscription", "trades": ["AAPL", "MSFT"], "quotes": [], "bars": ["*"],
                          "corrections": ["AAPL", "MSFT"], "cancelErrors": ["AAPL", "MSFT"]}
    assert change.previous == {"trades": frozenset(), "quotes": frozenset(), "bars": frozenset()}
    [change] = srv.receive({"action": "unsubscribe", "trades": ["MSFT"]})
    assert not change.added and change.subscription["trades"] == {"AAPL"}
    assert srv.subscription["bars"] == {"*"}


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (None, 400),  # did not decode
        ({"action": "dance"}, 400),  # unknown action
        ({"action": "subscribe", "trades": ["AAPL"]}, 401),  # before auth
        ({"action": "unsubscribe", "trades": ["AAPL"]}, 401),
    ],
)
def test_server_answers_bad_or_early_actions_with_their_codes(msg: dict | None, code: int) -> None:
    srv = server()
    assert srv.receive(msg) == [Send(error(code))]
    assert srv.state is State.AWAITING_AUTH  # the connection stays open


def test_server_answers_a_second_auth_403_and_a_bad_symbol_list_400() -> None:
    srv = authed_server()
    assert srv.receive({"action": "auth", "key": "k", "secret": "s"}) == [Send(error(403))]
    assert srv.receive({"action": "subscribe", "trades": "AAPL"}) == [Send(error(400))]
    assert srv.receive({"action": "subscribe", "trades": [1, 2]}) == [Send(error(400))]
    assert srv.subscription["trades"] == frozenset()


def test_server_caps_a_subscription_with_405_and_keeps_the_old_one() -> None:
    srv = authed_server(max_symbols=2)
    srv.receive({"action": "subscribe", "trades": ["A", "B"]})
    assert srv.receive({"action": "subscribe", "trades": ["C"]}) == [Send(error(405))]
    assert srv.subscription["trades"] == {"A", "B"}


@pytest.mark.parametrize("code", [402, 406])
def test_server_refusing_keys_or_the_connection_closes_it(code: int) -> None:
    srv = server()
    srv.receive({"action": "auth", "key": "k", "secret": "wrong"})
    assert srv.refuse(code) == [Send(error(code)), Close()]
    with pytest.raises(SessionError):
        srv.receive({"action": "auth", "key": "k", "secret": "s"})


def test_server_auth_timeout_is_404_and_only_before_auth() -> None:
    assert server().auth_timed_out() == [Send(error(404)), Close()]
    with pytest.raises(SessionError, match="auth timeout while authenticated"):
        authed_server().auth_timed_out()
    with pytest.raises(SessionError, match="accepting an auth while authenticated"):
        authed_server().accept()


def test_client_and_server_agree_over_the_wire_in_msgpack_and_json() -> None:
    for use_msgpack in (True, False):
        client = session.MarketDataClientSession("k", "s", SUBSCRIBE)
        srv = server()
        to_client = [e.message for e in srv.welcome()]
        for _ in range(10):
            if client.state is State.STREAMING:
                break
            events = client.receive(decode_frame(encode_frame(to_client, use_msgpack=use_msgpack)).control)
            to_client = []
            for event in events:
                if not isinstance(event, Send):
                    continue
                wire = encode_client_message(event.message, use_msgpack=use_msgpack)
                for answer in srv.receive(decode_client_message(wire)):
                    if isinstance(answer, AuthRequest):
                        to_client += [e.message for e in srv.accept()]
                    elif isinstance(answer, SubscriptionChange):
                        to_client.append(answer.ack)
        assert client.state is State.STREAMING
        assert srv.subscription["trades"] == {"AAPL"} and srv.subscription["quotes"] == {"AAPL"}


# ------------------------------------------------------------------ trade updates
def authorization(status: str) -> dict:
    return {"stream": "authorization", "data": {"action": "authenticate", "status": status}}


def test_trade_updates_client_authenticates_listens_and_passes_events() -> None:
    client = session.TradeUpdatesClientSession("k", "s")
    assert client.start() == [Send({"action": "authenticate", "data": {"key_id": "k", "secret_key": "s"}})]
    assert client.receive(authorization("authorized")) == [
        Authenticated(), Send({"action": "listen", "data": {"streams": ["trade_updates"]}})]
    event = {"event": "fill", "order": {"id": "1"}}
    assert client.receive({"stream": "trade_updates", "data": event}) == [TradeUpdate(event)]  # may precede listening
    assert client.receive({"stream": "listening", "data": {"streams": ["trade_updates"]}}) == [
        Listening(("trade_updates",))]
    assert client.state is State.LISTENING
    assert client.receive({"stream": "something_new", "data": {}}) == []  # not ours: ignored
    [failure] = client.receive({"stream": "error", "data": {"error_message": "invalid syntax"}})
    assert failure == StreamFailure(400, "invalid syntax", False)


def test_trade_updates_client_refused_keys_are_fatal() -> None:
    client = session.TradeUpdatesClientSession("k", "wrong")
    [failure] = client.receive(authorization("unauthorized"))
    assert failure.fatal and "refused the keys" in failure.message
    with pytest.raises(SessionError):
        client.receive(authorization("authorized"))


@pytest.mark.parametrize(
    "msg",
    [
        {"stream": "listening", "data": {"streams": ["trade_updates"]}},  # before authorization
        {"stream": "trade_updates", "data": {"event": "fill"}},  # before authorization
        ["not", "a", "map"],
    ],
)
def test_trade_updates_client_out_of_order_messages_are_protocol_errors(msg) -> None:
    with pytest.raises(SessionError):
        session.TradeUpdatesClientSession("k", "s").receive(msg)


def test_trade_updates_client_duplicate_authorization_is_a_protocol_error() -> None:
    client = session.TradeUpdatesClientSession("k", "s")
    client.receive(authorization("authorized"))
    with pytest.raises(SessionError, match="not allowed while listen requested"):
        client.receive(authorization("authorized"))


def test_trade_updates_server_authorizes_then_listens() -> None:
    srv = session.TradeUpdatesServerSession()
    listen = {"action": "listen", "data": {"streams": ["trade_updates", "other"]}}
    assert srv.receive(listen) == [
        Send({"stream": "authorization", "data": {"action": "listen", "status": "unauthorized"}})]
    assert srv.receive({"action": "authenticate", "data": {"key_id": "k", "secret_key": "s"}}) == [AuthRequest("k", "s")]
    assert srv.authorize(True) == [Send(authorization("authorized"))]
    assert srv.receive(listen) == [Send({"stream": "listening", "data": {"streams": ["trade_updates"]}}),
                                   Listening(("trade_updates",))]
    assert srv.receive({"action": "listen", "data": {"streams": []}})[-1] == Listening(())


@pytest.mark.parametrize("msg", [None, {"data": {}}, {"action": "listen", "data": "x"}, [1]])
def test_trade_updates_server_answers_bad_messages_invalid_syntax(msg) -> None:
    assert session.TradeUpdatesServerSession().receive(msg) == [
        Send({"stream": "error", "data": {"error_message": "invalid syntax"}})]


def test_trade_updates_server_unknown_action_and_refused_keys() -> None:
    srv = session.TradeUpdatesServerSession()
    assert srv.receive({"action": "dance"}) == [Send({"stream": "error", "data": {"error_message": "unknown action 'dance'"}})]
    assert srv.authorize(False) == [Send(authorization("unauthorized")), Close()]
    with pytest.raises(SessionError):
        srv.receive({"action": "listen"})


@pytest.mark.parametrize(("code", "setting"), [(401, "API keys"), (402, "API keys"), (405, "TICKVAULT_SYMBOLS"),
                                               (409, "TICKVAULT_FEEDS")])
def test_the_reader_stops_on_a_fatal_refusal_naming_what_to_change(code: int, setting: str) -> None:
    from tickvault.stream.reader import AuthFailed, _failure

    state = State.AUTHENTICATING if code in (401, 402) else State.SUBSCRIBING
    [failure] = client_at(state).receive([error(code)])
    exc = _failure(failure)
    assert isinstance(exc, AuthFailed) and setting in str(exc) and f"code {code}" in str(exc)
