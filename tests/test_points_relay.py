"""API points through the relay: the real kinds, a real SQLite queue and the sandbox on
loopback, the points ledger on a fake clock (the real one moved by whole hours).

An hourly budget of 50, deals at 5 points a call: bulk deals stop at the reserve (45), leads
go on with it, the rest goes in the next hour; a refusal for points from the sandbox holds the
site, the probe resumes it; no job that waited spent an attempt.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from gateway.calltouch.client import CalltouchClient
from gateway.config import Settings
from gateway.intake.listener import bound_address
from gateway.kinds import deal_fields, lead
from gateway.kinds.deal import KIND_CREATE, DealCreateKind
from gateway.kinds.lead import LeadKind
from gateway.ops.metrics import Metrics
from gateway.queue import Put, State
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.pacing import Pacer
from gateway.relay.points import REFUSED, Budget, Points
from gateway.relay.relay import Relay
from gateway.sandbox.run import SandboxThread
from gateway.sandbox.server import create_sandbox

from .support import Gateway, eventually, post_lead, sandbox_config, sandbox_requests
from .support import lead as support_lead

MOSCOW = ZoneInfo("Europe/Moscow")
SITE, SITE_ID = "shop", "18990"
CREATE = "client-order/create"


@dataclass
class FakeClock:
    """Real time, moved forward by whole steps: durations stay real, hours can pass at once."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, at: datetime) -> None:
        self.offset = at.timestamp() - time.time()


@dataclass
class Rig:
    queue: SQLiteQueue
    relay: Relay
    clock: FakeClock
    http: aiohttp.ClientSession
    sandbox: str
    refusals: list[bool] = field(default_factory=list)


def _end_of_hour() -> datetime:
    now = datetime.now(MOSCOW).replace(minute=0, second=0, microsecond=0)
    return now + timedelta(minutes=59, seconds=30)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    runner = web.AppRunner(create_sandbox())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sandbox = bound_address(runner)
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    clock = FakeClock()
    clock.set(_end_of_hour())  # half a minute before the hour: its whole bulk share is due
    refusals: list[bool] = []
    points = Points({SITE: Budget(per_hour=50)}, {CREATE: 5}, probe_every=1.0, clock=clock,
                    on_refused=lambda site, refused: refusals.append(refused))
    try:
        async with aiohttp.ClientSession() as http:
            client = CalltouchClient(http, sandbox, timeout=5.0)
            senders = [LeadKind({SITE: SITE_ID}),
                       DealCreateKind({SITE: SITE_ID}, {SITE: "token"}, 0.0)]
            relay = Relay(queue, client, senders, [Pacer(5.0)], Metrics(), sites=[SITE],
                          points=points)
            yield Rig(queue, relay, clock, http, sandbox, refusals)
            await relay.stop(grace=1.0)
    finally:
        await queue.close()
        await runner.cleanup()


def lead_put(n: int) -> Put:
    data = {"phoneNumber": "+7 920 555-00-55", "requestNumber": f"lead-{n}"}
    return lead.to_put(lead.validate(data, "api", MOSCOW), MOSCOW, SITE)


def deal_put(n: int) -> Put:
    data = {"orderNumber": f"order-{n}", "status": "new", "orderDate": "01-12-2026 10:00:00",
            "phones": ["+7 920 555-00-55"]}
    return Put(KIND_CREATE, deal_fields.payload(deal_fields.validate(data, MOSCOW)),
               f"order-{n}", SITE)


async def calls(rig: Rig, method: str) -> list[dict[str, object]]:
    return [row for row in await sandbox_requests(rig.http, rig.sandbox)
            if row["method"] == method and row["status"] == 200]


async def items(rig: Rig, method: str) -> int:
    return sum(int(str(row["items"])) for row in await calls(rig, method))


async def states(rig: Rig) -> dict[State, int]:
    return (await rig.queue.stats()).counts


