"""The back office under load: 2,000 deals and 1,200 late, out-of-order updates go up in full
batches, in order, within Calltouch's limit, while leads posted meanwhile keep their seconds.

The gateway and the sandbox run as processes of their own, so that neither's clock or CPU is
the test's; the sandbox dates each call by the kernel's stamp of its arrival.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    Process,
    eventually,
    lead,
    sandbox_config,
    sandbox_requests,
    sandbox_stats,
    spawn_gateway,
    spawn_sandbox,
)
from tests.test_backoffice import (
    ACCESS_TOKEN,
    AUTH,
    CREATE,
    UPDATE,
    assert_clean,
    calls,
    deal,
    gateway_env,
    numbers_of,
    post_many,
    sandbox_view,
    settled,
)

DEALS, UPDATED, LEADS = 2000, 600, 100
LEAD_EVERY = 0.25  # s: 100 leads over the 25 s the deals take, at about 5 calls a second
NEWER = {"status": "won", "statusDate": "05-03-2024 12:00:00"}
OLDER = {"status": "in_work", "statusDate": "03-03-2024 12:00:00"}  # posted after NEWER


@pytest.fixture
def slow_sandbox(processes: list[Process]) -> Iterator[str]:
    proc, url = spawn_sandbox("0.0,0.0")
    processes.append(proc)
    yield url


async def post_leads(http: aiohttp.ClientSession, url: str, answered: dict[str, float]) -> None:
    """A lead every LEAD_EVERY s, as visitors send them; when each one's 202 came."""
    loop = asyncio.get_running_loop()
    begun = loop.time()
    for n in range(LEADS):
        # The pace of the load, not a wait for an event: visitors do not come all at once.
        await asyncio.sleep(max(0.0, begun + n * LEAD_EVERY - loop.time()))
        async with http.post(f"{url}/api/v1/leads", json=lead(n), headers=AUTH) as resp:
            assert resp.status == 202, await resp.text()
            answered[f"req-{n}"] = time.monotonic()  # the sandbox's "at" is this clock too


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


async def test_2000_deals_and_late_out_of_order_updates_go_in_full_batches_in_order(
    tmp_path: Path, slow_sandbox: str, http: aiohttp.ClientSession,
    processes: list[Process], capsys: pytest.CaptureFixture[str],
) -> None:
    box = slow_sandbox
    await sandbox_config(http, box, latency=[0.3, 0.9], access_token=ACCESS_TOKEN)
    gw, url, ops = spawn_gateway(gateway_env(f"sqlite:///{tmp_path / 'queue.db'}", box,
                                             CTGW_ACCESS_TOKEN=ACCESS_TOKEN))
    processes.append(gw)
    numbers = [f"crm-{i:05d}" for i in range(DEALS)]
    # The CRM moves on the deals it sent first, once Calltouch has them: an update posted
    # while its create is queued goes with the create, and this test is of updates that
    # follow. (Updates spread over all 20 create batches would come free 30 at a time, as
    # each batch is answered, and go as calls of 30: the linger does not wait for the next.)
    updated = numbers[:UPDATED]
    answered: dict[str, float] = {}
    leads = asyncio.create_task(post_leads(http, url, answered))
    began = time.monotonic()

    tally = await post_many(http, url, "/api/v1/deals", [deal(n) for n in numbers])
    assert (tally["accepted"], tally["rejected"]) == (DEALS, 0), tally

    async def first_created() -> bool:
        sent = calls(await sandbox_requests(http, box), CREATE)
        return set(updated) <= {n for row in sent for n in numbers_of(row)}

    await eventually(first_created, timeout=30, interval=0.2)
    newer = await post_many(http, url, "/api/v1/deals", [{"orderNumber": n, **NEWER}
                                                         for n in updated])
    older = await post_many(http, url, "/api/v1/deals", [{"orderNumber": n, **OLDER}
                                                         for n in updated])
    assert newer["rejected"] == older["rejected"] == 0 and older["accepted"] == 0, older
    posted = time.monotonic() - began
    await until_applied(http, box, numbers, updated, timeout=90)
    await leads
    await eventually(lambda: settled(http, ops), timeout=30, interval=0.5)
    took = time.monotonic() - began

    rows = await sandbox_requests(http, box)
    stats = await sandbox_stats(http, box)
    creates, updates = calls(rows, CREATE), calls(rows, UPDATE)
    deal_calls = len(creates) + len(updates)
    ideal = math.ceil(DEALS / 100) + math.ceil(UPDATED / 100)
    latencies = lead_latencies(rows, answered)
    with capsys.disabled():
        print(f"\n[deals] {DEALS} deals + {2 * UPDATED} updates posted in {posted:.1f}s,"
              f" settled in {took:.1f}s: calls create={len(creates)} update={len(updates)}"
              f" total={deal_calls} (ideal {ideal}), items per update call"
              f" {[r['items'] for r in updates]}; max in 1 s={stats['max_in_window']},"
              f" by status={stats['by_status']}")
        print(f"[leads] {len(latencies)} leads, 202 to sandbox:"
              f" p50={percentile(latencies, 50):.2f}s p99={percentile(latencies, 99):.2f}s"
              f" max={max(latencies):.2f}s (mean {statistics.fmean(latencies):.2f}s)")

    assert stats["by_status"] == {"200": len(rows)}, stats  # no 429, no refusal
    assert stats["max_in_window"] <= 5, stats
    assert all(r["items"] <= 100 for r in rows)
    assert abs(deal_calls - ideal) <= 0.1 * ideal, (len(creates), len(updates))
    assert_creates_first(creates, updates, numbers, updated)
    held = await sandbox_view(http, box, "deals")
    assert all(held[n]["updates"] >= 1 for n in updated)  # each followed its create
    assert len(latencies) == LEADS
    assert max(latencies) <= 1.5, sorted(latencies)[-5:]
    await assert_clean(http, gw.lines, [ops])


