"""Incremental indicators: one small state machine each, O(1) time and bounded memory per update.

The shape follows NautilusTrader's indicators: ``update(...)``, ``value`` (NaN until ready),
``ready``, ``reset()``. Definitions, constants and warm-up lengths come from :mod:`.definitions`
and match :mod:`.vectorized` and TA-Lib. ``value`` and ``ready`` are plain attributes, read them,
don't assign them.

Hot-path rules: ``__slots__``, attribute reads hoisted into locals, plain float arithmetic only
(a numpy scalar op costs ~100 ns, a float op ~15 ns), no allocation per update except where a
multi-output ``value`` is asked for. Memory: SMA and Bollinger keep a ring of ``period`` floats;
MACD keeps its first ``slow`` closes (PyMACD only until both EMAs are seeded, the compiled one in a
ring it reuses after a reset); the others keep a few floats.

Every class here is compiled (``tickvault._indicators``): in Python their whole cost was the
interpreter's (~60 ns of call, ~15-20 ns per float operation and attribute write), from ~120 ns an
update (EMA) to ~620 (Bollinger). The ``Py``-prefixed classes (:class:`PySMA`, :class:`PyEMA`,
:class:`PyRSI`, :class:`PyATR`, :class:`PyMACD`, :class:`PyBollingerBands`, :class:`PyVWAP`) are
the same state machines in Python -- the definition the C code follows operation for operation,
the fallback when the extension is not built, and what the tests hold the compiled ones to, bit
for bit. The compiled ones' attributes are read-only.
"""

from __future__ import annotations

import math

from . import definitions as d
from ._compiled import compiled
from .definitions import EXACT_RECOMPUTE_EVERY, BandsValue, MACDValue

_NAN = math.nan


class PySMA:
    """Simple moving average over the last ``period`` closes (``talib.SMA``), in Python (see
    :class:`SMA`)."""

    __slots__ = ("period", "value", "ready", "_ring", "_index", "_sum", "_wraps")

    def __init__(self, period: int = d.SMA_PERIOD) -> None:
        self.period = d.check_period("SMA", period)
        self.reset()

    def reset(self) -> None:
        self._ring = [0.0] * self.period  # bound: the window, one float per period
        self._index = 0
        self._sum = 0.0
        self._wraps = 0
        self.value = _NAN
        self.ready = False

    def update(self, close: float) -> None:
        ring = self._ring
        index = self._index
        if self.ready:
            total = self._sum + close - ring[index]
            ring[index] = close
            index += 1
            if index == self.period:
                index = 0
                self._wraps += 1
                if self._wraps * self.period >= EXACT_RECOMPUTE_EVERY:  # running sums drift
                    self._wraps = 0
                    total = math.fsum(ring)
            self._index = index
            self._sum = total
            self.value = total / self.period
            return
        ring[index] = close
        total = self._sum + close
        self._sum = total
        index += 1
        if index == self.period:
            self._index = 0
            self.value = total / self.period
            self.ready = True
        else:
            self._index = index


class PyEMA:
    """Exponential moving average, ``k = 2 / (period + 1)``, SMA-seeded (``talib.EMA``), in Python
    (see :class:`EMA`)."""

    __slots__ = ("period", "value", "ready", "_k", "_count", "_sum")

    def __init__(self, period: int = d.EMA_FAST_PERIOD) -> None:
        self.period = d.check_period("EMA", period)
        self._k = d.ema_k(period)
        self.reset()

    def reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self.value = _NAN
        self.ready = False

    def update(self, close: float) -> None:
        if self.ready:
            value = self.value
            self.value = value + self._k * (close - value)
            return
        self._sum += close
        self._count += 1
        if self._count == self.period:
            self.value = self._sum / self.period
            self.ready = True


