"""How noisy the machine was, and what the gateway itself saw.

* CPU steal (time a hypervisor gave our vCPUs to someone else) over a round, from /proc/stat;
* the disk's fsync latency, which bounds a durable acknowledgement from below;
* the gateway's own answer-time histogram (``ctgw_http_request_duration_seconds``) over a
  round, which leaves out the load generator's share of the latency.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from bench import procs
from bench.pyload import percentiles

_BUCKET = re.compile(
    r'^ctgw_http_request_duration_seconds_bucket\{(?=[^}]*route="/leads")[^}]*le="([^"]+)"[^}]*\}'
    r" (\S+)$",
    re.MULTILINE,
)


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def steal_since(start: tuple[int, int]) -> float:
    """Share of CPU time stolen since ``start`` (0..1)."""
    steal, total = cpu_times()
    return (steal - start[0]) / max(1, total - start[1])


def fsync_ms(directory: Path, count: int = 200) -> dict[str, float]:
    """Latency of ``count`` 4 KiB write + fsync pairs in ``directory``."""
    path = directory / "fsync-probe.bin"
    times = []
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"\0" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return percentiles(times)


def answer_buckets(gateway: procs.Proc) -> dict[float, float]:
    """Cumulative counts of the gateway's ``/leads`` answer times, by upper bound (s)."""
    text = procs.http("GET", f"{gateway.ops_url}/metrics")[1].decode()
    return {float(le): float(count) for le, count in _BUCKET.findall(text)}


def answer_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Over a round: the share answered within 10 ms, and the bucket bound holding p99."""
    diff = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return {}
    p99_bound = next(le for le, count in diff.items() if count >= 0.99 * total)
    return {"answered": total, "within_10ms": round(diff.get(0.01, 0.0) / total, 4),
            "p99_at_most_ms": p99_bound * 1e3}