async def until_applied(
    http: aiohttp.ClientSession, box: str, numbers: list[str], updated: list[str], timeout: float
) -> None:
    """Until the sandbox holds each of the deals ``numbers``, ``updated`` at NEWER's status."""
    expected = {n: NEWER["status"] if n in set(updated) else "new" for n in numbers}

    async def as_posted() -> bool:
        held = await sandbox_view(http, box, "deals")
        return {n: d.get("status") for n, d in held.items()} == expected

    await eventually(as_posted, timeout=timeout, interval=1.0)


def lead_latencies(rows: list[dict[str, Any]], answered: dict[str, float]) -> list[float]:
    """Seconds from each lead's 202 to its arrival at the sandbox (first arrival, 200)."""
    arrived: dict[str, float] = {}
    for row in calls(rows, "register"):
        number = row["form"].get("requestNumber", "")
        if row["status"] == 200 and number not in arrived:
            arrived[number] = row["at"]
    assert sorted(arrived) == sorted(answered)  # each lead once
    return [arrived[n] - answered[n] for n in answered]


def assert_creates_first(
    creates: list[dict[str, Any]], updates: list[dict[str, Any]], numbers: list[str],
    updated: list[str],
) -> None:
    """Each of the deals ``numbers`` created once, every update after its create and of one
    of ``updated`` (an update posted while its create was queued went with the create), and
    the older status never sent."""
    created: dict[str, float] = {}
    for row in creates:
        for number in numbers_of(row):
            assert number not in created, f"{number} created twice"
            created[number] = row["at"]
    assert sorted(created) == sorted(numbers)
    sent: dict[str, list[float]] = {}
    for row in updates:
        for number in numbers_of(row):
            sent.setdefault(number, []).append(row["at"])
    assert set(sent) <= set(updated)
    early = [n for n, ats in sent.items() if min(ats) <= created[n]]
    assert early == []
    for row in [*creates, *updates]:  # the older status never went up: folded into the newer
        assert {o["status"] for o in row["json"]["orders"] if "status" in o} <= {"new", "won"}