class PyRSI:
    """Relative strength index with Wilder smoothing (``talib.RSI``); ready after ``period`` changes.
    In Python (see :class:`RSI`)."""

    __slots__ = ("period", "value", "ready", "_prev", "_count", "_gain", "_loss", "_keep")

    def __init__(self, period: int = d.RSI_PERIOD) -> None:
        self.period = d.check_period("RSI", period)
        self._keep = float(period - 1)
        self.reset()

    def reset(self) -> None:
        self._prev = _NAN
        self._count = -1  # closes seen minus one = changes seen
        self._gain = 0.0
        self._loss = 0.0
        self.value = _NAN
        self.ready = False

    def update(self, close: float) -> None:
        change = close - self._prev
        self._prev = close
        if self.ready:
            # TA-Lib's exact operation order, so results agree to the last bit or two.
            keep = self._keep
            if change < 0.0:
                gain = self._gain * keep / self.period
                loss = (self._loss * keep - change) / self.period
            else:
                gain = (self._gain * keep + change) / self.period
                loss = self._loss * keep / self.period
            self._gain = gain
            self._loss = loss
            total = gain + loss
            self.value = 100.0 * (gain / total) if total != 0.0 else 0.0  # d.rsi_from_averages
            return
        count = self._count + 1
        self._count = count
        if count == 0:  # the first close: no change yet
            return
        if change < 0.0:
            self._loss -= change
        else:
            self._gain += change
        if count < self.period:
            return
        gain = self._gain = self._gain / self.period
        loss = self._loss = self._loss / self.period
        total = gain + loss
        self.value = 100.0 * (gain / total) if total != 0.0 else 0.0
        self.ready = True


class PyATR:
    """Average true range with Wilder smoothing (``talib.ATR``): first value at the ``period``-th
    bar after the first (bar 0 has no true range). In Python (see :class:`ATR`)."""

    __slots__ = ("period", "value", "ready", "_prev_close", "_count", "_sum", "_keep")

    def __init__(self, period: int = d.ATR_PERIOD) -> None:
        self.period = d.check_period("ATR", period)
        self._keep = float(period - 1)
        self.reset()

    def reset(self) -> None:
        self._prev_close = _NAN
        self._count = -1  # bars seen minus one = true ranges seen
        self._sum = 0.0
        self.value = _NAN
        self.ready = False

    def update(self, high: float, low: float, close: float) -> None:
        prev = self._prev_close
        self._prev_close = close * 1.0  # a close that is no number is refused before it is kept
        if high >= low:
            # Bit for bit TA-Lib's max(h - l, |c' - h|, |c' - l|) when high >= low: every case
            # reduces to the same single subtraction.
            tr = (high if high > prev else prev) - (low if low < prev else prev)
        else:
            tr = d.true_range(high, low, prev)
        if self.ready:
            self.value = (self.value * self._keep + tr) / self.period
            return
        count = self._count + 1
        self._count = count
        if count == 0:  # bar 0: no previous close, no true range
            return
        self._sum += tr
        if count == self.period:
            self.value = self._sum / self.period
            self.ready = True


