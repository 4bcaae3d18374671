"""One upstream health for a fleet: gates on one real PostgreSQL, each on its own pool and its
own listening connection, as gateways are; one fake clock for the fleet, as the database's is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.relay.fleet_health import FleetHealth, FleetHealthTicket, Rules
from tests.postgres import Cluster, postgres_bin
from tests.test_fleet_pace import forwarder, free_port

DOWN = Reply(503, b"", Retry("server_error", "HTTP 503"))
UP = Reply(200, b"{}", None)
RULES = Rules(threshold=3, first_probe=1.0, max_probe=8.0, probe_deadline=30.0)
# Long enough for a gate that could go to have gone: it reads the row every POLL.
POLL, SETTLE = 0.02, 0.3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Heard:
    """What one gateway's callbacks heard: the gauge's changes, the queue's hastenings."""

    def __init__(self) -> None:
        self.changes: list[bool] = []
        self.recovered = 0
        self._changed = asyncio.Event()

    def change(self, healthy: bool) -> None:
        self.changes.append(healthy)
        self._changed.set()

    def recover(self) -> None:
        self.recovered += 1

    async def turned(self, healthy: bool) -> None:
        """Until the gateway has last heard that the upstream is ``healthy``."""
        while not self.changes or self.changes[-1] != healthy:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 5)


