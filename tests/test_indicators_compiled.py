"""tickvault._indicators (C) against its Python twins: SMA and VWAP equal PySMA and PyVWAP bit for
bit on every update (values, warm-up, resets, errors); the compiled ATR and MACD equal the numpy
ones and TA-Lib; without the extension the package runs the Python forms.

The series are test_indicators.market's: regimes, gaps, flat runs, a flat start, three magnitudes.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import talib

import tickvault.indicators as ind
from tickvault.indicators import _compiled, incremental, vectorized
from tickvault.indicators import definitions as d

from .test_indicators import SCALES, assert_matches, market, price_atol


def bits(values: list[float]) -> np.ndarray:
    """Each float's 64 bits (NaNs made one pattern: C and Python may spell NaN differently)."""
    array = np.array(values, dtype=np.float64)
    array[np.isnan(array)] = np.nan
    return array.view(np.uint64)


def trace(indicator, rows) -> tuple[list[float], list[bool]]:
    values, ready = [], []
    update = indicator.update
    for row in rows:
        update(*row)
        values.append(indicator.value)
        ready.append(indicator.ready)
    return values, ready


def test_the_extension_is_built():
    assert _compiled.compiled is not None, "tickvault._indicators did not import: run `make install`"
    assert ind.SMA is not incremental.PySMA and issubclass(ind.SMA, _compiled.compiled.SMA)
    assert ind.VWAP is not incremental.PyVWAP and issubclass(ind.VWAP, _compiled.compiled.VWAP)


@pytest.mark.parametrize("scale", SCALES, ids=["tiny", "unit", "huge"])
def test_compiled_sma_equals_python_sma_bit_for_bit_across_exact_recomputes(scale):
    _, _, close, _ = market(30_000, seed=29, scale=scale)
    rows = [(c,) for c in close.tolist()]
    # 1000 and 1500: one ring is a whole recompute interval or longer; 7 and 30 wrap off its beat.
    for period in (1, 2, 7, 20, 30, 1000, 1500):
        compiled, python = ind.SMA(period), incremental.PySMA(period)
        got, expected = trace(compiled, rows), trace(python, rows)
        assert np.array_equal(bits(got[0]), bits(expected[0])), period
        assert got[1] == expected[1], period
        compiled.reset()
        python.reset()
        tail = rows[12_345:]  # after a reset: the same again, from a fresh state
        assert np.array_equal(bits(trace(compiled, tail)[0]), bits(trace(python, tail)[0])), period


def test_compiled_vwap_equals_python_vwap_bit_for_bit_with_sessions_and_missing_bar_vwap():
    high, low, close, volume = market(20_000, seed=31, scale=1.0)
    rng = np.random.default_rng(31)
    own = ((high + low) / 2.0).tolist()
    missing = rng.random(high.shape[0])
    for i, m in enumerate(missing.tolist()):
        if m < 0.2:
            own[i] = None  # no `vw` at all
        elif m < 0.3:
            own[i] = math.nan  # a NaN `vw`: the typical price too
    volume[1000:1010] = 0.0  # no trade in a few bars: the value holds
    starts = set(rng.integers(0, high.shape[0], 20).tolist())
    compiled, python = ind.VWAP(), incremental.PyVWAP()
    got, expected = [], []
    for i, row in enumerate(zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist(), own)):
        if i in starts:
            compiled.reset()
            python.reset()
        if i % 2:  # both spellings of the fifth argument
            compiled.update(*row[:4], bar_vwap=row[4])
            python.update(*row[:4], bar_vwap=row[4])
        else:
            compiled.update(*row)
            python.update(*row)
        assert compiled.ready is python.ready, i
        got.append(compiled.value)
        expected.append(python.value)
    assert np.array_equal(bits(got), bits(expected))
    fresh = ind.VWAP()
    fresh.update(1.0, 2.0, 3.0, 0.0)  # volume 0: not ready, still NaN
    assert not fresh.ready and math.isnan(fresh.value)
    fresh.update(1, 2, 3, 4)  # ints and no bar vwap: the typical price, as a float
    assert fresh.ready and fresh.value == 2.0 and isinstance(fresh.value, float)