class PyMACD:
    """MACD line, signal and histogram (``talib.MACD``), with TA-Lib's seeding of both EMAs at
    bar ``slow - 1``; ``value`` is a :class:`MACDValue`, and ``macd``/``signal``/``hist`` are
    also plain attributes (cheaper to read). In Python (see :class:`MACD`)."""

    __slots__ = (
        "fast", "slow", "signal_period", "macd", "signal", "hist", "ready",
        "_kf", "_ks", "_k9", "_fast_ema", "_slow_ema", "_warm", "_line_sum", "_line_count",
    )

    def __init__(
        self, fast: int = d.MACD_FAST, slow: int = d.MACD_SLOW, signal: int = d.MACD_SIGNAL
    ) -> None:
        self.fast, self.slow, self.signal_period = d.macd_periods(fast, slow, signal)
        self._kf = d.ema_k(self.fast)
        self._ks = d.ema_k(self.slow)
        self._k9 = d.ema_k(self.signal_period)
        self.reset()

    def reset(self) -> None:
        self._warm: list[float] | None = []  # bound: the first `slow` closes, dropped once seeded
        self._fast_ema = _NAN
        self._slow_ema = _NAN
        self._line_sum = 0.0
        self._line_count = 0
        self.macd = _NAN
        self.signal = _NAN
        self.hist = _NAN
        self.ready = False

    @property
    def value(self) -> MACDValue:
        return MACDValue(self.macd, self.signal, self.hist)

    def update(self, close: float) -> None:
        if self.ready:
            fast = self._fast_ema
            fast += self._kf * (close - fast)
            slow = self._slow_ema
            slow += self._ks * (close - slow)
            self._fast_ema = fast
            self._slow_ema = slow
            line = fast - slow
            signal = self.signal
            signal += self._k9 * (line - signal)
            self.macd = line
            self.signal = signal
            self.hist = line - signal
            return
        warm = self._warm
        if warm is not None:
            warm.append(close * 1.0)  # a close that is no number is refused before it is kept
            if len(warm) < self.slow:
                return
            fast_seed = 0.0
            for price in warm[self.slow - self.fast :]:
                fast_seed += price
            slow_seed = 0.0
            for price in warm:
                slow_seed += price
            self._fast_ema = fast_seed / self.fast
            self._slow_ema = slow_seed / self.slow
            self._warm = None
        else:
            fast = self._fast_ema
            self._fast_ema = fast + self._kf * (close - fast)
            slow = self._slow_ema
            self._slow_ema = slow + self._ks * (close - slow)
        line = self._fast_ema - self._slow_ema
        self._line_sum += line
        self._line_count += 1
        if self._line_count == self.signal_period:
            self.macd = line
            self.signal = self._line_sum / self.signal_period
            self.hist = line - self.signal
            self.ready = True


