"""A stop is never lost to a wake-up: a task cancelled just as its event is set is cancelled.

Python 3.11's ``asyncio.wait_for`` lost such a cancellation, and a relay told to stop ran on
for ever. Each test cancels at every few loop turns after the event is set, since which turn
the loss needs depends on the interpreter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.queue.waiting import wait_until_due
from gateway.waits import wait_set

TURNS = range(8)  # loop turns between the event's set and the cancellation


async def forever(event: asyncio.Event) -> None:
    """A dispatcher's shape: wait for the event, clear it, wait again."""
    while True:
        await wait_set(event, 30.0)
        event.clear()


async def cancel_after_set(make: Coroutine[Any, Any, object], wake: Callable[[], None],
                           waiting: asyncio.Event, turns: int) -> None:
    task = asyncio.ensure_future(make)
    await waiting.wait()
    wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, f"the cancellation {turns} turns after the wake-up was lost"
    assert task.cancelled()


@pytest.mark.parametrize("turns", TURNS)
async def test_a_waiter_cancelled_as_its_event_is_set_stops(turns: int) -> None:
    event, waiting = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        waiting.set()
        await forever(event)

    await cancel_after_set(run(), event.set, waiting, turns)


@pytest.mark.parametrize("turns", TURNS)
async def test_a_wait_for_work_cancelled_as_work_arrives_stops(turns: int) -> None:
    # As the stores do: a wake-up sets the kind's event and the next look takes a new one.
    events, looked = [asyncio.Event()], asyncio.Event()

    def work_arrives() -> None:
        events.append(asyncio.Event())
        events[-2].set()

    async def no_job_yet() -> float | None:
        looked.set()
        return None

    async def dispatcher() -> None:
        while True:  # as the relay does: another look after each wake-up
            await wait_until_due(no_job_yet, lambda: events[-1], 30.0, 5.0)

    await cancel_after_set(dispatcher(), work_arrives, looked, turns)


async def test_wait_set_tells_a_set_event_from_a_deadline() -> None:
    event = asyncio.Event()
    assert not await wait_set(event, 0.01)
    assert not await wait_set(event, -1.0)  # a deadline already past: no wait at all
    event.set()
    assert await wait_set(event, 0.0)
