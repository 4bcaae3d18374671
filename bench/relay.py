"""Relay: drain N queued leads through the sandbox, against the ideal N / rate seconds.

The sandbox runs as its own process with 0.5-1.5 s answers. Leads are posted as fast as the
gateway takes them; the clock starts at the first 202 and stops at the sandbox's arrival of
the last lead it answered 200. Both read ``CLOCK_MONOTONIC`` (Python's ``time.monotonic`` on
Linux), which is one clock for every process of the machine.

The ideal is N / rate, as the issue states it. The first ``rate`` leads may leave at once, so
a short run can beat it (by one second at most: 1 % of 500 leads at 5/s).
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import payload, probe, procs
from bench.report import median, say

_DELIVERED = re.compile(r'^ctgw_leads_delivered_total\{site="[^"]*"\} (\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class RelayOptions:
    leads: int = 500
    rounds: int = 1
    latency: tuple[float, float] = (0.5, 1.5)
    rate: float = 5.0
    post_concurrency: int = 32

    @property
    def ideal_seconds(self) -> float:
        return self.leads / self.rate


async def _post_all(url: str, n: int, concurrency: int) -> dict[str, Any]:
    prefix, statuses = secrets.token_hex(4), dict[int, int]()
    acked: list[float] = []
    todo = iter(range(n))
    headers = payload.browser_headers(url)

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in todo:
            async with session.post(f"{url}/leads", data=payload.body(i, prefix),
                                    headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 202:
                    acked.append(time.monotonic())

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if not acked:
        raise RuntimeError(f"no lead was acknowledged: {statuses}")
    return {"statuses": statuses, "first_202": min(acked), "last_202": max(acked)}


def _delivered(gateway: procs.Proc) -> int:
    text = procs.http("GET", f"{gateway.ops_url}/metrics")[1].decode()
    return sum(int(float(value)) for value in _DELIVERED.findall(text))


def _wait(sandbox: procs.Proc, gateway: procs.Proc, n: int, timeout: float) -> dict[str, Any]:
    """Poll until the sandbox answered 200 to ``n`` leads and the gateway acked them all."""
    deadline, seen_all = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        stats = procs.get_json(f"{sandbox.url}/sandbox/stats")
        if seen_all is None and stats["by_status"].get("200", 0) >= n:
            seen_all = time.monotonic()
        if seen_all is not None and _delivered(gateway) >= n:
            return {"stats": stats, "seen_all": seen_all, "acked_all": time.monotonic()}
        time.sleep(0.2)
    return {"stats": procs.get_json(f"{sandbox.url}/sandbox/stats"), "seen_all": seen_all,
            "acked_all": None, "timed_out": True}


def _round(opts: RelayOptions, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    with procs.sandbox(workdir, opts.latency) as sandbox:
        extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID,
                 "CTGW_RATE": f"{opts.rate:g}"}
        with procs.gateway(workdir, workdir / "queue.db", extra=extra) as gateway:
            steal = probe.cpu_times()
            posted = asyncio.run(_post_all(gateway.url, opts.leads, opts.post_concurrency))
            done = _wait(sandbox, gateway, opts.leads, opts.ideal_seconds * 1.5 + 60)
            arrivals = procs.get_json(f"{sandbox.url}/sandbox/requests")
    return {**_summarise(opts, posted, done, arrivals),
            "cpu_steal": round(probe.steal_since(steal), 4)}


def densest_window(times: list[float], window: float = 1.0) -> list[float]:
    """The arrivals of the fullest half-open window ``(t - window, t]`` (as the sandbox counts)."""
    ordered, best, lo = sorted(times), (0, 0), 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        if hi - lo + 1 > best[1] - best[0]:
            best = (lo, hi + 1)
    return ordered[best[0]:best[1]]


def tightest_span(times: list[float], n: int) -> float:
    """The shortest time that ``n + 1`` consecutive arrivals took: above 1 s, no window holds
    more than ``n``; how far above is the margin the pacing keeps."""
    ordered = sorted(times)
    return min((ordered[k + n] - ordered[k] for k in range(len(ordered) - n)), default=math.inf)


def _summarise(opts: RelayOptions, posted: dict[str, Any], done: dict[str, Any],
               arrivals: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [a for a in arrivals if a["status"] == 200]
    if len(ok) < 2:
        raise RuntimeError(f"the sandbox answered 200 to {len(ok)} leads; see the gateway log")
    numbers = {a["form"].get("requestNumber") for a in ok}
    start = posted["first_202"]
    first, last = min(a["at"] for a in ok), max(a["at"] for a in ok)
    drain = last - start
    stats = done["stats"]
    densest = densest_window([a["at"] for a in arrivals])
    return {
        "leads": opts.leads,
        "post_statuses": posted["statuses"],
        "post_seconds": round(posted["last_202"] - start, 3),
        "drain_seconds": round(drain, 3),
        "ideal_seconds": opts.ideal_seconds,
        "fraction_of_ideal": round(opts.ideal_seconds / drain, 4),
        "steady_rate": round((len(ok) - 1) / (last - first), 3),
        "acked_all_seconds": None if done["acked_all"] is None
        else round(done["acked_all"] - start, 3),
        "first_arrival_after_202_s": round(first - start, 3),
        "received": stats["received"], "by_status": stats["by_status"],
        "rate_limited_429": stats["by_status"].get("429", 0),
        "max_in_window": stats["max_in_window"],
        "tightest_span_s": round(tightest_span([a["at"] for a in arrivals], int(opts.rate)), 4),
        "unique_delivered": len(numbers), "duplicates": len(ok) - len(numbers),
        "timed_out": bool(done.get("timed_out")),
        # Seconds after the first 202, for a look at pacing: every arrival, and the densest 1 s.
        "densest_window_s": [round(t - start, 4) for t in densest],
        "arrivals": [[round(a["at"] - start, 4), a["status"]] for a in arrivals],
    }


def run(opts: RelayOptions, workdir: Path) -> dict[str, Any]:
    say(f"relay: {opts.rounds} round(s) of {opts.leads} leads at {opts.rate:g}/s "
        f"(ideal {opts.ideal_seconds:.0f} s), sandbox latency {opts.latency}")
    rounds = []
    for r in range(opts.rounds):
        row = _round(opts, workdir / f"relay-{r}")
        rounds.append(row)
        say(f"relay round {r + 1}/{opts.rounds}: {row['drain_seconds']:.1f} s "
            f"= {row['fraction_of_ideal']:.1%} of ideal, 429s={row['rate_limited_429']}, "
            f"max_in_window={row['max_in_window']}, "
            f"tightest {int(opts.rate) + 1} in {row['tightest_span_s']:.3f} s, "
            f"duplicates={row['duplicates']}")
    return {
        "leads": opts.leads, "rate": opts.rate, "latency": opts.latency,
        "ideal_seconds": opts.ideal_seconds,
        "drain_seconds": median([r["drain_seconds"] for r in rounds]),
        "fraction_of_ideal": median([r["fraction_of_ideal"] for r in rounds]),
        "rate_limited_429": sum(r["rate_limited_429"] for r in rounds),
        "max_in_window": max(r["max_in_window"] for r in rounds),
        "tightest_span_s": min(r["tightest_span_s"] for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "complete": all(r["unique_delivered"] == opts.leads and not r["timed_out"]
                        for r in rounds),
        "rounds": rounds,
    }
