"""Flood: real leads' acknowledgement latency with no flood, then under a flood of junk.

One gateway process with the production client limit and bot score, relaying to the sandbox
in its own process. Real leads go out open loop at a fixed rate (lead *i* is due at
``t0 + i / rate``; latency counts from then, so a slow gateway cannot slow the sender), each
from its own loopback address, the way the snippet sends them: ``text/plain`` JSON, the site's
``Origin``, a browser's ``User-Agent``. First a baseline with nothing else going on, then the
same again while :mod:`bench.junk` floods the gateway from another process. Afterwards every
real lead must have been delivered exactly once and nothing of the junk.

``tests/test_flood.py`` runs the same scenario, shorter, and asserts what must hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import junk, payload, procs
from bench.pyload import percentiles
from bench.report import Row, say

TOKEN = "bench-flood-token-0123456789"
_RECEIVED = re.compile(
    r'^ctgw_leads_received_total\{channel="(\w+)",outcome="(\w+)",site="[^"]*"\} (\S+)$',
    re.MULTILINE)
_REFUSED = re.compile(r"^ctgw_http_connections_refused_total (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class FloodOptions:
    leads: int = 150  # real leads in each phase
    rate: float = 10.0  # real leads per second
    connections: int = 150  # junk connections, each in a closed loop
    loris: int = 16  # slow-loris connections
    max_connections: int = 256
    read_timeout: float = 3.0  # CTGW_HEADER_TIMEOUT and CTGW_BODY_TIMEOUT
    junk_sources: str = "127.2.0.0/16"
    real_sources: str = "127.3.0.0/16"
    rss_growth_mib: float = 50.0


def gateway_env(max_connections: int, read_timeout: float, token: str) -> dict[str, str]:
    """The production client limit and bot score (spelt out: test helpers turn them off)."""
    return {
        "CTGW_CLIENT_RATE": "10/min",
        "CTGW_BOT_WEIGHTS": "fast=2,origin=1,agent=2",
        "CTGW_BOT_THRESHOLD": "2",
        "CTGW_MAX_CONNECTIONS": str(max_connections),
        "CTGW_HEADER_TIMEOUT": f"{read_timeout:g}s",
        "CTGW_BODY_TIMEOUT": f"{read_timeout:g}s",
        "CTGW_API_TOKENS": token,
    }


def addresses(network: str) -> Iterator[str]:
    return (str(ip) for ip in ipaddress.ip_network(network).hosts())


@dataclass(frozen=True)
class Sent:
    number: str
    status: int  # 0: no answer
    seconds: float  # from the moment the lead was due until its answer was read


async def send_leads(url: str, leads: Sequence[tuple[str, bytes]], rate: float,
                     sources: Iterator[str], timeout: float = 30.0) -> list[Sent]:
    """Post ``(requestNumber, body)`` pairs to ``/leads`` open loop, each from its own source."""
    loop = asyncio.get_running_loop()
    headers = payload.browser_headers(url)

    async def one(number: str, body: bytes, source: str, due: float) -> Sent:
        status, answered = 0, 0.0
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as http, http.post(f"{url}/leads", data=body, headers=headers) as response:
                await response.read()
                status = response.status
                answered = loop.time()
        return Sent(number, status, (answered or loop.time()) - due)

    start = loop.time() + 0.05
    tasks = []
    for i, (number, body) in enumerate(leads):
        due = start + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)  # the open loop's pace
        tasks.append(asyncio.create_task(one(number, body, next(sources), due)))
    return list(await asyncio.gather(*tasks))


def latency(sent: Sequence[Sent]) -> dict[str, Any]:
    """Percentiles (ms) of the acknowledged leads, and the answers by status."""
    return {"statuses": dict(Counter(str(s.status) for s in sent)),
            "latency_ms": percentiles([s.seconds for s in sent if s.status == 202]),
            "each_ms": [round(s.seconds * 1e3, 2) for s in sent]}


def _real(n: int, prefix: str) -> tuple[str, bytes]:
    return f"{prefix}-{n}", payload.body(n, prefix)


def _gateway_counts(gateway: procs.Proc) -> dict[str, Any]:
    text = procs.http("GET", f"{gateway.ops_url}/metrics")[1].decode()
    received: dict[str, int] = {}
    for c, o, v in _RECEIVED.findall(text):  # every site's, the unrouted ("") ones too
        if float(v):
            received[f"{c}/{o}"] = received.get(f"{c}/{o}", 0) + int(float(v))
    refused = _REFUSED.search(text)
    return {"received": received, "connections_refused": int(float(refused[1])) if refused else 0}


def _flooded(workdir: Path, gateway: procs.Proc, opts: FloodOptions,
             leads: Sequence[tuple[str, bytes]], sources: Iterator[str]) -> dict[str, Any]:
    """Real leads under the flood; the flood's own summary; the gateway's memory and CPU."""
    args = junk.command(gateway.url, connections=opts.connections, loris=opts.loris,
                        sources=opts.junk_sources, token=TOKEN)
    before, cpu = gateway.memory(), gateway.cpu_seconds()
    started = time.monotonic()
    popen = procs._spawn(args, workdir / "junk.log", stdout_pipe=True)
    url = procs._read_url_line(popen, "flooding", 60)
    with procs._running(procs.Proc("junk", popen, url, workdir / "junk.log")) as flood:
        sent = asyncio.run(send_leads(gateway.url, leads, opts.rate, sources))
        after, cpu = gateway.memory(), gateway.cpu_seconds() - cpu
        seconds = time.monotonic() - started
        flood.stop(grace=40)
        assert popen.stdout is not None
        lines = popen.stdout.read().decode().splitlines()
    summary = orjson.loads(next(line for line in lines if line.startswith("junk "))[5:])
    return {"sent": sent, "junk": summary, "rss_before_kib": before["VmRSS"],
            "rss_after_kib": after["VmRSS"], "peak_rss_kib": after["VmHWM"],
            "gateway_cpu_share": round(cpu / seconds, 3)}


def _delivered(sandbox: procs.Proc, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.get_json(f"{sandbox.url}/sandbox/stats")["by_status"].get("200", 0) >= n:
            break
        time.sleep(0.5)
    rows: list[dict[str, Any]] = procs.get_json(f"{sandbox.url}/sandbox/requests")
    return rows


def _deliveries(arrivals: Sequence[Mapping[str, Any]], real: set[str]) -> dict[str, Any]:
    ok = Counter(a["form"].get("requestNumber") for a in arrivals if a["status"] == 200)
    return {"delivered": len(real & ok.keys()), "missing": len(real - ok.keys()),
            "duplicates": sum(c - 1 for c in ok.values()),
            "junk_relayed": sum(1 for a in arrivals if a["form"].get("requestNumber") not in real),
            "upstream_429": sum(1 for a in arrivals if a["status"] == 429)}


def run(opts: FloodOptions, workdir: Path) -> dict[str, Any]:
    say(f"flood: {opts.leads} real leads at {opts.rate:g}/s alone, then under {opts.connections}"
        f" junk connections and {opts.loris} slow-loris ones")
    workdir.mkdir(parents=True)
    base = [_real(n, "base") for n in range(opts.leads)]
    real = [_real(n, "real") for n in range(opts.leads)]
    sources = addresses(opts.real_sources)
    with procs.sandbox(workdir, (0.02, 0.1)) as sandbox:
        extra = {**gateway_env(opts.max_connections, opts.read_timeout, TOKEN),
                 "CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID}
        with procs.gateway(workdir, workdir / "queue.db", extra=extra) as gateway:
            baseline = asyncio.run(send_leads(gateway.url, base, opts.rate, sources))
            say(f"flood: baseline {latency(baseline)['latency_ms']}")
            flooded = _flooded(workdir, gateway, opts, real, sources)
            counts = _gateway_counts(gateway)
            arrivals = _delivered(sandbox, 2 * opts.leads, 2 * opts.leads / 5 * 1.5 + 60)
            healthy = procs.http("GET", f"{gateway.ops_url}/healthz")[0] == 200
            alive = gateway.popen.poll() is None
    return _summarise(opts, baseline, flooded, counts, arrivals, healthy and alive,
                      {n for n, _ in base + real})


def _summarise(opts: FloodOptions, baseline: list[Sent], flooded: dict[str, Any],
               counts: dict[str, Any], arrivals: list[dict[str, Any]], healthy: bool,
               real: set[str]) -> dict[str, Any]:
    alone, under = latency(baseline), latency(flooded["sent"])
    junk_summary = flooded["junk"]
    growth = (flooded["rss_after_kib"] - flooded["rss_before_kib"]) / 1024
    result = {
        "leads": opts.leads, "rate": opts.rate, "connections": opts.connections,
        "loris": opts.loris, "baseline": alone, "flooded": under,
        "p50_ratio": round(under["latency_ms"]["p50"] / alone["latency_ms"]["p50"], 2),
        "p99_ratio": round(under["latency_ms"]["p99"] / alone["latency_ms"]["p99"], 2),
        "junk": junk_summary, "gateway": counts,
        "gateway_cpu_share": flooded["gateway_cpu_share"],
        "rss_before_mib": round(flooded["rss_before_kib"] / 1024, 1),
        "rss_after_mib": round(flooded["rss_after_kib"] / 1024, 1),
        "peak_rss_mib": round(flooded["peak_rss_kib"] / 1024, 1),
        "rss_growth_mib": round(growth, 1), "rss_growth_limit_mib": opts.rss_growth_mib,
        "all_acked": all(s.status == 202 for s in baseline + flooded["sent"]),
        "healthy_after": healthy, **_deliveries(arrivals, real),
    }
    say(f"flood: under the flood {under['latency_ms']}; junk {junk_summary['requests']} "
        f"requests at {junk_summary['rate']}/s {junk_summary['by_status']}; "
        f"slow-loris {junk_summary['loris']}; gateway CPU {result['gateway_cpu_share']:.0%} "
        f"of a core; RSS {result['rss_before_mib']} -> {result['rss_after_mib']} MiB")
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    alone, under = result["baseline"]["latency_ms"], result["flooded"]["latency_ms"]
    junk_summary, n = result["junk"], 2 * result["leads"]
    delivered_ok = (result["delivered"] == n and result["duplicates"] == 0
                    and result["junk_relayed"] == 0)
    return [
        Row(f"real leads p50 under flood ({result['rate']:g}/s)", f"{under['p50']:.1f} ms",
            f"{alone['p50']:.1f} ms alone", f"{result['p50_ratio']:.2f}x", "-", None),
        Row("real leads p99 under flood", f"{under['p99']:.1f} ms",
            f"{alone['p99']:.1f} ms alone", f"{result['p99_ratio']:.2f}x", "-", None),
        Row(f"  junk served ({result['connections']} conn, {result['loris']} loris)",
            f"{junk_summary['rate']:.0f}/s", f"{junk_summary['requests']} requests", "-", "-",
            None),
        Row("  real leads acked", "all 202" if result["all_acked"] else "NOT all 202", "-", "-",
            "all 202", result["all_acked"]),
        Row("  real delivered once, junk relayed", f"{result['delivered']}/{n}, "
            f"{result['junk_relayed']}", "-", "-", f"{n}/{n}, 0", delivered_ok),
        Row("  gateway RSS growth in the flood", f"{result['rss_growth_mib']:.1f} MiB",
            f"{result['rss_before_mib']:.1f} MiB before", "-",
            f"< {result['rss_growth_limit_mib']:g} MiB, /healthz 200",
            result["rss_growth_mib"] < result["rss_growth_limit_mib"]
            and result["healthy_after"]),
    ]
