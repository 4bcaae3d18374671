"""API points: what each site may spend, counted in its own clock hours and days.

Calltouch gives each site an hourly and a daily budget of API points; every successful call
spends some (costs per method are not published: they are settings, 1 per call by default).
Once a budget is spent, calls fail until the next hour. So the relay asks :meth:`Points.until`
before a call of a site goes, and tells :meth:`Points.heard` what came back:

* leads may spend the whole budget; every other kind stops at a reserve kept for leads
  (``reserve``, a fraction of the hour) and waits for the next hour, unleased, with no attempt
  counted;
* bulk work is spread over the hour: by any moment it may have spent its share of the hour so
  far, plus a small burst (a leaky bucket that empties at the hour, when Calltouch's does);
* when Calltouch refuses a call for points (recognised by ``refusal``, a pattern, since its
  text is not published), the site waits for the next hour, one probe call every
  ``probe_every`` seconds meanwhile; the first call that passes resumes it.

The ledger lives in this process and is kept in the store (:meth:`Points.sync`, every second):
each sync adds what this process spent since the last one to the window's row and reads back
the total, so a restart starts from the hour's real spending and gateways of a fleet see each
other's. Between syncs a gateway does not see the others' calls: the fleet's one pace lets at
most ``rate`` calls go in a second, so a fleet can spend past a line by those calls' points.
The hour's row also keeps the site's latest refusal and the latest call passed after one: a
refusal one gateway hears holds the fleet from the next sync on, the gateway that heard it
last probes (the others' probes are due ``FOLLOW`` seconds after its, in case it is gone),
and a probe that passes resumes them all. A site without budgets is not kept in the store,
so each gateway hears its refusals for itself.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo

from gateway.calltouch.answers import Defer, Delivered, Permanent, Verdict, error_text, redact
from gateway.calltouch.client import Reply
from gateway.config_points import DEFAULT_REFUSAL, DEFAULT_RESERVE
from gateway.queue.base import Tally
from gateway.relay.gates import urgency
from gateway.relay.ledger import HOUR, Ledger

log = logging.getLogger(__name__)

REFUSED = "points_exhausted"  # the Defer code of a call refused for points
PROBE_EVERY = 300.0
# Time for the probing gateway's answer (at most the upstream timeout) and a sync to reach the
# others before a probe of theirs is due too.
FOLLOW = 30.0
BURST = 0.05  # of the hour's bulk share: a small upload goes at once, a big one is spread
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Budget:
    """One site's budgets (``None``: not limited) and the zone its hours and days are in."""

    per_hour: int | None = None
    per_day: int | None = None
    reserve: float = DEFAULT_RESERVE
    timezone: str = "Europe/Moscow"

    @property
    def reserved(self) -> int:
        """Points of each hour (and of the day's last) that only leads may spend; of the
        day, for a site given only a daily budget."""
        return math.ceil((self.per_hour or self.per_day or 0) * self.reserve)


@dataclass(frozen=True, slots=True)
class Spend:
    """A call's points, taken as it left, and the hour and day they were taken from."""

    site: str
    kind: str
    points: int
    hour_end: float
    day_end: float


class Book(Protocol):
    """Where the spending is kept: the queue's store (:meth:`~gateway.queue.base.Queue.tally`)."""


    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]: ...


