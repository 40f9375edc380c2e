"""numpy kernels behind the vectorized indicators: a first-order linear recurrence and rolling
window moments, with no Python loop per element and no long-range precision drift.

Why not the obvious tools: ``np.cumsum`` is a sequential scalar loop (about 3.3 ns/value on our
machines, slower than TA-Lib's whole EMA), a Python loop is ~60 ns/value, and scipy's ``lfilter``
is not a dependency. Instead:

* the recurrence cuts the series into segments of L values and gets every segment's response
  from one BLAS matrix product with an L x L Toeplitz matrix of decay powers (results land in
  natural order, so there is no transpose); what each segment carries into the next is the same
  recurrence on the m / L segment ends, solved recursively;
* rolling sums are trees of doubled block sums (``b2[t] = b[t] + b[t + s]``).

Temporaries come from a per-thread scratch workspace that is kept between calls: on Linux a fresh
multi-megabyte temporary is returned to the OS on free and page-faulted (zeroed) again on the
next call, which measured slower than the arithmetic itself. Bound: per thread, about 8 x 8 bytes
per value of the largest input seen; :func:`release_scratch` frees it.

Precision: no sum runs over more than max(16, period) terms, so there is no drift with length;
errors stay within a few hundred ulps of the result. Memory: a couple of temporaries the size of
the input.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Below this length a plain loop is cheaper than setting up segments.
_LOOP_BELOW = 256
# Values per segment of the recurrence (see _segment_length).
_SEGMENT = 16
# Rolling moments: a window whose variance is below this fraction of its mean square about the
# row's reference value lost too many digits to cancellation; it is recomputed exactly
# (two-pass). Flat windows land here and come out exactly 0, as TA-Lib's do.
_CANCELLATION_LIMIT = 1e-5


# Rows per BLAS call, times the row length: below OpenBLAS's gemv threading threshold.
_BLAS_SINGLE_THREAD = 9000

_thread = threading.local()


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 array of ``shape`` from this thread's workspace slot ``name``.

    Callers own the slot until they return; two arrays in use at once need two names.
    """
    size = math.prod(shape)
    slots = _thread.__dict__.setdefault("slots", {})
    buffer = slots.get(name)
    if buffer is None or buffer.size < size:
        buffer = slots[name] = np.empty(size)
    return buffer[:size].reshape(shape)


def release_scratch() -> None:
    """Free this thread's scratch workspace (it regrows on the next call)."""
    _thread.__dict__.pop("slots", None)


@functools.lru_cache(maxsize=64)
def _toeplitz(decay: float, gain: float, length: int) -> np.ndarray:
    """``T[i, j] = gain * decay**(j - i)`` for ``j >= i``, else 0."""
    lag = np.arange(length)[None, :] - np.arange(length)[:, None]
    matrix = np.where(lag >= 0, gain * decay ** np.maximum(lag, 0), 0.0)
    matrix.flags.writeable = False
    return matrix


def _segment_length(log_decay: float) -> int:
    # The matrix product does ~2L flops per value and runs near one core's peak, so short
    # segments win once the carries are cheap -- they are a recurrence over m / L values, solved
    # by this same function recursively. Measured over L = 4..24 for EMA(12), Wilder(14) and
    # MACD: 16 is best, within ~10% of 8 and 12. (log_decay kept for a future per-decay choice.)
    del log_decay
    return _SEGMENT


def _carries(ends: np.ndarray, decay_l: float, y0: np.ndarray) -> np.ndarray:
    """c[:, s] = value just before segment s: c[:, 0] = y0, c[:, s] = decay_l * c[:, s-1] + ends[:, s-1]."""
    k_series, segments = ends.shape
    carries = np.empty((k_series, segments))
    carries[:, 0] = y0
    if segments > 1:
        linear_recurrence(ends[:, :-1], decay_l, y0, out=carries[:, 1:], overwrite_u=True)
    return carries


