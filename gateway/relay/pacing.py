"""Upstream pacing that holds in every sliding window, measured where Calltouch sees it.

A token bucket paces *grants*; but a grant is not an arrival. When the event loop is busy,
requests granted 200 ms apart leave bunched, and Calltouch counts six in one second. So the
pacer remembers when each request was actually written and grants request *k* only after
request *k - n* was written at least one window ago. A request is written after its grant, and
its stamp is taken no earlier than its write, so ``written[k] - written[k - n] >= window``
always holds: no window ever holds more than ``n`` requests, whatever the loop does between.

After a 429 the pacer pauses for ``Retry-After`` (or a second), halves its rate for everyone,
and climbs back additively while calls are answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.relay.gates import Turns, urgency

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Slot:
    """One granted request: a :class:`~gateway.relay.gates.Ticket` of the pacer."""

    __slots__ = ("_event", "_pacer", "sent_at")

    def __init__(self, pacer: Pacer) -> None:
        self.sent_at: float | None = None
        self._pacer = pacer
        self._event = asyncio.Event()

    def written(self, at: float) -> None:
        if self.sent_at is None:
            self.sent_at = at
            self._event.set()

    def answered(self, reply: Reply) -> None:
        failure = reply.failure
        if isinstance(failure, Retry) and failure.code == "rate_limited":
            self._pacer.rate_limited(failure.retry_after)
        elif failure is None:  # a 2xx: Calltouch took the call, whatever its items say
            self._pacer.succeeded()

    def current(self) -> bool:
        return True  # a pace's grant holds until it is used or given back

    async def wait_written(self) -> float:
        await self._event.wait()
        assert self.sent_at is not None
        return self.sent_at


def window_of(rate: float, margin: float) -> tuple[int, float]:
    """``count`` calls per ``window`` seconds, so that no second holds more than ``rate``.

    Below 1 a second, one call per 1/``rate`` s. Above, a second holds a whole number of calls:
    4.5 a second is 4 in every second (4 per 0.89 s would put 8 in some seconds)."""
    count = max(1, math.floor(rate))
    return count, max(1.0, count / rate) + margin


class Pacer:
    """At most ``rate`` calls in every sliding second (plus ``margin``), as a gate."""

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.03,
        recovery: float = 0.5,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        started_full: bool = False,
    ) -> None:
        self.limit = rate
        self.current = rate
        # The margin absorbs jitter between our write and Calltouch's read of the request.
        self.count, self.window = window_of(rate, margin)
        self._recovery = recovery
        self._clock = clock
        self._sleep = sleep
        self._slots: deque[Slot] = deque(maxlen=self.count)
        self._turns = Turns()
        self._paused_until = -math.inf
        self._last_grant = -math.inf
        if started_full:
            # A new process cannot know what the one before it sent in its last second (a
            # crash, a restart): it starts as if a full window had just been written.
            for _ in range(self.count):
                slot = Slot(self)
                slot.written(self._clock())
                self._slots.append(slot)

    async def admit(self, kind: str) -> Slot:
        return await self.acquire(urgency(kind))

    async def acquire(self, priority: int = 1) -> Slot:
        async with self._turns.turn(priority):
            while (delay := await self._delay()) > 0:
                await self._sleep(delay)
            slot = Slot(self)
            self._slots.append(slot)
            self._last_grant = self._clock()
            return slot

    async def _delay(self) -> float:
        if len(self._slots) == self.count:
            oldest = await self._slots[0].wait_written()
            window_free = oldest + self.window
        else:
            window_free = -math.inf
        soft = self._last_grant + 1.0 / self.current if self.current < self.limit else -math.inf
        return max(window_free, soft, self._paused_until) - self._clock()

    def rate_limited(self, retry_after: float | None) -> None:
        """Calltouch answered 429: pause everyone, then go on at half the rate."""
        self._paused_until = max(self._paused_until, self._clock() + (retry_after or 1.0))
        self.current = max(self.limit / 8, self.current / 2)

    def succeeded(self) -> None:
        if self.current < self.limit and self._clock() >= self._paused_until:
            self.current = min(self.limit, self.current + self._recovery)


def backoff(attempt: int, *, base: float = 2.0, cap: float = 600.0, rand: float = 0.5) -> float:
    """Exponential backoff with equal jitter: half fixed, half random (``rand`` in [0, 1))."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling / 2 + ceiling / 2 * rand
