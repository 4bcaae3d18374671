"""Waiting for an event, with a deadline that a stop cannot be lost to.

Python 3.11's ``asyncio.wait_for`` returns normally when the task is cancelled just as the
event it waits on is set: the cancellation is lost (fixed in 3.12, which builds ``wait_for``
on ``asyncio.timeout``). A relay dispatcher told to stop then ran on, leasing and sending,
and the stop waited for it for ever. ``asyncio.timeout`` counts cancellations, so it keeps
them.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds`` (at once, for a negative one)."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        return False
    return True
