"""A fleet of real gateway processes on one real PostgreSQL: one queue, one pace per egress.

Three gateways share a queue and the default egress; one is SIGKILLed mid-drain and the two
others take its leases once they expire. Two egress groups on one database keep a window each.
The sandboxes run as their own processes, so their arrival stamps are the kernel's.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from gateway.sandbox.server import max_in_window
from tests.support import (
    Process,
    eventually,
    lead,
    sandbox_requests,
    sandbox_stats,
    spawn_gateway,
    spawn_sandbox,
)

RATE = 5.0
LEASE_TIMEOUT = 20.0  # CTGW_LEASE_TIMEOUT's minimum: the kill's leases come back soonest
LEADS = 600
FIRST_PHASE = 450  # posted before the kill; the rest while it happens
KILL_AT_ARRIVALS = 250  # about fifty seconds of drain with all three alive
SANDBOX_LATENCY = 0.9  # the most the sandbox takes to answer


def fleet_env(queue_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    return {
        "CTGW_SITE_ID": "18990",
        "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": queue_url,
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_LEASE_TIMEOUT": f"{LEASE_TIMEOUT:.0f}s",
        **extra,
    }


async def spawn_fleet(
    envs: list[dict[str, str]], processes: list[Process]
) -> list[tuple[Process, str, str]]:
    """Start the gateways at once (their schema migrations race), each on its own thread."""
    started = await asyncio.gather(
        *(asyncio.to_thread(spawn_gateway, env) for env in envs), return_exceptions=True
    )
    for got in started:
        if not isinstance(got, BaseException):
            processes.append(got[0])
    for got in started:
        if isinstance(got, BaseException):
            raise got
    return [got for got in started if not isinstance(got, BaseException)]


def drain_rate(times: list[float]) -> float:
    """Calls per second over arrivals ``times``, counted so that a perfect pace gives the rate.

    Call k may leave a window after call k - rate: over ``5j + 1`` arrivals the span is ``j``
    windows at least, whatever the grouping. The count is cut to such a length."""
    ordered = sorted(times)
    n = 1 + (len(ordered) - 1) // int(RATE) * int(RATE)
    return (n - 1) / (ordered[n - 1] - ordered[0])


LEASED = "SELECT id, dedup_key, lease FROM jobs WHERE state = 'leased'"
SETTLED = "SELECT id, state, lease, done_at FROM jobs WHERE id = ANY($1::text[])"


async def unsettled(url: str) -> int:
    db = await asyncpg.connect(url)
    try:
        return int(await db.fetchval("SELECT count(*) FROM jobs WHERE state <> 'delivered'"))
    finally:
        await db.close()


def numbers(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["form"]["requestNumber"] for r in rows if r["status"] == 200)


class Poster:
    """Posts leads across the listeners like a load balancer: a dead listener's lead goes on
    to the next one. Acknowledged are the numbers answered 202, or 200 (a repeat the fleet
    already holds: the first post committed before its gateway died)."""

    def __init__(self, http: aiohttp.ClientSession, urls: list[str]) -> None:
        self.http = http
        self.urls = urls
        self.acked: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.rerouted = 0

    async def post(self, n: int) -> None:
        for hop in range(len(self.urls)):
            url = self.urls[(n + hop) % len(self.urls)]
            try:
                async with self.http.post(f"{url}/leads", json=lead(n)) as resp:
                    self.statuses[resp.status] += 1
                    if resp.status in (200, 202):
                        self.acked.add(f"req-{n}")
                    return
            except (aiohttp.ClientError, OSError):
                self.rerouted += 1  # the gateway died before or while it answered

    async def burst(self, leads: range, after: int | None = None,
                    reached: asyncio.Event | None = None) -> None:
        gate = asyncio.Semaphore(16)
        base = len(self.acked)

        async def one(n: int) -> None:
            async with gate:
                await self.post(n)
            if reached is not None and after is not None and len(self.acked) - base >= after:
                reached.set()

        await asyncio.gather(*(one(n) for n in leads))


@pytest.fixture
def slow_sandboxes(processes: list[Process]) -> Iterator[list[str]]:
    """Calltouch for the fleet, as two processes: the victim's and the survivors'. Their
    arrival stamps are on one clock (this host's), so merged they are what Calltouch sees;
    apart, they tell which gateway sent a call."""
    urls = []
    for _ in range(2):
        proc, url = spawn_sandbox(f"0.3,{SANDBOX_LATENCY}")
        processes.append(proc)
        urls.append(url)
    yield urls


async def all_rows(http: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, Any]]:
    rows = [row for url in urls for row in await sandbox_requests(http, url)]
    return sorted(rows, key=lambda row: row["at"])


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_three_gateways_one_killed_deliver_every_acknowledged_lead_at_one_pace(
    postgres_url: str, slow_sandboxes: list[str], http: aiohttp.ClientSession,
    processes: list[Process], capsys: pytest.CaptureFixture[str],
) -> None:
    survivors_sandbox, victims_sandbox = slow_sandboxes
    env = fleet_env(postgres_url, survivors_sandbox)  # CTGW_EGRESS left at its default
    victim_env = fleet_env(postgres_url, victims_sandbox)
    fleet = await spawn_fleet([env, victim_env, env], processes)
    victim = fleet[1][0]
    poster = Poster(http, [url for _, url, _ in fleet])
    started = time.monotonic()
    await poster.burst(range(FIRST_PHASE))
    assert len(poster.acked) == FIRST_PHASE, poster.statuses

    async def drained_a_while() -> bool:
        return len(await all_rows(http, slow_sandboxes)) >= KILL_AT_ARRIVALS

    await eventually(drained_a_while, timeout=KILL_AT_ARRIVALS / RATE * 2, interval=0.5)
    # The rest is posted while the kill happens: posts cut off by it go on to another gateway.
    kill_now = asyncio.Event()
    posting = asyncio.create_task(poster.burst(range(FIRST_PHASE, LEADS), 30, kill_now))
    await kill_now.wait()

    async def victim_just_sent() -> bool:
        # Sent within the last 0.1 s: the sandbox answers in 0.3 s at the soonest, so the
        # victim is still waiting for it (and has not acked it) when it dies.
        rows = await sandbox_requests(http, victims_sandbox)
        return bool(rows) and rows[-1]["at"] > time.monotonic() - 0.1

    await eventually(victim_just_sent, timeout=10, interval=0.01)
    victim.proc.send_signal(signal.SIGKILL)  # no chance to ack, release or stamp anything
    killed_at = time.monotonic()  # the sandboxes' "at" is on this host's monotonic clock
    killed_wall = time.time()  # the queue's clock
    before_kill = await all_rows(http, slow_sandboxes)
    db = await asyncpg.connect(postgres_url)
    try:
        leased_at_kill = {r["id"]: r for r in await db.fetch(LEASED)}
    finally:
        await db.close()
    await asyncio.to_thread(victim.proc.wait, 10)
    await posting
    assert len(poster.acked) == LEADS, poster.statuses
    assert set(poster.statuses) <= {200, 202}, poster.statuses

    async def all_delivered() -> bool:
        return poster.acked <= set(numbers(await all_rows(http, slow_sandboxes)))

    await eventually(all_delivered, timeout=LEADS / RATE + 3 * LEASE_TIMEOUT, interval=1.0)

    async def all_settled() -> bool:
        # An expired lease is due at its expiry, after the jobs queued before it: the victim's
        # are sent again near the end, and may be after every number has reached Calltouch.
        return await unsettled(postgres_url) == 0

    await eventually(all_settled, timeout=2 * LEASE_TIMEOUT, interval=0.5)
    elapsed = time.monotonic() - started
    rows = await all_rows(http, slow_sandboxes)
    by_victim = await sandbox_requests(http, victims_sandbox)
    stats = [await sandbox_stats(http, url) for url in slow_sandboxes]
    counts = numbers(rows)
    twice = {number for number, count in counts.items() if count > 1}
    duplicates = sum(counts[number] - 1 for number in twice)
    alive = [r["at"] for r in before_kill if r["at"] <= killed_at]
    alive_rate = drain_rate(alive)
    cycle = [b - a for a, b in zip(alive, alive[int(RATE):], strict=False)]
    db = await asyncpg.connect(postgres_url)
    try:
        settled = {r["id"]: r for r in await db.fetch(SETTLED, list(leased_at_kill))}
    finally:
        await db.close()
    # The victim's leases were leased again (a higher lease number) by a survivor; the
    # survivors' own leases at the kill were settled under the number they had.
    orphans = {job for job, row in settled.items() if row["lease"] > leased_at_kill[job]["lease"]}
    orphan_numbers = {leased_at_kill[job]["dedup_key"] for job in orphans}
    in_flight = {r["form"]["requestNumber"] for r in by_victim
                 if r["at"] > killed_at - SANDBOX_LATENCY - 0.5}
    with capsys.disabled():
        print(f"\n[fleet] acknowledged={len(poster.acked)} delivered={len(counts)}"
              f" duplicates={duplicates} (victim's sends in flight at the kill:"
              f" {len(in_flight & set(counts))}) leased_at_kill={len(leased_at_kill)}"
              f" taken_over={len(orphans)} rerouted_posts={poster.rerouted}"
              f" drain_with_three={alive_rate:.3f}/s ({alive_rate / RATE:.3f} x CTGW_RATE,"
              f" over {len(alive)} calls; call k after call k-5: mean"
              f" {sum(cycle) / len(cycle):.3f}s, min {min(cycle):.3f}s)"
              f" max_in_window={max_in_window([r['at'] for r in rows], 1.0)}"
              f" by_status={[s['by_status'] for s in stats]} elapsed={elapsed:.1f}s"
              f" victim's last send {killed_at - by_victim[-1]['at']:.3f}s before the kill")

    assert all(s["by_status"] == {"200": s["received"]} for s in stats), stats  # no 429
    assert max_in_window([r["at"] for r in rows], 1.0) <= RATE  # one Calltouch: merged
    assert all(r["at"] <= killed_at + 0.05 for r in by_victim)  # it was dead
    # A repeat is a send the victim had in flight: it reached Calltouch at most an answer's
    # time before the kill, and went again, from a survivor, once its lease had expired.
    victims = {r["form"]["requestNumber"] for r in by_victim}
    arrivals: dict[str, list[float]] = {}
    for row in rows:
        arrivals.setdefault(row["form"]["requestNumber"], []).append(row["at"])
    assert twice, "the kill hit a send in flight: it must go again"
    for number in twice:
        first, *again = arrivals[number]
        assert number in victims and number in orphan_numbers, number
        assert killed_at - SANDBOX_LATENCY - 0.5 <= first <= killed_at + 0.05, (number, first)
        assert min(again) >= killed_at + LEASE_TIMEOUT - SANDBOX_LATENCY - 0.5, (number, again)
    assert duplicates <= 16  # the relay's concurrency: no more can be in flight
    for job, row in settled.items():
        assert row["state"] == "delivered", row
        if job in orphans:  # taken by a survivor once its lease had expired, not before
            assert row["done_at"] >= killed_wall + LEASE_TIMEOUT - SANDBOX_LATENCY - 0.5, row
        else:
            assert row["done_at"] <= killed_wall + SANDBOX_LATENCY + 2.0, row
    survivors = [proc for proc, _, _ in fleet if proc is not victim]
    assert all(proc.proc.poll() is None for proc in survivors)
    # Three gateways, PostgreSQL and two sandboxes share two cores with the test. A grant is
    # taken ahead of its moment and a stamp is its write's own moment, so the pace's trips to
    # the database cost the window nothing; the lease's still do.
    assert alive_rate >= 0.95 * RATE, alive_rate


@pytest.mark.timeout(120)
async def test_two_egress_groups_on_one_database_each_drain_at_the_full_rate(
    postgres_url: str, two_sandboxes: list[str], http: aiohttp.ClientSession,
    processes: list[Process], capsys: pytest.CaptureFixture[str],
) -> None:
    envs = [fleet_env(postgres_url, url, CTGW_EGRESS=egress)
            for egress, url in zip("ab", two_sandboxes, strict=True)]
    fleet = await spawn_fleet(envs, processes)
    # The two gateways share one queue, so either may send any lead: what each sandbox gets
    # is a share of the 62, not the half posted to its gateway. Together they must drain them
    # in about six windows (twelve if the groups shared one window).
    per_group = 31
    acked: set[str] = set()
    for (_, url, _), offset in zip(fleet, (0, 1000), strict=True):
        poster = Poster(http, [url])
        await poster.burst(range(offset, offset + per_group))
        assert len(poster.acked) == per_group, poster.statuses
        acked |= poster.acked

    async def all_delivered() -> bool:
        got: set[str] = set()
        for url in two_sandboxes:
            got |= set(numbers(await sandbox_requests(http, url)))
        return acked <= got

    await eventually(all_delivered, timeout=60, interval=0.2)
    times = [[r["at"] for r in await sandbox_requests(http, url)] for url in two_sandboxes]
    rates = [drain_rate(group) for group in times]
    with capsys.disabled():
        print(f"\n[egress] a={rates[0]:.3f}/s b={rates[1]:.3f}/s"
              f" calls={[len(t) for t in times]}"
              f" spans={[round(max(t) - min(t), 2) for t in times]}")
    for url, group, rate in zip(two_sandboxes, times, rates, strict=True):
        stats = await sandbox_stats(http, url)
        assert stats["by_status"] == {"200": len(group)}, stats
        assert stats["max_in_window"] <= RATE, stats
        assert len(group) >= 2 * RATE + 1, [len(t) for t in times]  # two windows at least
        # Each its own window: near the full rate, where one shared window would halve it.
        # The fleet's 0.95 bound is the three-gateway drain's; over six windows, on a loaded
        # CI machine, this measured 0.94 with both groups alike.
        assert rate >= 0.9 * RATE, rates
    # At once: the two drains overlap, neither waited for the other's, and together they
    # went faster than one window allows.
    assert max(min(t) for t in times) < min(max(t) for t in times), times
    assert max_in_window(sorted(times[0] + times[1]), 1.0) > RATE, times
