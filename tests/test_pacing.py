"""The pacer holds every sliding window on *written* times, whatever the loop does."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.relay.gates import abandon
from gateway.relay.pacing import Pacer, backoff
from gateway.sandbox.server import max_in_window


class FakeClock:
    """A mocked clock: sleeping advances it at once, so no test waits for real time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


async def test_no_window_holds_more_than_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(5, margin=0.0, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(50):
        slot = await pacer.acquire()
        slot.written(clock())
        sent.append(clock())
    assert max_in_window(sent) == 5
    assert sent[-1] - sent[0] == pytest.approx(9.0)  # 50 at 5/s: the rate is not wasted


@pytest.mark.parametrize(("rate", "per_second"), [(4.5, 4), (1.5, 1), (4.99, 4), (0.5, 1)])
async def test_a_fractional_rate_holds_in_every_second(rate: float, per_second: int) -> None:
    """``CTGW_RATE=4.5`` once meant 4 calls per 0.89 s: 8 in some seconds, and 429s."""
    clock = FakeClock()
    pacer = Pacer(rate, margin=0.0, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(40):
        slot = await pacer.acquire()
        slot.written(clock())
        sent.append(clock())
    assert max_in_window(sent) == per_second
    assert len(sent) / (sent[-1] - sent[0] + 1) >= min(rate, per_second) * 0.9  # not wasted


async def test_late_writes_push_later_grants() -> None:
    """A busy loop writes a request late: the next grants wait for that write, not the grant."""
    clock = FakeClock()
    pacer = Pacer(5, margin=1e-6, clock=clock, sleep=clock.sleep)  # margin: float rounding
    written: list[float] = []
    rng = random.Random(7)
    for _ in range(100):
        slot = await pacer.acquire()
        clock.now += rng.choice([0.0, 0.0, 0.3, 0.7])  # the loop was busy before writing
        slot.written(clock())
        written.append(clock())
    assert max_in_window(written) <= 5


async def test_grant_waits_for_the_oldest_write() -> None:
    clock = FakeClock()
    pacer = Pacer(2, margin=0.0, clock=clock, sleep=clock.sleep)
    first = await pacer.acquire()
    await pacer.acquire()
    third = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0)
    assert not third.done()  # the first request has not been written yet
    first.written(clock())
    await third
    assert clock.now == pytest.approx(101.0)


async def test_an_abandoned_slot_frees_the_window() -> None:
    """A call that is never made (nothing left to lease, a failed lease) holds nothing back."""
    clock = FakeClock()
    pacer = Pacer(1, margin=0.0, clock=clock, sleep=clock.sleep)
    abandon([await pacer.acquire()], clock())
    await asyncio.wait_for(pacer.acquire(), 1)
    assert clock.now == pytest.approx(101.0)  # one window after the abandoned slot's stamp


async def test_429_pauses_halves_and_recovers() -> None:
    clock = FakeClock()
    pacer = Pacer(5, margin=0.0, clock=clock, sleep=clock.sleep)
    (await pacer.acquire()).written(clock())
    pacer.rate_limited(retry_after=3.0)
    assert pacer.current == 2.5
    start = clock.now
    (await pacer.acquire()).written(clock())
    assert clock.now == pytest.approx(start + 3.0)  # Retry-After honoured
    before = clock.now
    (await pacer.acquire()).written(clock())
    assert clock.now - before == pytest.approx(1 / 2.5)  # slower for everyone
    for _ in range(10):
        pacer.succeeded()
    assert pacer.current == 5


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    assert backoff(1, rand=0.0) == 2.0 and backoff(1, rand=0.999) < 4.0
    assert backoff(3, rand=0.0) == 8.0
    assert backoff(50, rand=0.999) <= 600.0


async def test_a_pacer_started_full_waits_a_window_before_its_first_grant() -> None:
    """After a restart the process before may have sent a full window just now."""
    clock = FakeClock()
    pacer = Pacer(5, margin=0.0, clock=clock, sleep=clock.sleep, started_full=True)
    started = clock()
    await pacer.acquire()
    assert clock() - started == pytest.approx(1.0)
