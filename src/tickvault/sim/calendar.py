"""The simulator's exchange calendar and its controllable clock.

:class:`SimClock` is the one source of simulated time: trade times, order times, ``/v2/clock`` and the
expiry of ``day`` orders all read it. It runs at ``scale`` times wall speed from ``start`` and can be
moved forward (``POST /_sim/clock``) so a test reaches the close without waiting for it; it never
moves backward, because every trade and order time the simulator has handed out must stay in the past.

The calendar is NYSE's regular sessions by rule: weekdays 09:30–16:00 America/New_York, closed on
New Year's Day, Martin Luther King Jr. Day, Washington's Birthday, Good Friday, Memorial Day,
Juneteenth (from 2022), Independence Day, Labor Day, Thanksgiving and Christmas (observed on the
Friday before or the Monday after a weekend, except that a Saturday New Year's Day is not observed),
closing at 13:00 on July 3, the day after Thanksgiving and December 24 when those are trading days,
and closed on the one-off days of this century (:data:`ONE_OFF_CLOSURES`: September 11–14 2001,
national days of mourning, hurricane Sandy). Dates run from 1970 to 2029, as Alpaca's
``/v2/calendar`` does.

A :class:`Calendar` adds its own one-off closures and early closes to those (a storm, a day of
mourning announced after this was written, a test's own half day): ``/v2/calendar``, ``/v2/clock``,
the expiry of ``day`` orders and the simulated market's hours all follow it. The module functions
answer for NYSE's calendar as it stands (:data:`NYSE`).

What this module must never do: read the environment (a calendar file is read when asked, once), or
allocate per call beyond a session or two (sessions are computed per date, cached per year: at most
60 years × ~252 sessions).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
FIRST_YEAR, LAST_YEAR = 1970, 2029  # Alpaca's calendar covers these years
_DAY = timedelta(days=1)
# Closures NYSE announced for one day (not by rule) in this century, as Alpaca's calendar has them.
ONE_OFF_CLOSURES = frozenset({
    date(2001, 9, 11), date(2001, 9, 12), date(2001, 9, 13), date(2001, 9, 14),  # September 11
    date(2004, 6, 11),  # President Reagan's national day of mourning
    date(2007, 1, 2),  # President Ford
    date(2012, 10, 29), date(2012, 10, 30),  # hurricane Sandy
    date(2018, 12, 5),  # President George H. W. Bush
    date(2025, 1, 9),  # President Carter
})


class CalendarError(ValueError):
    """A calendar change that cannot be: a malformed line, a date outside the calendar's years."""


class Session(NamedTuple):
    """One trading day: its date and the regular session's open and close in ns since the epoch."""

    day: date
    open_ns: int
    close_ns: int

    def to_json(self) -> dict:
        """Alpaca's ``/v2/calendar`` item but its settlement date, which depends on the calendar
        (:meth:`Calendar.day_json`); times in New York local time, as Alpaca writes them."""
        opens = datetime.fromtimestamp(self.open_ns / 1e9, NEW_YORK)
        closes = datetime.fromtimestamp(self.close_ns / 1e9, NEW_YORK)
        return {
            "date": self.day.isoformat(),
            "open": opens.strftime("%H:%M"),
            "close": closes.strftime("%H:%M"),
            # Extended hours: pre-market from 04:00, after-hours for four hours after the close
            # (20:00; 17:00 on an early-close day), written HHMM as Alpaca writes them.
            "session_open": "0400",
            "session_close": f"{closes.hour + 4:02d}{closes.minute:02d}",
        }


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th ``weekday`` (0 = Monday) of the month; n = -1 is the last one."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - _DAY
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _observed(d: date) -> date | None:
    if d.weekday() == 5:
        return d - _DAY
    if d.weekday() == 6:
        return d + _DAY
    return d


