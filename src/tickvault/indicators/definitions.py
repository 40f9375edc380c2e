"""The one place where each indicator's definition lives: periods, smoothing constants, warm-up.

Both forms -- the incremental classes in :mod:`.incremental` and the numpy functions in
:mod:`.vectorized` -- read their constants and warm-up lengths from here, so the two cannot
drift apart. The definitions are TA-Lib's (C library 0.6+, default settings, unstable period 0):

* **SMA(p)**: mean of the last ``p`` closes. First value at index ``p - 1``.
* **EMA(p)**: ``k = 2 / (p + 1)``; seeded with the SMA of the first ``p`` closes at index
  ``p - 1``; then ``ema += k * (close - ema)``.
* **RSI(p)**: Wilder smoothing of gains and losses of close-to-close changes. The seed is the
  plain mean of the first ``p`` gains / losses (changes at indexes 1..p), so the first value is
  at index ``p``; then ``avg = (avg * (p - 1) + x) / p``. ``RSI = 100 * gain / (gain + loss)``,
  and **0 when gain + loss == 0** (a flat run from the start): TA-Lib's rule, not 50.
* **ATR(p)**: true range ``TR[i] = max(high[i] - low[i], |close[i-1] - high[i]|,
  |close[i-1] - low[i]|)`` exists from index 1 (TA-Lib has no TR for bar 0); the seed is the
  mean of ``TR[1..p]`` at index ``p``; then Wilder smoothing as for RSI.
* **MACD(fast, slow, signal)**: both EMAs are seeded at index ``slow - 1`` -- the slow one with the
  mean of ``close[0:slow]``, the fast one with the mean of ``close[slow - fast:slow]`` (TA-Lib
  aligns the fast seed to the slow one rather than starting it at ``fast - 1``). The line is
  ``fast - slow`` from ``slow - 1``; the signal is an EMA of the line seeded with the mean of its
  first ``signal`` values; all three outputs start at index ``slow + signal - 2`` (33 for 12/26/9).
* **Bollinger Bands(p, up, dn)**: middle = SMA(p), ``upper/lower = middle +/- dev * sigma`` with
  the *population* standard deviation of the same ``p`` closes (TA-Lib ``matype=0``).
* **VWAP** (no TA-Lib equivalent): session-cumulative ``sum(price * volume) / sum(volume)`` since
  the last reset, where price is the bar's own VWAP when the feed gives one (Alpaca's ``vw``; the
  ``vwap`` of ``ohlcv_1m``) and the typical price ``(high + low + close) / 3`` for a bar without one.
  NaN until some volume has traded, and for a bar outside every session. Sessions (where the reset
  falls: the US equity session open from ``/v2/calendar``, the UTC day for crypto) are
  :mod:`.sessions`'s.

Every output is NaN before its first valid index ("warm-up"); ``*_first_index`` below is that
index, and an incremental indicator's ``ready`` flips on exactly the update with that index.
"""

from __future__ import annotations

from typing import NamedTuple

# Default parameters of the per-symbol bundle (the `indicators` table's columns say which).
RSI_PERIOD = 14
EMA_FAST_PERIOD = 12
EMA_SLOW_PERIOD = 26
SMA_PERIOD = 20
MACD_FAST = 12
MACD_SLOW = 26
MACD_SIGNAL = 9
BB_PERIOD = 20
BB_DEV_UP = 2.0
BB_DEV_DN = 2.0
ATR_PERIOD = 14

# Column names of the `indicators` table, in table order. IndicatorSet.values() and compute_all()
# return exactly these keys.
COLUMNS: tuple[str, ...] = (
    "rsi_14",
    "ema_12",
    "ema_26",
    "sma_20",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "vwap",
)

# Bars of history replayed before the first bar whose indicators are wanted (the refresh flow's
# warm-up, the worker's restore after a restart). The slowest-decaying state is Wilder's (weight
# 13/14 per bar for RSI/ATR 14): after 1000 bars a difference in the seed has shrunk by
# (13/14)**1000 ≈ 1e-32, far below float64 resolution, so the result equals a replay from the
# first bar. VWAP needs its whole session instead, which both replays also load.
WARMUP_BARS = 1000

# Running sums (SMA, Bollinger) are recomputed exactly from their ring buffer every this many
# updates: the drift of a running sum grows like sqrt(updates) * eps * |price|, so 1000 keeps it
# below 1e-14 relative while the O(period) recompute costs only a few ns per update amortised.
EXACT_RECOMPUTE_EVERY = 1000


class InvalidPeriodError(ValueError):
    """An indicator was asked for a period (or deviation) that has no meaning."""


class MACDValue(NamedTuple):
    macd: float
    signal: float
    hist: float


class BandsValue(NamedTuple):
    upper: float
    middle: float
    lower: float


def check_period(name: str, period: int, minimum: int = 1) -> int:
    if not isinstance(period, int) or isinstance(period, bool) or period < minimum:
        raise InvalidPeriodError(f"{name} period must be an int >= {minimum}, got {period!r}")
    return period


def ema_k(period: int) -> float:
    """EMA smoothing constant, TA-Lib's ``2 / (period + 1)``."""
    return 2.0 / (period + 1)


def wilder_decay(period: int) -> float:
    """Weight of the previous average in Wilder smoothing: ``(period - 1) / period``."""
    return (period - 1) / period


def sma_first_index(period: int) -> int:
    return period - 1


def ema_first_index(period: int) -> int:
    return period - 1


def rsi_first_index(period: int) -> int:
    return period


def atr_first_index(period: int) -> int:
    return period


def bbands_first_index(period: int) -> int:
    return period - 1


def macd_periods(fast: int, slow: int, signal: int) -> tuple[int, int, int]:
    """Validated (fast, slow, signal); like TA-Lib, a fast period above the slow one is swapped."""
    check_period("MACD fast", fast, 2)
    check_period("MACD slow", slow, 2)
    check_period("MACD signal", signal, 1)
    if slow < fast:
        fast, slow = slow, fast
    return fast, slow, signal


def macd_seed_index(slow: int) -> int:
    """Index where both MACD EMAs are seeded (and the MACD line starts, internally)."""
    return slow - 1


def macd_first_index(fast: int, slow: int, signal: int) -> int:
    fast, slow, signal = macd_periods(fast, slow, signal)
    return slow - 1 + signal - 1


def rsi_from_averages(avg_gain: float, avg_loss: float) -> float:
    """TA-Lib's RSI from Wilder averages: 0 (not 50) when there was no movement at all."""
    total = avg_gain + avg_loss
    return 100.0 * (avg_gain / total) if total != 0.0 else 0.0


def true_range(high: float, low: float, prev_close: float) -> float:
    """TA-Lib's TRANGE for one bar (written this way, it is also defined for high < low)."""
    greatest = high - low
    up = abs(prev_close - high)
    if up > greatest:
        greatest = up
    down = abs(prev_close - low)
    if down > greatest:
        greatest = down
    return greatest
