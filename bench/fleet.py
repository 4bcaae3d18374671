"""``python -m bench fleet``: the drain of 1, 2 and 3 gateways on one PostgreSQL queue, against
the limit they share.

Each point: a fresh database on the benchmark's own PostgreSQL (:class:`bench.pg.Cluster`), one
sandbox process answering in 0.3-0.9 s, and N gateways on that database with the same
``CTGW_EGRESS`` and ``CTGW_RATE``. The leads are posted across the N listeners at once, as a
load balancer would spread them; the clock starts at the first 202 and stops at the sandbox's
arrival of the last lead it answered 200 (one ``CLOCK_MONOTONIC`` for every process). The
ideal is leads / rate: the pace is the fleet's, so more gateways may not drain faster, only
keep to it. ``--fleet-db-rtt MS`` puts the database a round trip of MS away from the gateways
(:mod:`bench.delay`), as a fleet across data centres has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import delay, pg, probe, procs, relay
from bench.report import say

EGRESS = "bench-nat"


@dataclass(frozen=True)
class FleetOptions:
    leads: int = 300
    sizes: tuple[int, ...] = (1, 2, 3)
    latency: tuple[float, float] = (0.3, 0.9)
    rate: float = 5.0
    post_concurrency: int = 32
    db_rtt: float = 0.0  # seconds added to each round trip to the database


async def _post_across(urls: list[str], n: int, concurrency: int) -> dict[str, Any]:
    shares = [n // len(urls) + (1 if i < n % len(urls) else 0) for i in range(len(urls))]
    each = max(1, concurrency // len(urls))
    posted = await asyncio.gather(*(relay._post_all(url, share, each)
                                    for url, share in zip(urls, shares, strict=True)))
    statuses: dict[int, int] = {}
    for one in posted:
        for status, count in one["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {"statuses": statuses, "shares": shares,
            "first_202": min(p["first_202"] for p in posted),
            "last_202": max(p["last_202"] for p in posted)}


def _wait(sandbox: procs.Proc, gateways: list[procs.Proc], n: int,
          timeout: float) -> dict[str, Any]:
    """Until the sandbox answered 200 to ``n`` leads and the gateways acked them all."""
    deadline, seen_all = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        stats = procs.get_json(f"{sandbox.url}/sandbox/stats")
        if seen_all is None and stats["by_status"].get("200", 0) >= n:
            seen_all = time.monotonic()
        if seen_all is not None and sum(relay._delivered(g) for g in gateways) >= n:
            return {"stats": stats, "seen_all": seen_all, "acked_all": time.monotonic()}
        time.sleep(0.2)
    return {"stats": procs.get_json(f"{sandbox.url}/sandbox/stats"), "seen_all": seen_all,
            "acked_all": None, "timed_out": True}


def _point(size: int, opts: FleetOptions, workdir: Path, server: pg.Cluster) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    database = server.new_database()
    relay_opts = relay.RelayOptions(leads=opts.leads, latency=opts.latency, rate=opts.rate)
    try:
        with procs.sandbox(workdir, opts.latency) as sandbox, contextlib.ExitStack() as stack:
            url = server.url(database)
            if opts.db_rtt > 0:
                port = stack.enter_context(delay.relay(server.port, opts.db_rtt))
                url = url.replace(f":{server.port}/", f":{port}/")
            extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID,
                     "CTGW_RATE": f"{opts.rate:g}", "CTGW_QUEUE": url,
                     "CTGW_EGRESS": EGRESS}
            gateways = []
            for g in range(size):
                folder = workdir / f"gateway-{g + 1}"
                folder.mkdir()
                gateways.append(pg.wait_public(stack.enter_context(
                    procs.gateway(folder, folder / "unused.db", extra=extra))))
            steal = probe.cpu_times()
            posted = asyncio.run(_post_across([g.url for g in gateways], opts.leads,
                                              opts.post_concurrency))
            done = _wait(sandbox, gateways, opts.leads, relay_opts.ideal_seconds * 1.5 + 60)
            arrivals = procs.get_json(f"{sandbox.url}/sandbox/requests")
            delivered_by = [relay._delivered(g) for g in gateways]
    finally:
        server.drop(database)
    summary = relay._summarise(relay_opts, posted, done, arrivals)
    return {**summary, "gateways": size, "shares": posted["shares"],
            "delivered_by_gateway": delivered_by,
            "rate_vs_limit": round(summary["steady_rate"] / opts.rate, 4),
            "cpu_steal": round(probe.steal_since(steal), 4)}


def run(opts: FleetOptions, workdir: Path) -> dict[str, Any]:
    say(f"fleet: {opts.leads} leads for each of {list(opts.sizes)} gateways on one PostgreSQL, "
        f"limit {opts.rate:g}/s, sandbox latency {opts.latency}, "
        f"database round trip +{opts.db_rtt * 1000:g} ms")
    workdir.mkdir(parents=True)
    points = []
    with pg.cluster(workdir) as server:
        for size in opts.sizes:
            row = _point(size, opts, workdir / f"fleet-{size}", server)
            points.append(row)
            say(f"fleet {size} gateway(s): drain {row['drain_seconds']:.1f} s "
                f"= {row['fraction_of_ideal']:.1%} of ideal, steady {row['steady_rate']:.2f}/s, "
                f"429s={row['rate_limited_429']}, max_in_window={row['max_in_window']}, "
                f"duplicates={row['duplicates']}, delivered by {row['delivered_by_gateway']}")
    return {"leads": opts.leads, "rate": opts.rate, "latency": opts.latency,
            "db_rtt": opts.db_rtt,
            "ideal_seconds": opts.leads / opts.rate, "points": points}