@lru_cache(maxsize=64)
def _year(year: int) -> tuple[frozenset[date], frozenset[date]]:
    """(holidays, early closes) of a year."""
    holidays: set[date | None] = set()
    new_year = date(year, 1, 1)
    if new_year.weekday() != 5:  # NYSE does not observe a Saturday New Year's Day on the Friday before
        holidays.add(_observed(new_year))
    if year >= 1998:
        holidays.add(_nth_weekday(year, 1, 0, 3))  # Martin Luther King Jr. Day
    holidays.add(_nth_weekday(year, 2, 0, 3))  # Washington's Birthday
    holidays.add(_easter(year) - 2 * _DAY)  # Good Friday
    holidays.add(_nth_weekday(year, 5, 0, -1))  # Memorial Day
    if year >= 2022:
        holidays.add(_observed(date(year, 6, 19)))  # Juneteenth
    holidays.add(_observed(date(year, 7, 4)))
    holidays.add(_nth_weekday(year, 9, 0, 1))  # Labor Day
    thanksgiving = _nth_weekday(year, 11, 3, 4)
    holidays.add(thanksgiving)
    holidays.add(_observed(date(year, 12, 25)))
    holidays.discard(None)
    early = {date(year, 7, 3), thanksgiving + _DAY, date(year, 12, 24)}
    early = {d for d in early if d.weekday() < 5 and d not in holidays}
    return frozenset(holidays), frozenset(early)  # type: ignore[arg-type]


def _ns(d: date, hour: int, minute: int) -> int:
    return int(datetime(d.year, d.month, d.day, hour, minute, tzinfo=NEW_YORK).timestamp()) * 10**9


def _rule_session(d: date) -> Session | None:
    """The session NYSE's rules give date ``d``, or None when closed by rule."""
    if d.weekday() >= 5 or not FIRST_YEAR <= d.year <= LAST_YEAR:
        return None
    holidays, early = _year(d.year)
    if d in holidays or d in ONE_OFF_CLOSURES:
        return None
    return Session(d, _ns(d, 9, 30), _ns(d, 13, 0) if d in early else _ns(d, 16, 0))


