"""Trading sessions for session-anchored indicators (VWAP): which session a bar belongs to.

The rule, the same for the streaming worker and the ``refresh_indicators`` flow (both step a
:class:`SessionTracker` through a symbol's bars in time order, so they cannot disagree):

* **US equities** (a symbol without ``/``): a session is one trading day's *extended* window in
  America/New_York, ``[session_open, session_close)`` of Alpaca's ``GET /v2/calendar`` (04:00–20:00
  on an ordinary day; holidays have no entry, early closes a shorter window). **VWAP anchors at
  the session open (04:00 ET), not at the regular open (09:30 ET)**: the session start is the first
  bar Alpaca's feed delivers for the trading day, so every bar the worker stores belongs to exactly
  one VWAP and none is left without one; it is what "session VWAP" means on an extended-hours
  chart. Pre-market bars are therefore part of the day's VWAP (at 09:30 it weighs the 04:00–09:30
  bars by their volume, which is small next to the regular session's); they never carry into the
  next day. A regular-hours-only VWAP is one SQL query over ``bars`` (docs/worker.md). The
  regular ``open``/``close`` are kept on :class:`TradingDay` for anyone who needs them.
* **Crypto** (a pair such as ``BTC/USD``): the UTC day, ``[00:00, 24:00)`` UTC, every day.
* A bar outside every session (a US equity bar at 21:00 ET, on a weekend or a holiday) belongs to
  none: its VWAP is NaN (NULL in ``indicators``) and it enters no session's sums. The other
  indicators run over the continuous series of bars, as in TA-Lib, and do not care.

Daylight saving time is the zone's business: a window is built from New York wall-clock times on
its own date, so 04:00 ET is 09:00 UTC in winter and 08:00 UTC in summer.

When the calendar cannot be fetched, or a date lies outside the range fetched, the default rule
stands in: weekdays 04:00–20:00 ET, no holidays. That is logged once per calendar (a warning), not
per bar.

What this module must never do: I/O on the hot path (the calendar is fetched once, before bars
flow, by :func:`fetch_session_calendar`), or allocate per bar inside a session
(:meth:`SessionTracker.step` compares two ints unless the bar starts or leaves a session).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from tickvault.alpaca.rest import AlpacaREST

log = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
DAY_NS = 86_400 * 10**9
# The default rule when /v2/calendar is unavailable: Alpaca's extended hours on every weekday.
DEFAULT_SESSION_OPEN = time(4, 0)
DEFAULT_SESSION_CLOSE = time(20, 0)
DEFAULT_REGULAR_OPEN = time(9, 30)
DEFAULT_REGULAR_CLOSE = time(16, 0)

# Step results of SessionTracker.step.
SAME_SESSION = 0
NEW_SESSION = 1
NO_SESSION = -1


class CalendarError(ValueError):
    """A ``/v2/calendar`` item that cannot be read as a trading day (names the item)."""


class TradingDay(NamedTuple):
    """One US equity trading day: its New York date and its windows in ns since the epoch."""

    day: date
    session_open_ns: int  # extended session start: VWAP's anchor
    session_close_ns: int  # extended session end (exclusive)
    open_ns: int  # regular session
    close_ns: int


def is_crypto(symbol: str) -> bool:
    """Crypto pairs are written ``BASE/QUOTE`` on Alpaca's feeds; stock symbols never hold a slash."""
    return "/" in symbol


def _ns(d: date, at: time) -> int:
    return int(datetime.combine(d, at, NEW_YORK).timestamp()) * 10**9


def _clock_time(text: str) -> time:
    """``09:30`` (open/close) or ``0400`` (session_open/session_close), as Alpaca writes them."""
    digits = text.replace(":", "")
    if len(digits) != 4 or not digits.isdigit():
        raise ValueError(f"not a time of day: {text!r}")
    return time(int(digits[:2]), int(digits[2:]))


