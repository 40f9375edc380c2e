"""Indicators over whole numpy arrays, for backfills and the ``refresh_indicators`` flow.

Each function takes float arrays (anything ``np.asarray`` turns into float64; values must be
finite), returns arrays of the input's length, NaN during warm-up, with the definitions and first
valid indexes of :mod:`.definitions` (TA-Lib's). Nothing here loops in Python per element: the
recursive indicators go through :func:`._kernels.linear_recurrence`, the windowed ones through
:func:`._kernels.window_sums` / :func:`._kernels.rolling_moments`; ATR and MACD run one compiled
pass each (``tickvault._indicators``) when the extension is built, :func:`atr_numpy` and
:func:`macd_numpy` otherwise.
Memory: a few temporaries of the input's size; inputs are never modified.
"""

from __future__ import annotations

import numpy as np

from . import definitions as d
from ._compiled import compiled
from ._kernels import linear_recurrence, rolling_moments, scratch, window_sums


def _prices(x: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(x, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-d price array, got shape {array.shape}")
    return array


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _output(n: int, first: int) -> np.ndarray:
    """An output array whose warm-up ``[:first]`` is NaN; the caller fills the rest."""
    out = np.empty(n)
    out[:first] = np.nan
    return out


def sma(close: np.ndarray, period: int = d.SMA_PERIOD) -> np.ndarray:
    """Simple moving average, as ``talib.SMA``."""
    d.check_period("SMA", period)
    x = _prices(close)
    first = d.sma_first_index(period)
    out = _output(x.shape[0], first)
    if x.shape[0] > first:
        sums = window_sums(x, period, out[first:])
        sums /= period
    return out


def _ema_into(x: np.ndarray, period: int, seed: float, start: int, out: np.ndarray) -> None:
    """``out[start-1] = seed``; ``out[i] = ema(out[i-1], x[i])`` for ``i >= start``."""
    k = d.ema_k(period)
    out[start - 1] = seed
    if x.shape[0] > start:
        linear_recurrence(x[None, start:], 1.0 - k, np.array([seed]), gain=k, out=out[None, start:])


def ema(close: np.ndarray, period: int = d.EMA_FAST_PERIOD) -> np.ndarray:
    """Exponential moving average, as ``talib.EMA``: seeded with the SMA of the first ``period``."""
    d.check_period("EMA", period)
    x = _prices(close)
    out = _output(x.shape[0], period - 1)
    if x.shape[0] >= period:
        _ema_into(x, period, float(x[:period].sum()) / period, period, out)
    return out


def rsi(close: np.ndarray, period: int = d.RSI_PERIOD) -> np.ndarray:
    """Relative strength index with Wilder smoothing, as ``talib.RSI``."""
    d.check_period("RSI", period)
    x = _prices(close)
    n = x.shape[0]
    first = d.rsi_first_index(period)
    out = _output(n, first)
    if n <= first:
        return out
    # Column j describes the change into bar j + 1. Row 0: gains, row 1: losses (positive).
    moves = scratch("rsi.moves", (2, n - 1))
    np.subtract(x[1:], x[:-1], out=moves[1])
    np.maximum(moves[1], 0.0, out=moves[0])
    np.subtract(moves[0], moves[1], out=moves[1])
    seeds = moves[:, :period].sum(axis=1) / period
    averages = scratch("rsi.averages", (2, n - period))
    averages[:, 0] = seeds
    linear_recurrence(
        moves[:, period:], d.wilder_decay(period), seeds, gain=1.0 / period, out=averages[:, 1:],
        overwrite_u=True,
    )
    gains, total = averages[0], averages[1]
    total += gains
    # rsi_from_averages: 0 where gain + loss == 0 (then gain == 0 too, and 0 / tiny == 0).
    np.maximum(total, np.finfo(np.float64).tiny, out=total)
    np.divide(gains, total, out=out[first:])
    out[first:] *= 100.0
    return out


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """TA-Lib's TRANGE: NaN at index 0, then ``definitions.true_range`` per bar."""
    h, lo, c = _prices(high), _prices(low), _prices(close)
    out = _nan(h.shape[0])
    if h.shape[0] > 1:
        _true_range_into(h, lo, c, out[1:])
    return out


def _true_range_into(h: np.ndarray, lo: np.ndarray, c: np.ndarray, tr: np.ndarray) -> None:
    prev = c[:-1]
    if np.all(h[1:] >= lo[1:]):
        # For well-formed bars TA-Lib's max(h - l, |c' - h|, |c' - l|) is exactly (bit for bit)
        # max(h, c') - min(l, c'): each case picks the same single subtraction. 3 passes, not 7.
        lowest = np.minimum(lo[1:], prev, out=scratch("true_range", tr.shape))
        np.maximum(h[1:], prev, out=tr)
        tr -= lowest
        return
    gap = scratch("true_range", tr.shape)
    np.subtract(h[1:], lo[1:], out=tr)
    np.subtract(prev, h[1:], out=gap)
    np.abs(gap, out=gap)
    np.maximum(tr, gap, out=tr)
    np.subtract(prev, lo[1:], out=gap)
    np.abs(gap, out=gap)
    np.maximum(tr, gap, out=tr)


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = d.ATR_PERIOD) -> np.ndarray:
    """Average true range with Wilder smoothing, as ``talib.ATR``.

    Compiled: one pass computes each bar's true range and smooths it, as TA-Lib does (~1.5-2.5
    ns/value; the numpy form below needs ~7 passes plus the BLAS recurrence, ~4-5 ns/value).
    The two agree to a few ulps: the seed's sum and the recurrence are grouped differently.
    """
    if compiled is None:
        return atr_numpy(high, low, close, period)
    h, lo, c, n, first = _atr_inputs(high, low, close, period)
    if n <= first:
        return _nan(n)
    out = _output(n, first)
    compiled.atr_into(h, lo, c, period, out)
    return out


def _atr_inputs(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    d.check_period("ATR", period)
    h, lo, c = _prices(high), _prices(low), _prices(close)
    n = h.shape[0]
    if not (lo.shape[0] == n and c.shape[0] == n):
        raise ValueError("high, low and close must have the same length")
    return h, lo, c, n, d.atr_first_index(period)


def atr_numpy(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = d.ATR_PERIOD) -> np.ndarray:
    """:func:`atr` in numpy: the fallback without the compiled extension (and its cross-check)."""
    h, lo, c, n, first = _atr_inputs(high, low, close, period)
    if n <= first:
        return _nan(n)
    out = _output(n, first)
    tr = scratch("atr.true_range", (n - 1,))  # tr[i - 1] is the true range of bar i
    _true_range_into(h, lo, c, tr)
    seed = float(tr[:period].sum()) / period
    out[first] = seed
    linear_recurrence(
        tr[None, period:], d.wilder_decay(period), np.array([seed]), gain=1.0 / period,
        out=out[None, first + 1 :], overwrite_u=True,
    )
    return out


def macd(
    close: np.ndarray,
    fast: int = d.MACD_FAST,
    slow: int = d.MACD_SLOW,
    signal: int = d.MACD_SIGNAL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(macd, signal, hist) as ``talib.MACD``, including its fast-EMA seed alignment.

    Compiled: the three recurrences in one pass (~2 ns/value; :func:`macd_numpy`'s three BLAS
    recurrences ~11). The two agree to a few ulps.
    """
    if compiled is None:
        return macd_numpy(close, fast, slow, signal)
    x, (fast, slow, signal), first, outputs = _macd_outputs(close, fast, slow, signal)
    if x.shape[0] > first:
        compiled.macd_into(x, fast, slow, signal, *outputs)
    return outputs


def _macd_outputs(
    close: np.ndarray, fast: int, slow: int, signal: int
) -> tuple[np.ndarray, tuple[int, int, int], int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(prices, validated periods, first valid index, (line, signal, hist) NaN up to it)."""
    periods = d.macd_periods(fast, slow, signal)
    x = _prices(close)
    n = x.shape[0]
    first = d.macd_first_index(*periods)
    return x, periods, first, (_output(n, first), _output(n, first), _output(n, first))


def macd_numpy(
    close: np.ndarray,
    fast: int = d.MACD_FAST,
    slow: int = d.MACD_SLOW,
    signal: int = d.MACD_SIGNAL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`macd` in numpy: the fallback without the compiled extension (and its cross-check)."""
    x, (fast, slow, signal), first, (line, sig, hist) = _macd_outputs(close, fast, slow, signal)
    if x.shape[0] <= first:
        return line, sig, hist
    seed_at = d.macd_seed_index(slow)
    # `line` first holds the fast EMA and `hist` the slow one (from seed_at on).
    _ema_into(x, fast, float(x[slow - fast : slow].sum()) / fast, slow, line)
    _ema_into(x, slow, float(x[:slow].sum()) / slow, slow, hist)
    full_line = line[seed_at:]
    full_line -= hist[seed_at:]
    _ema_into(line, signal, float(line[seed_at : first + 1].sum()) / signal, first + 1, sig)
    line[:first] = np.nan
    hist[:first] = np.nan
    np.subtract(line[first:], sig[first:], out=hist[first:])
    return line, sig, hist


def bbands(
    close: np.ndarray,
    period: int = d.BB_PERIOD,
    dev_up: float = d.BB_DEV_UP,
    dev_dn: float = d.BB_DEV_DN,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper, middle, lower) as ``talib.BBANDS(close, period, dev_up, dev_dn, matype=0)``."""
    d.check_period("Bollinger", period)
    x = _prices(close)
    n = x.shape[0]
    first = d.bbands_first_index(period)
    upper, middle, lower = _output(n, first), _output(n, first), _output(n, first)
    if n <= first:
        return upper, middle, lower
    mean = middle[first:]
    std = upper[first:]  # the variance, then the deviation, then the upper band
    rolling_moments(x, period, mean, std)
    np.sqrt(std, out=std)
    np.multiply(std, dev_dn, out=lower[first:])
    np.subtract(mean, lower[first:], out=lower[first:])
    std *= dev_up
    std += mean
    return upper, middle, lower


def vwap(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    bar_vwap: np.ndarray | None = None,
    session_start: np.ndarray | None = None,
    in_session: np.ndarray | None = None,
) -> np.ndarray:
    """Session-cumulative VWAP (see :mod:`.definitions`; sessions from :mod:`.sessions`).

    ``bar_vwap``: each bar's own VWAP (Alpaca's ``vw``), used instead of the typical price; NaN
    where a bar has none (the typical price stands in for that bar).
    ``session_start``: booleans, True on the first bar of each session (sums restart there);
    without it the whole array is one session. ``in_session``: booleans, False on a bar of no
    session (NaN, and it adds nothing to any sums). NaN while the session's volume is still 0.
    """
    v = _prices(volume)
    price = _prices(high) + _prices(low)
    price += _prices(close)
    price /= 3.0
    if bar_vwap is not None:
        own = _prices(bar_vwap)
        price = np.where(np.isnan(own), price, own)
    pv = price * v
    vol = v.copy()
    outside = None
    if in_session is not None:
        outside = ~np.asarray(in_session, dtype=bool)
        pv[outside] = 0.0
        vol[outside] = 0.0
    # Sums restart at each session start; each session is summed on its own (subtracting a
    # running total would cost digits when a short session follows a long history).
    bounds = [0, v.shape[0]]
    if session_start is not None:
        starts = np.flatnonzero(np.asarray(session_start, dtype=bool))
        bounds = sorted({0, v.shape[0], *starts.tolist()})
    for lo, hi in zip(bounds, bounds[1:]):
        np.cumsum(pv[lo:hi], out=pv[lo:hi])
        np.cumsum(vol[lo:hi], out=vol[lo:hi])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pv / vol
    out[vol == 0.0] = np.nan
    if outside is not None:
        out[outside] = np.nan
    return out
