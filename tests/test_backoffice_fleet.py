"""Two gateway processes on one real PostgreSQL take a CRM's deals, creates and updates of the
same deals split between them: each deal is created once, no update goes before its create, the
newest state wins, and the two keep one pace at Calltouch.

The CRM posts its creates to both gateways at once, and a retried upload of some of them to the
other gateway meanwhile; then a newer status of each deal to the other gateway than its create's,
then an older one, late, to the first. Posts of one deal through two gateways meet in the
queue's chain of that deal, not in either gateway.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import pytest

from tests.support import (
    Process,
    eventually,
    sandbox_config,
    sandbox_requests,
    sandbox_stats,
    spawn_sandbox,
)
from tests.test_backoffice import (
    ACCESS_TOKEN,
    CREATE,
    UPDATE,
    assert_clean,
    calls,
    deal,
    gateway_env,
    post_many,
    settled,
)
from tests.test_backoffice_slow import NEWER, OLDER, assert_creates_first, until_applied
from tests.test_fleet import spawn_fleet

DEALS, RETRIED, UPDATED = 1000, 200, 600
RATE = 5


async def upload(
    http: aiohttp.ClientSession, urls: list[str], numbers: list[str], status: dict[str, str],
    gateway_of: int,
) -> dict[str, int]:
    """Deal ``numbers[i]`` with ``status`` (its whole create when empty) to gateway
    ``(i + gateway_of) % 2``, the two uploads at once, 100 lines a body as a CRM sends them;
    their tallies added up."""
    def body(n: str) -> dict[str, object]:
        return {"orderNumber": n, **status} if status else deal(n)

    async def to(side: int) -> list[dict[str, int]]:
        mine = [n for i, n in enumerate(numbers) if (i + gateway_of) % 2 == side]
        return [await post_many(http, urls[side], "/api/v1/deals",
                                [body(n) for n in mine[start:start + 100]])
                for start in range(0, len(mine), 100)]

    tallies = [t for side in await asyncio.gather(to(0), to(1)) for t in side]
    return {name: sum(t[name] for t in tallies) for name in ("accepted", "merged", "rejected")}


async def test_two_gateways_on_one_postgresql_create_each_deal_once_and_update_it_in_order(
    postgres_url: str, http: aiohttp.ClientSession, processes: list[Process],
    capsys: pytest.CaptureFixture[str],
) -> None:
    box, calltouch = spawn_sandbox("0.05,0.3")
    processes.append(box)
    await sandbox_config(http, calltouch, access_token=ACCESS_TOKEN)
    env = gateway_env(postgres_url, calltouch, CTGW_ACCESS_TOKEN=ACCESS_TOKEN)
    fleet = await spawn_fleet([env, env], processes)  # one egress: one pace for the two
    urls = [url for _, url, _ in fleet]
    numbers = [f"fleet-{i:04d}" for i in range(DEALS)]
    updated = numbers[:UPDATED]
    began = time.monotonic()

    # The creates, and a retry of the first RETRIED of them on the other gateway, at once.
    creates, retried = await asyncio.gather(
        upload(http, urls, numbers, {}, 0), upload(http, urls, numbers[:RETRIED], {}, 1))
    assert creates["accepted"] + retried["accepted"] == DEALS, (creates, retried)
    assert creates["merged"] + retried["merged"] == RETRIED, (creates, retried)
    # Creates still unsent then: their updates go with them (merged), the others after them.
    unsent = DEALS - sum(r["items"] for r in calls(await sandbox_requests(http, calltouch), CREATE))
    newer = await upload(http, urls, updated, NEWER, 1)
    older = await upload(http, urls, updated, OLDER, 0)
    assert newer["accepted"] + newer["merged"] == UPDATED and newer["rejected"] == 0, newer
    assert older == {"accepted": 0, "merged": UPDATED, "rejected": 0}, older
    posted = time.monotonic() - began
    await until_applied(http, calltouch, numbers, updated, timeout=60)
    for _, _, ops in fleet:
        await eventually(lambda ops=ops: settled(http, ops), timeout=20, interval=0.5)
    took = time.monotonic() - began

    rows = await sandbox_requests(http, calltouch)
    stats = await sandbox_stats(http, calltouch)
    create_calls, update_calls = calls(rows, CREATE), calls(rows, UPDATE)
    ideal = math.ceil(DEALS / 100) + math.ceil(UPDATED / 100)
    with capsys.disabled():
        print(f"\n[deals fleet] {DEALS} deals ({RETRIED} posted twice) + {2 * UPDATED} updates"
              f" through 2 gateways posted in {posted:.1f}s ({unsent} creates unsent as the"
              f" updates came), settled in {took:.1f}s: calls"
              f" create={len(create_calls)} update={len(update_calls)} (ideal {ideal}),"
              f" items per call {[r['items'] for r in create_calls + update_calls]};"
              f" max in 1 s={stats['max_in_window']}, by status={stats['by_status']}")

    assert stats["by_status"] == {"200": len(rows)}, stats  # no 429, no refusal
    assert stats["max_in_window"] <= RATE, stats
    assert all(r["items"] <= 100 for r in rows)
    assert_creates_first(create_calls, update_calls, numbers, updated)
    await assert_clean(http, [line for proc, _, _ in fleet for line in proc.lines],
                       [ops for _, _, ops in fleet])
