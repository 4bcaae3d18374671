"""Batch kinds wait while leads are visible; a lead another gateway of the fleet takes must
not leave them waiting for this gateway's next lead.

The other gateway's lease is made inside the relay's look at the backlog, the one moment
where the race bites: there is no event to await for it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from gateway.calltouch.answers import Delivered, Verdict
from gateway.calltouch.client import Call, CalltouchClient, Reply
from gateway.intake.listener import bound_address
from gateway.ops.metrics import Metrics
from gateway.queue import Job, Put, State
from gateway.queue.sqlite import SQLiteQueue
from gateway.relay.pacing import Pacer
from gateway.relay.relay import Relay
from tests.support import eventually


class Kind:
    batch, linger, reads_errors = 1, 0.0, False

    def __init__(self, kind: str, batch: int = 1) -> None:
        self.kind, self.method, self.batch = kind, f"fake/{kind}", batch

    def call(self, jobs: Sequence[Job]) -> Call:
        return Call("POST", "/x/", json=[orjson.loads(j.payload) for j in jobs])

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        return [Delivered("1") for _ in jobs]


async def test_a_deal_goes_while_no_lead_is_left(tmp_path: Path) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    upstream = web.Application()
    upstream.router.add_post("/x/", handle)
    runner = web.AppRunner(upstream)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    original_backlog = queue.backlog
    taken = False

    async def backlog(kind: str, now: float, limit: int, sites: object = None):  # type: ignore[no-untyped-def]
        nonlocal taken
        count, oldest = await original_backlog(kind, now, limit, sites)  # type: ignore[arg-type]
        if kind == "lead" and count and not taken:
            taken = True  # another gateway of the fleet leases and delivers the next lead
            for job in await queue.lease("lead", 10, time.time(), 60.0):
                await queue.ack(job, "other-gateway", time.time())
        return count, oldest

    queue.backlog = backlog  # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession() as session:
            client = CalltouchClient(session, bound_address(runner), timeout=5.0)
            relay = Relay(queue, client, [Kind("lead"), Kind("deal.create", 100)],
                          [Pacer(5.0)], Metrics())
            now = time.time()
            await queue.put_many([Put("lead", b'{"n": 1}', "l1"), Put("lead", b'{"n": 2}', "l2")],
                                 now)
            relay.start()

            async def leads_done() -> bool:
                return (await queue.stats()).counts[State.DELIVERED] == 2

            await eventually(leads_done, timeout=5)
            await queue.put(Put("deal.create", b'{"n": 3}', "d1"), time.time())

            async def deal_done() -> bool:
                return (await queue.stats()).counts[State.DELIVERED] == 3

            try:
                await eventually(deal_done, timeout=5)  # a deal alone goes in well under 1 s
            finally:
                await relay.stop(grace=1.0)
    finally:
        await queue.close()
        await runner.cleanup()
