"""One clock for people: times in reports are shown in the market's timezone, UTC beside them
where a reader may need to match them with logs, S3 keys or the database (which all keep UTC).

``TICKVAULT_MARKET_TIMEZONE`` (default America/New_York, where US equity hours are defined) picks
the zone; the schedules in ``prefect.yaml`` are in the same zone, so "15:55" means the same
minute in a schedule and in an artifact. Storage never changes: the database, S3 keys and logs
keep UTC. This module only formats; it must never be used to compute a stored timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tickvault.config import Settings

DEFAULT_MARKET_TIMEZONE = "America/New_York"


@dataclass(frozen=True)
class MarketClock:
    """Formats aware datetimes for people: ``2025-03-14 09:49:03 EDT (13:49:03 UTC)``.

    Naive datetimes are taken to be UTC (what the database and the Alpaca models hold).
    """

    tz: ZoneInfo = ZoneInfo(DEFAULT_MARKET_TIMEZONE)

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketClock:
        return cls(ZoneInfo(settings.market_timezone))

    @property
    def name(self) -> str:
        return self.tz.key

    def local(self, when: datetime) -> datetime:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(self.tz)

    def time(self, when: datetime | None, *, seconds: bool = True) -> str:
        """``09:49:03 EDT`` (the market's wall clock and zone abbreviation); ``-`` for None."""
        if when is None:
            return "-"
        return self.local(when).strftime("%H:%M:%S %Z" if seconds else "%H:%M %Z")

    def stamp(self, when: datetime | None, *, seconds: bool = True, utc: bool = True) -> str:
        """``2025-03-14 09:49:03 EDT (13:49:03 UTC)``; the UTC part only with ``utc``."""
        if when is None:
            return "-"
        fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
        text = f"{self.local(when).strftime(fmt)} {self.local(when).strftime('%Z')}"
        if utc:
            u = self.local(when).astimezone(UTC)
            text += f" ({u.strftime('%H:%M:%S' if seconds else '%H:%M')} UTC" + (
                f" {u:%Y-%m-%d})" if u.date() != self.local(when).date() else ")"
            )
        return text

    def short(self, when: datetime | None) -> str:
        """``03-14 09:49 EDT``: for table cells, where the date matters less than the minute."""
        if when is None:
            return "-"
        return self.local(when).strftime("%m-%d %H:%M %Z")
