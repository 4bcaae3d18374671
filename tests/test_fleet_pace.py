"""One pace for a fleet: gates on one real PostgreSQL, each on its own pool, as gateways are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.config import Settings
from gateway.relay import fleet_pace_sql as fleet_sql
from gateway.relay.fleet_pace import FleetPace
from gateway.sandbox.server import max_in_window
from tests.postgres import Cluster
from tests.support import Gateway, eventually, lead, post_lead, sandbox_stats, spawn_sandbox

OpenPace = Callable[..., Awaitable[FleetPace]]
RATE = 5.0
LIMITED = Reply(429, b"", Retry("rate_limited", "HTTP 429", retry_after=0.5))
OK = Reply(200, b"{}", None)


@pytest.fixture
async def open_pace(postgres_url: str) -> AsyncIterator[OpenPace]:
    """``await open_pace(egress, **options)``: a gate as a gateway of the fleet opens it."""
    opened: list[FleetPace] = []

    async def open_(egress: str = "default", **options: float) -> FleetPace:
        pace = await FleetPace.open(postgres_url, egress, RATE, **options)
        opened.append(pace)
        return pace

    yield open_
    for pace in opened:
        await pace.close()


async def send(pace: FleetPace, budget: list[int], times: list[float]) -> None:
    """Take calls from ``budget`` while any is left; each is written right after its grant."""
    while budget:
        budget.pop()
        slot = await pace.admit("lead")
        times.append(time.monotonic())
        slot.written(times[-1])


async def test_two_gateways_on_one_egress_share_one_window(open_pace: OpenPace) -> None:
    first, second = await open_pace(), await open_pace()
    budget, ones, twos = list(range(30)), [], []
    started = time.monotonic()
    await asyncio.gather(send(first, budget, ones), send(second, budget, twos))
    elapsed = time.monotonic() - started
    assert len(ones) + len(twos) == 30
    assert max_in_window(ones + twos, 1.0) <= 5
    assert min(len(ones), len(twos)) >= 5  # both sent: one rate, shared
    # Five at once, then five a window: (30 - 5) / 5 windows. Not half of it (a rate each),
    # and no window wasted.
    assert 5 * first.window - 0.05 <= elapsed < 5 * first.window + 0.8, elapsed


async def test_two_egress_groups_on_one_database_keep_separate_windows(
    open_pace: OpenPace,
) -> None:
    east, west = await open_pace("dc-east"), await open_pace("dc-west")
    stamps: dict[str, list[float]] = {"east": [], "west": []}
    started = time.monotonic()
    await asyncio.gather(send(east, list(range(10)), stamps["east"]),
                         send(west, list(range(10)), stamps["west"]))
    elapsed = time.monotonic() - started
    assert all(max_in_window(times, 1.0) <= 5 for times in stamps.values())
    # Each its full rate at once: ten each in one window, not twenty in three.
    assert east.window - 0.05 <= elapsed < 2 * east.window - 0.3, elapsed


async def test_a_429_on_one_gateway_pauses_and_slows_the_other(open_pace: OpenPace) -> None:
    first, second = await open_pace(), await open_pace()
    slot = await first.admit("lead")
    slot.written(time.monotonic())
    slot.answered(LIMITED)
    await first.flush()
    limited_at = time.monotonic()
    assert first.current == RATE / 2

    slot = await second.admit("lead")
    granted_at = time.monotonic()
    assert granted_at - limited_at >= 0.45  # the pause: Retry-After, 0.5 s
    assert second.current == RATE / 2  # it heard of the halving, from the database
    slot.written(granted_at)
    slot.answered(OK)  # after the pause: the rate climbs back, for everyone
    await second.flush()

    slot = await first.admit("lead")
    assert first.current == RATE / 2 + 0.5
    # Below the limit grants are spaced, across the fleet: 1/3 s after the other's.
    assert time.monotonic() - granted_at >= 1 / first.current - 0.02
    slot.written(time.monotonic())


async def test_a_dead_gateways_slots_hold_the_window_for_the_bound_at_most(
    open_pace: OpenPace,
) -> None:
    dead, alive = await open_pace(bound=0.3), await open_pace(bound=0.3)
    before = time.monotonic()
    for _ in range(5):
        await dead.admit("lead")  # granted, and never written: the gateway died there
    slot = await alive.admit("lead")
    waited = time.monotonic() - before
    slot.written(time.monotonic())
    # Counted as written at their grant + the bound: free a window after that, not before.
    assert alive.window + 0.3 - 0.05 <= waited < alive.window + 0.3 + 0.3, waited


CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
SLOT = "SELECT granted_at, written_at FROM pace_slots WHERE egress = 'default' AND n = $1"


async def test_a_stamp_is_the_writes_moment_not_the_reports(
    open_pace: OpenPace, postgres_url: str,
) -> None:
    pace = await open_pace()
    conn = await asyncpg.connect(postgres_url)
    try:
        slot = await pace.admit("lead")
        # The report is held up for 0.5 s (the row is locked): its stamp is still the write's.
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM pace_slots WHERE n = $1 FOR UPDATE", slot.n)
            before = await conn.fetchval(CLOCK)
            slot.written(time.monotonic())
            after = await conn.fetchval(CLOCK)
            await asyncio.sleep(0.5)
        await pace.flush()
        stamp = (await conn.fetchrow(SLOT, slot.n))["written_at"]
        # Never before the write; later only by the grant's one-way trip to the database.
        assert before <= stamp <= after + 0.02, (before, stamp, after)
    finally:
        await conn.close()


async def test_a_grant_is_taken_ahead_and_its_call_goes_at_its_moment(
    open_pace: OpenPace, postgres_url: str,
) -> None:
    pace = await open_pace(ahead=0.3)
    conn = await asyncpg.connect(postgres_url)
    try:
        first = [await pace.admit("lead") for _ in range(5)]
        for slot in first:
            slot.written(time.monotonic())
        await pace.flush()
        stamp = min([(await conn.fetchrow(SLOT, slot.n))["written_at"] for slot in first])
        sixth = await pace.admit("lead")
        gone_at = await conn.fetchval(CLOCK)
        granted_at = (await conn.fetchrow(SLOT, sixth.n))["granted_at"]
        # Granted for the moment the first of them left the window, not whenever the grant's
        # statements ran; and admit let it go only once the database's clock had passed it.
        assert granted_at == pytest.approx(stamp + pace.window, abs=1e-6), (granted_at, stamp)
        assert gone_at >= granted_at, (gone_at, granted_at)
        sixth.written(time.monotonic())
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def forwarder(port: int, to: int) -> AsyncIterator[None]:
    """The database reachable on ``port`` for a while: a TCP relay to the server's port."""
    relays: list[asyncio.Future[list[object]]] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to)
        both = asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                              return_exceptions=True)
        relays.append(both)
        await both

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*relays), 5)  # the clients have hung up


