"""Upstream pacing that holds in every sliding window, measured where Calltouch sees it.

A token bucket paces *grants*; but a grant is not an arrival. When the event loop is busy,
requests granted 200 ms apart leave bunched, and Calltouch counts six in one second. So the
pacer remembers when each request was actually written (aiohttp's ``on_request_chunk_sent``)
and grants request *k* only after request *k - n* was written at least one window ago. A
request is written after its grant, and its stamp is taken no earlier than its write, so
``written[k] - written[k - n] >= window`` always holds: no window ever holds more than ``n``
requests, whatever the loop does in between.

After a 429 the pacer pauses for ``Retry-After`` (or a second), halves its rate for everyone,
and climbs back additively while answers are good.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Slot:
    """One granted request; :meth:`mark_sent` stamps it once its bytes are written."""

    __slots__ = ("_event", "sent_at")

    def __init__(self) -> None:
        self.sent_at: float | None = None
        self._event = asyncio.Event()

    def mark_sent(self, at: float) -> None:
        if self.sent_at is None:
            self.sent_at = at
            self._event.set()

    async def wait_sent(self) -> float:
        await self._event.wait()
        assert self.sent_at is not None
        return self.sent_at


class Pacer:
    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.03,
        recovery: float = 0.5,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.limit = rate
        self.current = rate
        self.count = max(1, math.floor(rate))
        # The margin absorbs jitter between our write and Calltouch's read of the request.
        self.window = self.count / rate + margin
        self._recovery = recovery
        self._clock = clock
        self._sleep = sleep
        self._slots: deque[Slot] = deque(maxlen=self.count)
        self._lock = asyncio.Lock()
        self._paused_until = -math.inf
        self._last_grant = -math.inf

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for a slot; a request that never wrote its headers counts as sent at exit."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            slot.mark_sent(self._clock())

    async def acquire(self) -> Slot:
        async with self._lock:
            while (delay := await self._delay()) > 0:
                await self._sleep(delay)
            slot = Slot()
            self._slots.append(slot)
            self._last_grant = self._clock()
            return slot

    async def _delay(self) -> float:
        if len(self._slots) == self.count:
            oldest = await self._slots[0].wait_sent()
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
