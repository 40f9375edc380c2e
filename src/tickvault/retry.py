"""One retry policy for every retry loop in tickvault: full-jitter exponential backoff.

:class:`RetryPolicy` is the rule (how the wait grows, its cap, how many retries, how long a server
may ask us to wait); :class:`Backoff` is one loop's place in it (``next_delay()``, ``reset()`` after a
success, ``at_least()`` when the server says how long to stay away). The wait before retry ``n``
(0-based) is drawn from ``uniform(0, min(cap, base × 2ⁿ))`` — full jitter, so many clients that failed
together do not come back together — or, for a loop that must keep a schedule, exactly that bound
(``jitter=False``).

The loops and their limits (the policies below, and the REST client's from settings):

- REST calls (:mod:`tickvault.alpaca.rest`): 0.25 s doubling to 8 s, ``http_max_retries`` retries
  (settings), a ``Retry-After`` up to 60 s honoured, a longer one not slept through;
- the market-data reader's reconnect (:mod:`tickvault.stream.reader`): 0.25 s doubling to 30 s,
  forever, reset after a successful subscription, at least 5 s after error 406;
- the reader's gap backfill: 1 s doubling, no jitter, 5 retries (1+2+4+8+16 s: rides out a REST or
  database outage of ~30 s);
- the writer's commit (:mod:`tickvault.stream.writer`): 0.1 s doubling to 5 s, forever, holding the batch;
- the trade-updates listener's reconnect (:mod:`tickvault.stream.orders`): as the reader's.

Pure: no I/O, no clock, no sleeping here (the loops sleep); randomness from ``random`` unless a
``random.Random`` is given (tests).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["BACKFILL", "COMMIT", "RECONNECT", "Backoff", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed operation is retried. ``max_retries``: retries after the first attempt (None:
    forever). ``max_retry_after_s``: the longest server-requested wait slept through inside a call."""

    max_retries: int | None = 4
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    max_retry_after_s: float = 60.0
    jitter: bool = True
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 (or None: forever)")
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            raise ValueError("backoff needs 0 < backoff_base_s <= backoff_cap_s")

    @classmethod
    def from_settings(cls, settings, **overrides) -> RetryPolicy:
        """The REST client's policy: ``http_max_retries`` from :class:`~tickvault.config.Settings`."""
        return cls(max_retries=settings.http_max_retries, **overrides)

    def bound(self, retry_number: int) -> float:
        """The longest wait before retry ``retry_number`` (0-based): ``min(cap, base × 2ⁿ)``."""
        return min(self.backoff_cap_s, self.backoff_base_s * (2.0 ** min(retry_number, 64)))

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (0-based): full jitter under :meth:`bound`."""
        return self._draw(self.bound(retry_number))

    def gives_up(self, retries_done: int) -> bool:
        """True when ``retries_done`` retries have been spent (never, with ``max_retries=None``)."""
        return self.max_retries is not None and retries_done >= self.max_retries

    def honours(self, retry_after_s: float) -> bool:
        """Whether a server's ``Retry-After`` of this many seconds is waited for inside a call."""
        return retry_after_s <= self.max_retry_after_s

    def start(self) -> Backoff:
        """A fresh :class:`Backoff` for one loop."""
        return Backoff(self)

    def _draw(self, bound: float) -> float:
        if not self.jitter:
            return bound
        return (self.rng or random).uniform(0.0, bound)


# The loops' policies, here so that every retry limit of the process is read in one place.
# Stream reconnects (market data, trade updates): full jitter under 0.25 s doubling to 30 s, forever;
# each loop resets it once the session is up (subscribed / authorized).
RECONNECT = RetryPolicy(max_retries=None, backoff_base_s=0.25, backoff_cap_s=30.0)
# A gap's backfill: 5 retries 1+2+4+8+16 s apart (no jitter): rides out a REST or database outage of ~30 s.
BACKFILL = RetryPolicy(max_retries=5, backoff_base_s=1.0, backoff_cap_s=16.0, jitter=False)
# The writer's commit when the database is unreachable: forever (the batch is held, never dropped),
# 0.1 s doubling to 5 s: a restarted database is written to within ~5 s of its return.
COMMIT = RetryPolicy(max_retries=None, backoff_base_s=0.1, backoff_cap_s=5.0)


class Backoff:
    """One retry loop's place in its :class:`RetryPolicy`: how many retries it has made and the
    current bound (which :meth:`at_least` may raise, and which keeps doubling from there)."""

    __slots__ = ("policy", "retries", "_bound")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.retries = 0
        self._bound = policy.backoff_base_s

    @property
    def bound(self) -> float:
        """The longest wait :meth:`next_delay` may return now."""
        return self._bound

    @property
    def exhausted(self) -> bool:
        return self.policy.gives_up(self.retries)

    def next_delay(self) -> float:
        """The wait before the next retry; counts the retry and doubles the bound (up to the cap)."""
        delay = self.policy._draw(self._bound)
        self.retries += 1
        self._bound = min(self._bound * 2, self.policy.backoff_cap_s)
        return delay

    def at_least(self, seconds: float) -> None:
        """The next wait may be up to ``seconds`` at least (a server said to stay away that long)."""
        self._bound = max(self._bound, seconds)

    def reset(self) -> None:
        """After a success: the next failure starts again from the base."""
        self.retries = 0
        self._bound = self.policy.backoff_base_s