async def test_a_gateway_cut_off_from_the_database_grants_nothing_until_it_is_back(
    postgres: Cluster, postgres_url: str
) -> None:
    port = free_port()  # nothing listens there yet: the database is out of reach
    url = postgres_url.replace(f":{postgres.port}/", f":{port}/")
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)  # min 0: no connection yet
    pace = FleetPace(pool, "default", RATE, retry=0.05)
    admit = asyncio.ensure_future(pace.admit("lead"))
    try:
        done, _ = await asyncio.wait([admit], timeout=0.5)
        assert not done  # still waiting: never a grant without the database
        async with forwarder(port, postgres.port):
            slot = await asyncio.wait_for(admit, 5)  # and granting once it is back
            slot.written(time.monotonic())
            await pace.close()  # within: its connections hang up before the relay goes
    finally:
        admit.cancel()
        await pace.close()


@pytest.fixture
def fast_sandbox() -> Iterator[str]:
    proc, url = spawn_sandbox("0.01,0.05")  # its own process: its clock sees true arrivals
    yield url
    proc.kill()


async def test_gateways_on_a_postgresql_queue_share_the_pace_of_their_egress(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    postgres: Cluster, postgres_url: str, fast_sandbox: str, http: aiohttp.ClientSession,
) -> None:
    fleet = replace(settings, queue_url=postgres_url, calltouch_url=fast_sandbox, egress="nat-1")
    gateways = [await start_gateway(fleet), await start_gateway(fleet)]
    started = time.monotonic()
    for n in range(15):
        assert (await post_lead(http, gateways[n % 2].url, lead(n)))[0] == 202

    async def delivered() -> bool:
        return (await sandbox_stats(http, fast_sandbox))["received"] == 15

    await eventually(delivered, timeout=20, interval=0.02)
    elapsed = time.monotonic() - started
    stats = await sandbox_stats(http, fast_sandbox)
    assert stats["by_status"] == {"200": 15} and stats["max_in_window"] <= 5, stats
    assert elapsed >= 2 * 1.03 - 0.05, elapsed  # 5, 5 a window later, 5 more: one pace
    database = postgres_url.rsplit("/", 1)[-1]
    assert postgres.sql("SELECT egress, rate FROM pace_egress", database) == "nat-1|5"
    for gw in gateways:
        assert gw.metrics.registry.get_sample_value("ctgw_upstream_rate_limit") == RATE


async def test_news_the_database_cannot_take_for_a_fault_of_ours_does_not_stop_the_rest(
    open_pace: OpenPace, postgres_url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pace = await open_pace()
    real, faults = fleet_sql.record, [RuntimeError("a bug")]

    async def record_failing_once(*args: object, **kwargs: object) -> object:
        if faults:
            raise faults.pop()
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fleet_sql, "record", record_failing_once)
    lost = await pace.admit("lead")
    lost.written(time.monotonic())
    await asyncio.wait_for(pace.flush(), timeout=5)  # it waited for ever: the batch was gone
    kept = await pace.admit("lead")
    kept.written(time.monotonic())
    await asyncio.wait_for(pace.flush(), timeout=5)
    conn = await asyncpg.connect(postgres_url)
    try:
        assert (await conn.fetchrow(SLOT, kept.n))["written_at"] is not None
    finally:
        await conn.close()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "fleet pace dropped news egress=default count=1 error=RuntimeError: their slots count"
        " as written at the bound"]