async def test_bulk_stops_at_the_reserve_leads_go_on_the_rest_next_hour(rig: Rig) -> None:
    await rig.queue.put_many([deal_put(n) for n in range(1500)], time.time())
    rig.relay.start()

    async def reserve_reached() -> bool:  # 9 calls of 100 at 5 points: 45 of the hour's 50
        return len(await calls(rig, CREATE)) == 9
    await eventually(reserve_reached, timeout=20)
    await rig.queue.put_many([lead_put(n) for n in range(6)], time.time())

    async def reserve_spent() -> bool:  # five leads at 1 point, answered; the sixth waits
        delivered = (await states(rig))[State.DELIVERED]
        return len(await calls(rig, "register")) == 5 and delivered == 900 + 5
    await eventually(reserve_spent, timeout=10)
    counts = await states(rig)
    assert counts[State.READY] == 600 + 1, counts  # waiting for points, not leased, not delayed
    assert counts[State.DELAYED] == counts[State.LEASED] == 0
    assert len(await calls(rig, CREATE)) == 9

    rig.clock.set(_end_of_hour() + timedelta(hours=1))  # the next hour, at its end

    async def all_sent() -> bool:
        return (await states(rig))[State.DELIVERED] == 1506
    await eventually(all_sent, timeout=20)
    assert await items(rig, CREATE) == 1500
    assert len(await calls(rig, "register")) == 6
    assert await attempts_of_all(rig) == {1}


async def test_a_refusal_for_points_holds_the_site_until_a_probe_passes(rig: Rig) -> None:
    await sandbox_config(rig.http, rig.sandbox, fault="points")
    await rig.queue.put_many([lead_put(n) for n in range(10)], time.time())
    rig.relay.start()

    async def refused_twice() -> bool:  # the first call, then the first probe a second later
        rows = await sandbox_requests(rig.http, rig.sandbox)
        return len(rows) >= 2
    await eventually(refused_twice, timeout=10)
    assert rig.refusals == [True]
    rows = await sandbox_requests(rig.http, rig.sandbox)
    assert {row["status"] for row in rows} == {403}
    stamps = [float(str(row["at"])) for row in rows]
    spacing = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(spacing) >= 0.9  # one probe a second, not the pacer's five
    await sandbox_config(rig.http, rig.sandbox, fault=None)

    async def delivered() -> bool:
        return (await states(rig))[State.DELIVERED] == 10
    await eventually(delivered, timeout=15)
    assert rig.refusals == [True, False]
    assert await attempts_of_all(rig) == {1}  # the refused calls counted no attempt


async def attempts_of_all(rig: Rig) -> set[int]:
    """The attempts every job took (a delivered job counts its delivering one): read from the
    file on a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(rig.queue.path)) as conn:
        rows = conn.execute("SELECT DISTINCT attempts FROM jobs").fetchall()
    return {int(n) for (n,) in rows}


async def test_a_gateway_shows_a_refusal_for_points_and_its_end(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    sandbox: SandboxThread, http: aiohttp.ClientSession,
) -> None:
    """The whole gateway on its settings: the refusal is recognised by the default pattern,
    ``ctgw_points_refused`` says so while it lasts, and the leads go once it ends."""
    points = replace(settings.points, per_hour=1000, probe_every=1.0)
    gw = await start_gateway(replace(settings, points=points))
    await sandbox_config(http, sandbox.url, fault="points")
    for n in range(3):
        status, _ = await post_lead(http, gw.url, support_lead(n))
        assert status == 202
    refused = {"site": "default"}

    async def shown() -> bool:
        return gw.metrics.registry.get_sample_value("ctgw_points_refused", refused) == 1
    await eventually(shown, timeout=30)
    assert gw.metrics.registry.get_sample_value(
        "ctgw_upstream_requests_total", {"method": "register", "outcome": REFUSED}) >= 1
    await sandbox_config(http, sandbox.url, fault=None)

    async def delivered() -> bool:  # settled by the gateway, not only logged by the sandbox
        return gw.metrics.registry.get_sample_value("ctgw_leads_delivered_total",
                                                   {"site": "default"}) == 3
    await eventually(delivered, timeout=30)
    sample = gw.metrics.registry.get_sample_value
    assert sample("ctgw_points_refused", refused) == 0
    spent = sample("ctgw_points_spent_total", refused)
    assert spent == 3, spent
    remaining = sample("ctgw_points_remaining", {"site": "default", "window": "hour"})
    assert remaining in (997, 1000), remaining  # 1000: the hour turned since
