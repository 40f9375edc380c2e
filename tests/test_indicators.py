"""tickvault.indicators: incremental == vectorized == TA-Lib (to 1e-9) on long, nasty series.

The series are seeded random walks of 200k bars with price gaps, volatility regimes, flat runs
(constant price, flat bars) and a flat start, at three magnitudes (1e-6, 1, 1e6 times ~100).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view

import tickvault.indicators as ind
from tickvault.indicators import definitions as d
from tickvault.indicators import incremental, vectorized

N = 200_000
SCALES = (1e-6, 1.0, 1e6)


def market(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(high, low, close, volume): log random walk with regimes, gaps and flat runs."""
    rng = np.random.default_rng(seed)
    sigma = rng.choice([1e-4, 1e-3, 1e-2], size=n // 1000 + 1).repeat(1000)[:n]
    steps = rng.normal(0.0, 1.0, n) * sigma
    gaps = rng.random(n) < 5e-4
    steps[gaps] += rng.choice([-1, 1], gaps.sum()) * rng.uniform(0.05, 0.3, gaps.sum())
    for start in rng.integers(n // 10, n - n // 10, 40):  # flat runs: no change at all
        steps[start : start + rng.integers(30, 400)] = 0.0
    steps[:60] = 0.0  # flat from the very start
    close = scale * 100.0 * np.exp(np.cumsum(steps))
    spread = np.abs(rng.normal(0.0, 1.0, n)) * sigma * close
    spread[steps == 0.0] = 0.0  # flat bars inside flat runs
    high = close + spread * rng.random(n)
    low = close - spread * rng.random(n)
    volume = rng.integers(0, 5000, n).astype(float)
    volume[:5] = 0.0  # no trade yet: VWAP undefined
    return high, low, close, volume


@pytest.fixture(scope="module", params=SCALES, ids=["tiny", "unit", "huge"])
def bars(request):
    return (*market(N, seed=7, scale=request.param), request.param)


def assert_matches(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-9, atol: float = 0.0) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    nan = np.isnan(expected)
    mismatched = np.flatnonzero(np.isnan(actual) != nan)
    assert mismatched.size == 0, f"warm-up differs first at index {mismatched[:5]}"
    ok = ~nan
    error = np.abs(actual[ok] - expected[ok])
    limit = rtol * np.abs(expected[ok]) + atol
    worst = int(np.argmax(error - limit))
    assert np.all(error <= limit), (
        f"index {np.flatnonzero(ok)[worst]}: {actual[ok][worst]!r} vs {expected[ok][worst]!r}"
    )


def price_atol(scale: float) -> float:
    """Absolute tolerance for price differences (MACD, histogram, band widths): 1e-9 of ~price."""
    return 1e-9 * 100.0 * scale


# ---------------------------------------------------------------- vectorized vs TA-Lib


def test_vectorized_sma_ema_match_talib(bars):
    _, _, close, _, _ = bars
    assert_matches(ind.sma(close, 20), talib.SMA(close, 20))
    for period in (2, 12, 26, 200):
        assert_matches(ind.ema(close, period), talib.EMA(close, period))


def test_vectorized_rsi_matches_talib_including_flat_runs(bars):
    _, _, close, _, _ = bars
    for period in (2, 14, 50):
        assert_matches(ind.rsi(close, period), talib.RSI(close, period), rtol=0.0, atol=1e-9)


def test_vectorized_atr_matches_talib(bars):
    high, low, close, _, scale = bars
    for period in (1, 14, 30):
        expected = talib.ATR(high, low, close, period)
        atol = price_atol(scale) * 1e-3
        assert_matches(ind.atr(high, low, close, period), expected, atol=atol)
        assert_matches(vectorized.atr_numpy(high, low, close, period), expected, atol=atol)


def test_vectorized_macd_matches_talib_seed_alignment(bars):
    _, _, close, _, scale = bars
    for periods in ((12, 26, 9), (5, 35, 5), (26, 12, 9)):
        expected = talib.MACD(close, *periods)
        for ours, numpy_form, theirs in zip(ind.macd(close, *periods), vectorized.macd_numpy(close, *periods),
                                            expected):
            assert_matches(ours, theirs, atol=price_atol(scale))
            assert_matches(numpy_form, theirs, atol=price_atol(scale))


def test_vectorized_bbands_match_talib(bars):
    _, _, close, _, scale = bars
    for ours, theirs in zip(ind.bbands(close, 20, 2.0, 2.0), talib.BBANDS(close, 20, 2.0, 2.0, matype=0)):
        assert_matches(ours, theirs, atol=price_atol(scale) * 1e-3)


def test_true_range_matches_talib_even_for_inverted_bars():
    high, low, close, _ = market(5000, seed=3)
    assert_matches(ind.true_range(high, low, close), talib.TRANGE(high, low, close), rtol=0, atol=0)
    high[100], low[100] = low[100] - 0.5, high[100]  # a malformed bar: high < low
    assert_matches(ind.true_range(high, low, close), talib.TRANGE(high, low, close), rtol=0, atol=0)
    assert_matches(ind.atr(high, low, close), talib.ATR(high, low, close, 14))
    assert_matches(vectorized.atr_numpy(high, low, close), talib.ATR(high, low, close, 14))


def test_vectorized_vwap_is_cumulative_typical_price_weighted_by_volume(bars):
    high, low, close, volume, _ = bars
    typical = (high + low + close) / 3.0
    with np.errstate(invalid="ignore"):
        expected = np.cumsum(typical * volume) / np.cumsum(volume)
    expected[np.cumsum(volume) == 0] = np.nan
    assert_matches(ind.vwap(high, low, close, volume), expected)


def test_vwap_restarts_at_each_session_and_prefers_bar_vwap():
    high, low, close, volume = market(3000, seed=5)
    bar_vwap = (high + low) / 2.0
    starts = np.zeros(3000, dtype=bool)
    starts[[0, 1000, 2500]] = True
    got = ind.vwap(high, low, close, volume, bar_vwap=bar_vwap, session_start=starts)
    for lo, hi in ((0, 1000), (1000, 2500), (2500, 3000)):
        one = ind.vwap(high[lo:hi], low[lo:hi], close[lo:hi], volume[lo:hi], bar_vwap=bar_vwap[lo:hi])
        assert_matches(got[lo:hi], one, rtol=1e-12)
    incremental = ind.VWAP()
    for i in range(3000):
        if starts[i]:
            incremental.reset()
        incremental.update(high[i], low[i], close[i], volume[i], bar_vwap[i])
        assert math.isnan(got[i]) == math.isnan(incremental.value)
        if incremental.ready:
            assert abs(incremental.value - got[i]) <= 1e-12 * got[i]


def test_vwap_takes_the_typical_price_only_for_bars_without_their_own_and_nothing_outside_sessions():
    """A bar without ``vw`` (NaN in the array, None to the incremental form) is priced at its typical
    price; bars of no session are NaN and add nothing; the bundle and its vectorized twin agree."""
    high, low, close, volume = market(400, seed=8)
    bar_vwap = (high + low) / 2.0
    bar_vwap[[5, 17, 230]] = np.nan
    starts = np.zeros(400, dtype=bool)
    starts[[0, 150]] = True
    inside = np.ones(400, dtype=bool)
    inside[120:150] = False  # e.g. 20:00-04:00 New York time between two sessions
    starts[120] = False
    got = ind.vwap(high, low, close, volume, bar_vwap=bar_vwap, session_start=starts, in_session=inside)
    price = np.where(np.isnan(bar_vwap), (high + low + close) / 3.0, bar_vwap)
    for lo, hi in ((0, 120), (150, 400)):
        with np.errstate(invalid="ignore"):
            expected = np.cumsum(price[lo:hi] * volume[lo:hi]) / np.cumsum(volume[lo:hi])
        assert_matches(got[lo:hi], expected, rtol=1e-12)
    assert np.isnan(got[120:150]).all()
    vectorized = ind.compute_all(high, low, close, volume, bar_vwap=bar_vwap, session_start=starts,
                                 in_session=inside)["vwap"]
    assert_matches(vectorized, got, rtol=0, atol=0)
    bundle = ind.IndicatorSet()
    for i in range(400):
        if starts[i]:
            bundle.reset_session()
        own = None if math.isnan(bar_vwap[i]) else bar_vwap[i]
        bundle.update(high[i], low[i], close[i], volume[i], own, in_session=bool(inside[i]))
        value = bundle.values()["vwap"]
        assert math.isnan(value) == math.isnan(got[i]), i
        if not math.isnan(value):
            assert abs(value - got[i]) <= 1e-12 * got[i], i


def test_short_inputs_are_all_warm_up():
    close = np.linspace(1.0, 2.0, 10)
    for values in (ind.rsi(close), ind.ema(close, 26), ind.sma(close, 20), *ind.macd(close),
                   *ind.bbands(close), ind.atr(close, close, close)):
        assert values.shape == (10,) and np.isnan(values).all()


# ---------------------------------------------------------------- incremental vs TA-Lib


def feed(indicator, *columns: np.ndarray, attribute: str = "value") -> np.ndarray:
    out = np.empty(columns[0].shape[0])
    update = indicator.update
    for i, row in enumerate(zip(*(c.tolist() for c in columns))):
        update(*row)
        out[i] = getattr(indicator, attribute)
    return out


@pytest.fixture(scope="module")
def unit_bars():
    return market(100_000, seed=11, scale=1.0)


def test_incremental_matches_talib(unit_bars):
    high, low, close, _ = unit_bars
    atol = price_atol(1.0)
    assert_matches(feed(ind.SMA(20), close), talib.SMA(close, 20))
    assert_matches(feed(incremental.PySMA(20), close), talib.SMA(close, 20))
    assert_matches(feed(ind.EMA(12), close), talib.EMA(close, 12))
    assert_matches(feed(ind.RSI(14), close), talib.RSI(close, 14), rtol=0.0, atol=1e-9)
    assert_matches(feed(ind.ATR(14), high, low, close), talib.ATR(high, low, close, 14))
    line, signal, hist = talib.MACD(close, 12, 26, 9)
    macd = ind.MACD(12, 26, 9)
    assert_matches(feed(macd, close, attribute="macd"), line, atol=atol)
    macd.reset()
    assert_matches(feed(macd, close, attribute="signal"), signal, atol=atol)
    macd.reset()
    assert_matches(feed(macd, close, attribute="hist"), hist, atol=atol)
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0, matype=0)
    bands = ind.BollingerBands(20, 2.0, 2.0)
    for attribute, expected in (("upper", upper), ("middle", middle), ("lower", lower)):
        bands.reset()
        assert_matches(feed(bands, close, attribute=attribute), expected, atol=atol * 1e-3)


def test_indicator_set_bar_by_bar_equals_compute_all():
    high, low, close, volume = market(50_000, seed=13, scale=1.0)
    columns = ind.compute_all(high, low, close, volume)
    assert tuple(columns) == ind.COLUMNS
    bundle = ind.IndicatorSet()
    rows = []
    for row in zip(high.tolist(), low.tolist(), close.tolist(), volume.tolist()):
        bundle.update(*row)
        rows.append(bundle.values())
    assert tuple(rows[-1]) == ind.COLUMNS
    for name in ind.COLUMNS:
        got = np.array([r[name] for r in rows])
        atol = price_atol(1.0) if name.startswith("macd") or name.startswith("bb_") else 0.0
        assert_matches(got, columns[name], atol=atol if name != "rsi_14" else 1e-9)


# ---------------------------------------------------------------- edge cases


def test_rsi_is_zero_on_a_flat_start_and_100_after_only_gains_like_talib():
    flat = np.full(40, 5.0)
    assert_matches(ind.rsi(flat), talib.RSI(flat, 14), rtol=0, atol=0)
    assert feed(ind.RSI(14), flat)[14] == 0.0
    rising_then_flat = np.r_[np.linspace(100, 101, 30), np.full(300, 101.0)]
    expected = talib.RSI(rising_then_flat, 14)
    assert np.all(expected[14:] == 100.0)
    assert_matches(ind.rsi(rising_then_flat), expected, rtol=0, atol=0)
    assert_matches(feed(ind.RSI(14), rising_then_flat), expected, rtol=0, atol=0)


def test_bollinger_width_is_exactly_zero_on_flat_windows():
    close = np.r_[100.0 + np.sin(np.arange(100)), np.full(100, 0.1 + 0.2), 7.0 + np.cos(np.arange(50))]
    upper, middle, lower = ind.bbands(close)
    expected = talib.BBANDS(close, 20, 2.0, 2.0, matype=0)
    flat = slice(119, 200)  # windows entirely inside the flat run
    assert np.all(expected[0][flat] == expected[1][flat])
    assert np.all(upper[flat] == middle[flat]) and np.all(lower[flat] == middle[flat])
    bands = ind.BollingerBands()
    widths = feed(bands, close, attribute="stddev")
    assert np.all(widths[flat] == 0.0)
    assert_matches(feed(ind.BollingerBands(), close, attribute="upper"), expected[0], atol=1e-12)


def test_ready_flips_exactly_at_talibs_first_valid_index():
    high, low, close, volume = market(200, seed=17)
    cases = [
        (ind.SMA(20), (close,), talib.SMA(close, 20)),
        (incremental.PySMA(20), (close,), talib.SMA(close, 20)),
        (ind.EMA(26), (close,), talib.EMA(close, 26)),
        (ind.RSI(14), (close,), talib.RSI(close, 14)),
        (ind.ATR(14), (high, low, close), talib.ATR(high, low, close, 14)),
        (ind.MACD(12, 26, 9), (close,), talib.MACD(close, 12, 26, 9)[0]),
        (ind.BollingerBands(20), (close,), talib.BBANDS(close, 20)[0]),
    ]
    for indicator, columns, expected in cases:
        first = int(np.argmax(~np.isnan(expected)))
        flips = []
        for i, row in enumerate(zip(*columns)):
            indicator.update(*row)
            flips.append(indicator.ready)
        assert flips.index(True) == first, type(indicator).__name__
        assert all(flips[first:])
    assert (d.rsi_first_index(14), d.atr_first_index(14), d.macd_first_index(12, 26, 9)) == (14, 14, 33)


def test_reset_returns_every_indicator_to_its_fresh_state():
    high, low, close, volume = market(400, seed=19)
    makers = [
        (lambda: ind.SMA(20), (close,)), (lambda: ind.EMA(12), (close,)), (lambda: ind.RSI(14), (close,)),
        (lambda: ind.ATR(14), (high, low, close)), (lambda: ind.MACD(), (close,)),
        (lambda: ind.BollingerBands(), (close,)), (lambda: ind.VWAP(), (high, low, close, volume)),
        (lambda: incremental.PySMA(20), (close,)), (lambda: incremental.PyVWAP(), (high, low, close, volume)),
    ]
    for make, columns in makers:
        used = make()
        feed(used, *[c[::-1] for c in columns], attribute="ready")
        used.reset()
        assert not used.ready
        fresh = make()
        replay = feed(used, *columns, attribute="ready")
        assert np.array_equal(replay, feed(fresh, *columns, attribute="ready"))
        assert used.value == fresh.value or (
            isinstance(fresh.value, float) and math.isnan(fresh.value) and math.isnan(used.value)
        )
    bundle = ind.IndicatorSet()
    for row in zip(high, low, close, volume):
        bundle.update(*row)
    bundle.reset()
    assert all(math.isnan(v) for v in bundle.values().values())


def test_invalid_periods_are_refused():
    with pytest.raises(ind.InvalidPeriodError):
        ind.RSI(0)
    with pytest.raises(ind.InvalidPeriodError):
        ind.sma(np.ones(10), 0)


# ---------------------------------------------------------------- numerical stability


def exact_rolling_std(close: np.ndarray, period: int) -> np.ndarray:
    out = np.empty(close.shape[0] - period + 1)
    for start in range(0, out.shape[0], 100_000):
        windows = sliding_window_view(close[start : start + 100_000 + period - 1], period)
        mean = windows.mean(axis=1)
        mean += (windows - mean[:, None]).mean(axis=1)  # refined: a flat window's mean is exact
        out[start : start + windows.shape[0]] = np.sqrt(((windows - mean[:, None]) ** 2).mean(axis=1))
    return out


def test_bollinger_deviation_stays_exact_over_a_million_updates():
    """The windowed update must not drift: after 1M updates of a walk with volatility regimes,
    gaps and flat runs, the incremental and vectorized deviations equal an exact two-pass
    recompute to 1e-9 relative (and are exactly 0 where the window is flat)."""
    _, _, close, _ = market(1_000_000, seed=23, scale=1.0)
    exact = exact_rolling_std(close, 20)
    bands = ind.BollingerBands(20)
    incremental = feed(bands, close, attribute="stddev")[19:]
    upper, middle, _ = ind.bbands(close, 20)
    vectorized = (upper - middle)[19:] / 2.0
    flat = exact == 0.0
    assert flat.sum() > 1000 and np.all(incremental[flat] == 0.0) and np.all(vectorized[flat] == 0.0)
    moving = ~flat
    for got in (incremental, vectorized):
        relative = np.abs(got[moving] - exact[moving]) / exact[moving]
        assert relative.max() <= 1e-9, relative.max()