class PyBollingerBands:
    """Bollinger Bands over the last ``period`` closes with the population standard deviation
    (``talib.BBANDS(close, period, dev_up, dev_dn, matype=0)``). ``value`` is a
    :class:`BandsValue`; ``upper``/``middle``/``lower``/``stddev`` are plain attributes.

    Numerics. A running sum of squares (``E[x^2] - E[x]^2``) loses ~8 digits at price 100 and
    drifts without a floor; a windowed Welford update still feeds the mean's rounding (an ulp of
    the *price*) into every step. Instead the window keeps ``A = sum(x - r)`` and
    ``B = sum((x - r)**2)`` about a fixed reference ``r``, the window's exact mean at the last
    exact pass: ``x - r`` is then computed exactly (Sterbenz), each update's rounding is relative
    to ``(x - r)**2``, i.e. to the variance, and ``M2 = B - A**2 / period``. The sums are
    recomputed exactly from the ring (and ``r`` moved) when the mean has wandered more than
    ``sqrt(_DRIFT_LIMIT)`` deviations from ``r`` -- a gap, a collapse in volatility, a window gone
    flat at a new price -- and every ``EXACT_RECOMPUTE_EVERY`` updates. A recompute costs ~3 us; a
    window flat at ``r`` has ``A == B == 0`` and a deviation of exactly 0, as in TA-Lib.
    In Python (see :class:`BollingerBands`).
    """

    __slots__ = (
        "period", "dev_up", "dev_dn", "upper", "middle", "lower", "stddev", "ready",
        "_ring", "_index", "_count", "_reference", "_a", "_b", "_since_exact",
    )

    # (mean - r)**2 beyond this many variances => recompute. B is then at most ~100 * M2, so each
    # update's rounding is at most ~100 eps of M2 and 1000 of them stay below ~2e-11 relative.
    # (1e4 was measured to reach 1.7e-9 in a quiet market after a volatile one.) On a random
    # walk the mean leaves the band every few hundred updates: ~10 ns per update amortised.
    _DRIFT_LIMIT = 100.0

    def __init__(
        self, period: int = d.BB_PERIOD, dev_up: float = d.BB_DEV_UP, dev_dn: float = d.BB_DEV_DN
    ) -> None:
        self.period = d.check_period("Bollinger", period)
        self.dev_up = float(dev_up)
        self.dev_dn = float(dev_dn)
        self.reset()

    def reset(self) -> None:
        self._ring = [0.0] * self.period  # bound: the window, one float per period
        self._index = 0
        self._count = 0
        self._reference = 0.0
        self._a = 0.0
        self._b = 0.0
        self._since_exact = 0
        self.upper = self.middle = self.lower = self.stddev = _NAN
        self.ready = False

    @property
    def value(self) -> BandsValue:
        return BandsValue(self.upper, self.middle, self.lower)

    def _recompute(self) -> None:
        ring = self._ring
        period = self.period
        reference = math.fsum(ring) / period
        reference += math.fsum([x - reference for x in ring]) / period  # exact when flat
        a = 0.0
        b = 0.0
        for x in ring:
            deviation = x - reference
            a += deviation
            b += deviation * deviation
        self._reference = reference
        self._a = a
        self._b = b
        self._since_exact = 0

    def update(self, close: float) -> None:
        ring = self._ring
        index = self._index
        period = self.period
        if self.ready:
            old = ring[index]
            reference = self._reference
            new = close - reference  # a close that is no number is refused before it is kept
            ring[index] = close
            gone = old - reference
            a = self._a + (new - gone)
            b = self._b + (new * new - gone * gone)
            m2 = b - a * a / period
            since = self._since_exact + 1
            if since >= EXACT_RECOMPUTE_EVERY or a * a > self._DRIFT_LIMIT * period * m2:
                self._recompute()
                a = self._a
                m2 = self._b - a * a / period
            else:
                self._a = a
                self._b = b
                self._since_exact = since
        else:
            ring[index] = close * 1.0  # a close that is no number is refused before it is kept
            self._count += 1
            if self._count < period:
                self._index = index + 1
                return
            self._recompute()
            a = self._a
            m2 = self._b - a * a / period
            self.ready = True
        index += 1
        self._index = 0 if index == period else index
        mean = self._reference + a / period
        std = math.sqrt(m2 / period) if m2 > 0.0 else 0.0
        self.stddev = std
        self.middle = mean
        self.upper = mean + self.dev_up * std
        self.lower = mean - self.dev_dn * std


class PyVWAP:
    """Session VWAP: ``sum(price * volume) / sum(volume)`` since the last :meth:`reset` (call it
    at each session start; :mod:`.sessions` says when). Price is the bar's own VWAP when given
    (Alpaca's ``vw``; None or NaN when absent), else the typical price ``(high + low + close) / 3``.
    NaN until some volume has traded; ``ready`` is derived from the traded volume. In Python (see
    :class:`VWAP`)."""

    __slots__ = ("value", "_pv", "_volume")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pv = 0.0
        self._volume = 0.0
        self.value = _NAN

    @property
    def ready(self) -> bool:
        return self._volume != 0.0

    def update(
        self, high: float, low: float, close: float, volume: float, bar_vwap: float | None = None
    ) -> None:
        price = (high + low + close) / 3.0 if bar_vwap is None or bar_vwap != bar_vwap else bar_vwap
        pv = self._pv + price * volume
        cumulative = self._volume + volume
        self._pv = pv
        self._volume = cumulative
        if cumulative:
            self.value = pv / cumulative


