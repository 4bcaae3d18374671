"""The upstream health gate: its states on a fake clock, then a real outage of the sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.calltouch.answers import Permanent, Retry
from gateway.calltouch.client import Reply
from gateway.config import Settings
from gateway.queue import Back, Put
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.gates import admit_all
from gateway.relay.health import Health, HealthTicket
from gateway.sandbox.run import SandboxThread
from gateway.upstream_gates import Hastener
from tests.support import (
    QUEUE_BACKENDS,
    Gateway,
    eventually,
    lead,
    post_lead,
    queue_url_of,
    sandbox_config,
    sandbox_requests,
)

DOWN = Reply(503, b"", Retry("server_error", "HTTP 503"))
UP = Reply(200, b"{}", None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_health(clock: Clock, recovered: list[int] | None = None) -> Health:
    hits = recovered if recovered is not None else []
    return Health(threshold=3, first_probe=1.0, max_probe=8.0, clock=clock,
                  on_recovered=lambda: hits.append(1))


async def health(clock: Clock, recovered: list[int] | None = None) -> Health:
    """A gate that has seen Calltouch answer once: it knows the upstream is up."""
    gate = new_health(clock, recovered)
    (await gate.admit("lead")).answered(UP)
    return gate


async def wake(gate: Health) -> None:
    """The fake clock moved: let the gate's waiters look again."""
    gate._changed.set()
    for _ in range(10):  # the waiters' own turns of the loop
        await asyncio.sleep(0)


class HeldTicket:
    def __init__(self, gate: HeldGate) -> None:
        self._gate = gate

    def written(self, at: float) -> None:
        self._gate.given_back += 1

    def answered(self, reply: Reply) -> None:
        pass

    def current(self) -> bool:
        return True