OpenHealth = Callable[..., Awaitable[tuple[FleetHealth, Heard]]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def open_health(postgres_url: str, clock: Clock) -> AsyncIterator[OpenHealth]:
    """``await open_health(egress)``: a gate as a gateway of the fleet opens it, and its ears."""
    opened: list[FleetHealth] = []

    async def open_(egress: str = "default") -> tuple[FleetHealth, Heard]:
        heard = Heard()
        gate = await FleetHealth.open(postgres_url, egress, rules=RULES, poll=POLL, clock=clock,
                                      on_change=heard.change, on_recovered=heard.recover)
        opened.append(gate)
        return gate, heard

    yield open_
    for gate in opened:
        await gate.close()


async def take_down(gate: FleetHealth, failures: int = 3) -> None:
    for _ in range(failures):
        (await gate.admit("lead")).answered(DOWN)
    await gate.flush()


async def two_down(open_health: OpenHealth) -> tuple[tuple[FleetHealth, Heard], ...]:
    """Two gateways of one egress, the upstream down for both: seen through the second."""
    (a, heard_a), (b, heard_b) = await open_health(), await open_health()
    await take_down(b)
    await heard_a.turned(False)
    return (a, heard_a), (b, heard_b)


async def settled(tasks: Sequence[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks done within a moment: none should be while the gate holds them."""
    done, _ = await asyncio.wait(tasks, timeout=SETTLE)
    return done


async def first(tasks: Sequence[asyncio.Task[FleetHealthTicket]]) -> asyncio.Task[Any]:
    done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, done
    return done.pop()


async def test_failures_seen_through_one_gateway_put_the_other_down(
    open_health: OpenHealth, clock: Clock
) -> None:
    (a, heard_a), (b, heard_b) = await open_health(), await open_health()
    await take_down(a, 2)
    assert a.healthy and b.healthy
    await take_down(b, 1)  # the third in a row, for the fleet
    await heard_a.turned(False)  # A heard it from the database: it had no failure of its own
    assert heard_a.changes == heard_b.changes == [False]
    waiting = asyncio.create_task(a.admit("lead"))
    assert not await settled([waiting])  # A stops too: the first probe is a second away
    clock.now += 1.0
    assert (await asyncio.wait_for(waiting, 5)).probe


async def test_one_probe_at_a_time_across_the_fleet_at_a_growing_interval(
    open_health: OpenHealth, clock: Clock
) -> None:
    (a, _), (b, _) = await two_down(open_health)
    gates = {asyncio.create_task(gate.admit("lead")): gate for gate in (a, b)}
    for interval in (1.0, 2.0, 4.0, 8.0, 8.0):
        clock.now += interval - 0.01
        assert not await settled(list(gates))
        clock.now += 0.01
        task = await first(list(gates))
        holder = gates.pop(task)
        probe = task.result()
        assert probe.probe
        clock.now += 10.0  # past any interval: only the slot's holder keeps the other out
        assert not await settled(list(gates))
        probe.answered(DOWN)
        await holder.flush()
        gates[asyncio.create_task(holder.admit("lead"))] = holder
    for task in gates:
        task.cancel()


async def test_a_probe_that_succeeds_on_one_gateway_lets_every_gateway_through(
    open_health: OpenHealth, clock: Clock
) -> None:
    (a, heard_a), (b, heard_b) = await two_down(open_health)
    clock.now += 1.0
    probe = await asyncio.wait_for(b.admit("lead"), 5)
    assert probe.probe
    waiting = [asyncio.create_task(a.admit(kind)) for kind in ("lead", "deal.create", "lead")]
    assert not await settled(waiting)
    probe.answered(UP)
    tickets = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert not any(ticket.probe for ticket in tickets) and a.healthy
    # B's own answer reaches its state through the database too: A may hear it first.
    await heard_b.turned(True)
    assert b.healthy
    # Each gateway's gauge turns, and each hastens the queue once: on one shared queue the
    # second finds little to do, but no gateway then waits on another that may have died.
    assert heard_a.changes == heard_b.changes == [False, True]
    assert heard_a.recovered == heard_b.recovered == 1


async def test_a_dead_gateways_probe_frees_the_slot_after_the_deadline(
    open_health: OpenHealth, clock: Clock
) -> None:
    (dead, _), (alive, _) = await two_down(open_health)
    clock.now += 1.0
    assert (await dead.admit("lead")).probe  # and never answered: its gateway died there
    waiting = asyncio.create_task(alive.admit("lead"))
    clock.now += RULES.probe_deadline - 0.01
    assert not await settled([waiting])
    clock.now += 0.01
    assert (await asyncio.wait_for(waiting, 5)).probe


async def test_a_gateway_that_stops_gives_its_probe_slot_back_at_once(
    open_health: OpenHealth, clock: Clock
) -> None:
    (stopping, _), (other, _) = await two_down(open_health)
    clock.now += 1.0
    # Its call is cut short by the stop: no answer will come.
    assert (await stopping.admit("lead")).probe
    waiting = asyncio.create_task(other.admit("lead"))
    assert not await settled([waiting])
    await stopping.close()
    assert (await asyncio.wait_for(waiting, 5)).probe


async def test_two_egress_groups_on_one_database_keep_separate_health(
    open_health: OpenHealth,
) -> None:
    (east, heard_east), (west, heard_west) = await open_health("dc-east"), await open_health(
        "dc-west"
    )
    await take_down(east)
    assert not east.healthy and heard_east.changes == [False]
    ticket = await asyncio.wait_for(west.admit("lead"), 1)
    assert not ticket.probe and west.healthy and heard_west.changes == []
    ticket.answered(UP)
    await west.flush()
    assert not east.healthy  # a success of the other group is no news here


async def test_a_gateway_cut_off_from_the_database_keeps_its_answers_until_it_is_back(
    postgres: Cluster, postgres_url: str, clock: Clock
) -> None:
    port = free_port()  # nothing listens there yet: the database is out of reach
    url = postgres_url.replace(f":{postgres.port}/", f":{port}/")
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)  # min 0: no connection yet
    heard = Heard()
    gate = FleetHealth(url, pool, "default", rules=RULES, poll=POLL, retry=0.05, clock=clock,
                       on_change=heard.change)
    gate.start()
    try:
        for _ in range(3):  # up, as far as it knows: calls go, and their answers wait
            (await asyncio.wait_for(gate.admit("lead"), 1)).answered(DOWN)
        assert not await settled([asyncio.create_task(gate.flush())])
        async with forwarder(port, postgres.port):
            await heard.turned(False)  # they reached the database, in order
            clock.now += 1.0
            assert (await asyncio.wait_for(gate.admit("lead"), 5)).probe
            await gate.close()  # within: its connections hang up before the relay goes
    finally:
        await gate.close()


async def test_after_the_database_restarts_the_gateways_hear_each_other_again(
    clock: Clock,
) -> None:
    cluster = Cluster(postgres_bin())  # of this test's own: it is stopped and started again
    gates: list[FleetHealth] = []
    try:
        cluster.start()
        heard_a, heard_b = Heard(), Heard()
        for heard in (heard_a, heard_b):
            gates.append(await FleetHealth.open(cluster.url(), "default", rules=RULES, poll=POLL,
                                                retry=0.05, clock=clock, on_change=heard.change))
        a, b = gates
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.to_thread(cluster.start)  # same port, same data directory
        await take_down(a)  # its answers wait for the database, then land
        await heard_b.turned(False)  # B listens again: it heard
        clock.now += 1.0
        probe = await asyncio.wait_for(b.admit("lead"), 5)
        probe.answered(UP)
        await heard_a.turned(True)
    finally:
        for gate in gates:
            await gate.close()
        cluster.remove()