def linear_recurrence(
    u: np.ndarray,
    decay: float,
    y0: np.ndarray,
    gain: float = 1.0,
    out: np.ndarray | None = None,
    overwrite_u: bool = False,
) -> np.ndarray:
    """``y[k, i] = decay * y[k, i-1] + gain * u[k, i]`` with ``y[k, -1] = y0[k]``, for K series.

    ``u`` is (K, m) float64 with contiguous rows; ``0 <= decay < 1``. This is EMA
    (``decay = 1 - k``, ``gain = k``) and Wilder smoothing (``decay = (p-1)/p``, ``gain = 1/p``).
    ``out`` (K, m, contiguous rows, not overlapping ``u``) receives the result if given.
    ``overwrite_u`` lets the kernel use ``u`` as scratch (saves one copy).

    With segments of L values, ``y[s, :] = (u[s, :] + e0 * decay * c[s] / gain) @ T`` where
    ``T[i, j] = gain * decay**(j - i)`` (j >= i) and ``c[s]`` is the value before segment s. The
    ``c`` follow from the segments' zero-start ends (one matrix-vector product) by the recurrence
    ``c[s] = decay**L * c[s-1] + end[s-1]``, which is this function again on m / L values.
    """
    if u.ndim != 2 or u.dtype != np.float64 or u.strides[1] != 8:
        u = np.ascontiguousarray(u, dtype=np.float64)
        overwrite_u = True
    k_series, m = u.shape
    y0 = np.asarray(y0, dtype=np.float64).reshape(k_series)
    if out is None:
        out = np.empty((k_series, m))
    elif out.shape != u.shape or out.strides[1] != 8:
        raise ValueError("out must have u's shape and contiguous rows")
    if m == 0:
        return out
    if decay == 0.0:
        np.multiply(u, gain, out=out)
        return out
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    length = _segment_length(-math.log(decay))
    segments = m // length
    if m < _LOOP_BELOW or segments < 2:
        for k in range(k_series):
            value = float(y0[k])
            row = out[k]
            for i, x in enumerate(u[k].tolist()):
                value = decay * value + gain * x
                row[i] = value
        return out

    body = segments * length
    toeplitz = _toeplitz(decay, gain, length)
    if overwrite_u:
        work = u[:, :body]
    else:
        work = scratch("recurrence", (k_series, body))
        np.copyto(work, u[:, :body])
    blocks = work.reshape(k_series, segments, length)  # a view: rows are contiguous
    target = out[:, :body].reshape(k_series, segments, length)
    last_column = np.ascontiguousarray(toeplitz[:, -1])
    # BLAS calls stay under OpenBLAS's threading thresholds (m*n < 9216 for gemv, m*n*k <= 262144
    # for gemm), so they run on this thread: its worker threads, woken for such small products,
    # were measured up to 40x slower on a busy 2-core machine.
    chunk = max(1, _BLAS_SINGLE_THREAD // length)
    ends = np.empty((k_series, segments))  # zero-start value at each segment's last element
    for s in range(0, segments, chunk):
        np.matmul(blocks[:, s : s + chunk], last_column, out=ends[:, s : s + chunk])
    carries = _carries(ends, decay**length, y0)
    blocks[:, :, 0] += (decay / gain) * carries
    for s in range(0, segments, chunk):
        np.matmul(blocks[:, s : s + chunk], toeplitz, out=target[:, s : s + chunk])

    for k in range(k_series):  # the last partial segment (< L values)
        value = float(out[k, body - 1])
        row = out[k]
        for i, x in enumerate(u[k, body:].tolist(), start=body):
            value = decay * value + gain * x
            row[i] = value
    return out


def window_sums(x: np.ndarray, period: int, out: np.ndarray) -> np.ndarray:
    """Sum of every window of ``period`` values along the last axis of ``x``, the window ending
    at ``period-1, period, ...``; writes as many as ``out``'s last axis holds (at most
    ``len - period + 1``) into ``out``.

    Sums of 2**j consecutive values are built by doubling (``b2[t] = b[t] + b[t + s]``) and each
    window is the sum of the blocks named by ``period``'s bits: about log2(period) + popcount
    passes over the data (6 for 20), each window summed as a tree of its own values -- no running
    total, hence no drift.
    """
    n_out = out.shape[-1]
    lead = x.shape[:-1]
    covered = False
    offset = 0  # values already covered, counted back from the window's end
    block = x  # block[..., t] = sum of `size` values ending at t + size - 1
    size = 1
    remaining = period
    slot = 0
    while True:
        if remaining & 1:
            start = period - size - offset
            part = block[..., start : start + n_out]
            if covered:
                np.add(out, part, out=out)
            else:
                np.copyto(out, part)
                covered = True
            offset += size
        remaining >>= 1
        if not remaining:
            return out
        width = block.shape[-1] - size
        doubled = scratch(f"window_sums.{slot}", lead + (width,))
        np.add(block[..., size:], block[..., :-size], out=doubled)
        block = doubled
        slot ^= 1
        size *= 2


def _exact_moments(x: np.ndarray, period: int, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass mean and population variance of the windows ending at indexes ``ends``."""
    windows = sliding_window_view(x, period)[ends - (period - 1)]
    mean = windows.sum(axis=1) / period
    centre = mean + (windows - mean[:, None]).sum(axis=1) / period  # one refinement step
    deviations = windows - centre[:, None]
    return mean, np.einsum("ij,ij->i", deviations, deviations) / period


def rolling_moments(
    x: np.ndarray, period: int, mean: np.ndarray, variance: np.ndarray | None = None
) -> None:
    """Mean (and population variance) of every window of ``period`` values ending at indexes
    ``period-1 .. n-1``, written into ``mean`` (and ``variance``), each of length ``n - period + 1``.

    Rows of L outputs read L + period - 1 inputs (overlapping by period - 1) relative to the row's
    first value; window sums of those deviations and of their squares are doubled block sums
    along the row. Windows that lost digits to cancellation (flat ones among them) are redone
    exactly.
    """
    n_out = x.shape[0] - period + 1
    if n_out <= 0:
        return
    # Rows of >= 8192 outputs: numpy runs 2-d operations whose rows are shorter than its
    # 8192-element buffer ~3x slower (measured); the period - 1 overlap then costs < 1%.
    length = max(8192, 4 * period)
    rows = n_out // length
    body = rows * length
    if rows:
        _row_moments(x[: body + period - 1], period, rows, length, mean[:body],
                     None if variance is None else variance[:body])
    if body < n_out:
        _row_moments(x[body:], period, 1, n_out - body, mean[body:],
                     None if variance is None else variance[body:])


def _row_moments(
    x: np.ndarray, period: int, rows: int, length: int, mean: np.ndarray, variance: np.ndarray | None
) -> None:
    span = length + period - 1
    views = sliding_window_view(x, span)[::length]  # (rows, span), no copy
    reference = views[:, :1].copy()
    moments = 1 if variance is None else 2
    deviations = scratch("moments.deviations", (moments, rows, span))
    np.subtract(views, reference, out=deviations[0])
    if variance is not None:
        np.multiply(deviations[0], deviations[0], out=deviations[1])
    sums = window_sums(deviations, period, scratch("moments.sums", (moments, rows, length)))
    sums *= 1.0 / period
    first = sums[0]  # mean deviation from the reference
    np.add(first, reference, out=mean.reshape(rows, length))
    if variance is None:
        return
    square = sums[1]  # mean squared deviation from the reference
    var = variance.reshape(rows, length)
    np.multiply(first, first, out=var)
    ill = var > (1.0 - _CANCELLATION_LIMIT) * square  # i.e. variance < limit * square
    np.subtract(square, var, out=var)
    if ill.any():
        flat = np.flatnonzero(ill)
        variance[flat] = _exact_moments(x, period, flat + period - 1)[1]
