"""Options: OCC symbols parsed into the columns a trader filters on; the msgpack-only stream's trades and
quotes decoded whole (rejects alone, never raising) and stored exactly."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from tickvault.alpaca.columnar import COPY_HEADER, COPY_TRAILER
from tickvault.alpaca.options import OccSymbol, OccSymbolError, decode_options, parse_occ
from tickvault.alpaca.protocol import encode_frame
from tickvault.db.tables import OPTION_QUOTES, OPTION_TRADES

T0 = 1_767_225_600_123_456_789
CALL = "AAPL250117C00200000"


@pytest.mark.parametrize("symbol, parts", [
    (CALL, OccSymbol("AAPL", date(2025, 1, 17), "C", Decimal("200.000"))),
    ("SPY260320P00512500", OccSymbol("SPY", date(2026, 3, 20), "P", Decimal("512.500"))),
    ("BRKB261218C00000500", OccSymbol("BRKB", date(2026, 12, 18), "C", Decimal("0.500"))),
    ("A250117C00200000", OccSymbol("A", date(2025, 1, 17), "C", Decimal("200.000"))),
])
def test_occ_symbols_parse_into_underlying_expiry_type_and_strike(symbol, parts):
    assert parse_occ(symbol) == parts


@pytest.mark.parametrize("symbol", ["AAPL", "AAPL250117X00200000", "AAPL251317C00200000", "AAPL250117C0020000",
                                    "aapl250117C00200000", "TOOLONG250117C00200000", ""])
def test_a_symbol_that_is_not_occ_is_refused_clearly(symbol):
    with pytest.raises(OccSymbolError, match="OCC option symbol|expiration"):
        parse_occ(symbol)


def _trade(**over) -> dict:
    return {"T": "t", "S": CALL, "t": T0, "p": 4.35, "s": 3, "x": "C", "c": "I", **over}


QUOTE = {"T": "q", "S": "SPY260320P00512500", "t": T0, "bx": "X", "bp": 1.1, "bs": 10, "ax": "C", "ap": 1.2,
         "as": 5, "c": "A"}


def test_trades_and_quotes_decode_with_exact_ns_times():
    frame = decode_options(encode_frame([_trade(), QUOTE, {"T": "subscription", "trades": [CALL]}]))
    assert frame.trades.latest[CALL] == (T0, CALL, 4.35, 3, "C", "I")
    assert frame.quotes.latest["SPY260320P00512500"] == (T0, "SPY260320P00512500", "X", 1.1, 10, "C", 1.2, 5, "A")
    assert [m["T"] for m in frame.rest.control] == ["subscription"] and frame.market_count() == 2


@pytest.mark.parametrize("bad, reason", [
    (_trade(S="AAPL"), "option trade on 'AAPL', which is not an OCC option symbol"),
    (_trade(s=1.5), "option trade has a field of the wrong type or a value the table cannot store"),
    ({k: v for k, v in _trade().items() if k != "p"}, "option trade missing field 'p'"),
    ({"T": "b", "S": CALL, "t": T0}, "unknown message type 'b' on the options stream"),
])
def test_a_bad_message_is_rejected_alone(bad, reason):
    frame = decode_options(encode_frame([_trade(), bad, _trade(t=T0 + 1)]))
    assert frame.trades.n == 2 and [r.reason for r in frame.rest.rejects] == [reason]


@pytest.mark.parametrize("data", ['[{"T":"t"}]', b"\xc1", b"\x92\x01", b""])
def test_json_or_broken_frames_are_one_reject_never_an_exception(data):
    frame = decode_options(data)
    assert frame.market_count() == 0 and len(frame.rest.rejects) == 1
    if isinstance(data, str):
        assert "msgpack only" in frame.rest.rejects[0].reason


def test_copy_data_stores_the_occ_parts_as_columns(conn):
    frame = decode_options(encode_frame([_trade(), _trade(t=T0 + 5, x=None, c=None), QUOTE]))
    with conn.transaction(force_rollback=True):
        with conn.cursor().copy(OPTION_TRADES.copy_statement()) as copy:
            copy.write(COPY_HEADER + frame.trades.copy + COPY_TRAILER)
        with conn.cursor().copy(OPTION_QUOTES.copy_statement()) as copy:
            copy.write(COPY_HEADER + frame.quotes.copy + COPY_TRAILER)
        trades = conn.execute("SELECT underlying, expiration, option_type, strike, price, size, exchange, condition, "
                              "time_ns FROM option_trades ORDER BY time_ns").fetchall()
        quote = conn.execute("SELECT underlying, expiration, option_type, strike, bid_size, ask_price "
                             "FROM option_quotes").fetchone()
        # a re-delivered print (NULL exchange and condition included) is a no-op through the key
        conn.execute("INSERT INTO option_trades SELECT * FROM option_trades ON CONFLICT DO NOTHING")
        again = conn.execute("SELECT count(*) FROM option_trades").fetchone()[0]
    assert trades == [("AAPL", date(2025, 1, 17), "C", Decimal("200.000"), 4.35, 3, "C", "I", T0),
                      ("AAPL", date(2025, 1, 17), "C", Decimal("200.000"), 4.35, 3, None, None, T0 + 5)]
    assert quote == ("SPY", date(2026, 3, 20), "P", Decimal("512.500"), 10, 1.2)
    assert again == 2
