"""A gateway whose PostgreSQL goes silent (a network partition) still stops in bounded time.

A stopped server refuses at once; a partitioned one answers nothing, so every statement in
flight waits out its timeout. The database sits behind :class:`Blackhole`, a proxy on loopback
that can stop passing bytes while it keeps every connection open, as a partition does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

import aiohttp
import pytest

from gateway import app
from gateway.__main__ import EXIT_STOP_LATE, STOP_SECONDS
from gateway.config import Settings
from gateway.ops.metrics import Metrics
from gateway.relay.relay import GIVE_BACK_SECONDS
from gateway.sandbox.run import SandboxThread
from tests.postgres import Cluster
from tests.support import (
    Gateway,
    Process,
    eventually,
    lead,
    sandbox_config,
    sandbox_requests,
    spawn_gateway,
)
from tests.test_backoffice import (
    ACCESS_TOKEN,
    CLIENT_API_ID,
    deal,
    metrics_text,
    post_many,
    sample,
    sandbox_view,
    settled,
)

DEALS = 1_000  # ten calls of 100
LEADS = 40
LATENCY = 1.5  # each call stays in flight this long: the cut finds one under way
LEASE_TIMEOUT = 20.0  # the shortest the settings allow: the cut-off gateway's leases end so
# The grace serve runs with: Settings' default, which no variable changes.
PRODUCTION_GRACE = Settings(site_id="0").shutdown_grace
TOLERANCE = 1.5  # for a loaded machine's scheduling
StartGateway = Callable[[Settings], Awaitable[Gateway]]


class Blackhole:
    """A TCP proxy to PostgreSQL that can go silent and come back."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._passing = asyncio.Event()
        self._passing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, url: str) -> str:
        """Listen; ``url`` (of the database) as reached through the proxy."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return url.replace(f":{self._target}/", f":{port}/")

    def cut(self) -> None:
        """Pass no byte further, and accept connections without connecting them."""
        self._passing.clear()

    def heal(self) -> None:
        self._passing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self._passing.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers.append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._passing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


class LineSeen(logging.Handler):
    """Sets :attr:`seen` (and notes the moment) at the first log line containing ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.seen = asyncio.Event()
        self.at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if self.marker in record.getMessage() and not self.seen.is_set():
            self.at = time.monotonic()
            self.seen.set()


@pytest.fixture
async def blackhole(postgres: Cluster) -> AsyncIterator[Blackhole]:
    hole = Blackhole(postgres.port)
    yield hole
    await hole.close()


@pytest.fixture
async def slow_sandbox(sandbox: SandboxThread, http: aiohttp.ClientSession) -> SandboxThread:
    await sandbox_config(http, sandbox.url, access_token=ACCESS_TOKEN, latency=[LATENCY, LATENCY])
    return sandbox


async def _cut_mid_call(http: aiohttp.ClientSession, sandbox_url: str, hole: Blackhole) -> None:
    """Cut the store off while a call that began before is still under way."""
    async def a_call_began() -> bool:
        return len(await sandbox_requests(http, sandbox_url)) >= 1

    await eventually(a_call_began, timeout=20)
    hole.cut()


async def _all_delivered(
    start_gateway: StartGateway, settings: Settings, http: aiohttp.ClientSession,
    check: Callable[[], Awaitable[bool]],
) -> None:
    """A gateway on the store itself delivers whatever the cut-off one left, once that one's
    leases have ended: ``check`` finds it all at Calltouch, and the store has it delivered."""
    gw = await start_gateway(settings)

    async def done() -> bool:
        return await check() and await settled(http, gw.ops_url)

    await eventually(done, timeout=LEASE_TIMEOUT + 40)
    text = await metrics_text(http, gw.ops_url)
    assert sample(text, "ctgw_queue_jobs", state="dead") == 0