class HeldGate:
    """A gate after health that holds each call until released: the pacer, its window full."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Semaphore(0)
        self.given_back = 0

    async def admit(self, kind: str) -> HeldTicket:
        self.holding.set()
        await self.release.acquire()
        return HeldTicket(self)


async def test_a_call_let_through_before_an_outage_does_not_go_into_it() -> None:
    clock = Clock()
    gate, pacer = await health(clock), HeldGate()
    admitted = asyncio.create_task(admit_all([gate, pacer], "lead"))
    await pacer.holding.wait()  # through the health gate, now held by the pacer
    for _ in range(3):
        (await gate.admit("lead")).answered(DOWN)
    assert not gate.healthy
    pacer.release.release()
    await wake(gate)
    # Started over: the pacer's slot given back, the call waiting for the probe slot.
    assert not admitted.done() and pacer.given_back == 1
    clock.now += 1.0
    await wake(gate)
    pacer.release.release()
    tickets = await asyncio.wait_for(admitted, 1)
    probe = tickets[0]
    assert isinstance(probe, HealthTicket) and probe.probe and len(tickets) == 2  # as the probe


async def test_a_new_gate_sends_its_first_call_alone_and_lets_all_through_once_it_works() -> None:
    clock, recovered = Clock(), []
    gate = new_health(clock, recovered)
    first = await gate.admit("lead")
    blocked = [asyncio.create_task(gate.admit("lead")) for _ in range(5)]
    await wake(gate)
    assert first.probe and not any(task.done() for task in blocked)
    first.answered(UP)
    tickets = await asyncio.wait_for(asyncio.gather(*blocked), 1)
    assert gate.healthy and not any(t.probe for t in tickets)
    assert recovered == []  # nothing waited for an outage: nothing to hasten


async def test_a_new_gate_whose_first_call_fails_is_down_at_once_and_probes_after_a_second(
) -> None:
    clock = Clock()
    gate = new_health(clock)
    first = await gate.admit("lead")
    blocked = asyncio.create_task(gate.admit("lead"))
    await wake(gate)
    assert not blocked.done()
    first.answered(DOWN)
    assert not gate.healthy  # one failure, not three: a restart mid-outage sends no burst
    clock.now += 0.99
    await wake(gate)
    assert not blocked.done()
    clock.now += 0.02
    await wake(gate)
    assert (await asyncio.wait_for(blocked, 1)).probe


async def test_three_outage_failures_take_it_down_and_a_429_or_a_4xx_does_not() -> None:
    clock = Clock()
    gate = await health(clock)
    for reply in (DOWN, DOWN, Reply(429, b"", Retry("rate_limited", "HTTP 429")), DOWN):
        (await gate.admit("lead")).answered(reply)
    assert gate.healthy  # the 429 broke the run of failures
    (await gate.admit("lead")).answered(Reply(400, b"", Permanent("client_error", "x")))
    for _ in range(3):
        (await gate.admit("lead")).answered(DOWN)
    assert not gate.healthy


async def test_while_down_one_probe_at_a_time_at_a_growing_interval_up_to_the_cap() -> None:
    clock = Clock()
    gate = await health(clock)
    for _ in range(3):
        (await gate.admit("lead")).answered(DOWN)
    waiting = asyncio.create_task(gate.admit("lead"))
    await asyncio.sleep(0)
    assert not waiting.done()  # the first probe is a second away
    intervals = []
    for _ in range(6):
        started = clock.now
        while not waiting.done():
            clock.now += 0.25
            gate._changed.set()  # the fake clock moved: look again
            for _ in range(10):  # the waiter's own turns of the loop
                await asyncio.sleep(0)
        probe = await waiting
        assert probe.probe
        other = asyncio.create_task(gate.admit("deal.create"))
        await asyncio.sleep(0)
        assert not other.done()  # one probe in flight: everyone else waits
        intervals.append(clock.now - started)
        probe.answered(DOWN)
        waiting = other
    waiting.cancel()
    assert intervals == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0], abs=0.01)


async def test_a_probe_that_succeeds_lets_everyone_through_and_hastens_the_queue() -> None:
    clock, recovered = Clock(), []
    gate = await health(clock, recovered)
    for _ in range(3):
        (await gate.admit("lead")).answered(DOWN)
    clock.now += 1.0
    probe = await gate.admit("lead")
    blocked = [asyncio.create_task(gate.admit("lead")) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in blocked)
    probe.answered(UP)
    tickets = await asyncio.wait_for(asyncio.gather(*blocked), 1)
    assert gate.healthy and recovered == [1] and not any(t.probe for t in tickets)


async def test_a_probe_never_answered_frees_its_slot_after_the_deadline() -> None:
    clock = Clock()
    gate = Health(threshold=1, first_probe=1.0, probe_deadline=20.0, clock=clock)
    (await gate.admit("lead")).answered(DOWN)
    clock.now += 1.0
    await gate.admit("lead")  # its call was never made (nothing left to lease)
    second = asyncio.create_task(gate.admit("lead"))
    await asyncio.sleep(0)
    assert not second.done()
    clock.now += 20.0
    gate._changed.set()
    assert (await asyncio.wait_for(second, 1)).probe


OUTAGE = 30.0
LEADS = 100
RATE = 5.0


@pytest.mark.timeout(180)
async def test_an_outage_costs_few_calls_and_the_backlog_drains_at_full_rate_after_it(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    sandbox: SandboxThread, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
) -> None:
    gw = await start_gateway(dataclasses.replace(settings, upstream_timeout=2.0))
    await sandbox_config(http, sandbox.url, fault="503", fault_rate=1.0, latency=[0.0, 0.05])
    started = time.monotonic()
    for n in range(LEADS):
        status, _ = await post_lead(http, gw.url, lead(n))
        assert status == 202
    await asyncio.sleep(OUTAGE - (time.monotonic() - started))  # the outage itself is the test
    await sandbox_config(http, sandbox.url, fault=None)
    ended = time.monotonic()
    during = len(await sandbox_requests(http, sandbox.url))

    async def delivered() -> bool:
        rows = await sandbox_requests(http, sandbox.url)
        return len({r["form"]["requestNumber"] for r in rows if r["status"] == 200}) == LEADS

    await eventually(delivered, timeout=120, interval=0.2)
    rows = await sandbox_requests(http, sandbox.url)
    last = max(r["at"] for r in rows if r["status"] == 200)
    recovery = last - ended
    ideal = LEADS / RATE
    with capsys.disabled():
        print(f"\n[outage] {OUTAGE:.0f}s: calls during it {during}; all {LEADS} delivered"
              f" {recovery:.1f}s after it ended (ideal {ideal:.0f}s: {recovery / ideal:.2f}x)")
    assert during <= 15  # 3 to find it down, then probes at 1, 2, 4, 8, 8, … seconds
    assert recovery <= 1.2 * ideal + 8.0  # the probe interval's cap, then the pacer's rate


PROBE_MAX = 2.0


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store on each backend: SQLite's gate is the process's, PostgreSQL's the fleet's."""
    return queue_url_of(request, tmp_path)


