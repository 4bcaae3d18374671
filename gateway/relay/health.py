"""Upstream health, as a gate: stop hammering a Calltouch that is down, drain at once when back.

After ``threshold`` consecutive failures of the retryable kind (5xx, timeouts, connection
errors) the upstream is *down*: one probe call at a time may go, at a growing interval, and
every other call waits at the gate, so no job is leased or spends an attempt meanwhile. The
first call that Calltouch answers (2xx, or any 4xx: it is up) makes it *up* again, and
``on_recovered`` makes every job that backed off during the outage due at once, so the pacer
drains them at its full rate instead of each waiting out its own backoff. A 429 is the pacer's
business (pause and slow down), not an outage.

A new gate (a gateway just started, perhaps restarted in the middle of an outage) does not
know yet that Calltouch is up: its first call goes alone, as a probe, and its answer decides.
Success lets every call through; a failure makes it *down* at once, its probes starting at
``first_probe``, rather than after ``threshold`` calls that a burst would have sent together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.waits import wait_set

log = logging.getLogger(__name__)

OUTAGE_CODES = frozenset({"server_error", "timeout", "network_error"})
Clock = Callable[[], float]


class HealthTicket:
    """One call through the gate: it tells the gate how the call went."""

    __slots__ = ("_health", "probe")

    def __init__(self, health: Health, probe: bool) -> None:
        self._health = health
        self.probe = probe

    def written(self, at: float) -> None:
        pass  # health is told by answers, not by writes

    def answered(self, reply: Reply) -> None:
        failure = reply.failure
        if isinstance(failure, Retry) and failure.code in OUTAGE_CODES:
            self._health.failed(self.probe)
        else:
            self._health.succeeded()

    def current(self) -> bool:
        return self.probe or self._health.healthy


class Health:
    """The health of one upstream (Calltouch for this gateway)."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        first_probe: float = 1.0,
        max_probe: float = 8.0,
        probe_deadline: float = 30.0,
        on_change: Callable[[bool], None] = lambda healthy: None,
        on_recovered: Callable[[], None] = lambda: None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.healthy = True
        # Until the first answer: the threshold forgives a stray failure among calls known to
        # work, and a new process knows of none (a restart mid-outage would send a burst).
        self._known = False
        self._threshold = threshold
        # The cap (CTGW_PROBE_MAX) trades calls for delay: a 3-minute outage across a restart
        # costs about 2 * (1 + 3 + 83 s / 8 s) ~ 28 calls, and its end is seen up to 8 s late
        # (a cap of 4 s would see it within 4 s, for about 48 calls).
        self._first, self._max = first_probe, max_probe
        # A probe whose call never came (nothing left to lease) frees the slot after this.
        self._deadline = probe_deadline
        self._on_change, self._on_recovered = on_change, on_recovered
        self._clock = clock
        self._failures = 0
        self._interval = first_probe
        self._next_probe = 0.0
        self._probe_since: float | None = None
        self._changed = asyncio.Event()

    async def admit(self, kind: str) -> HealthTicket:
        while not (self.healthy and self._known):
            now = self._clock()
            if not self._probe_free(now):
                until = (self._probe_since or now) + self._slot_deadline()
            elif self.healthy or now >= self._next_probe:
                self._probe_since = now
                return HealthTicket(self, probe=True)
            else:
                until = self._next_probe
            await self._wait(until - now)
        return HealthTicket(self, probe=False)

    def _probe_free(self, now: float) -> bool:
        return self._probe_since is None or now - self._probe_since >= self._slot_deadline()

    def _slot_deadline(self) -> float:
        # A new gate's first call may never be made (another process leased its job): a
        # start is not stalled the whole deadline for it, only a first probe's interval.
        return self._deadline if self._known else self._first

    async def _wait(self, seconds: float) -> None:
        self._changed.clear()
        await wait_set(self._changed, seconds)

    def failed(self, probe: bool) -> None:
        self._failures += 1
        now = self._clock()
        first, self._known = not self._known, True  # a new gate's first call is its probe
        if self.healthy and (first or self._failures >= self._threshold):
            self.healthy = False
            self._interval = self._first
            self._next_probe = now + self._interval
            self._probe_since = None
            log.error("calltouch is down after %d failures: one probe call at a time",
                      self._failures)
            self._on_change(False)
        elif not self.healthy and probe:
            self._interval = min(self._max, self._interval * 2)
            self._next_probe = now + self._interval
            self._probe_since = None
            log.warning("calltouch probe failed; next in %.0fs", self._interval)
        self._changed.set()

    def succeeded(self) -> None:
        self._failures = 0
        if not self._known:  # a new gate's first call: Calltouch is up, nothing was waiting
            self._known = True
            self._probe_since = None
            self._changed.set()
        if self.healthy:
            return
        self.healthy = True
        self._probe_since = None
        log.info("calltouch answers again: what waited is due now")
        self._on_change(True)
        self._on_recovered()
        self._changed.set()
