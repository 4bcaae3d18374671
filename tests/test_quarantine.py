"""No real lead lost to a spam verdict: spam is quarantined, listed, released, capped."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from gateway.config import Settings
from gateway.config_values import BotWeights
from gateway.intake.quarantine import Quarantine
from gateway.queue import Put, Quarantined, State, open_queue
from gateway.sandbox.run import SandboxThread
from tests.support import LOG_LINES, PII_SAMPLES, Gateway, child_env, eventually, lead

HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/124.0.0.0 Safari/537.36")


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "spam", *args],
                          env=child_env(CTGW_QUEUE=settings.queue_url),
                          capture_output=True, text=True, timeout=60)


async def post_bot(http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any]) -> str:
    async with http.post(f"{gw.url}/leads", data=orjson.dumps(body),
                         headers={"Content-Type": "text/plain", "User-Agent": HEADLESS},
                         skip_auto_headers=["User-Agent"]) as resp:
        assert resp.status == 202  # exactly a person's answer
        answer: dict[str, str] = await resp.json()
        assert answer["status"] == "queued"
        return answer["id"]


async def test_a_lead_scored_spam_is_listed_released_and_delivered_once(
    start_gateway: Any, settings: Settings, sandbox: SandboxThread, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(replace(settings, bot_weights=BotWeights()))
    job_id = await post_bot(http, gw, lead(7, _elapsed=100))

    async def listed() -> bool:
        return job_id in cli(settings, "list").stdout

    await eventually(listed, timeout=10, interval=0.3)
    listing = cli(settings, "list").stdout
    [row] = [line for line in listing.splitlines() if line.startswith(job_id)]
    assert row.split("\t")[2:] == ["default", "score=5 signals=fast,origin,agent"]
    assert not any(sample in listing for sample in PII_SAMPLES)
    auth = {"Authorization": f"Bearer {settings.api_tokens[0]}"}
    async with http.get(f"{gw.url}/api/v1/leads/{job_id}", headers=auth) as resp:
        assert (await resp.json())["status"] == "spam"
    assert (await _received(http, sandbox)) == Counter()  # never relayed while quarantined

    released = cli(settings, "release", "--id", job_id)
    assert released.returncode == 0 and "released 1" in released.stdout

    async def delivered() -> bool:
        return bool(await _received(http, sandbox))

    await eventually(delivered, timeout=15, interval=0.2)
    assert cli(settings, "release", "--all").stdout.strip().endswith("released 0")

    async def settled() -> bool:
        async with http.get(f"{gw.url}/api/v1/leads/{job_id}", headers=auth) as resp:
            return bool((await resp.json())["status"] == "delivered")

    await eventually(settled, timeout=10)  # acked: it cannot be leased and sent again
    assert await _received(http, sandbox) == Counter({"req-7": 1})


async def _received(http: aiohttp.ClientSession, sandbox: SandboxThread) -> Counter[str]:
    async with http.get(f"{sandbox.url}/sandbox/requests") as resp:
        return Counter(r["form"]["requestNumber"] for r in await resp.json())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_flood_of_200000_spam_posts_keeps_the_store_under_the_cap(
    start_gateway: Any, settings: Settings
) -> None:
    cap = 5_000
    gw = await start_gateway(replace(settings, spam_max=cap))
    body = orjson.dumps({**lead(0), "_honeypot": "http://spam.example"})
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as flood:
        async def worker(count: int) -> Counter[int]:
            seen: Counter[int] = Counter()
            for _ in range(count):
                async with flood.post(f"{gw.url}/leads", data=body,
                                      headers={"Content-Type": "text/plain"}) as resp:
                    seen[resp.status] += 1
            return seen

        results = await asyncio.gather(*(worker(200_000 // 64 + 1) for _ in range(64)))
    answers = sum(results, Counter())
    assert answers == Counter({202: 64 * (200_000 // 64 + 1)})
    await gw.runner.cleanup()  # a stop writes what the quarantine still holds
    reader = await open_queue(settings.queue_url)
    try:
        counts = (await reader.stats()).counts
        assert 0 < counts[State.SPAM] <= cap, counts
        assert sum(counts[s] for s in (State.READY, State.LEASED, State.DELAYED)) == 0
    finally:
        await reader.close()
    assert not any(s in line for line in LOG_LINES for s in PII_SAMPLES)


def spam(n: int) -> Quarantined:
    return Quarantined(f"spam-{n}", Put("lead", b'{"n": %d}' % n, None), "score=4", 1e9 + n)


async def test_spam_being_written_at_shutdown_is_written_not_rolled_back(
    postgres_url: str,
) -> None:
    queue = await open_queue(postgres_url)
    other = await asyncpg.connect(postgres_url)
    quarantine = Quarantine(queue, keep=100, every=0.01)
    try:
        await queue.quarantine([spam(0)], keep=100)  # job_counts has its spam row
        quarantine.start()
        async with other.transaction():  # the write of spam-1 waits for this lock
            await other.execute("SELECT n FROM job_counts WHERE state = 'spam' FOR UPDATE")
            quarantine.add(spam(1))

            async def write_waits() -> bool:
                return bool(await other.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

            await eventually(write_waits, timeout=5)
            stopping = asyncio.create_task(quarantine.stop())
            # A stop that cut the write off was done at once: the rollback had lost spam-1.
            done, _ = await asyncio.wait([stopping], timeout=0.5)
            assert not done
        await stopping
        assert [s.id for s in await queue.spam(10)] == ["spam-0", "spam-1"]
    finally:
        await other.close()
        await queue.close()
