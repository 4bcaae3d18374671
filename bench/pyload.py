"""Python load generators, each run in its own process; prints one JSON object.

* ``open URL --rate R --seconds S`` — open loop (:mod:`bench.openloop`): latency from the
  moment each request was *due*, and for comparison from the moment it was actually sent.
* ``closed URL --connections C --seconds S`` — the fallback when ``wrk`` is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
import orjson

from . import openloop, payload
from .openloop import Sample

_HEADERS = {"Content-Type": payload.CONTENT_TYPE}


async def _post(session: aiohttp.ClientSession, url: str, data: bytes) -> int:
    try:
        async with session.post(url, data=data, headers=_HEADERS) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of ``values`` (seconds), in ms by default."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 3)

    mean = statistics.fmean(ordered)
    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": round(ordered[-1] * scale, 3), "mean": round(mean * scale, 3)}


def summarise_open(samples: Sequence[Sample], rate: float) -> dict[str, object]:
    sent = sorted(s[2] for s in samples)
    span = sent[-1] - sent[0] if len(sent) > 1 else 0.0
    answered_span = max(s[3] for s in samples) - samples[0][1]
    return {
        "offered_rate": rate,
        "requests": len(samples),
        "statuses": dict(Counter(str(s[0]) for s in samples)),
        "achieved_rate": round((len(sent) - 1) / span, 1) if span else 0.0,
        "answered_rate": round(len(samples) / answered_span, 1) if answered_span else 0.0,
        "latency_ms": percentiles([s[3] - s[1] for s in samples]),
        "service_ms": percentiles([s[3] - s[2] for s in samples]),
        "send_lag_ms": percentiles([s[2] - s[1] for s in samples]),
    }


async def open_loop(url: str, rate: float, seconds: float, warmup: float,
                    prefix: str) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    skip = int(rate * warmup)
    requests = [
        openloop.request_bytes(host, port, "/leads", payload.CONTENT_TYPE, payload.body(i, prefix))
        for i in range(skip + int(rate * seconds))
    ]
    client = openloop.Client(host, port)
    try:
        samples = await openloop.schedule(client, requests, rate)
    finally:
        client.close()
    return summarise_open(samples[skip:], rate)


async def _worker(session: aiohttp.ClientSession, url: str, prefix: str, deadline: float,
                  statuses: Counter[int], latencies: list[float]) -> None:
    n = 0
    while (started := time.monotonic()) < deadline:
        statuses[await _post(session, url, payload.body(n, prefix))] += 1
        latencies.append(time.monotonic() - started)
        n += 1


async def closed_loop(url: str, connections: int, seconds: float,
                      prefix: str) -> dict[str, object]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(
            _worker(session, f"{url}/leads", f"{prefix}-{c}", deadline, statuses, latencies)
            for c in range(connections)
        ))
        elapsed = time.monotonic() - started
    ok = sum(v for k, v in statuses.items() if 0 < k < 400)
    return {"requests": sum(statuses.values()), "ok": ok, "seconds": elapsed,
            "statuses": {str(k): v for k, v in statuses.items()},
            "latency_ms": percentiles(latencies)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyload")
    parser.add_argument("mode", choices=["open", "closed"])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--prefix", default="py")
    args = parser.parse_args(argv)
    if args.mode == "open":
        result = open_loop(args.url, args.rate, args.seconds, args.warmup, args.prefix)
    else:
        result = closed_loop(args.url, args.connections, args.seconds, args.prefix)
    sys.stdout.write(orjson.dumps(asyncio.run(result)).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