if compiled is not None:

    class SMA(compiled.SMA):  # type: ignore[misc, name-defined]
        """Simple moving average over the last ``period`` closes (``talib.SMA``): :class:`PySMA`
        compiled, the same values bit for bit. ``period``, ``value`` and ``ready`` are read-only."""

        __slots__ = ()

        def __init__(self, period: int = d.SMA_PERIOD) -> None:
            super().__init__(d.check_period("SMA", period), EXACT_RECOMPUTE_EVERY)

    class EMA(compiled.EMA):  # type: ignore[misc, name-defined]
        """Exponential moving average, SMA-seeded (``talib.EMA``): :class:`PyEMA` compiled, the same
        values bit for bit. ``period``, ``value`` and ``ready`` are read-only."""

        __slots__ = ()

        def __init__(self, period: int = d.EMA_FAST_PERIOD) -> None:
            super().__init__(d.check_period("EMA", period))

    class RSI(compiled.RSI):  # type: ignore[misc, name-defined]
        """Relative strength index with Wilder smoothing (``talib.RSI``): :class:`PyRSI` compiled,
        the same values bit for bit. ``period``, ``value`` and ``ready`` are read-only."""

        __slots__ = ()

        def __init__(self, period: int = d.RSI_PERIOD) -> None:
            super().__init__(d.check_period("RSI", period))

    class ATR(compiled.ATR):  # type: ignore[misc, name-defined]
        """Average true range with Wilder smoothing (``talib.ATR``): :class:`PyATR` compiled, the
        same values bit for bit; ``update(high, low, close)``. ``period``, ``value`` and ``ready``
        are read-only."""

        __slots__ = ()

        def __init__(self, period: int = d.ATR_PERIOD) -> None:
            super().__init__(d.check_period("ATR", period))

    class MACD(compiled.MACD):  # type: ignore[misc, name-defined]
        """MACD line, signal and histogram (``talib.MACD``): :class:`PyMACD` compiled, the same
        values bit for bit. ``value`` is a :class:`MACDValue`; ``macd``/``signal``/``hist``,
        ``fast``/``slow``/``signal_period`` and ``ready`` are read-only attributes."""

        __slots__ = ()

        def __init__(
            self, fast: int = d.MACD_FAST, slow: int = d.MACD_SLOW, signal: int = d.MACD_SIGNAL
        ) -> None:
            super().__init__(*d.macd_periods(fast, slow, signal))

        value = PyMACD.value

    class BollingerBands(compiled.BollingerBands):  # type: ignore[misc, name-defined]
        """Bollinger Bands (``talib.BBANDS``, population deviation): :class:`PyBollingerBands`
        compiled, the same values bit for bit (its docstring says how the window's sums stay
        exact). ``value`` is a :class:`BandsValue`; ``upper``/``middle``/``lower``/``stddev`` and
        ``ready`` are read-only attributes."""

        __slots__ = ()
        _DRIFT_LIMIT = PyBollingerBands._DRIFT_LIMIT

        def __init__(
            self, period: int = d.BB_PERIOD, dev_up: float = d.BB_DEV_UP, dev_dn: float = d.BB_DEV_DN
        ) -> None:
            super().__init__(d.check_period("Bollinger", period), float(dev_up), float(dev_dn),
                             EXACT_RECOMPUTE_EVERY, self._DRIFT_LIMIT)

        value = PyBollingerBands.value

    class VWAP(compiled.VWAP):  # type: ignore[misc, name-defined]
        """Session VWAP (see :class:`PyVWAP`, whose values these are bit for bit): call
        :meth:`reset` at each session start; ``update(high, low, close, volume, bar_vwap=None)``;
        ``value`` is NaN until some volume has traded, ``ready`` says whether it has."""

        __slots__ = ()

else:  # the extension is not built: the Python state machines, same values, slower
    SMA = PySMA  # type: ignore[assignment, misc]
    EMA = PyEMA  # type: ignore[assignment, misc]
    RSI = PyRSI  # type: ignore[assignment, misc]
    ATR = PyATR  # type: ignore[assignment, misc]
    MACD = PyMACD  # type: ignore[assignment, misc]
    BollingerBands = PyBollingerBands  # type: ignore[assignment, misc]
    VWAP = PyVWAP  # type: ignore[assignment, misc]
