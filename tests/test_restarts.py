"""The window holds across restarts: SIGKILL and restart a gateway again and again mid-drain."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    Process,
    eventually,
    lead,
    sandbox_requests,
    sandbox_stats,
    spawn_gateway,
    spawn_sandbox,
)

LEADS = 400
KILLS = 10
RATE = 5


@pytest.fixture
def calltouch(processes: list[Process]) -> Iterator[str]:
    proc, url = spawn_sandbox("0.05,0.3")
    processes.append(proc)
    yield url


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_ten_kills_and_restarts_mid_drain_make_no_429_and_lose_nothing(
    calltouch: str, processes: list[Process], http: aiohttp.ClientSession, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"CTGW_SITE_ID": "18990", "CTGW_CALLTOUCH_URL": calltouch,
           "CTGW_QUEUE": f"sqlite:///{tmp_path / 'q.db'}", "CTGW_LEASE_TIMEOUT": "20s",
           "CTGW_LISTEN": "127.0.0.1:0", "CTGW_OPS_LISTEN": "127.0.0.1:0"}
    proc, url, _ = await asyncio.to_thread(spawn_gateway, env)
    processes.append(proc)
    for n in range(LEADS):
        async with http.post(f"{url}/leads", json=lead(n)) as resp:
            assert resp.status == 202
    rng = random.Random(20261202)
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(1.0, 5.0))  # a random moment of the drain
        proc.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait, 10)
        proc, url, _ = await asyncio.to_thread(spawn_gateway, env)  # at once, on the same store
        processes.append(proc)

    async def all_delivered() -> bool:
        rows = await sandbox_requests(http, calltouch)
        got = {r["form"]["requestNumber"] for r in rows if r["status"] == 200}
        return len(got) == LEADS

    await eventually(all_delivered, timeout=LEADS / RATE + 60, interval=1.0)
    stats = await sandbox_stats(http, calltouch)
    with capsys.disabled():
        print(f"\n[restarts] {KILLS} SIGKILLs mid-drain: received={stats['received']}"
              f" by_status={stats['by_status']} max_in_window={stats['max_in_window']}")
    assert set(stats["by_status"]) == {"200"}, stats  # zero 429s
    assert stats["max_in_window"] <= RATE, stats