@pytest.mark.timeout(120)
async def test_ctgw_probe_max_caps_the_gap_between_probes_and_the_wait_after_an_outage(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    sandbox: SandboxThread, http: aiohttp.ClientSession, queue_url: str,
) -> None:
    gw = await start_gateway(
        dataclasses.replace(settings, queue_url=queue_url, probe_max=PROBE_MAX))
    assert (await post_lead(http, gw.url, lead(0)))[0] == 202

    async def answered(count: int) -> bool:
        rows = await sandbox_requests(http, sandbox.url)
        return bool(sum(r["status"] == 200 for r in rows) >= count)

    await eventually(lambda: answered(1), timeout=10, interval=0.05)  # the gate knows it is up
    await sandbox_config(http, sandbox.url, fault="503", fault_rate=1.0, latency=[0.0, 0.05])
    started = time.monotonic()
    for n in range(1, 11):
        assert (await post_lead(http, gw.url, lead(n)))[0] == 202
    await asyncio.sleep(12.0 - (time.monotonic() - started))  # the outage itself is the test
    await sandbox_config(http, sandbox.url, fault=None)
    ended = time.monotonic()
    await eventually(lambda: answered(11), timeout=30, interval=0.1)

    rows = await sandbox_requests(http, sandbox.url)
    failed = sorted(r["at"] for r in rows if r["status"] == 503)
    # The failures that closed the gate came at once (a window's worth); the probes after.
    probes = [at for at in failed if at > failed[2] + 0.5]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    first_after = min(r["at"] for r in rows if r["status"] == 200 and r["at"] >= ended)
    # The default cap's schedule (1, 2, 4, 8 s) would show a gap of 4 s and 3 probes at most.
    assert len(probes) >= 5, probes
    assert max(gaps) <= PROBE_MAX + 0.5, gaps
    assert first_after - ended <= PROBE_MAX + 0.5


async def test_a_first_call_never_made_holds_a_new_gate_only_a_first_probes_interval() -> None:
    clock = Clock()
    gate = new_health(clock)
    first = await gate.admit("lead")  # its lease found nothing: it is never answered
    assert first.probe
    waiting = asyncio.create_task(gate.admit("lead"))
    clock.now += 0.9
    await wake(gate)
    assert not waiting.done()
    clock.now += 0.1  # first_probe = 1 s, not the 30 s deadline of a probe while down
    await wake(gate)
    assert waiting.done() and (await waiting).probe


class FailingOnce(SQLiteQueue):
    """A real store whose first ``hasten`` fails, as a store may just as Calltouch is back."""

    failed = 0
    hastened: asyncio.Event

    async def hasten(self, now: float) -> int:
        if not self.failed:
            self.failed += 1
            raise sqlite3.OperationalError("database is locked")
        count = await super().hasten(now)
        self.hastened.set()
        return count


async def test_delayed_jobs_are_made_due_after_recovery_even_when_the_store_failed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await FailingOnce.open(f"sqlite:///{tmp_path / 'q.db'}")
    queue.hastened = asyncio.Event()
    try:
        [put] = await queue.put_many([Put("lead", b"{}", "rn-1")], time.time())
        [job] = await queue.lease("lead", 1, time.time(), 30)
        await queue.put_back([Back(job, time.time() + 3600)])  # backed off for an hour
        Hastener(queue, pause=0.01)()
        await asyncio.wait_for(queue.hastened.wait(), timeout=5)
        [due] = await queue.lease("lead", 1, time.time(), 30)  # due now, not in an hour
        assert due.id == put.status.id
        assert queue.failed == 1
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
            "cannot make delayed jobs due after recovery error=OperationalError: trying again"
            " in 0s"]
    finally:
        await queue.close()
