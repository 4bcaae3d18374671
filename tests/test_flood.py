"""A flood of junk from many connections and addresses while real leads arrive.

Real processes: the sandbox, the gateway with the production client limit and bot score, and
the flood (:mod:`bench.junk`) in a process of its own, so that its load does not skew the real
leads' timings taken here. Every real lead must be acknowledged and delivered once, nothing of
the junk relayed, the gateway alive and within its memory bound. The real leads' latency is
reported (printed and recorded with ``record_property``), not asserted: speed is measured by
``python -m bench flood``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench import flood, junk
from bench.pyload import percentiles
from tests.support import (
    TOKEN,
    Process,
    child_env,
    eventually,
    lead,
    sandbox_requests,
    spawn_gateway,
    spawn_sandbox,
)

ROOT = Path(__file__).resolve().parent.parent
REAL, RATE = 50, 10.0  # real leads, and how many a second arrive
JUNK_CONNECTIONS, LORIS = 150, 16
MAX_CONNECTIONS, READ_TIMEOUT = 256, 2.0
RSS_GROWTH_MIB = 50


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def real_lead(n: int) -> tuple[str, bytes]:
    """What the snippet posts for a person: numbered, and sent well after the page loaded."""
    number = f"flood-real-{n}"
    return number, orjson.dumps(lead(n, requestNumber=number, _elapsed=5000 + 37 * n))


@pytest.fixture
def flooders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


async def start_flood(url: str, flooders: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """The flood in its own process (a plain one: its lines are no gateway's log lines)."""
    args = junk.command(url, connections=JUNK_CONNECTIONS, loris=LORIS, sources="127.2.0.0/16",
                        token=TOKEN)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, *args], env=child_env(PYTHONPATH=path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    flooders.append(proc)
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    except TimeoutError:
        proc.kill()  # which ends the blocked read too
        raise
    assert first.startswith("flooding "), first  # every junk connection has had an answer
    return proc


async def stop_flood(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=40)
    assert proc.returncode == 0, out
    summary: dict[str, Any] = orjson.loads(
        next(line for line in out.splitlines() if line.startswith("junk "))[5:]
    )
    return summary


async def delivered(http: aiohttp.ClientSession, sandbox_url: str) -> Counter[str]:
    rows = await sandbox_requests(http, sandbox_url)
    return Counter(r["form"].get("requestNumber") for r in rows if r["status"] == 200)


@pytest.mark.slow
async def test_real_leads_get_through_a_flood_of_junk(
    tmp_path: Path, http: aiohttp.ClientSession, processes: list[Process],
    flooders: list[subprocess.Popen[str]], record_property: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox, sandbox_url = spawn_sandbox("0.02,0.1")
    processes.append(sandbox)
    gateway, url, ops = spawn_gateway({
        **flood.gateway_env(MAX_CONNECTIONS, READ_TIMEOUT, TOKEN),
        "CTGW_SITE_ID": "18990", "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": f"sqlite:///{tmp_path / 'queue.db'}",
        "CTGW_LISTEN": "127.0.0.1:0", "CTGW_OPS_LISTEN": "127.0.0.1:0",
    })
    processes.append(gateway)
    pid = gateway.proc.pid
    leads = [real_lead(n) for n in range(REAL)]
    sources = flood.addresses("127.3.0.0/24")
    # The first lead alone: its one-time costs (SQLite pages, lazy imports) fall before the bound.
    assert [s.status for s in await flood.send_leads(url, leads[:1], RATE, sources)] == [202]
    rss_before = rss_kib(pid)

    flooder = await start_flood(url, flooders)
    sent = await flood.send_leads(url, leads[1:], RATE, sources)
    rss_in_flood = rss_kib(pid)
    junk_summary = await stop_flood(flooder)
    rss_after = rss_kib(pid)

    latency = percentiles([s.seconds for s in sent if s.status == 202])
    figures = {
        "real_leads": len(sent), "real_p50_ms": latency.get("p50"),
        "real_p99_ms": latency.get("p99"), "real_max_ms": latency.get("max"),
        "junk_requests": junk_summary["requests"], "junk_rate_per_s": junk_summary["rate"],
        "junk_by_status": junk_summary["by_status"], "loris": junk_summary["loris"],
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_in_flood_mib": round(rss_in_flood / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "peak_rss_mib": round(rss_kib(pid, "VmHWM") / 1024, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    with capsys.disabled():
        print(f"\n[flood] {orjson.dumps(figures).decode()}")

    assert [s.status for s in sent] == [202] * len(sent)
    numbers = Counter(number for number, _ in leads)

    async def all_delivered() -> bool:
        return numbers.keys() <= (await delivered(http, sandbox_url)).keys()

    await eventually(all_delivered, timeout=REAL / 5 + 30, interval=0.5)
    arrivals = await sandbox_requests(http, sandbox_url)
    record_property("upstream_429", sum(1 for r in arrivals if r["status"] == 429))
    assert await delivered(http, sandbox_url) == numbers  # each real lead once
    assert {r["form"].get("requestNumber") for r in arrivals} <= numbers.keys()  # no junk

    assert gateway.proc.poll() is None
    async with http.get(f"{ops}/healthz") as resp:
        assert resp.status == 200
    assert max(rss_in_flood, rss_after) - rss_before < RSS_GROWTH_MIB * 1024, figures
    # The flood was what it claims: bots answered like people, the rest refused in every way,
    # never with a 5xx; the slow-loris connections cut off.
    statuses = {int(s) for s in junk_summary["by_status"]}
    assert {202, 400, 401, 403, 404, 413, 415, 422, 429} <= statuses, junk_summary["by_status"]
    assert not {s for s in statuses if s >= 500}, junk_summary["by_status"]
    assert junk_summary["loris"]["cut"] >= LORIS, junk_summary["loris"]
