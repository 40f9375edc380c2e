"""Technical indicators for tickvault, each in two forms from one definition (TA-Lib's):

* incremental state machines for the streaming worker -- :class:`RSI`, :class:`EMA`,
  :class:`SMA`, :class:`MACD`, :class:`BollingerBands`, :class:`ATR`, :class:`VWAP`, bundled per
  symbol as :class:`IndicatorSet`; O(1) per update, bounded state, never numpy on the hot path
  (all compiled, ``IndicatorSet.update`` one C call a bar, with the ``Py`` classes of
  :mod:`.incremental` and :class:`~.bundle.PyIndicatorSet` as their Python twins and fallback);
* vectorized numpy functions for backfills and flows -- :func:`rsi`, :func:`ema`, :func:`sma`,
  :func:`macd`, :func:`bbands`, :func:`atr`, :func:`vwap`, bundled as :func:`compute_all`.

Definitions, default periods, warm-up lengths and the ``indicators`` table's column names
(:data:`COLUMNS`) live in :mod:`tickvault.indicators.definitions`.
"""

from ._kernels import release_scratch
from .bundle import IndicatorSet, compute_all
from .definitions import COLUMNS, BandsValue, InvalidPeriodError, MACDValue
from .incremental import ATR, EMA, MACD, RSI, SMA, VWAP, BollingerBands
from .vectorized import atr, bbands, ema, macd, rsi, sma, true_range, vwap

__all__ = [
    "ATR", "COLUMNS", "EMA", "MACD", "RSI", "SMA", "VWAP", "BandsValue", "BollingerBands",
    "IndicatorSet", "InvalidPeriodError", "MACDValue", "atr", "bbands", "compute_all", "ema",
    "macd", "release_scratch", "rsi", "sma", "true_range", "vwap",
]
