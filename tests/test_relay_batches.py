"""The relay with a batch kind: one call of many jobs, settled job by job, heard once.

A fake batch kind and a fake Calltouch endpoint (a real aiohttp server on port 0) that answers
each call as the test says; the queue is a real SQLite file.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.calltouch.answers import Delivered, Permanent, Retry, Verdict
from gateway.calltouch.client import Call, CalltouchClient, Reply
from gateway.intake.listener import bound_address
from gateway.ops.metrics import Metrics
from gateway.queue import Job, Put, State, Status
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.pacing import Pacer
from gateway.relay.relay import Relay

from .support import eventually

KIND = "batch"


class BatchKind:
    """Up to 100 jobs a call; the answer is a list of ``{"ok", "retry", "error", "id"}``."""

    kind, method, batch, linger, reads_errors = KIND, "fake/batch", 100, 0.0, False

    def call(self, jobs: Sequence[Job]) -> Call:
        return Call("POST", "/batch/", json=[orjson.loads(job.payload) for job in jobs])

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        return [_verdict(item) for item in orjson.loads(reply.body)]


def _verdict(item: dict[str, object]) -> Verdict:
    if item["ok"]:
        return Delivered(str(item["id"]))
    if item["retry"]:
        return Retry("item_error", str(item["error"]))
    return Permanent("item_error", str(item["error"]))


@dataclass
class FakeCalltouch:
    """Answers every call by ``mode``: 429, all taken, or by each item's ``n`` modulo 3."""

    mode: str = "ok"
    calls: list[int] = field(default_factory=list)  # items per call

    async def handle(self, request: web.Request) -> web.Response:
        items = await request.json(loads=orjson.loads)
        self.calls.append(len(items))
        if self.mode == "429":
            return web.json_response({"message": "Too Many Requests"}, status=429)
        return web.json_response([self._answer(item) for item in items])

    def _answer(self, item: dict[str, int]) -> dict[str, object]:
        n = item["n"]
        if self.mode == "ok" or n % 3 == 0:
            return {"ok": True, "id": 1000 + n}
        return {"ok": False, "retry": n % 3 == 1, "error": f"item {n} refused"}


@dataclass
class Rig:
    upstream: FakeCalltouch
    queue: SQLiteQueue
    pacer: Pacer
    metrics: Metrics
    relay: Relay


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    upstream = FakeCalltouch()
    app = web.Application()
    app.router.add_post("/batch/", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        async with aiohttp.ClientSession() as session:
            client = CalltouchClient(session, bound_address(runner), timeout=5.0)
            pacer, metrics = Pacer(5.0), Metrics()
            relay = Relay(queue, client, [BatchKind()], [pacer], metrics)
            yield Rig(upstream, queue, pacer, metrics, relay)
            await relay.stop(grace=1.0)
    finally:
        await queue.close()
        await runner.cleanup()


async def put_and_settle(rig: Rig, count: int) -> dict[State, int]:
    """Queue ``count`` jobs before the relay starts (so one call takes them all), then wait
    until none of them is ready or leased any more."""
    await rig.queue.put_many(
        [Put(KIND, orjson.dumps({"n": n}), f"k{n}") for n in range(count)], time.time()
    )
    rig.relay.start()

    async def settled() -> bool:
        counts = (await rig.queue.stats()).counts
        return counts[State.READY] + counts[State.LEASED] == 0

    await eventually(settled, timeout=10, interval=0.05)
    return (await rig.queue.stats()).counts


def upstream_calls(rig: Rig, code: str) -> float | None:
    return rig.metrics.registry.get_sample_value(
        "ctgw_upstream_requests_total", {"method": "fake/batch", "outcome": code}
    )


async def test_one_429_on_100_jobs_halves_the_rate_once(rig: Rig) -> None:
    rig.upstream.mode = "429"
    counts = await put_and_settle(rig, 100)
    assert rig.upstream.calls == [100]
    assert rig.pacer.current == 2.5  # halved once, not 100 times (the floor would be 0.625)
    assert counts[State.DELAYED] == 100  # every job retried on its own, one attempt each
    statuses = [await rig.queue.status(job.id) for job in await _all_jobs(rig)]
    assert {s.attempts for s in statuses if s is not None} == {1}
    assert upstream_calls(rig, "rate_limited") == 1


async def test_100_delivered_in_one_call_count_as_one_recovery(rig: Rig) -> None:
    rig.pacer.current = 2.5  # as after a 429
    counts = await put_and_settle(rig, 100)
    assert rig.upstream.calls == [100]
    assert counts[State.DELIVERED] == 100
    assert rig.pacer.current == 3.0  # one step of 0.5, not a jump back to the limit
    assert upstream_calls(rig, "ok") == 1
    delivered = rig.metrics.registry.get_sample_value(
        "ctgw_jobs_delivered_total", {"kind": KIND, "site": "default"})
    assert delivered == 100
    # Not leads: the lead series stay as this relay-only rig (no app to seed them) left them.
    assert rig.metrics.registry.get_sample_value("ctgw_leads_delivered_total",
                                                 {"site": "default"}) is None


async def test_a_mixed_answer_settles_each_job_by_its_own_verdict(rig: Rig) -> None:
    rig.upstream.mode = "mixed"
    await put_and_settle(rig, 99)
    assert rig.upstream.calls == [99]
    for n in range(99):
        status = await _status_of(rig, n)
        expected = (State.DELIVERED, State.DELAYED, State.DEAD)[n % 3]
        assert status.state == expected, (n, status)
        if expected is State.DELIVERED:
            assert status.upstream_id == str(1000 + n)
        else:
            assert status.last_error == f"item {n} refused"
    assert rig.metrics.registry.get_sample_value(
        "ctgw_jobs_dead_total", {"kind": KIND, "reason": "item_error", "site": "default"}) == 33


async def test_a_retry_leaves_the_global_random_state_alone(rig: Rig) -> None:
    """The backoff's jitter comes from the relay's own generator: a draw from the global one
    would move state that other code on other threads reads (hypothesis refuses it)."""
    rig.upstream.mode = "mixed"
    before = random.getstate()
    counts = await put_and_settle(rig, 3)
    assert counts[State.DELAYED] == 1  # a retry was settled, so a jitter was drawn
    assert random.getstate() == before


async def _all_jobs(rig: Rig) -> list[Job]:
    # Leased later than any backoff: every job, to read its id; the lease itself is not used.
    await rig.relay.stop(grace=1.0)
    return await rig.queue.lease(KIND, 1000, 1e12, 30)


async def _status_of(rig: Rig, n: int) -> Status:
    # A repeat of the job's key answers with the first job's status.
    [result] = await rig.queue.put_many([Put(KIND, b"{}", f"k{n}")], time.time())
    assert not result.created
    status = await rig.queue.status(result.status.id)
    assert status is not None
    return status