def test_compiled_indicators_refuse_what_their_python_twins_refuse():
    with pytest.raises(d.InvalidPeriodError):
        ind.SMA(0)
    with pytest.raises(d.InvalidPeriodError):
        ind.SMA(2.5)  # type: ignore[arg-type]
    for indicator in (ind.SMA(3), incremental.PySMA(3)):
        with pytest.raises(TypeError):
            indicator.update("101.5")
        with pytest.raises(TypeError):
            indicator.update(None)
        for close in (1.0, 2.0, 3.0):  # a refused value leaves nothing behind in the window
            indicator.update(close)
        assert indicator.ready and indicator.value == 2.0
    for indicator in (ind.VWAP(), incremental.PyVWAP()):
        with pytest.raises(TypeError):
            indicator.update(1.0, 2.0, 3.0)  # no volume
        with pytest.raises(TypeError):
            indicator.update(1.0, 2.0, 3.0, 4.0, vw=2.0)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            indicator.update(1.0, 2.0, 3.0, 4.0, 5.0, bar_vwap=5.0)  # type: ignore[misc]
        with pytest.raises(TypeError):
            indicator.update(1.0, 2.0, None, 4.0)
        assert math.isnan(indicator.value) and not indicator.ready  # nothing half-applied
    sma = ind.SMA(3)
    with pytest.raises(AttributeError):
        sma.value = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sma.extra = 1  # type: ignore[attr-defined]


def test_an_infinite_price_fails_the_exact_recompute_the_same_way_in_both():
    """math.fsum of a ring holding +inf and -inf raises; the compiled SMA calls the same fsum, so it
    raises the same error at the same update and carries on from the same state."""
    values = [1.0] * 1000 + [math.inf, -math.inf] + [2.0] * 1100
    outcomes = []
    for indicator in (ind.SMA(1000), incremental.PySMA(1000)):
        errors, seen = [], []
        for i, value in enumerate(values):
            try:
                indicator.update(value)
            except ValueError as exc:
                errors.append((i, str(exc)))
            seen.append(indicator.value)
        outcomes.append((errors, bits(seen)))
    (errors, got), (expected_errors, expected) = outcomes
    assert errors and errors == expected_errors
    assert np.array_equal(got, expected)


def test_compiled_atr_equals_numpy_atr_and_talib_including_inverted_bars():
    for scale in SCALES:
        high, low, close, _ = market(100_000, seed=37, scale=scale)
        high[[500, 70_000]], low[[500, 70_000]] = low[[500, 70_000]] - 0.5 * scale, high[[500, 70_000]]
        for period in (1, 2, 14, 30):
            compiled = ind.atr(high, low, close, period)
            numpy_form = vectorized.atr_numpy(high, low, close, period)
            assert_matches(compiled, numpy_form, rtol=1e-12)
            assert_matches(compiled, talib.ATR(high, low, close, period), atol=price_atol(scale) * 1e-3)


def test_compiled_macd_equals_numpy_macd_and_talib_including_seed_alignment():
    for scale in SCALES:
        _, _, close, _ = market(100_000, seed=43, scale=scale)
        for periods in ((12, 26, 9), (5, 35, 5), (26, 12, 9), (2, 2, 1), (3, 4, 30)):
            compiled = ind.macd(close, *periods)
            numpy_form = vectorized.macd_numpy(close, *periods)
            for ours, numpy_output, theirs in zip(compiled, numpy_form, talib.MACD(close, *periods)):
                assert_matches(ours, numpy_output, atol=price_atol(scale) * 1e-3)
                assert_matches(ours, theirs, atol=price_atol(scale))


def test_compiled_macd_short_and_bad_inputs():
    first = d.macd_first_index(12, 26, 9)
    for n in (0, 1, first):  # all warm-up, as talib
        close = np.linspace(1.0, 2.0, n)
        assert all(o.shape == (n,) and np.isnan(o).all() for o in ind.macd(close))
    close = np.linspace(1.0, 2.0, first + 1)
    for ours, theirs in zip(ind.macd(close), talib.MACD(close, 12, 26, 9)):
        assert_matches(ours, theirs, atol=1e-12)  # exactly one value: the seeds alone
    with pytest.raises(d.InvalidPeriodError):
        ind.macd(close, 1, 26, 9)
    out = [np.empty(first + 1) for _ in range(3)]
    with pytest.raises(ValueError, match="same length"):
        _compiled.compiled.macd_into(close, 12, 26, 9, out[0], out[1], np.empty(first))
    with pytest.raises(ValueError, match="fast <= slow"):
        _compiled.compiled.macd_into(close, 26, 12, 9, *out)  # the caller orders them (definitions)
    with pytest.raises(ValueError, match="len"):
        _compiled.compiled.macd_into(close[:-1], 12, 26, 9, *(o[:-1] for o in out))
    with pytest.raises(TypeError, match="macd_into: close must be"):
        _compiled.compiled.macd_into(close.astype(np.float32), 12, 26, 9, *out)
    with pytest.raises(BufferError):
        _compiled.compiled.macd_into(close, 12, 26, 9, out[0], out[1], bytes((first + 1) * 8))


