"""``wait_for_work`` as both backends do it: look for the earliest visible job, then sleep until
it is due, a wake-up comes, or a poll interval passes, whichever is first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.waits import wait_set


async def wait_until_due(
    next_visible: Callable[[], Awaitable[float | None]],
    wake_up: Callable[[], asyncio.Event],
    timeout: float,
    poll: float,
) -> bool:
    """True once ``next_visible()`` (epoch seconds, or None: no job) is past; False after
    ``timeout``. ``wake_up()`` is taken before each look, so a wake-up between the look and
    the sleep is not missed."""
    deadline = time.monotonic() + timeout
    while True:
        woken = wake_up()
        at = await next_visible()
        now = time.time()
        if at is not None and at <= now:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        wait = min(left, poll, left if at is None else at - now)
        await wait_set(woken, wait)
