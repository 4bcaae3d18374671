"""The sandbox counts a request when it reached its socket, as Calltouch's network sees it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from types import SimpleNamespace

import aiohttp
import pytest

from gateway.sandbox import arrivals
from gateway.sandbox.run import SandboxThread
from gateway.sandbox.server import LIMIT, REGISTER, SandboxState
from tests.support import sandbox_requests, spawn_sandbox

STALL = 0.3


@pytest.mark.skipif(not arrivals.STAMPED, reason="SO_TIMESTAMPNS is Linux's")
async def test_an_arrival_is_stamped_when_the_bytes_reach_the_socket() -> None:
    """A sandbox that gets no CPU for a while still dates the request by its arrival."""
    proc, url = spawn_sandbox("0,0")
    written: list[float] = []
    sent = asyncio.Event()

    async def on_chunk(_: object, __: SimpleNamespace,
                       params: aiohttp.TraceRequestChunkSentParams) -> None:
        if params.method == "POST":
            written.append(time.monotonic())  # just before the request's bytes are written
            sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    try:
        async with aiohttp.ClientSession(trace_configs=[trace]) as http:
            assert await sandbox_requests(http, url) == []  # an older request on the connection
            os.kill(proc.proc.pid, signal.SIGSTOP)
            try:
                post = asyncio.create_task(
                    http.post(url + REGISTER.format(site_id="1"), data={"subject": "x"}))
                await sent.wait()
                await asyncio.sleep(STALL)  # the stall under test: the sandbox is stopped
            finally:
                os.kill(proc.proc.pid, signal.SIGCONT)
            async with await post as resp:
                assert resp.status == 200
            [row] = await sandbox_requests(http, url)
    finally:
        proc.kill()
    assert 0 <= row["at"] - written[0] < STALL / 3, (row["at"], written)


def test_a_window_is_full_at_the_limit() -> None:
    state = SandboxState()
    assert not any(state.over_limit("ip", t / 10) for t in range(0, 2 * LIMIT, 2))
    assert state.over_limit("ip", 0.9)  # (-0.1, 0.9] would hold six
    assert not state.over_limit("other", 0.9)  # counted per client address
    assert not state.over_limit("ip", 1.05)  # (0.05, 1.05] holds four before it


def test_a_late_handled_arrival_counts_in_the_windows_after_it() -> None:
    """Handlers can see arrivals out of order: an older one is judged by the windows it is in."""
    state = SandboxState()
    assert not any(state.over_limit("ip", 1.0 + t / 10) for t in range(LIMIT))  # 1.0 … 1.4
    assert not state.over_limit("ip", 0.35)  # (0.3, 1.3] would hold five
    assert state.over_limit("ip", 0.95)  # (0.4, 1.4] holds five already


async def test_received_requests_carry_wall_time_beside_the_monotonic_stamp() -> None:
    simulator = SandboxThread(latency=(0.0, 0.0))
    simulator.start()
    try:
        async with aiohttp.ClientSession() as http:
            before = time.time()
            async with http.post(simulator.url + REGISTER.format(site_id="1"),
                                 data={"fio": "x"}) as resp:
                assert resp.status == 200
            async with http.get(f"{simulator.url}/sandbox/requests") as resp:
                [row] = await resp.json()
    finally:
        simulator.stop()
    wall = datetime.fromisoformat(row["time"]).timestamp()
    assert before - 1 <= wall <= time.time() + 1, row
    assert row["at"] < 10**8  # the monotonic stamp stays, for window counts