def test_compiled_atr_short_and_bad_inputs():
    for n in (0, 1, 14):  # all warm-up, as talib
        bars = np.linspace(1.0, 2.0, n)
        assert ind.atr(bars, bars, bars).shape == (n,) and np.isnan(ind.atr(bars, bars, bars)).all()
    flat = np.full(15, 5.0)
    first = ind.atr(flat, flat, flat, 14)
    assert np.isnan(first[:14]).all() and first[14] == 0.0  # flat bars: no range
    bars = np.linspace(1.0, 2.0, 15)
    with pytest.raises(ValueError, match="same length"):
        ind.atr(bars, bars[:-1], bars)
    with pytest.raises(d.InvalidPeriodError):
        ind.atr(bars, bars, bars, 0)
    ints = np.arange(20, dtype=np.int64)  # converted like every other price array
    assert_matches(ind.atr(ints, ints, ints, 3), talib.ATR(*(ints.astype(float),) * 3, 3))
    out = np.empty(15)
    with pytest.raises(TypeError, match="float64"):
        _compiled.compiled.atr_into(bars.astype(np.float32), bars, bars, 3, out)
    with pytest.raises(ValueError, match="same length"):
        _compiled.compiled.atr_into(bars, bars, bars, 3, np.empty(14))
    with pytest.raises(ValueError, match="period"):
        _compiled.compiled.atr_into(bars, bars, bars, 15, out)
    with pytest.raises(BufferError):
        _compiled.compiled.atr_into(bars, bars, bars, 3, bytes(15 * 8))  # not writable


def test_without_the_extension_the_package_runs_the_python_forms():
    """A build without a C compiler: tickvault._indicators does not import, and the public names
    are the Python classes and the numpy ATR, with the same values as the compiled ones here."""
    high, low, close, volume = market(3000, seed=41)
    script = (
        "import sys, numpy as np\n"
        "sys.modules['tickvault._indicators'] = None\n"  # import fails as if never built
        "import tickvault.indicators as ind\n"
        "from tickvault.indicators import incremental\n"
        "assert ind.SMA is incremental.PySMA and ind.VWAP is incremental.PyVWAP\n"
        "h, l, c, v = (np.frombuffer(bytes.fromhex(x)) for x in sys.argv[1:5])\n"
        "s = ind.IndicatorSet()\n"
        "rows = []\n"
        "for row in zip(h.tolist(), l.tolist(), c.tolist(), v.tolist()):\n"
        "    s.update(*row)\n"
        "    rows.append(list(s.values().values()))\n"
        "sys.stdout.write(np.array(rows).tobytes().hex() + ' ' + ind.atr(h, l, c).tobytes().hex()\n"
        "                 + ' ' + np.array(ind.macd(c)).tobytes().hex())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *(a.tobytes().hex() for a in (high, low, close, volume))],
        capture_output=True, text=True, check=True,
    )
    assert "tickvault._indicators is not available" in done.stderr
    rows_hex, atr_hex, macd_hex = done.stdout.split()
    fallback_rows = np.frombuffer(bytes.fromhex(rows_hex)).reshape(3000, len(ind.COLUMNS))
    bundle = ind.IndicatorSet()
    compiled_rows = []
    for row in zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist()):
        bundle.update(*row)
        compiled_rows.append(list(bundle.values().values()))
    assert np.array_equal(bits(fallback_rows.ravel().tolist()), bits(np.ravel(compiled_rows).tolist()))
    assert_matches(np.frombuffer(bytes.fromhex(atr_hex)), ind.atr(high, low, close), rtol=1e-12)
    fallback_macd = np.frombuffer(bytes.fromhex(macd_hex)).reshape(3, 3000)
    for numpy_output, ours in zip(fallback_macd, ind.macd(close)):
        assert_matches(numpy_output, ours, atol=price_atol(1.0) * 1e-3)
