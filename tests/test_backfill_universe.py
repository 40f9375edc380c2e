"""Which symbols a gap backfill asks for (tickvault.stream.universe): explicit list, wildcard union, bound."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tickvault.stream.universe import BackfillUniverse


def _frame_symbols(*trade_symbols: str) -> dict[str, tuple]:
    """What the reader passes for a frame: its trades' newest row per symbol (``TradeColumns.latest``)."""
    return {sym: (i, sym, i, "V", 1.0, 1, None, "C") for i, sym in enumerate(trade_symbols)}


async def test_explicit_symbols_are_the_answer_in_configured_order_whatever_the_stream_sends():
    universe = BackfillUniverse(["MSFT", "AAPL", "MSFT"])
    universe.observe(_frame_symbols("NVDA"))
    universe.add(["TSLA"], "the stored trades")
    assert not universe.wildcard and await universe.resolve() == ["MSFT", "AAPL"]


@pytest.mark.parametrize("configured", [[], ["*"], ["*", "AAPL"]], ids=["none", "star", "star-and-one"])
async def test_wildcard_is_the_union_of_stored_received_and_tradable(configured):
    universe = BackfillUniverse(configured)
    universe.add(["MSFT", "AAPL"], "the stored trades")
    universe.observe(_frame_symbols("NVDA", "AAPL", "NVDA"))
    calls = []

    async def tradable():
        calls.append(1)
        return ["IBM", "MSFT"]

    universe.fetch_tradable_once(tradable)
    first, second = await asyncio.gather(universe.resolve(), universe.resolve())
    expected = sorted({"MSFT", "AAPL", "NVDA", "IBM"} | {s for s in configured if s != "*"})
    assert universe.wildcard and first == second == expected
    assert len(calls) == 1  # two backfills at once fetch the assets list once
    assert "*" not in await universe.resolve()


async def test_a_failed_tradable_fetch_is_retried_by_the_next_backfill():
    universe = BackfillUniverse([])
    answers = [RuntimeError("HTTP 503 after retries"), ["AAPL"]]

    async def tradable():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    universe.fetch_tradable_once(tradable)
    with pytest.raises(RuntimeError):
        await universe.resolve()
    assert await universe.resolve() == ["AAPL"] and not answers


async def test_the_universe_stops_at_its_bound_and_says_so_once(caplog):
    universe = BackfillUniverse([], max_symbols=3)
    with caplog.at_level(logging.ERROR, logger="tickvault.universe"):
        universe.add(["A", "B"], "the stored trades")
        universe.observe(_frame_symbols("C", "D"))  # one frame may pass the bound
        universe.observe(_frame_symbols("E"))
        universe.add(["F"], "the tradable assets")
    assert await universe.resolve() == ["A", "B", "C", "D"]
    assert len([r for r in caplog.records if "bound of 3 symbols" in r.getMessage()]) == 1


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError, match="max_symbols"):
        BackfillUniverse([], max_symbols=0)