class Points:
    def __init__(
        self,
        budgets: Mapping[str, Budget],
        costs: Mapping[str, int] | None = None,
        *,
        refusal: str = DEFAULT_REFUSAL,
        probe_every: float = PROBE_EVERY,
        clock: Clock = time.time,
        on_refused: Callable[[str, bool], None] = lambda site, refused: None,
        on_spent: Callable[[str, int], None] = lambda site, points: None,
    ) -> None:
        self._budgets = dict(budgets)
        self._zones = {site: ZoneInfo(b.timezone) for site, b in self._budgets.items()}
        self._costs = dict(costs or {})
        self._refusal = re.compile(refusal)
        self._probe_every = probe_every
        self._clock = clock
        self._on_refused, self._on_spent = on_refused, on_spent
        self._ledgers: dict[str, Ledger] = {}

    def cost(self, method: str) -> int:
        return self._costs.get(method, 1)

    def until(self, site: str, kind: str, method: str) -> float | None:
        """``None`` when a call of ``kind`` may spend ``site``'s points now; else the time
        (on this clock) before which it may not."""
        now = self._clock()
        ledger = self._ledger(site, now)
        if ledger.refused_until is not None:
            return None if now >= ledger.probe_at else min(ledger.probe_at, ledger.refused_until)
        budget = self._budgets.get(site)
        if budget is None:
            return None
        urgent = urgency(kind) == 0
        held = 0 if urgent else budget.reserved
        cost = self.cost(method)
        if budget.per_day is not None and ledger.day + cost > budget.per_day - held:
            return ledger.day_end
        if budget.per_hour is None:
            return None
        share = budget.per_hour - held
        if ledger.hour + cost > share:
            return ledger.hour_end
        if urgent:
            return None
        # The bulk share of the hour so far, plus a burst: spread over the hour, not its start.
        burst = max(cost, BURST * share)
        due = ledger.hour_start + (ledger.bulk + cost - burst) / share * 3600
        return None if now >= due else due

    def remaining(self, site: str, window: str) -> float:
        """Points left in the current hour or day (the gauge; NaN for a window not limited)."""
        budget = self._budgets.get(site)
        limit = None if budget is None else (budget.per_hour if window == HOUR else budget.per_day)
        if limit is None:
            return math.nan
        ledger = self._ledger(site, self._clock())
        return float(max(0, limit - (ledger.hour if window == HOUR else ledger.day)))

    def take(self, site: str, kind: str, method: str) -> Spend | None:
        """Reserve a call's points as it leaves (calls in flight count, or a burst of them
        would overspend); ``None``: it may not go after all. While the site is refused for
        points, the call that leaves is the probe."""
        if self.until(site, kind, method) is not None:
            return None
        ledger = self._ledger(site, self._clock())
        if ledger.refused_until is not None:
            ledger.probe_at = self._clock() + self._probe_every
        cost = self.cost(method)
        ledger.add(kind, cost)
        return Spend(site, kind, cost, ledger.hour_end, ledger.day_end)

    def refused(self, reply: Reply) -> Defer | None:
        """The verdict of every job of a call Calltouch refused for points; else ``None``."""
        failure = reply.failure
        if not isinstance(failure, Permanent):  # a 2xx, a 429, an outage: not about points
            return None
        text = error_text(reply.body)
        if not self._refusal.search(text):
            return None
        return Defer(REFUSED, f"HTTP {reply.status}: {redact(text)}", self._probe_every)

    def heard(self, spend: Spend, reply: Reply, verdicts: Sequence[Verdict]) -> None:
        """What a call got back: its points stay spent if Calltouch took the call (a 2xx,
        whatever its items say, or an error answer that still took an item), else they are
        given back to the hour and day they were taken from."""
        now = self._clock()
        ledger = self._ledger(spend.site, now)
        if reply.failure is None or any(isinstance(v, Delivered) for v in verdicts):
            if ledger.refused_until is not None:
                ledger.resumed_at = now
            self._resume(spend.site, ledger, "a call passed")
            self._on_spent(spend.site, spend.points)
            return
        ledger.give_back(spend.kind, spend.points, spend.hour_end, spend.day_end)
        if self.refused(reply) is not None:
            ledger.refused_at = now
            self._refuse(spend.site, ledger, now + self._probe_every, "")

    async def sync(self, book: Book) -> None:
        """Add what this process spent since the last sync to the store, and take every
        process's totals from it (on a failure the spending is kept for the next sync)."""
        if not self._budgets:  # no site is limited: nothing to keep
            return
        now = self._clock()
        ledgers = {site: self._ledger(site, now) for site in self._budgets}
        sent = [tally for site, ledger in ledgers.items() for tally in ledger.unsent(site)]
        for ledger in ledgers.values():
            ledger.unsent_hour = ledger.unsent_bulk = ledger.unsent_day = 0
        try:
            totals = await book.tally(sent, now)
        except BaseException:
            for tally in sent:
                self._ledgers[tally.site].keep_unsent(tally)
            raise
        for total in totals:
            self._ledgers[total.site].take_total(total)
            self._follow(total.site, self._ledgers[total.site], total)

    def _ledger(self, site: str, now: float) -> Ledger:
        ledger = self._ledgers.setdefault(site, Ledger())
        if ledger.roll(now, self._zones.get(site, _MOSCOW)):
            self._resume(site, ledger, "a new hour")
        return ledger

    def _follow(self, site: str, ledger: Ledger, total: Tally) -> None:
        """What the fleet heard of the site's refusals, from the hour's row in the store."""
        if total.span != HOUR or total.ends != ledger.hour_end:
            return
        theirs = total.refused > ledger.refused_at  # a refusal this process did not hear
        ledger.refused_at = max(ledger.refused_at, total.refused)
        ledger.resumed_at = max(ledger.resumed_at, total.resumed)
        if ledger.resumed_at >= ledger.refused_at:
            self._resume(site, ledger, "a call passed at another gateway")
        elif theirs:
            probe_at = max(ledger.probe_at, ledger.refused_at + self._probe_every + FOLLOW)
            self._refuse(site, ledger, probe_at, " (heard by another gateway)")

    def _refuse(self, site: str, ledger: Ledger, probe_at: float, heard_by: str) -> None:
        if ledger.refused_until is None:
            log.error("calltouch refused site=%s for its API points%s: it waits for the next "
                      "hour, one probe every %.0fs", site, heard_by, self._probe_every)
            self._on_refused(site, True)
        ledger.refused_until = ledger.hour_end
        ledger.probe_at = probe_at

    def _resume(self, site: str, ledger: Ledger, why: str) -> None:
        if ledger.refused_until is None:
            return
        ledger.refused_until = None
        log.info("site=%s may spend API points again (%s)", site, why)
        self._on_refused(site, False)


_MOSCOW = ZoneInfo("Europe/Moscow")
