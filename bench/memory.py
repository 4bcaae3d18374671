"""``python -m bench memory``: the gateway's RSS with N leads queued, bytes on disk per lead,
one ``/metrics`` scrape's time, and intake latency while Prometheus scrapes (:mod:`bench.scrape`).

The queue is filled through the gateway's own :class:`SQLiteQueue` (``put_many`` in batches,
with payloads as intake stores them), not over HTTP. The gateway then runs on that file,
relaying to a sandbox that answers 503 so that nothing drains. The baseline is the same
gateway on an empty queue, measured in the same run. The scrape rounds come last, on the
filled store, once RSS, files and queued counts are taken (their leads add to the queue).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench import payload, procs, scrape
from bench.report import median, say
from gateway.kinds import lead
from gateway.queue import Put, open_queue

_QUEUED = re.compile(r'^ctgw_queue_jobs\{state="(ready|leased|delayed)"\} (\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class MemoryOptions:
    leads: int = 1_000_000
    batch: int = 10_000
    scrapes: int = 5
    settle: float = 5.0
    scrape: scrape.ScrapeOptions = field(default_factory=scrape.ScrapeOptions)


async def fill_queue(url: str, n: int, batch: int, label: str = "memory") -> dict[str, Any]:
    """Put ``n`` leads as intake stores them into the queue at ``url``, ``batch`` a call."""
    accepted = datetime.now(zoneinfo.ZoneInfo("Europe/Moscow"))
    payload.check_stored_fields(accepted)
    prefix, size = secrets.token_hex(4), 0
    queue = await open_queue(url)
    started = time.monotonic()
    try:
        for first in range(0, n, batch):
            items = []
            for i in range(first, min(n, first + batch)):
                number = f"{prefix}-{i}"
                data = orjson.dumps(payload.stored_fields(i, number, accepted))
                size += len(data)
                items.append(Put(lead.KIND, data, number))
            await queue.put_many(items, time.time())
            if first and first % (10 * batch) == 0:
                say(f"{label}: filled {first:,} of {n:,}")
    finally:
        await queue.close()
    seconds = time.monotonic() - started
    return {"leads": n, "seconds": round(seconds, 1), "rate": round(n / seconds),
            "mean_payload_bytes": round(size / n, 1) if n else 0}


def _files(db: Path) -> dict[str, int]:
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        sizes[f"db{suffix}"] = path.stat().st_size if path.exists() else 0
    return sizes


def _scrape(gateway: procs.Proc) -> tuple[float, int]:
    """One ``/metrics`` scrape: its seconds and the queued jobs it reports."""
    started = time.perf_counter()
    status, body = procs.http("GET", f"{gateway.ops_url}/metrics", timeout=120)
    seconds = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    queued = sum(int(float(m[2])) for m in _QUEUED.finditer(body.decode()))
    return seconds, queued


def _measure(workdir: Path, db: Path, sandbox: procs.Proc, opts: MemoryOptions,
             scrape_rounds: bool = False) -> dict[str, Any]:
    extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID}
    with procs.gateway(workdir, db, extra=extra, ready_timeout=300) as gateway:
        ready = gateway.ready_seconds
        scrapes = [_scrape(gateway) for _ in range(opts.scrapes)]
        after_scrape = gateway.memory()
        time.sleep(opts.settle)  # the relay leases, meets 503s, and schedules retries
        scrapes.append(_scrape(gateway))
        settled = gateway.memory()
        files = _files(db)
        scraped = scrape.measure(gateway, workdir, opts.scrape) if scrape_rounds else None
    rss_kib = max(after_scrape["VmRSS"], settled["VmRSS"])
    return {
        "ready_seconds": round(ready, 2),
        "queued": scrapes[-1][1],
        "scrape_ms": [round(s * 1e3, 1) for s, _ in scrapes],
        "scrape_ms_median": round(median([s for s, _ in scrapes]) * 1e3, 1),
        "rss_mib": round(rss_kib / 1024, 1),
        "rss_after_scrape_mib": round(after_scrape["VmRSS"] / 1024, 1),
        "rss_settled_mib": round(settled["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(settled["VmHWM"] / 1024, 1),
        "files": files,
        "scrape_rounds": scraped,
    }


def run(opts: MemoryOptions, workdir: Path) -> dict[str, Any]:
    say(f"memory: baseline on an empty queue, then {opts.leads:,} leads pre-filled")
    workdir.mkdir(parents=True)
    empty, full = workdir / "empty.db", workdir / "full.db"
    with procs.sandbox(workdir, (0.0, 0.0)) as sandbox:
        procs.http("POST", f"{sandbox.url}/sandbox/config", {"fault": "503"})
        baseline = _measure(workdir, empty, sandbox, opts)
        say(f"memory: baseline RSS {baseline['rss_mib']} MiB; filling the queue")
        fill = asyncio.run(fill_queue(f"sqlite:///{full.resolve()}", opts.leads, opts.batch))
        say(f"memory: filled {opts.leads:,} in {fill['seconds']} s; starting the gateway on it")
        loaded = _measure(workdir, full, sandbox, opts, scrape_rounds=opts.scrape.rounds > 0)
    on_disk = loaded["files"]["db"] + loaded["files"]["db-wal"]
    result = {
        "leads": opts.leads, "fill": fill, "baseline": baseline, "loaded": loaded,
        "rss_mib": loaded["rss_mib"], "baseline_rss_mib": baseline["rss_mib"],
        "bytes_per_lead": round(on_disk / max(1, opts.leads), 1),
        "scrape_ms": loaded["scrape_ms_median"],
        "baseline_scrape_ms": baseline["scrape_ms_median"],
        "all_queued": loaded["queued"] == opts.leads,
        "scrapes": loaded.pop("scrape_rounds"),
    }
    say(f"memory: RSS {loaded['rss_mib']} MiB with {loaded['queued']:,} queued, "
        f"{result['bytes_per_lead']} B/lead on disk, /metrics {loaded['scrape_ms']} ms")
    return result