def trading_day_from_alpaca(item: Mapping[str, Any]) -> TradingDay:
    """One ``/v2/calendar`` item (``date``, ``open``, ``close``, ``session_open``, ``session_close``,
    New York wall-clock times) as a :class:`TradingDay`; :class:`CalendarError` when unreadable."""
    try:
        d = date.fromisoformat(str(item["date"]))
        t_open, t_close = _clock_time(str(item["open"])), _clock_time(str(item["close"]))
        # Alpaca always sends the extended window; an item without it gets the default hours.
        s_open = _clock_time(str(item["session_open"])) if item.get("session_open") else DEFAULT_SESSION_OPEN
        s_close = (_clock_time(str(item["session_close"])) if item.get("session_close")
                   else DEFAULT_SESSION_CLOSE)
    except (KeyError, TypeError, ValueError) as e:
        raise CalendarError(f"unreadable /v2/calendar item {dict(item)!r}: {e}") from None
    day = TradingDay(d, _ns(d, s_open), _ns(d, s_close), _ns(d, t_open), _ns(d, t_close))
    if not day.session_open_ns <= day.open_ns < day.close_ns <= day.session_close_ns:
        raise CalendarError(
            f"/v2/calendar item {dict(item)!r}: the regular session is not inside the extended one")
    return day


def default_trading_day(d: date) -> TradingDay | None:
    """The default rule: weekdays 04:00–20:00 (regular 09:30–16:00) New York time, no holidays."""
    if d.weekday() >= 5:
        return None
    return TradingDay(d, _ns(d, DEFAULT_SESSION_OPEN), _ns(d, DEFAULT_SESSION_CLOSE),
                      _ns(d, DEFAULT_REGULAR_OPEN), _ns(d, DEFAULT_REGULAR_CLOSE))


