"""Real processes: SIGKILL mid-burst loses no acknowledged lead; SIGTERM drains in bounds."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from gateway.queue import State, open_queue
from tests.support import Process, eventually, lead, sandbox_requests, spawn_gateway, spawn_sandbox


def gateway_env(tmp_path: Path, sandbox_url: str) -> dict[str, str]:
    return {
        "CTGW_SITE_ID": "18990",
        "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": f"sqlite:///{tmp_path / 'queue.db'}",
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_LEASE_TIMEOUT": "20s",
    }


async def burst(http: aiohttp.ClientSession, url: str, numbers: range, acked: set[str],
                stop_after: int | None = None, on_stop: asyncio.Event | None = None) -> None:
    """Post leads 16 at a time; remember which were acknowledged (202 or 200)."""
    gate = asyncio.Semaphore(16)

    async def one(n: int) -> None:
        async with gate:
            try:
                async with http.post(f"{url}/leads", json=lead(n)) as resp:
                    if resp.status in (200, 202):
                        acked.add(f"req-{n}")
            except (aiohttp.ClientError, OSError):
                return  # the process died mid-request: not acknowledged
            if stop_after is not None and on_stop is not None and len(acked) >= stop_after:
                on_stop.set()

    await asyncio.gather(*(one(n) for n in numbers))


async def delivered_numbers(http: aiohttp.ClientSession, sandbox_url: str) -> Counter[str]:
    rows = await sandbox_requests(http, sandbox_url)
    return Counter(r["form"]["requestNumber"] for r in rows if r["status"] == 200)


@pytest.mark.slow
async def test_sigkill_mid_burst_loses_no_acknowledged_lead(
    tmp_path: Path, http: aiohttp.ClientSession, processes: list[Process],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox, sandbox_url = spawn_sandbox("0.2,0.6")
    processes.append(sandbox)
    env = gateway_env(tmp_path, sandbox_url)
    first, url, _ = spawn_gateway(env)
    processes.append(first)
    acked: set[str] = set()
    await burst(http, url, range(20), acked)

    async def some_delivered() -> bool:
        return len(await delivered_numbers(http, sandbox_url)) >= 5

    await eventually(some_delivered, timeout=20)
    kill_now = asyncio.Event()
    posting = asyncio.create_task(burst(http, url, range(20, 400), acked, 120, kill_now))
    await kill_now.wait()
    first.proc.send_signal(signal.SIGKILL)  # no chance to flush, drain or release anything
    await posting
    acked_at_kill = set(acked)

    second, _, _ = spawn_gateway(env)
    processes.append(second)

    async def all_delivered() -> bool:
        return acked_at_kill <= set(await delivered_numbers(http, sandbox_url))

    await eventually(all_delivered, timeout=120, interval=1.0)
    counts = await delivered_numbers(http, sandbox_url)
    duplicates = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(f"\n[crash] acknowledged={len(acked_at_kill)} delivered={len(counts)}"
              f" duplicates={duplicates} (leads in flight at the kill)")
    assert duplicates <= 16  # at most the sends in flight at the kill (the relay's concurrency)


async def test_sigterm_drains_in_flight_sends_and_keeps_the_rest(
    tmp_path: Path, http: aiohttp.ClientSession, processes: list[Process]
) -> None:
    sandbox, sandbox_url = spawn_sandbox("1.5,2.0")
    processes.append(sandbox)
    env = gateway_env(tmp_path, sandbox_url)
    gateway, url, ops = spawn_gateway(env)
    processes.append(gateway)
    acked: set[str] = set()
    await burst(http, url, range(30), acked)
    assert len(acked) == 30

    async def sending() -> bool:
        return len(await sandbox_requests(http, sandbox_url)) >= 3

    await eventually(sending, timeout=10)
    gateway.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()

    async def not_ready() -> bool:
        try:
            async with http.get(f"{ops}/readyz") as resp:
                return resp.status == 503
        except aiohttp.ClientError:
            raise AssertionError("the ops listener closed before /readyz said 503") from None

    await eventually(not_ready, timeout=5, interval=0.02)
    with pytest.raises(aiohttp.ClientError):
        await http.post(f"{url}/leads", json=lead(99))  # intake is closed
    code = await asyncio.to_thread(gateway.proc.wait, 20)
    assert code == 0 and time.monotonic() - started < 12  # the 10 s grace, and a little

    queue = await open_queue(env["CTGW_QUEUE"])
    stats = await queue.stats()
    await queue.close()
    received = await sandbox_requests(http, sandbox_url)
    assert stats.counts[State.LEASED] == 0  # every lease was settled or given back
    assert stats.counts[State.DELIVERED] == len(received)  # in-flight sends were finished
    assert stats.counts[State.DELIVERED] + stats.counts[State.READY] == 30
