"""The per-symbol indicator bundle the streaming worker keeps for 1-minute bars, and its
vectorized twin for backfills; both produce the columns of the ``indicators`` table.

``IndicatorSet.update`` is one call into ``tickvault._indicators`` that steps all eight compiled
indicators (one Python->C transition a bar; its cost is measured by ``bench.bench_indicators``);
:class:`PyIndicatorSet` is the same bundle over the Python twins -- the fallback when the extension
is not built, and what the tests hold the compiled one to, bit for bit. Its state is bounded (two
rings of 20 floats, a 26-float MACD warm-up ring, a few dozen floats).
"""

from __future__ import annotations

import numpy as np

from . import definitions as d
from . import vectorized as v
from ._compiled import compiled
from .incremental import (
    ATR, EMA, MACD, RSI, SMA, VWAP, BollingerBands, PyATR, PyBollingerBands, PyEMA, PyMACD, PyRSI,
    PySMA, PyVWAP,
)


def _members(rsi, ema, sma, macd, bands, atr, vwap) -> tuple:
    """The bundle's eight indicators, made from the given classes, in the bundle's order."""
    return (
        rsi(d.RSI_PERIOD), ema(d.EMA_FAST_PERIOD), ema(d.EMA_SLOW_PERIOD), sma(d.SMA_PERIOD),
        macd(d.MACD_FAST, d.MACD_SLOW, d.MACD_SIGNAL), bands(d.BB_PERIOD, d.BB_DEV_UP, d.BB_DEV_DN),
        atr(d.ATR_PERIOD), vwap(),
    )


class _Readout:
    """What both bundles share: the row, the resets."""

    __slots__ = ()

    def values(self) -> dict[str, float]:
        """The current row, keyed by :data:`definitions.COLUMNS` (NaN where not ready)."""
        macd = self.macd
        bands = self.bands
        return {
            "rsi_14": self.rsi.value,
            "ema_12": self.ema_fast.value,
            "ema_26": self.ema_slow.value,
            "sma_20": self.sma.value,
            "macd": macd.macd,
            "macd_signal": macd.signal,
            "macd_hist": macd.hist,
            "bb_upper": bands.upper,
            "bb_middle": bands.middle,
            "bb_lower": bands.lower,
            "atr_14": self.atr.value,
            "vwap": self.vwap.value,
        }

    def reset_session(self) -> None:
        self.vwap.reset()

    def reset(self) -> None:
        for indicator in (
            self.rsi, self.ema_fast, self.ema_slow, self.sma, self.macd, self.bands, self.atr, self.vwap
        ):
            indicator.reset()


class PyIndicatorSet(_Readout):
    """:class:`IndicatorSet` over the Python twins (:class:`~.incremental.PyRSI` and the rest), in
    Python: the definition the compiled bundle follows, and the fallback."""

    __slots__ = ("rsi", "ema_fast", "ema_slow", "sma", "macd", "bands", "atr", "vwap")

    def __init__(self) -> None:
        (self.rsi, self.ema_fast, self.ema_slow, self.sma, self.macd, self.bands, self.atr,
         self.vwap) = _members(PyRSI, PyEMA, PySMA, PyMACD, PyBollingerBands, PyATR, PyVWAP)

    def update(
        self,
        high: float,
        low: float,
        close: float,
        volume: float,
        bar_vwap: float | None = None,
        in_session: bool = True,
    ) -> None:
        # Every argument checked before any indicator moves, as the compiled bundle does: a bar with
        # a price that is no number is refused (TypeError) and changes nothing.
        high, low, close, volume = high * 1.0, low * 1.0, close * 1.0, volume * 1.0
        if bar_vwap is not None:
            bar_vwap = bar_vwap * 1.0
        in_session = bool(in_session)
        self.rsi.update(close)
        self.ema_fast.update(close)
        self.ema_slow.update(close)
        self.sma.update(close)
        self.macd.update(close)
        self.bands.update(close)
        self.atr.update(high, low, close)
        if in_session:
            self.vwap.update(high, low, close, volume, bar_vwap)
        else:  # a bar of no session: no VWAP, and nothing carried into the next session
            self.vwap.reset()


if compiled is not None:

    class IndicatorSet(_Readout, compiled.IndicatorSet):  # type: ignore[misc, name-defined]
        """RSI(14), EMA(12), EMA(26), SMA(20), MACD(12, 26, 9), BBANDS(20, 2, 2), ATR(14) and VWAP
        for one symbol. Call :meth:`reset_session` at each session start (VWAP restarts; the rest
        carry over, as they do in TA-Lib over a continuous series) and pass ``in_session=False``
        for a bar outside every session (VWAP NaN for it); :mod:`.sessions` decides both.

        ``update(high, low, close, volume, bar_vwap=None, in_session=True)`` is one compiled call
        with :class:`PyIndicatorSet`'s values bit for bit; it converts every argument before any
        indicator moves, so a refused bar (a None or a string among the prices) changes nothing.
        The members (``rsi``, ``ema_fast``, ``ema_slow``, ``sma``, ``macd``, ``bands``, ``atr``,
        ``vwap``) are read-only attributes."""

        __slots__ = ()

        def __init__(self) -> None:
            super().__init__(*_members(RSI, EMA, SMA, MACD, BollingerBands, ATR, VWAP))

else:  # the extension is not built: the Python bundle, same values, slower
    IndicatorSet = PyIndicatorSet  # type: ignore[assignment, misc]


def compute_all(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    bar_vwap: np.ndarray | None = None,
    session_start: np.ndarray | None = None,
    in_session: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The :class:`IndicatorSet` columns for whole arrays of bars (one array per column, NaN
    during warm-up). ``session_start`` (booleans) restarts VWAP, like ``reset_session``;
    ``in_session`` False marks a bar of no session (VWAP NaN), like ``update(in_session=False)``."""
    macd, signal, hist = v.macd(close, d.MACD_FAST, d.MACD_SLOW, d.MACD_SIGNAL)
    upper, middle, lower = v.bbands(close, d.BB_PERIOD, d.BB_DEV_UP, d.BB_DEV_DN)
    return {
        "rsi_14": v.rsi(close, d.RSI_PERIOD),
        "ema_12": v.ema(close, d.EMA_FAST_PERIOD),
        "ema_26": v.ema(close, d.EMA_SLOW_PERIOD),
        "sma_20": v.sma(close, d.SMA_PERIOD),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": upper,
        "bb_middle": middle,
        "bb_lower": lower,
        "atr_14": v.atr(high, low, close, d.ATR_PERIOD),
        "vwap": v.vwap(high, low, close, volume, bar_vwap=bar_vwap, session_start=session_start,
                       in_session=in_session),
    }