async def test_a_relay_cut_off_from_its_store_stops_within_its_bounds_and_loses_nothing(
    start_gateway: StartGateway, settings: Settings, postgres_url: str, blackhole: Blackhole,
    slow_sandbox: SandboxThread, http: aiohttp.ClientSession,
) -> None:
    direct = replace(settings, queue_url=postgres_url, access_token=ACCESS_TOKEN,
                     client_api_id=CLIENT_API_ID, batch_linger=0.0,
                     lease_timeout=LEASE_TIMEOUT)
    cut_off = replace(direct, queue_url=await blackhole.start(postgres_url))
    # Not start_gateway: the test times this gateway's stop itself.
    running = await app.start(cut_off, Metrics())
    stopped, gave_up = LineSeen("relay stopped"), LineSeen("the store did not answer")
    for seen in (stopped, gave_up):
        logging.getLogger("gateway").addHandler(seen)
    cleanup = None
    try:
        for first in range(0, DEALS, 100):
            await post_many(http, running.url, "/api/v1/deals",
                            [deal(f"erp-{n}") for n in range(first, first + 100)])
        await _cut_mid_call(http, slow_sandbox.url, blackhole)
        began = time.monotonic()
        cleanup = asyncio.ensure_future(running.runner.cleanup())
        await asyncio.wait_for(stopped.seen.wait(), 60)
        # The grace for the call under way, then the bound on giving its leases back (its
        # ack waits on the silent store): not the store's 60 s statement timeout.
        assert stopped.at - began <= cut_off.shutdown_grace + GIVE_BACK_SECONDS + TOLERANCE
        assert gave_up.seen.is_set()
    finally:
        for seen in (stopped, gave_up):
            logging.getLogger("gateway").removeHandler(seen)
        blackhole.heal()  # the rest of the stop need not wait out its own bounds
        await asyncio.wait_for(cleanup or running.runner.cleanup(), 60)

    async def every_deal_held() -> bool:
        held: Sequence[str] = await sandbox_view(http, slow_sandbox.url, "deals")
        return set(held) == {f"erp-{n}" for n in range(DEALS)}

    await _all_delivered(start_gateway, direct, http, every_deal_held)


async def test_serve_cut_off_from_its_store_exits_within_its_bound_and_loses_nothing(
    start_gateway: StartGateway, settings: Settings, postgres_url: str, blackhole: Blackhole,
    slow_sandbox: SandboxThread, http: aiohttp.ClientSession, processes: list[Process],
) -> None:
    gateway, url, _ = await asyncio.to_thread(spawn_gateway, {
        "CTGW_SITE_ID": settings.site_id,
        "CTGW_CALLTOUCH_URL": slow_sandbox.url,
        "CTGW_QUEUE": await blackhole.start(postgres_url),
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_LEASE_TIMEOUT": f"{LEASE_TIMEOUT:.0f}s",
    })
    processes.append(gateway)
    for n in range(LEADS):
        async with http.post(f"{url}/leads", json=lead(n)) as resp:
            assert resp.status == 202, await resp.text()
    await _cut_mid_call(http, slow_sandbox.url, blackhole)
    began = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(gateway.proc.wait, 60)
    took = time.monotonic() - began
    # Within systemd's TimeoutStopSec of 30 s, and saying why, rather than killed unheard.
    assert took <= PRODUCTION_GRACE + STOP_SECONDS + TOLERANCE, took
    assert code == EXIT_STOP_LATE, gateway.lines[-5:]
    assert any("stop did not finish" in line for line in gateway.lines), gateway.lines[-5:]
    blackhole.heal()

    async def every_lead_delivered() -> bool:
        rows = await sandbox_requests(http, slow_sandbox.url)
        got = {row["form"]["requestNumber"] for row in rows if row["status"] == 200}
        return got == {f"req-{n}" for n in range(LEADS)}

    await _all_delivered(start_gateway, replace(settings, queue_url=postgres_url), http,
                         every_lead_delivered)
