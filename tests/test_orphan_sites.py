"""Jobs of a site this gateway does not serve (removed from its sites, or pending ``default``
jobs after a move to a sites file, or a site a fleet's rolling deploy has not brought here
yet): a real relay, real SQLite, the sandbox. They are left in the store, untouched, for a
gateway that serves their site: no pace slot is spent on them and no call is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.calltouch.client import CalltouchClient
from gateway.kinds import deal_fields, lead
from gateway.kinds.deal import KIND_CREATE, DealCreateKind
from gateway.kinds.lead import LeadKind
from gateway.ops.metrics import Metrics
from gateway.queue import Put, State
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.pacing import Pacer, Slot
from gateway.relay.relay import Relay
from gateway.sandbox.run import SandboxThread
from tests.support import eventually, sandbox_requests

MOSCOW = ZoneInfo("Europe/Moscow")
SITE_IDS = {"a": "101", "b": "102"}
GONE = "gone"


class CountingPacer(Pacer):
    """A pacer that counts the slots it grants, per kind: each is a call's place in the pace."""

    def __init__(self) -> None:
        super().__init__(50.0)
        self.grants: Counter[str] = Counter()

    async def admit(self, kind: str) -> Slot:
        self.grants[kind] += 1
        return await super().admit(kind)


@dataclass
class Rig:
    queue: SQLiteQueue
    pacer: CountingPacer
    http: aiohttp.ClientSession
    sandbox: str

    def relay(self, sites: Sequence[str], tokens: Sequence[str]) -> Relay:
        """A relay serving ``sites``, with the back-office token of ``tokens`` only."""
        ids = {site: SITE_IDS[site] for site in sites}
        senders = [LeadKind(ids),
                   DealCreateKind(ids, {site: "token" for site in tokens}, 0.0)]
        client = CalltouchClient(self.http, self.sandbox, timeout=5.0)
        return Relay(self.queue, client, senders, [self.pacer], Metrics(), sites=sites,
                     lease_timeout=0.5)


@pytest.fixture
async def rig(tmp_path: Path, sandbox: SandboxThread) -> AsyncIterator[Rig]:
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(queue, CountingPacer(), http, sandbox.url)
    finally:
        await queue.close()


def lead_put(site: str, n: int) -> Put:
    data = {"phoneNumber": "+7 920 555-00-55", "requestNumber": f"{site}-lead-{n}"}
    return lead.to_put(lead.validate(data, "api", MOSCOW), MOSCOW, site)


def deal_put(site: str, n: int) -> Put:
    data = {"orderNumber": f"{site}-order-{n}", "status": "new",
            "orderDate": "01-12-2026 10:00:00", "phones": ["+7 920 555-00-55"]}
    return Put(KIND_CREATE, deal_fields.payload(deal_fields.validate(data, MOSCOW)),
               f"{site}-order-{n}", site)


async def states(rig: Rig, ids: Sequence[str]) -> list[tuple[State, int]]:
    found = [await rig.queue.status(job_id) for job_id in ids]
    return [(s.state, s.attempts) for s in found if s is not None]


async def run_until_delivered(rig: Rig, relay: Relay, ids: Sequence[str]) -> None:
    """Start ``relay``, wait for ``ids`` to be delivered, then give it a few lease timeouts
    more, in which a relay that spun on, or leased, another site's jobs would show it."""
    async def delivered() -> bool:
        return all(state == State.DELIVERED for state, _ in await states(rig, ids))

    relay.start()
    try:
        await eventually(delivered, timeout=15)
        await asyncio.sleep(2.0)
    finally:
        await relay.stop(grace=1.0)


@pytest.mark.parametrize("sites", [["a"], ["a", "b"]], ids=["one-site", "two-sites"])
async def test_jobs_of_a_site_not_served_here_wait_untouched(
    rig: Rig, sites: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The other site's jobs are the oldest: a relay leasing any site's would take them first.
    old = time.time() - 10 * 86400.0
    unserved = [r.status.id for r in await rig.queue.put_many(
        [lead_put(GONE, n) for n in range(3)] + [deal_put(GONE, 0)], old)]
    served = [r.status.id for r in await rig.queue.put_many(
        [lead_put(site, n) for site in sites for n in range(2)]
        + [deal_put(site, 0) for site in sites], time.time())]

    await run_until_delivered(rig, rig.relay(sites, sites), served)

    rows = await sandbox_requests(rig.http, rig.sandbox)
    assert {row["site"] for row in rows} <= {SITE_IDS[site] for site in sites}
    numbers = sorted(str(row["form"]["requestNumber"]) for row in rows if row["form"])
    assert numbers == sorted(f"{site}-lead-{n}" for site in sites for n in range(2))
    # Every slot the pacer granted carried a call: none was taken for the other site's jobs.
    assert sum(rig.pacer.grants.values()) == len(rows), (rig.pacer.grants, len(rows))
    assert await states(rig, unserved) == [(State.READY, 0)] * 4
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "not configured here" in r.getMessage()]
    assert warnings == [f"site={GONE} is not configured here: its 4 pending jobs wait for a"
                        " gateway that serves it"]


async def test_a_call_its_sender_cannot_build_waits_with_a_backoff(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Site b has lost its back-office token: its deals cannot be sent, and wait (no attempt
    counted) instead of being leased again at every lease timeout; site a's go on."""
    [stuck, ok] = [r.status.id for r in await rig.queue.put_many(
        [deal_put("b", 0), deal_put("a", 0)], time.time())]

    await run_until_delivered(rig, rig.relay(["a", "b"], ["a"]), [ok])

    assert await states(rig, [stuck]) == [(State.DELAYED, 0)]
    assert rig.pacer.grants[KIND_CREATE] == 2  # a's call, and b's one try (backoff: 3 s)
    assert [row["items"] for row in await sandbox_requests(rig.http, rig.sandbox)] == [1]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"relay cannot build a call kind={KIND_CREATE} site=b jobs=1"
                      " error=KeyError: they wait 3s"]


async def test_a_site_that_cannot_build_backs_off_longer_while_another_site_sends(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Site a's deal sent between site b's failed builds does not reset b's backoff."""
    [stuck] = [r.status.id for r in await rig.queue.put_many([deal_put("b", 0)], time.time())]

    def waits() -> list[str]:
        return [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records
                if r.levelno == logging.ERROR and "cannot build" in r.getMessage()]

    async def failed(times: int) -> bool:
        return len(waits()) >= times

    relay = rig.relay(["a", "b"], ["a"])
    relay.start()
    try:
        await eventually(lambda: failed(1), timeout=5)
        [ok] = [r.status.id for r in await rig.queue.put_many([deal_put("a", 0)], time.time())]
        await eventually(lambda: failed(2), timeout=10)
    finally:
        await relay.stop(grace=1.0)

    assert [state for state, _ in await states(rig, [ok])] == [State.DELIVERED]
    assert await states(rig, [stuck]) == [(State.DELAYED, 0)]
    assert waits()[:2] == ["3s", "6s"]