class SessionCalendar:
    """US equity trading days by New York date: those of ``/v2/calendar`` for the dates in
    ``covers`` (a date there without an item is a holiday), the default rule for any other date.

    ``reason`` says why the default rule may be needed (shown in the one warning logged when it is
    first used). Memory: one small tuple per trading day fetched (~252 a year)."""

    __slots__ = ("_days", "covers", "source", "reason", "_warned")

    def __init__(
        self,
        days: Iterable[TradingDay] = (),
        *,
        covers: tuple[date, date] | None = None,
        source: str = "default",
        reason: str = "no exchange calendar was loaded",
        warned: bool = False,
    ) -> None:
        self._days = {d.day: d for d in days}
        self.covers = covers
        self.source = source
        self.reason = reason
        self._warned = warned  # True: the caller already said why the default rule applies

    @classmethod
    def from_alpaca(cls, items: Any, start: date, end: date) -> SessionCalendar:
        """The calendar of ``/v2/calendar?start=..&end=..``'s answer (items outside the range are ignored)."""
        if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
            raise CalendarError(f"/v2/calendar answered {type(items).__name__}, not a list of days")
        days = [trading_day_from_alpaca(item) for item in items]
        return cls((d for d in days if start <= d.day <= end), covers=(start, end), source="alpaca",
                   reason=f"the date is outside the fetched calendar ({start} to {end})")

    def __len__(self) -> int:
        """Trading days known from the calendar (0 for the default rule)."""
        return len(self._days)

    def trading_day(self, d: date) -> TradingDay | None:
        """The trading day of New York date ``d``, or None when the exchange is closed that day."""
        covers = self.covers
        if covers is not None and covers[0] <= d <= covers[1]:
            return self._days.get(d)
        if not self._warned:
            self._warned = True
            log.warning("session calendar: %s, so the default rule applies to %s and every such date "
                        "(weekdays %s-%s America/New_York, no holidays)", self.reason, d,
                        DEFAULT_SESSION_OPEN.strftime("%H:%M"), DEFAULT_SESSION_CLOSE.strftime("%H:%M"))
        return default_trading_day(d)

    def window(self, symbol: str, time_ns: int) -> tuple[int, int] | None:
        """``(start_ns, end_ns)`` of the session holding a bar of ``symbol`` that starts at
        ``time_ns``, or None when it falls outside every session (see the module docstring)."""
        if is_crypto(symbol):
            start = time_ns - time_ns % DAY_NS
            return start, start + DAY_NS
        d = datetime.fromtimestamp(time_ns // 10**9, NEW_YORK).date()
        day = self.trading_day(d)
        if day is None or not day.session_open_ns <= time_ns < day.session_close_ns:
            return None
        return day.session_open_ns, day.session_close_ns


_DEFAULT = SessionCalendar()


def default_calendar() -> SessionCalendar:
    """The process's one default-rule calendar (for callers given none): its warning is logged once
    per process, not once per refresh or per processor."""
    return _DEFAULT


class SessionTracker:
    """Steps through one symbol's bars in time order and says when a session starts or is left.

    ``step(time_ns)`` returns :data:`SAME_SESSION`, :data:`NEW_SESSION` (restart VWAP at this bar)
    or :data:`NO_SESSION` (the bar belongs to none: VWAP NaN). Inside a session it costs two int
    comparisons; the calendar is consulted only at a session's edges."""

    __slots__ = ("symbol", "calendar", "start", "end")

    def __init__(self, symbol: str, calendar: SessionCalendar) -> None:
        self.symbol = symbol
        self.calendar = calendar
        self.start = -1  # the current session's [start, end); empty before the first bar
        self.end = -1

    def step(self, time_ns: int) -> int:
        if self.start <= time_ns < self.end:
            return SAME_SESSION
        window = self.calendar.window(self.symbol, time_ns)
        if window is None:
            self.start = self.end = -1
            return NO_SESSION
        self.start, self.end = window
        return NEW_SESSION


def session_marks(
    symbol: str, times_ns: Iterable[int], calendar: SessionCalendar
) -> tuple[list[bool], list[bool]]:
    """``(session_start, in_session)`` for a symbol's bars in time order: what
    :func:`tickvault.indicators.vwap` takes, from the same :class:`SessionTracker` the worker steps."""
    tracker = SessionTracker(symbol, calendar)
    starts: list[bool] = []
    inside: list[bool] = []
    for t in times_ns:
        mark = tracker.step(t)
        starts.append(mark == NEW_SESSION)
        inside.append(mark != NO_SESSION)
    return starts, inside


# How far around "now" the worker and the flow fetch the calendar: back over the flow's longest
# warm-up (30 days) and the worker's restore, forward over a year of running without a restart.
CALENDAR_BACK = timedelta(days=40)
CALENDAR_AHEAD = timedelta(days=366)


async def fetch_session_calendar(rest: AlpacaREST, start: date, end: date) -> SessionCalendar:
    """``GET /v2/calendar`` for ``[start, end]`` (one request, ~250 items a year) as a
    :class:`SessionCalendar`; when it fails (network, HTTP error after the REST client's retries,
    an unreadable item) the default-rule calendar, with the failure logged once, here."""
    from tickvault.alpaca.errors import AlpacaError

    try:
        items = await rest.calendar(start, end)
        calendar = SessionCalendar.from_alpaca(items, start, end)
        log.info("session calendar: %d trading days from /v2/calendar, %s to %s", len(calendar), start, end)
        return calendar
    except (AlpacaError, ValueError) as e:  # ValueError: CalendarError, or a body that is not JSON
        reason = f"GET /v2/calendar failed ({type(e).__name__}: {e})"
    log.warning("session calendar: %s; using the default rule (weekdays %s-%s America/New_York, no holidays)",
                reason, DEFAULT_SESSION_OPEN.strftime("%H:%M"), DEFAULT_SESSION_CLOSE.strftime("%H:%M"))
    return SessionCalendar(reason=reason, warned=True)  # said above, once


def calendar_range(around: datetime | None = None) -> tuple[date, date]:
    """The dates to fetch for a worker or flow running at ``around`` (default now)."""
    today = (around or datetime.now(UTC)).astimezone(NEW_YORK).date()
    return today - CALENDAR_BACK, today + CALENDAR_AHEAD
