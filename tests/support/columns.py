"""Comparable forms of decoded frames, for the tests that hold two decoders of the same bytes to each other."""

from __future__ import annotations


def cols_key(c) -> tuple | None:
    """A TradeColumns/QuoteColumns as a tuple (None stays None); repr keeps NaN equal to NaN, -0.0 apart
    from 0.0 and an int apart from a float in the newest rows."""
    if c is None:
        return None
    return (c.n, c.copy, c.time_min_ns, c.time_max_ns, c.time_last_ns, repr(sorted(c.latest.items())))


def frame_key(frame) -> tuple:
    """A ColumnarFrame or CryptoFrame: its trades, quotes and the rest (rejects included)."""
    return (cols_key(frame.trades), cols_key(frame.quotes), repr(frame.rest))
