"""PostgreSQL stopped under a real gateway process mid-burst, then started again.

While the server is away intake answers 503 (never another 5xx), the relay sends nothing new
(it could neither count the call in the fleet's window nor ack it), and once the server is
back on its port and data directory the backlog drains: nothing acknowledged is lost. The
server is a cluster of the test's own, so stopping it disturbs no other test's database.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.postgres import Cluster, postgres_bin
from tests.support import (
    Process,
    eventually,
    lead,
    sandbox_requests,
    spawn_gateway,
    spawn_sandbox,
)

OUTAGE = 10.0  # seconds the server is away
BURST = 120  # leads acknowledged before the outage: some 24 s of drain at 5/s
LEASE_TIMEOUT = 20.0
TOKEN = "pg-outage-token-0123456789"
IN_FLIGHT = 0.5  # a send granted and leased before the stop reaches the sandbox within this


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    """A cluster of this test's own: it is stopped and started again, on the same port."""
    cluster = Cluster(postgres_bin())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class Trickle:
    """Posts new leads, one after another, from two clients; keeps every answer's moment."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.answers: list[tuple[float, int, str]] = []  # (sent at, status, requestNumber)
        self._next = 10_000
        self._stop = asyncio.Event()

    async def _client(self) -> None:
        while not self._stop.is_set():
            n, self._next = self._next, self._next + 1
            sent = time.monotonic()
            async with self.http.post(f"{self.url}/leads", json=lead(n)) as resp:
                await resp.read()
                self.answers.append((sent, resp.status, f"req-{n}"))
            await asyncio.sleep(0.05)  # a steady trickle of visitors, not a flood

    def start(self) -> asyncio.Future[tuple[None, None]]:
        self._task = asyncio.gather(self._client(), self._client())
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    def acked(self) -> set[str]:
        return {number for _, status, number in self.answers if status in (200, 202)}

    def accepted_since(self, moment: float) -> bool:
        return any(sent > moment and status == 202 for sent, status, _ in self.answers)


def numbers(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["form"]["requestNumber"] for r in rows if r["status"] == 200)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_postgresql_stopped_mid_burst_gives_503s_sends_nothing_and_loses_nothing(
    own_postgres: Cluster, http: aiohttp.ClientSession, processes: list[Process],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox, sandbox_url = spawn_sandbox("0.1,0.3")
    processes.append(sandbox)
    database = own_postgres.new_database()
    gateway, url, _ = await asyncio.to_thread(spawn_gateway, {
        "CTGW_SITE_ID": "18990",
        "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": own_postgres.url(database),
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_LEASE_TIMEOUT": f"{LEASE_TIMEOUT:.0f}s",
        "CTGW_API_TOKENS": TOKEN,
    })
    processes.append(gateway)
    acked: set[str] = set()
    gate = asyncio.Semaphore(16)

    async def post(n: int) -> None:
        async with gate, http.post(f"{url}/leads", json=lead(n)) as resp:
            assert resp.status == 202, await resp.text()
            acked.add(f"req-{n}")

    await asyncio.gather(*(post(n) for n in range(BURST)))

    async def draining() -> bool:
        return len(await sandbox_requests(http, sandbox_url)) >= 10

    await eventually(draining, timeout=20)
    trickle = Trickle(http, url)
    trickling = trickle.start()

    async def trickle_accepted() -> bool:
        return trickle.accepted_since(0.0)

    await eventually(trickle_accepted, timeout=10)
    stop_began = time.monotonic()  # the sandbox's "at" is on this host's monotonic clock
    await asyncio.to_thread(own_postgres.stop, "fast")
    stopped = time.monotonic()

    async def refused_while_away() -> bool:
        return any(sent > stopped and status == 503 for sent, status, _ in trickle.answers)

    await eventually(refused_while_away, timeout=OUTAGE / 2)
    async with http.get(f"{url}/api/v1/leads/x", headers={"Authorization": f"Bearer {TOKEN}"}) \
            as resp:  # a status cannot be read either: 503 too, not a 500
        assert (resp.status, (await resp.json())["error"]) == (503, "queue_unavailable")
    await asyncio.sleep(max(0.0, stop_began + OUTAGE - time.monotonic()))  # the outage itself
    start_began = time.monotonic()
    at_restart = await sandbox_requests(http, sandbox_url)
    await asyncio.to_thread(own_postgres.start)  # same port, same data directory
    started = time.monotonic()

    async def accepting_again() -> bool:
        return trickle.accepted_since(started)

    await eventually(accepting_again, timeout=30)
    await trickle.stop()
    await trickling
    acked |= trickle.acked()

    async def all_delivered() -> bool:
        return acked <= set(numbers(await sandbox_requests(http, sandbox_url)))

    await eventually(all_delivered, timeout=len(acked) / 5 + 3 * LEASE_TIMEOUT, interval=0.5)
    rows = await sandbox_requests(http, sandbox_url)
    counts = numbers(rows)
    statuses = Counter(status for _, status, _ in trickle.answers)
    refused = [sent for sent, status, _ in trickle.answers if status == 503]
    in_flight = [r for r in at_restart if stop_began <= r["at"] <= stop_began + IN_FLIGHT]
    while_away = [r for r in at_restart if stop_began + IN_FLIGHT < r["at"]]
    resumed = min(r["at"] for r in rows if r["at"] > start_began) - started
    with capsys.disabled():
        print(f"\n[pg-outage] acknowledged={len(acked)} delivered={len(counts)}"
              f" duplicates={sum(c - 1 for c in counts.values())} trickle={dict(statuses)}"
              f" stop took {stopped - stop_began:.2f}s, start {started - start_began:.2f}s;"
              f" sends in flight at the stop={len(in_flight)} sent while away={len(while_away)}"
              f" backlog at the stop={BURST + len(trickle.acked()) - len(at_restart)}"
              f" first send {resumed:.2f}s after the start")

    assert set(statuses) <= {202, 503}, statuses  # 503 while away, never another 5xx
    assert all(stop_began <= sent <= started + 5.0 for sent in refused), refused
    # Cut off from the database it sends nothing new: no grant, no lease, no ack possible.
    assert not while_away, [r["at"] - stop_began for r in while_away]
    assert len({r["form"]["requestNumber"] for r in at_restart}) < BURST  # work was left
    assert any(r["at"] > started for r in rows)  # the relay resumed
    assert acked <= set(counts)  # nothing acknowledged lost
    assert gateway.proc.poll() is None
