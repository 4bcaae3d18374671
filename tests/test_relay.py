"""The relay end to end: real gateway, real SQLite, the sandbox in its own process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.calltouch.answers import Permanent, Retry, Verdict
from gateway.calltouch.client import Call, CalltouchClient, Reply
from gateway.config import Settings
from gateway.ops.metrics import Metrics
from gateway.queue import Job, Put, State
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.pacing import Pacer
from gateway.relay.relay import Relay
from gateway.relay.settle import Settler
from tests.support import (
    TOKEN,
    Gateway,
    child_env,
    eventually,
    lead,
    post_lead,
    sandbox_config,
    sandbox_requests,
    sandbox_stats,
    spawn_sandbox,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def slow_sandbox() -> Iterator[str]:
    """Calltouch answering in 0.3-0.9 s, in its own process so its clock sees true arrivals."""
    proc, url = spawn_sandbox("0.3,0.9")
    yield url
    proc.kill()


@pytest.fixture
def fast_sandbox() -> Iterator[str]:
    proc, url = spawn_sandbox("0.01,0.05")
    yield url
    proc.kill()


async def status_of(http: aiohttp.ClientSession, gw: Gateway, job_id: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/api/v1/leads/{job_id}", headers=AUTH) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def all_have_status(
    http: aiohttp.ClientSession, gw: Gateway, ids: list[str], status: str
) -> bool:
    states = [(await status_of(http, gw, i))["status"] for i in ids]
    return all(s == status for s in states)


async def wait_status(
    http: aiohttp.ClientSession, gw: Gateway, ids: list[str], status: str, timeout: float
) -> None:
    async def reached() -> bool:
        return await all_have_status(http, gw, ids, status)

    await eventually(reached, timeout=timeout, interval=0.2)


@pytest.mark.slow
async def test_burst_of_300_is_delivered_once_each_within_the_limit(
    start_gateway: Any, settings: Settings, slow_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=slow_sandbox))
    answers = await asyncio.gather(*(post_lead(http, gw.url, lead(i)) for i in range(300)))
    assert [code for code, _ in answers] == [202] * 300

    async def all_received() -> bool:
        return (await sandbox_stats(http, slow_sandbox))["received"] >= 300

    await eventually(all_received, timeout=90, interval=1.0)
    stats = await sandbox_stats(http, slow_sandbox)
    rows = await sandbox_requests(http, slow_sandbox)
    numbers = Counter(r["form"]["requestNumber"] for r in rows)
    assert stats["by_status"] == {"200": 300}, stats  # zero 429s
    assert stats["max_in_window"] <= 5, stats
    assert numbers == Counter({f"req-{i}": 1 for i in range(300)})  # exactly once each
    delivered = gw.metrics.registry.get_sample_value("ctgw_leads_delivered_total",
                                                     {"site": "default"})
    assert delivered is not None and delivered >= 1


async def test_the_register_call_carries_calltouch_fields(
    gateway: Gateway, settings: Settings, sandbox: Any, http: aiohttp.ClientSession
) -> None:
    code, _ = await post_lead(
        http, gateway.url, lead(1, tags=["a", "b"], customFields={"city": "Москва"})
    )
    assert code == 202

    async def received() -> bool:
        return len(await sandbox_requests(http, sandbox.url)) == 1

    await eventually(received, timeout=10)
    [row] = await sandbox_requests(http, sandbox.url)
    form = row["form"]
    assert form["phoneNumber"] == "79205550055" and form["email"] == "ivan@example.com"
    assert form["tags"] == "a,b" and form["customField[city]"] == "Москва"
    assert form["requestNumber"] == "req-1" and form["sessionId"] == "1845461367"
    assert len(form["requestDate"]) == 19 and form["requestDate"][2] == "."


async def test_a_lead_without_number_gets_one(
    gateway: Gateway, sandbox: Any, http: aiohttp.ClientSession
) -> None:
    body = lead(0)
    del body["requestNumber"]
    assert (await post_lead(http, gateway.url, body))[0] == 202

    async def received() -> bool:
        return len(await sandbox_requests(http, sandbox.url)) == 1

    await eventually(received, timeout=10)
    [row] = await sandbox_requests(http, sandbox.url)
    assert row["form"]["requestNumber"].startswith("ctgw-")


async def test_outage_then_recovery_delivers_everything(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox))
    await sandbox_config(http, fast_sandbox, fault="503")
    ids = [(await post_lead(http, gw.url, lead(i)))[1]["id"] for i in range(10)]

    value = gw.metrics.registry.get_sample_value

    async def down() -> bool:  # the health gate holds the rest back: only probes go
        return value("ctgw_upstream_healthy", {"site": "default"}) == 0

    await eventually(down, timeout=15)
    await sandbox_config(http, fast_sandbox, fault=None)

    await wait_status(http, gw, ids, "delivered", 30)
    ok = [r for r in await sandbox_requests(http, fast_sandbox) if r["status"] == 200]
    assert sorted(r["form"]["requestNumber"] for r in ok) == sorted(f"req-{i}" for i in range(10))
    assert value("ctgw_upstream_requests_total", {"method": "register", "outcome": "server_error"})


async def test_permanent_failure_is_dead_then_replayed_by_the_cli(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox))
    await sandbox_config(http, fast_sandbox, fault="error200")
    _, answer = await post_lead(http, gw.url, lead(1))

    await wait_status(http, gw, [answer["id"]], "dead", 10)
    status = await status_of(http, gw, answer["id"])
    assert "without requestId" in status["last_error"] and status["attempts"] == 1
    assert "79205550055" not in str(status) and "ivan@" not in str(status)

    env = child_env(CTGW_QUEUE=settings.queue_url, CTGW_SITE_ID="18990")
    cli = [sys.executable, "-m", "gateway", "dead"]
    listing = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=30)
    assert answer["id"] in listing.stdout and "without requestId" in listing.stdout
    await sandbox_config(http, fast_sandbox, fault=None)
    replay = subprocess.run(
        [*cli, "replay", "--id", answer["id"]], env=env, capture_output=True, text=True, timeout=30
    )
    assert replay.returncode == 0 and "replayed 1" in replay.stdout

    await wait_status(http, gw, [answer["id"]], "delivered", 10)


async def test_a_429_storm_slows_down_and_then_delivers(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox))
    await sandbox_config(http, fast_sandbox, fault="429")
    ids = [(await post_lead(http, gw.url, lead(i)))[1]["id"] for i in range(5)]

    async def slowed_down() -> bool:
        rate = gw.metrics.registry.get_sample_value("ctgw_upstream_rate_limit")
        return rate is not None and rate < settings.rate

    await eventually(slowed_down, timeout=10)
    assert (await sandbox_stats(http, fast_sandbox))["by_status"].get("429", 0) >= 1
    await sandbox_config(http, fast_sandbox, fault=None)

    await wait_status(http, gw, ids, "delivered", 40)


async def test_too_old_leads_go_to_the_dead_letters(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox, max_age=0.0))
    await sandbox_config(http, fast_sandbox, fault="503")
    _, answer = await post_lead(http, gw.url, lead(1))

    await wait_status(http, gw, [answer["id"]], "dead", 10)
    assert "expired" in (await status_of(http, gw, answer["id"]))["last_error"]
    assert gw.metrics.registry.get_sample_value("ctgw_leads_dead_total",
                                            {"reason": "expired", "site": "default"})


async def test_a_hanging_upstream_times_out_and_is_retried(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox, upstream_timeout=0.5))
    await sandbox_config(http, fast_sandbox, fault="hang")
    _, answer = await post_lead(http, gw.url, lead(1))

    await wait_status(http, gw, [answer["id"]], "retrying", 10)
    assert (await status_of(http, gw, answer["id"]))["last_error"] == "timed out"
    await sandbox_config(http, fast_sandbox, fault=None)

    await wait_status(http, gw, [answer["id"]], "delivered", 15)


async def test_a_busy_event_loop_cannot_bunch_requests(
    start_gateway: Any, settings: Settings, fast_sandbox: str, http: aiohttp.ClientSession
) -> None:
    """The loop stalls between some grants and their writes (as a CPU-heavy intake burst does):
    a pacer that counted grants would let 6 requests reach Calltouch within one second."""
    stalls = iter([0.0, 0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.6] * 10)

    async def stall(session: Any, ctx: Any, params: Any) -> None:
        time.sleep(next(stalls, 0.0))  # blocks the whole loop, before the request is written

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(stall)
    gw = await start_gateway(replace(settings, calltouch_url=fast_sandbox), [trace])
    ids = [(await post_lead(http, gw.url, lead(i)))[1]["id"] for i in range(30)]

    await wait_status(http, gw, ids, "delivered", 40)
    stats = await sandbox_stats(http, fast_sandbox)
    assert stats["by_status"] == {"200": 30} and stats["max_in_window"] <= 5, stats


async def test_queue_stats_cli(
    gateway: Gateway, settings: Settings, http: aiohttp.ClientSession
) -> None:
    env = child_env(CTGW_QUEUE=settings.queue_url, CTGW_SITE_ID="18990")
    done = subprocess.run([sys.executable, "-m", "gateway", "queue", "stats"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert {line.split()[0] for line in done.stdout.splitlines()} >= {"ready", "dead", "oldest"}


async def test_a_stop_during_a_lease_gives_the_leased_jobs_back(tmp_path: Path) -> None:
    """The store commits a lease before the relay hears of it; a stop then must not strand it."""
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    await queue.put_many([Put("lead", b"{}", f"k{i}") for i in range(3)], time.time())
    leased, answer = asyncio.Event(), asyncio.Event()
    real_lease = queue.lease

    async def slow_answer(*args: Any) -> list[Job]:
        jobs = await real_lease(*args)  # committed: leased in the store from here on
        leased.set()
        await answer.wait()
        return jobs

    queue.lease = slow_answer  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        client = CalltouchClient(session, "http://127.0.0.1:9", timeout=1.0)
        relay = Relay(queue, client, [_NeverSends()], [Pacer(5.0)], Metrics(), concurrency=1)
        await _stop_during_lease(queue, relay, leased, answer)


async def _stop_during_lease(
    queue: SQLiteQueue, relay: Relay, leased: asyncio.Event, answer: asyncio.Event
) -> None:
    relay.start()
    await asyncio.wait_for(leased.wait(), timeout=5)
    stopping = asyncio.create_task(relay.stop(grace=1.0))
    for _ in range(3):  # let stop() cancel the dispatcher before the store answers
        await asyncio.sleep(0)
    answer.set()
    await asyncio.wait_for(stopping, timeout=5)
    try:
        assert (await queue.stats()).counts[State.LEASED] == 0
        assert (await queue.stats()).counts[State.READY] == 3
    finally:
        await queue.close()


class _NeverSends:
    kind, method, batch, linger, reads_errors = "lead", "register", 1, 0.0, False

    def call(self, jobs: Sequence[Job]) -> Call:
        raise AssertionError("a stopped relay sent a job")

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        raise AssertionError("a stopped relay read an answer")


async def test_a_dead_letters_reason_does_not_quote_the_leads_own_name(tmp_path: Path) -> None:
    """Calltouch may quote a value back; `dead list` shows the reason after the purge."""
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        payload = b'{"fio": "Anastasia Prekrasnaya", "phoneNumber": "79205550055"}'
        await queue.put_many([Put("lead", payload, "a"), Put("lead", payload, "b")], time.time())
        first, second = await queue.lease("lead", 2, time.time(), 30)
        settler = Settler(queue, Metrics(), max_age=3600.0)
        await settler.settle([first, second], [
            Permanent("rejected", "HTTP 400: fio Anastasia Prekrasnaya is not valid"),
            Retry("server_error", "HTTP 500: Anastasia Prekrasnaya"),
        ])
        [dead] = await queue.dead(10)
        assert dead.last_error == "HTTP 400: fio *** is not valid"
        retried = await queue.status(second.id)
        assert retried is not None and retried.last_error == "HTTP 500: ***"
    finally:
        await queue.close()
