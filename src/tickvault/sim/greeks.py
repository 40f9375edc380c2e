"""Black-Scholes implied volatility and greeks for the simulator's option snapshots.

European options on a non-dividend-paying underlying, continuous rate ``RISK_FREE_RATE``; time to expiry
in years of 365 days up to 16:00 New York time on the expiration date. Implied volatility is the
volatility at which the model price equals the option's price (the quote's midpoint, else the last
trade), found by bisection to 1e-10 in price; a price outside the model's bounds (below intrinsic
value, above the underlying for a call or the discounted strike for a put) or an expired contract has
none, and then no greeks — as Alpaca's snapshots leave them out. Greeks are per one unit of underlying
(not per contract): ``theta`` per calendar day, ``vega`` and ``rho`` per 1 point (0.01) of volatility
and rate. Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import math
from datetime import date, datetime, time
from typing import NamedTuple
from zoneinfo import ZoneInfo

__all__ = ["RISK_FREE_RATE", "Greeks", "bs_price", "greeks", "implied_volatility", "years_to_expiry"]

RISK_FREE_RATE = 0.04
_NEW_YORK = ZoneInfo("America/New_York")
_YEAR_S = 365.0 * 86_400
_SQRT_2PI = math.sqrt(2 * math.pi)


class Greeks(NamedTuple):
    delta: float
    gamma: float
    rho: float
    theta: float
    vega: float


def _n(x: float) -> float:
    return math.exp(-0.5 * x * x) / _SQRT_2PI


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def years_to_expiry(expiration: date, now_ns: int) -> float:
    """Years from ``now_ns`` to 16:00 New York time on ``expiration`` (≤ 0 once expired)."""
    close = datetime.combine(expiration, time(16), _NEW_YORK)
    return (close.timestamp() - now_ns / 1e9) / _YEAR_S


def _d1_d2(s: float, k: float, t: float, sigma: float, r: float) -> tuple[float, float]:
    d1 = (math.log(s / k) + (r + 0.5 * sigma * sigma) * t) / (sigma * math.sqrt(t))
    return d1, d1 - sigma * math.sqrt(t)


def bs_price(call: bool, s: float, k: float, t: float, sigma: float, r: float = RISK_FREE_RATE) -> float:
    """The model price of one unit."""
    d1, d2 = _d1_d2(s, k, t, sigma, r)
    disc = k * math.exp(-r * t)
    return s * _cdf(d1) - disc * _cdf(d2) if call else disc * _cdf(-d2) - s * _cdf(-d1)


def implied_volatility(call: bool, price: float, s: float, k: float, t: float,
                       r: float = RISK_FREE_RATE) -> float | None:
    """The volatility at which :func:`bs_price` is ``price``; None outside the model's bounds."""
    if not (t > 0 and s > 0 and k > 0 and price > 0):
        return None
    disc = k * math.exp(-r * t)
    lower, upper = (max(0.0, s - disc), s) if call else (max(0.0, disc - s), disc)
    if not lower < price < upper:
        return None
    lo, hi = 1e-6, 10.0
    if bs_price(call, s, k, t, hi, r) < price:
        return None
    for _ in range(200):  # the price rises with volatility: bisection, to 1e-10 in price
        mid = 0.5 * (lo + hi)
        p = bs_price(call, s, k, t, mid, r)
        if abs(p - price) < 1e-10:
            return mid
        if p < price:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def greeks(call: bool, s: float, k: float, t: float, sigma: float, r: float = RISK_FREE_RATE) -> Greeks:
    d1, d2 = _d1_d2(s, k, t, sigma, r)
    sqrt_t = math.sqrt(t)
    disc = math.exp(-r * t)
    gamma = _n(d1) / (s * sigma * sqrt_t)
    vega = s * _n(d1) * sqrt_t / 100
    decay = -s * _n(d1) * sigma / (2 * sqrt_t)
    if call:
        delta = _cdf(d1)
        theta = (decay - r * k * disc * _cdf(d2)) / 365
        rho = k * t * disc * _cdf(d2) / 100
    else:
        delta = _cdf(d1) - 1
        theta = (decay + r * k * disc * _cdf(-d2)) / 365
        rho = -k * t * disc * _cdf(-d2) / 100
    return Greeks(delta, gamma, rho, theta, vega)
