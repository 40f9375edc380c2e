"""tickvault._indicators (C) against its Python twins: SMA and VWAP equal PySMA and PyVWAP bit for
bit on every update (values, warm-up, resets, errors); the compiled ATR and MACD equal the numpy
ones and TA-Lib; without the extension the package runs the Python forms.

The series are test_indicators.market's: regimes, gaps, flat runs, a flat start, three magnitudes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import talib

import tickvault.indicators as ind
from tickvault.indicators import _compiled, bundle, incremental, vectorized
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


# ---------------------------------------------------------------- EMA, RSI, ATR, MACD, Bollinger, the bundle

# Each compiled indicator, its Python twin, what one update takes from a bar (high, low, close,
# volume) and the attributes that are its outputs.
CLOSE_ONLY = lambda h, lo, c, v: (c,)  # noqa: E731
TWINS = {
    "ema": (lambda p: ind.EMA(p), lambda p: incremental.PyEMA(p), CLOSE_ONLY, ("value", "ready")),
    "rsi": (lambda p: ind.RSI(p), lambda p: incremental.PyRSI(p), CLOSE_ONLY, ("value", "ready")),
    "atr": (lambda p: ind.ATR(p), lambda p: incremental.PyATR(p), lambda h, lo, c, v: (h, lo, c),
            ("value", "ready")),
    "macd": (lambda p: ind.MACD(*p), lambda p: incremental.PyMACD(*p), CLOSE_ONLY,
             ("macd", "signal", "hist", "ready")),
    "bands": (lambda p: ind.BollingerBands(*p), lambda p: incremental.PyBollingerBands(*p), CLOSE_ONLY,
              ("upper", "middle", "lower", "stddev", "ready")),
}
PERIODS = {
    "ema": (1, 2, 12, 26, 200),
    "rsi": (1, 2, 14, 50),
    "atr": (1, 2, 14, 30),
    "macd": ((12, 26, 9), (2, 2, 1), (26, 12, 9), (5, 35, 5), (3, 4, 30)),
    "bands": ((20, 2.0, 2.0), (1, 2.0, 2.0), (2, 1.5, 3.0), (20, 0.0, 1.0), (250, 2.0, 2.0)),
}


def outputs(indicator, update, rows, attributes) -> tuple[np.ndarray, list[str]]:
    """Every output attribute after every update (the bits), and the errors raised, by update index."""
    seen, errors = [], []
    for i, row in enumerate(rows):
        try:
            update(*row)
        except (ValueError, OverflowError) as exc:
            errors.append(f"{i}: {type(exc).__name__}: {exc}")
        seen.append([float(getattr(indicator, name)) for name in attributes])
    return bits(np.ravel(seen).tolist()), errors


def assert_twins_equal(name, period, rows, resets=()) -> list[str]:
    """The compiled indicator and its twin fed ``rows``, reset before each of ``resets``: the same
    bits after every update, the same errors at the same updates (returned)."""
    make_compiled, make_python, pick, attributes = TWINS[name]
    errors = []
    compiled, python = make_compiled(period), make_python(period)
    picked = [pick(*row) for row in rows]
    for start, end in zip((0, *resets), (*resets, len(rows))):  # a reset before each later segment
        if start:
            compiled.reset()
            python.reset()
        got = outputs(compiled, compiled.update, picked[start:end], attributes)
        expected = outputs(python, python.update, picked[start:end], attributes)
        assert np.array_equal(got[0], expected[0]), (name, period, start)
        assert got[1] == expected[1], (name, period, start)
        errors += got[1]
    return errors


@pytest.mark.parametrize("name", list(TWINS))
@pytest.mark.parametrize("scale", SCALES, ids=["tiny", "unit", "huge"])
def test_compiled_equals_python_twin_bit_for_bit_across_warm_up_and_resets(name, scale):
    """Warm-up (a flat start included), regimes, gaps, flat runs, and resets mid-warm-up and later;
    30k bars are past many exact recomputes of the Bollinger sums (every 1000 updates and on drift)."""
    high, low, close, volume = market(30_000, seed=47, scale=scale)
    inverted = [700, 20_000]  # bars with high < low
    high[inverted], low[inverted] = low[inverted] - 0.5 * scale, high[inverted]
    rows = list(zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist()))
    for period in PERIODS[name]:
        assert_twins_equal(name, period, rows, resets=(5, 12_345, 12_350))


@pytest.mark.parametrize("name", list(TWINS))
def test_compiled_equals_python_twin_on_nan_and_infinite_prices(name):
    """A NaN or an infinite price poisons the same values in both, and an exact recompute of a window
    holding +inf and -inf (math.fsum) fails at the same update, with the same state left behind."""
    rng = np.random.default_rng(53)
    close = (100.0 + np.cumsum(rng.normal(0.0, 0.1, 6000))).tolist()
    # The last two: in the window filled after the reset at 2000.
    for i, value in ((300, math.nan), (1500, math.inf), (1501, -math.inf), (2600, math.inf),
                     (4000, -math.inf), (2005, math.inf), (2006, -math.inf)):
        close[i] = value
    rows = [(c + 0.1, c - 0.1, c, 10.0) for c in close]
    rows[3000] = (math.nan, 1.0, 2.0, 10.0)  # a NaN high alone
    errors = []
    for period in PERIODS[name]:
        errors += assert_twins_equal(name, period, rows, resets=(2000, 3100))
    if name == "bands":  # the exact recompute of the window filled after the reset: fsum(inf, -inf)
        assert errors and all("inf" in error for error in errors)


def test_bollinger_recompute_boundaries_bit_for_bit():
    """Windows that go flat at a new price (A == B == 0 after the recompute), a gap that moves the
    mean far from the reference (a drift recompute), and runs across the every-1000 recompute."""
    steps = [100.0] * 50 + [100.0 + 0.01 * i for i in range(1200)] + [250.0] * 60
    steps += [250.0 + (0.3 if i % 2 else -0.3) for i in range(2500)] + [1e-3] * 40 + [1e9] * 30
    rows = [(c, c, c, 1.0) for c in steps]
    for period in ((20, 2.0, 2.0), (1000, 2.0, 2.0), (999, 2.0, 2.0), (3, 2.0, 2.0)):
        assert_twins_equal("bands", period, rows, resets=(1260, 3000))
    flat = ind.BollingerBands(20)
    for _ in range(40):
        flat.update(250.0)
    assert flat.stddev == 0.0 and flat.upper == flat.middle == flat.lower == 250.0


def test_compiled_indicators_refuse_bad_input_and_periods_like_their_twins():
    for make in (ind.EMA, ind.RSI, ind.ATR, incremental.PyEMA, incremental.PyRSI, incremental.PyATR):
        for period in (0, -1, 2.5, True, "14"):
            with pytest.raises(d.InvalidPeriodError):
                make(period)
    for periods in ((1, 26, 9), (12, 26, 0), (12.0, 26, 9)):
        for make in (ind.MACD, incremental.PyMACD):
            with pytest.raises(d.InvalidPeriodError):
                make(*periods)
    for make in (ind.BollingerBands, incremental.PyBollingerBands):
        with pytest.raises(d.InvalidPeriodError):
            make(0)
        with pytest.raises(ValueError):
            make(20, "wide")  # type: ignore[arg-type]
    assert (ind.MACD(26, 12, 9).fast, ind.MACD(26, 12, 9).slow) == (12, 26)  # swapped, as TA-Lib
    pairs = [(ind.EMA(3), incremental.PyEMA(3)), (ind.RSI(3), incremental.PyRSI(3)),
             (ind.MACD(2, 3, 1), incremental.PyMACD(2, 3, 1)),
             (ind.BollingerBands(3), incremental.PyBollingerBands(3))]
    for compiled, python in pairs:
        for indicator in (compiled, python):
            for bad in ("101.5", None, [1.0]):
                with pytest.raises(TypeError):
                    indicator.update(bad)
            for close in (1.0, 2.0, 4.0, 3.0, 5.0):  # a refused value left nothing behind
                indicator.update(close)
        assert compiled.ready and python.ready
        got, expected = (np.ravel(i.value).tolist() for i in (compiled, python))  # a float or a tuple
        assert bits(got).tolist() == bits(expected).tolist()
    for atr in (ind.ATR(2), incremental.PyATR(2)):
        with pytest.raises(TypeError):
            atr.update(1.0, 2.0)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            atr.update(2.0, 1.0, "1.5")
        atr.update(high=2.0, low=1.0, close=1.5)  # keywords, as in Python
        atr.update(3.0, 1.0, close=2.5)
        atr.update(3.0, 2.0, 2.5)
        assert atr.ready and atr.value == 1.5  # true ranges 2 and 1
    with pytest.raises(TypeError):
        ind.ATR(2).update(2.0, 1.0, 1.5, low=1.0)
    with pytest.raises(TypeError):
        ind.ATR(2).update(2.0, 1.0, 1.5, volume=1.0)
    for indicator, attribute in ((ind.EMA(3), "value"), (ind.RSI(3), "ready"), (ind.ATR(3), "period"),
                                 (ind.MACD(), "signal"), (ind.BollingerBands(), "upper")):
        with pytest.raises(AttributeError):
            setattr(indicator, attribute, 1.0)
        with pytest.raises(AttributeError):
            indicator.extra = 1  # type: ignore[attr-defined]
    assert isinstance(ind.MACD().value, d.MACDValue) and isinstance(ind.BollingerBands().value, d.BandsValue)


def session_bars(n: int, seed: int) -> list[tuple]:
    """Bars for the bundle: own vw given, None or NaN; sessions starting; bars of no session."""
    high, low, close, volume = market(n, seed=seed)
    rng = np.random.default_rng(seed)
    own = ((high + low) / 2.0).tolist()
    kind = rng.random(n).tolist()
    rows = []
    for i, row in enumerate(zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist(), own)):
        bar_vwap = None if kind[i] < 0.15 else math.nan if kind[i] < 0.25 else row[4]
        in_session = i % 960 < 900  # 60 bars of no session every 960
        rows.append((*row[:4], bar_vwap, in_session, i % 960 == 0))  # a new session every 960
    return rows


def bundle_rows(bundle, rows) -> np.ndarray:
    seen = []
    for i, (high, low, close, volume, bar_vwap, in_session, new_session) in enumerate(rows):
        if new_session:
            bundle.reset_session()
        if i % 3 == 0:
            bundle.update(high, low, close, volume, bar_vwap, in_session)
        elif i % 3 == 1:  # the keyword spellings
            bundle.update(high, low, close, volume, bar_vwap=bar_vwap, in_session=in_session)
        elif in_session:
            bundle.update(high, low, close, volume, bar_vwap)
        else:
            bundle.update(high, low, close, volume, in_session=False, bar_vwap=bar_vwap)
        seen.append(list(bundle.values().values()))
    return bits(np.ravel(seen).tolist())


def test_compiled_indicator_set_equals_python_bundle_bit_for_bit_with_sessions():
    rows = session_bars(20_000, seed=59)
    compiled, python = ind.IndicatorSet(), bundle.PyIndicatorSet()
    assert np.array_equal(bundle_rows(compiled, rows), bundle_rows(python, rows))
    compiled.reset()
    python.reset()
    assert np.array_equal(bundle_rows(compiled, rows[7000:]), bundle_rows(python, rows[7000:]))
    members = ("rsi", "ema_fast", "ema_slow", "sma", "macd", "bands", "atr", "vwap")
    kinds = (ind.RSI, ind.EMA, ind.EMA, ind.SMA, ind.MACD, ind.BollingerBands, ind.ATR, ind.VWAP)
    for member, kind in zip(members, kinds):
        assert type(getattr(compiled, member)) is kind, member
        with pytest.raises(AttributeError):
            setattr(compiled, member, kind())
    assert (compiled.ema_fast.period, compiled.ema_slow.period) == (d.EMA_FAST_PERIOD, d.EMA_SLOW_PERIOD)


def test_compiled_indicator_set_refuses_a_bad_bar_and_changes_nothing():
    rows = session_bars(300, seed=61)
    compiled, python = ind.IndicatorSet(), bundle.PyIndicatorSet()
    bundle_rows(compiled, rows[:200])
    bundle_rows(python, rows[:200])
    before = list(compiled.values().values())
    for bad in ((None, 1.0, 1.0, 1.0), (1.0, 1.0, "1.0", 1.0), (1.0, 1.0, 1.0, None),
                (1.0, 1.0, 1.0, 1.0, "vw"), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0, None, True, 7)):
        with pytest.raises(TypeError):
            compiled.update(*bad)
        assert bits(list(compiled.values().values())).tolist() == bits(before).tolist(), bad
    with pytest.raises(TypeError):
        compiled.update(1.0, 1.0, 1.0, 1.0, vw=1.0)
    with pytest.raises(TypeError):
        compiled.update(1.0, 1.0, 1.0, 1.0, None, True, in_session=True)
    with pytest.raises(ValueError):  # in_session whose truth is undefined: refused before any update
        compiled.update(1.0, 1.0, 1.0, 1.0, None, np.array([True, False]))
    assert bits(list(compiled.values().values())).tolist() == bits(before).tolist()
    # Then on as if the refused bars never came: the Python bundle never saw them.
    assert np.array_equal(bundle_rows(compiled, rows[200:]), bundle_rows(python, rows[200:]))


def test_an_exact_recompute_error_stops_the_bundle_where_the_python_bundle_stops():
    """+inf and -inf in the SMA's and the bands' windows: math.fsum raises in the same member at
    the same bar in both bundles, which then go on in step."""
    closes = [100.0 + 0.01 * i for i in range(4000)]
    for i in range(1000, 3500, 50):  # a pair in the window at the SMA's exact recompute (bar 1019)
        closes[i], closes[i + 1] = math.inf, -math.inf
    rows = [(c, c, c, 1.0) for c in closes]
    results = []
    for indicators in (ind.IndicatorSet(), bundle.PyIndicatorSet()):
        errors, seen = [], []
        for i, row in enumerate(rows):
            try:
                indicators.update(*row)
            except ValueError as exc:
                errors.append((i, str(exc)))
            seen.append(list(indicators.values().values()))
        results.append((errors, bits(np.ravel(seen).tolist())))
    (errors, got), (expected_errors, expected) = results
    assert errors and errors == expected_errors
    assert np.array_equal(got, expected)


def test_compiled_indicator_set_base_checks_its_members():
    base = _compiled.compiled.IndicatorSet
    members = [ind.RSI(), ind.EMA(12), ind.EMA(26), ind.SMA(), ind.MACD(), ind.BollingerBands(), ind.ATR(),
               ind.VWAP()]
    base(*members).update(1.0, 1.0, 1.0, 1.0)
    wrong = list(members)
    wrong[0] = incremental.PyRSI()
    with pytest.raises(TypeError, match="rsi must be"):
        base(*wrong)
    with pytest.raises(TypeError):
        base(*members[:7])
    with pytest.raises(RuntimeError, match="not called"):
        base.__new__(base).update(1.0, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="not called"):
        base(members[0], members[1], members[2], _compiled.compiled.SMA.__new__(_compiled.compiled.SMA),
             *members[4:])


def test_without_the_extension_every_indicator_and_the_bundle_are_the_python_twins():
    """Without tickvault._indicators every public class is its Python twin, and the bundle's rows
    over sessions, bars of no session and missing vw are the compiled bundle's, bit for bit."""
    rows = session_bars(2000, seed=67)
    script = (
        "import sys, json, math, numpy as np\n"
        "sys.modules['tickvault._indicators'] = None\n"
        "import tickvault.indicators as ind\n"
        "from tickvault.indicators import bundle, incremental as i\n"
        "assert (ind.EMA, ind.RSI, ind.ATR, ind.MACD, ind.BollingerBands, ind.SMA, ind.VWAP) == "
        "(i.PyEMA, i.PyRSI, i.PyATR, i.PyMACD, i.PyBollingerBands, i.PySMA, i.PyVWAP)\n"
        "assert ind.IndicatorSet is bundle.PyIndicatorSet\n"
        "s = ind.IndicatorSet()\n"
        "out = []\n"
        "for h, l, c, v, vw, session, new in json.loads(sys.stdin.read()):\n"
        "    if new:\n"
        "        s.reset_session()\n"
        "    s.update(h, l, c, v, math.nan if vw == 'nan' else vw, session)\n"
        "    out.append(list(s.values().values()))\n"
        "sys.stdout.write(np.array(out).tobytes().hex())\n"
    )
    encoded = json.dumps([[*r[:4], "nan" if isinstance(r[4], float) and math.isnan(r[4]) else r[4], *r[5:]]
                          for r in rows])
    done = subprocess.run([sys.executable, "-c", script], input=encoded, capture_output=True, text=True,
                          check=True)
    assert "tickvault._indicators is not available" in done.stderr
    fallback = bits(np.frombuffer(bytes.fromhex(done.stdout)).tolist())
    compiled = ind.IndicatorSet()
    seen = []
    for high, low, close, volume, bar_vwap, in_session, new_session in rows:
        if new_session:
            compiled.reset_session()
        compiled.update(high, low, close, volume, bar_vwap, in_session)
        seen.append(list(compiled.values().values()))
    assert np.array_equal(fallback, bits(np.ravel(seen).tolist()))
