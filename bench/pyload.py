"""Python load generators on :mod:`bench.openloop`'s raw client; each run in its own process,
printing one JSON object.

* ``open URL --rate R --seconds S`` — open loop: latency from the moment each request was
  *due*, and for comparison from the moment it was actually sent.
* ``closed URL --connections C --seconds S`` — the fallback when ``wrk`` is missing: C workers
  each post, wait for the answer, and post again.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson

from bench import openloop, payload
from bench.openloop import Sample


def percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of ``values`` (seconds), in ms by default."""
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


def _client(url: str) -> tuple[openloop.Client, str, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return openloop.Client(host, port), host, port


def _request(host: str, port: int, n: int, prefix: str) -> bytes:
    headers = payload.browser_headers(f"http://{host}:{port}")
    return openloop.request_bytes(host, port, "/leads", headers, payload.body(n, prefix))


async def open_loop(url: str, rate: float, seconds: float, warmup: float,
                    prefix: str) -> dict[str, object]:
    client, host, port = _client(url)
    skip = int(rate * warmup)
    requests = [_request(host, port, i, prefix) for i in range(skip + int(rate * seconds))]
    try:
        samples = await openloop.schedule(client, requests, rate)
    finally:
        client.close()
    return summarise_open(samples[skip:], rate)


async def closed_loop(url: str, connections: int, seconds: float,
                      prefix: str) -> dict[str, object]:
    client, host, port = _client(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    samples: list[Sample] = []

    async def worker(name: str) -> None:
        n = 0
        while (now := loop.time()) < deadline:
            samples.append(await client.post(_request(host, port, n, name), now))
            n += 1

    try:
        await asyncio.gather(*(worker(f"{prefix}-{c}") for c in range(connections)))
    finally:
        client.close()
    statuses = Counter(s[0] for s in samples)
    return {"requests": len(samples), "ok": sum(v for k, v in statuses.items() if 0 < k < 400),
            "seconds": loop.time() - started,
            "statuses": {str(k): v for k, v in statuses.items()},
            "latency_ms": percentiles([s[3] - s[2] for s in samples])}


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