class Calendar:
    """NYSE's sessions with this calendar's own changes: ``closures`` (dates the exchange does not
    open) and ``early_closes`` (date → New York close time, e.g. 13:00). A change on a day the rules
    already close is refused, as is one outside the calendar's years (:class:`CalendarError`)."""

    __slots__ = ("closures", "early_closes")

    def __init__(self, closures: Iterable[date] = (), early_closes: Mapping[date, clock_time] | None = None) -> None:
        self.closures = frozenset(closures)
        self.early_closes = dict(early_closes or {})
        for d in sorted(self.closures | set(self.early_closes)):
            if _rule_session(d) is None:
                raise CalendarError(f"{d} is not a trading day already (a weekend, holiday or outside "
                                    f"{FIRST_YEAR}–{LAST_YEAR})")
        for d, t in self.early_closes.items():
            if d in self.closures:
                raise CalendarError(f"{d} is both closed and closing early")
            if not clock_time(9, 30) < t < clock_time(16, 0):
                raise CalendarError(f"the early close of {d} must be between 09:30 and 16:00, not {t:%H:%M}")

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "calendar changes") -> Calendar:
        """One change a line: ``YYYY-MM-DD`` (closed) or ``YYYY-MM-DD HH:MM`` (closes early, New York
        time); ``#`` starts a comment, blank lines are skipped."""
        closures: set[date] = set()
        early: dict[date, clock_time] = {}
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            try:
                d = date.fromisoformat(parts[0])
                if len(parts) == 1:
                    closures.add(d)
                elif len(parts) == 2:
                    early[d] = clock_time.fromisoformat(parts[1])
                else:
                    raise ValueError("more than a date and a time")
            except ValueError as exc:
                raise CalendarError(f"{source} line {n}: {raw.strip()!r} is not YYYY-MM-DD [HH:MM] ({exc})") from None
        return cls(closures, early)

    @classmethod
    def from_file(cls, path: str | Path) -> Calendar:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise CalendarError(f"cannot read the calendar file {path}: {exc.strerror}") from None
        return cls.from_lines(text.splitlines(), str(path))

    def session_on(self, d: date) -> Session | None:
        """The session of date ``d`` (New York), or None when the exchange is closed that day."""
        if d in self.closures:
            return None
        s = _rule_session(d)
        close = self.early_closes.get(d)
        if s is not None and close is not None:
            s = s._replace(close_ns=_ns(d, close.hour, close.minute))
        return s

    def settlement(self, d: date) -> date:
        """T+1 (T+2 before 2024-05-28): the next trading day(s) after ``d``."""
        steps = 1 if d >= date(2024, 5, 28) else 2
        out = d
        while steps:
            out += _DAY
            if out.year > LAST_YEAR or self.session_on(out) is not None:
                steps -= 1
        return out

    def sessions(self, start: date, end: date) -> list[Session]:
        """Sessions with ``start <= day <= end`` (both clipped to the calendar's years)."""
        start = max(start, date(FIRST_YEAR, 1, 1))
        end = min(end, date(LAST_YEAR, 12, 31))
        out = []
        d = start
        while d <= end:
            s = self.session_on(d)
            if s is not None:
                out.append(s)
            d += _DAY
        return out

    def session_from(self, ns: int) -> Session | None:
        """The session open at ``ns``, else the next one to open; None past the calendar's end."""
        d = new_york_date(ns)
        while d.year <= LAST_YEAR:
            s = self.session_on(d)
            if s is not None and ns < s.close_ns:
                return s
            d += _DAY
        return None

    def is_open(self, ns: int) -> bool:
        s = self.session_from(ns)
        return s is not None and s.open_ns <= ns < s.close_ns

    def next_open(self, ns: int) -> int | None:
        """The first open strictly after ``ns``."""
        s = self.session_from(ns)
        if s is not None and s.open_ns <= ns:
            s = self.session_from(s.close_ns)
        return None if s is None else s.open_ns

    def next_close(self, ns: int) -> int | None:
        """The close of the session open at ``ns``, or of the next one."""
        s = self.session_from(ns)
        return None if s is None else s.close_ns

    def day_json(self, s: Session) -> dict:
        """Alpaca's ``/v2/calendar`` item of a session."""
        return {**s.to_json(), "settlement_date": self.settlement(s.day).isoformat()}


def new_york_date(ns: int) -> date:
    return datetime.fromtimestamp(ns / 1e9, NEW_YORK).date()


NYSE = Calendar()  # the rules and this century's one-off closures, nothing added
session_on = NYSE.session_on
sessions = NYSE.sessions
session_from = NYSE.session_from
is_open = NYSE.is_open
next_open = NYSE.next_open
next_close = NYSE.next_close


class SimClock:
    """Simulated time in ns since the epoch: ``start + (monotonic elapsed) × scale``.

    A callable (``clock()``), so it goes wherever the simulator took a clock function. ``set`` and
    ``advance`` move it forward only (ValueError otherwise): times already handed out stay past.
    """

    __slots__ = ("_base_sim", "_base_mono", "scale")

    def __init__(self, start_ns: int | None = None, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("the clock's scale must be > 0")
        self._base_sim = time.time_ns() if start_ns is None else int(start_ns)
        self._base_mono = time.monotonic_ns()
        self.scale = float(scale)

    def __call__(self) -> int:
        return self._base_sim + int((time.monotonic_ns() - self._base_mono) * self.scale)

    def _rebase(self, sim_ns: int) -> None:
        self._base_sim = sim_ns
        self._base_mono = time.monotonic_ns()

    def set(self, ns: int) -> None:
        now = self()
        if ns < now:
            raise ValueError(f"the simulated clock only moves forward (now {_iso(now)}, asked {_iso(ns)})")
        self._rebase(ns)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._rebase(self() + int(seconds * 1e9))

    def set_scale(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError("the clock's scale must be > 0")
        self._rebase(self())
        self.scale = float(scale)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()
