"""One site's ledger of API points (:mod:`gateway.relay.points`): what it spent in its current
clock hour and day, in the site's time zone, each named by the moment it ends; and how that
meets the totals the store keeps for the fleet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.queue.base import Tally
from gateway.relay.gates import urgency

HOUR, DAY = "hour", "day"


def windows(now: float, zone: ZoneInfo) -> tuple[float, float, float]:
    """The start and end of ``now``'s clock hour and the end of its day, in ``zone``."""
    local = datetime.fromtimestamp(now, zone)
    hour = local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return hour.timestamp(), (hour + timedelta(hours=1)).timestamp(), day.timestamp()


@dataclass(slots=True)
class Ledger:
    """What a site spent in the current hour and day (every process's as last read, plus
    this one's since), and when those end; ``unsent_*``: this process's, not yet in the store."""

    hour_start: float = 0.0
    hour_end: float = 0.0
    day_end: float = 0.0
    hour: int = 0
    bulk: int = 0  # of ``hour``: spent by kinds other than leads
    day: int = 0
    unsent_hour: int = 0
    unsent_bulk: int = 0
    unsent_day: int = 0
    refused_until: float | None = None  # Calltouch refused for points: wait until then
    probe_at: float = 0.0
    # The hour's latest refusal and latest call passed after one, this process's or the store's.
    refused_at: float = 0.0
    resumed_at: float = 0.0

    def roll(self, now: float, zone: ZoneInfo) -> bool:
        """Start the hour (and day) of ``now`` once the current one has ended; True if it did."""
        if now < self.hour_end:
            return False
        start, end, day_end = windows(now, zone)
        if now >= self.day_end:
            self.day, self.day_end, self.unsent_day = 0, day_end, 0
        self.hour_start, self.hour_end, self.hour, self.bulk = start, end, 0, 0
        self.unsent_hour = self.unsent_bulk = 0
        self.refused_at = self.resumed_at = 0.0  # the new hour's row has none
        return True

    def add(self, kind: str, points: int) -> None:
        self.hour += points
        self.day += points
        self.unsent_hour += points
        self.unsent_day += points
        if urgency(kind) != 0:
            self.bulk += points
            self.unsent_bulk += points

    def give_back(self, kind: str, points: int, hour_end: float, day_end: float) -> None:
        """Points taken for a call Calltouch did not take: from the windows they were taken
        from only, so a call that failed after its hour ended takes nothing from the new one.
        The floor at zero is for a store's total read meanwhile without them."""
        if hour_end == self.hour_end:
            self.hour = max(0, self.hour - points)
            self.unsent_hour -= points
            if urgency(kind) != 0:
                self.bulk = max(0, self.bulk - points)
                self.unsent_bulk -= points
        if day_end == self.day_end:
            self.day = max(0, self.day - points)
            self.unsent_day -= points

    def unsent(self, site: str) -> tuple[Tally, Tally]:
        return (Tally(site, HOUR, self.hour_end, self.unsent_hour, self.unsent_bulk,
                      self.refused_at, self.resumed_at),
                Tally(site, DAY, self.day_end, self.unsent_day, 0))

    def keep_unsent(self, tally: Tally) -> None:
        """A tally the store did not take is sent again with the next, unless its window ended."""
        if tally.span == HOUR and tally.ends == self.hour_end:
            self.unsent_hour += tally.points
            self.unsent_bulk += tally.bulk
        elif tally.span == DAY and tally.ends == self.day_end:
            self.unsent_day += tally.points

    def take_total(self, total: Tally) -> None:
        """The store's total, plus what this process spent while the sync ran; a window that
        ended meanwhile is left to the next sync."""
        if total.span == HOUR and total.ends == self.hour_end:
            self.hour = max(0, total.points + self.unsent_hour)
            self.bulk = max(0, total.bulk + self.unsent_bulk)
        elif total.span == DAY and total.ends == self.day_end:
            self.day = max(0, total.points + self.unsent_day)
