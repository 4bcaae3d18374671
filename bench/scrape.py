"""Scrapes meanwhile: intake latency at a fixed offered rate while Prometheus scrapes
``/metrics`` every second, against the same with no scrapes. Run by ``python -m bench memory``,
on its gateway over the filled store (the scrape counts the queue, so that is where it costs).

Rounds alternate the two conditions (quiet, scraped, scraped, quiet, ...) on that one gateway
process, so that drift in the machine's noise falls on both alike. The load is the intake
bench's open loop (``python -m bench.pyload open``, in its own process). The scraper is a
thread here that asks as Prometheus does — OpenMetrics accepted, gzip, one keep-alive
connection, each scrape due a fixed interval after the previous one was due — from before the
load starts until it ends.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import intake, probe, procs
from bench.pyload import percentiles
from bench.report import median, say

CONDITIONS = ("quiet", "scraped")
# What Prometheus 2.x sends (scrape_protocols left at their default).
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.53.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


@dataclass(frozen=True)
class ScrapeOptions:
    rounds: int = 5  # per condition
    rate: float = 1000.0
    seconds: float = 5.0
    warmup: float = 1.0
    interval: float = 1.0


class Scraper(threading.Thread):
    """Scrapes ``/metrics`` every ``interval`` seconds until stopped; keeps each one's time."""

    def __init__(self, ops_url: str, interval: float) -> None:
        super().__init__(name="scraper", daemon=True)
        parts = urlsplit(ops_url)
        self._address = (parts.hostname or procs.LOOPBACK, parts.port or 80)
        self._interval = interval
        self._halt = threading.Event()
        self.seconds: list[float] = []
        self.failed = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(*self._address, timeout=30)
        due = time.monotonic()
        try:
            while not self._halt.wait(max(0.0, due - time.monotonic())):
                self._once(conn)
                due += self._interval
        finally:
            conn.close()

    def _once(self, conn: http.client.HTTPConnection) -> None:
        started = time.perf_counter()
        try:
            conn.request("GET", "/metrics", headers=PROMETHEUS_HEADERS)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # the next request opens a new connection
            self.failed += 1
            return
        self.seconds.append(time.perf_counter() - started)
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if response.status != 200 or b"ctgw_queue_jobs" not in body:
            self.failed += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


@contextlib.contextmanager
def _scraping(ops_url: str, interval: float, enabled: bool) -> Iterator[Scraper | None]:
    if not enabled:
        yield None
        return
    scraper = Scraper(ops_url, interval)
    scraper.start()
    try:
        yield scraper
    finally:
        scraper.stop()


def _round(gateway: procs.Proc, condition: str, opts: ScrapeOptions) -> dict[str, Any]:
    cpu, steal = gateway.cpu_seconds(), probe.cpu_times()
    with _scraping(gateway.ops_url, opts.interval, condition == "scraped") as scraper:
        result = intake.python_load(
            "open", gateway.url, "--rate", str(opts.rate), "--seconds", str(opts.seconds),
            "--warmup", str(opts.warmup), "--prefix", secrets.token_hex(4),
            seconds=opts.seconds + opts.warmup,
        )
    seconds, failed = (scraper.seconds, scraper.failed) if scraper else ([], 0)
    result["scrapes"], result["scrapes_failed"] = len(seconds), failed
    result["scrape_ms"] = [round(s * 1e3, 2) for s in seconds]
    result["server_cpu_s"] = round(gateway.cpu_seconds() - cpu, 2)
    result["cpu_steal"] = round(probe.steal_since(steal), 4)
    result["all_202"] = set(result["statuses"]) == {"202"}
    return result


def _say(r: int, opts: ScrapeOptions, condition: str, row: dict[str, Any]) -> None:
    lat = row["latency_ms"]
    say(f"scrape round {r + 1}/{opts.rounds} {condition:<7} p50={lat['p50']:.2f} ms"
        f" p99={lat['p99']:.2f} ms achieved={row['achieved_rate']:.0f}/s"
        f" statuses={row['statuses']} scrapes={row['scrapes']}"
        f" (failed {row['scrapes_failed']}) steal={row['cpu_steal']:.1%}")


def _condition(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: median([row["latency_ms"][key] for row in rows]) for key in ("p50", "p99")} | {
        "achieved_rate": median([row["achieved_rate"] for row in rows]),
        "all_202": all(row["all_202"] for row in rows),
        "cpu_steal": median([row["cpu_steal"] for row in rows]),
    }


def measure(gateway: procs.Proc, workdir: Path, opts: ScrapeOptions) -> dict[str, Any]:
    """The alternating rounds on a running gateway; medians per condition, and their ratio.
    ``workdir`` is on the store's disk: its fsync latency before and after is reported."""
    fsync_before = probe.fsync_ms(workdir)
    say(f"scrape: {opts.rounds} rounds x {CONDITIONS}, open loop at {opts.rate:g}/s for "
        f"{opts.seconds:g}s, /metrics every {opts.interval:g}s in the scraped ones")
    rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
    for r in range(opts.rounds):
        for condition in CONDITIONS if r % 2 == 0 else CONDITIONS[::-1]:
            rounds[condition].append(row := _round(gateway, condition, opts))
            _say(r, opts, condition, row)
    quiet, scraped = _condition(rounds["quiet"]), _condition(rounds["scraped"])
    scrape_s = [s / 1e3 for row in rounds["scraped"] for s in row["scrape_ms"]]
    return {
        "offered_rate": opts.rate, "seconds": opts.seconds, "interval": opts.interval,
        "quiet": quiet, "scraped": scraped, "ratio": scraped["p99"] / quiet["p99"],
        "ratio_per_round": [round(s["latency_ms"]["p99"] / q["latency_ms"]["p99"], 3)
                            for q, s in zip(rounds["quiet"], rounds["scraped"], strict=True)],
        "scrape_ms": percentiles(scrape_s),
        "scrapes": len(scrape_s),
        "scrapes_failed": sum(row["scrapes_failed"] for row in rounds["scraped"]),
        "fsync_ms_before": fsync_before, "fsync_ms_after": probe.fsync_ms(workdir),
        "rounds": rounds,
    }
