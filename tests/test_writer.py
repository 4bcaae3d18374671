"""The writer thread: waiting puts share one commit, calls keep their order, close drains."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.queue.writer import Writer


class Store:
    """A commit function that records its batches and can be made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = False

    def commit(self, items: list[int]) -> list[str]:
        if self.fail:
            raise OSError("disk full")
        self.batches.append(items)
        return [f"r{i}" for i in items]


async def _held(writer: Writer[int, str]) -> tuple[threading.Event, asyncio.Future[None]]:
    """Park the writer thread inside a call until the event is set, so work piles up."""
    entered, release = threading.Event(), threading.Event()

    def park() -> None:
        entered.set()
        release.wait(10)

    parked = writer.call(park)
    await asyncio.to_thread(entered.wait, 10)
    return release, parked


async def test_puts_waiting_together_are_one_commit() -> None:
    store = Store()
    writer: Writer[int, str] = Writer(store.commit, "test-writer")
    release, parked = await _held(writer)
    futures = [writer.put(i) for i in range(50)]
    release.set()
    assert await asyncio.gather(*futures) == [f"r{i}" for i in range(50)]
    await parked
    assert store.batches == [list(range(50))]
    await writer.close(lambda: None)


async def test_a_failed_commit_fails_its_puts_and_the_next_one_works() -> None:
    store = Store()
    writer: Writer[int, str] = Writer(store.commit, "test-writer")
    store.fail = True
    outcomes = await asyncio.gather(*(writer.put(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    store.fail = False
    assert await writer.put(9) == "r9"
    await writer.close(lambda: None)


async def test_a_put_is_answered_before_the_calls_of_its_round_run() -> None:
    writer: Writer[int, str] = Writer(Store().commit, "test-writer")
    release, _ = await _held(writer)
    slow_entered, slow_release = threading.Event(), threading.Event()

    def slow() -> str:  # the relay's ack, say, stuck in its fsync
        slow_entered.set()
        slow_release.wait(10)
        return "acked"

    call = writer.call(slow)
    put = writer.put(7)  # submitted after the call, in the same round
    release.set()
    await asyncio.to_thread(slow_entered.wait, 10)
    assert await asyncio.wait_for(put, 10) == "r7"
    assert not call.done()
    slow_release.set()
    assert await call == "acked"
    await writer.close(lambda: None)


async def test_calls_run_in_order_and_fail_alone() -> None:
    writer: Writer[int, str] = Writer(Store().commit, "test-writer")
    seen: list[int] = []

    def boom() -> None:
        raise ValueError("bad call")

    first = writer.call(lambda: seen.append(1))
    bad = writer.call(boom)
    last = writer.call(lambda: seen.append(2) or len(seen))
    await first
    with pytest.raises(ValueError, match="bad call"):
        await bad
    assert await last == 2 and seen == [1, 2]
    await writer.close(lambda: None)


async def test_a_cancelled_waiter_does_not_stop_the_round() -> None:
    store = Store()
    writer: Writer[int, str] = Writer(store.commit, "test-writer")
    release, _ = await _held(writer)
    gone, kept = writer.put(1), writer.put(2)
    gone.cancel()
    release.set()
    assert await kept == "r2"
    assert store.batches == [[1, 2]]  # the cancelled put was committed all the same
    await writer.close(lambda: None)


async def test_close_drains_then_runs_last_and_refuses_more() -> None:
    store = Store()
    writer: Writer[int, str] = Writer(store.commit, "test-writer")
    release, _ = await _held(writer)
    pending = [writer.put(i) for i in range(3)]
    closing = asyncio.ensure_future(writer.close(lambda: len(store.batches)))
    release.set()
    assert await closing == 1  # the pending puts were committed before ``last`` ran
    assert await asyncio.gather(*pending) == ["r0", "r1", "r2"]
    with pytest.raises(ConnectionError):
        writer.put(4)
    assert not writer._thread.is_alive()
