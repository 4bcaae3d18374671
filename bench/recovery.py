"""``python -m bench recovery``: Calltouch outages of 30 s, 180 s and 900 s, and the drain after.

Each outage is a fresh pair of processes: a sandbox (0.3-0.9 s answers) and a gateway on its
own SQLite queue. One warm-up lead is delivered (and then forgotten by the sandbox); then the
sandbox answers 503 to everything, the backlog is posted to ``/leads`` (as a browser's snippet
does) at the outage's start, and the outage lasts its full length from there; then the
sandbox answers again. The gateway's health gate finds it down after 3 failures and sends one
probe at a time, at 1, 2, 4, 8, 8, ... s (``--probe-max`` sets ``CTGW_PROBE_MAX``, the cap);
the first probe answered makes every waiting job due, and the pacer drains them at ``CTGW_RATE``.

Measured on the sandbox's arrival stamps (``CLOCK_MONOTONIC``, one clock for every process):
the calls that reached it during the outage, set against what the probe schedule allows; and
the seconds from the outage's end to the last lead it answered 200, set against the ideal
``backlog / rate``. That recovery splits into the wait for the next probe (up to the cap)
and the drain after it. The gateway's own ``/metrics`` must show the queue empty too.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import probe, procs, relay
from bench.relay import densest_window
from bench.report import Row, say

# The health gate's (gateway.relay.health.Health): the schedule the calls are set against.
THRESHOLD, FIRST_PROBE = 3, 1.0
_HEALTHY = re.compile(r"^ctgw_upstream_healthy\{[^}]*\} (\S+)$", re.MULTILINE)
_JOBS = re.compile(r'^ctgw_queue_jobs\{state="([^"]+)"\} (\S+)$', re.MULTILINE)
_PENDING = ("ready", "leased", "delayed", "held")


@dataclass(frozen=True)
class RecoveryOptions:
    outages: tuple[float, ...] = (30.0, 180.0, 900.0)
    leads: int = 100
    latency: tuple[float, float] = (0.3, 0.9)
    rate: float = 5.0
    post_concurrency: int = 16
    poll: float = 0.5  # seconds between looks at the gateway's /metrics during the outage
    probe_max: float = 8.0  # CTGW_PROBE_MAX

    @property
    def ideal_seconds(self) -> float:
        return self.leads / self.rate


def scheduled_calls(outage: float, down_at: float, latency: float, cap: float) -> int:
    """Calls the gate allows in ``outage`` seconds if it closed ``down_at`` seconds in: the
    failures that closed it, then probes at 1, 2, 4 ... s up to ``cap``, each interval counted
    from the previous probe's answer (``latency`` after it left)."""
    calls, interval, at = THRESHOLD, FIRST_PROBE, down_at + FIRST_PROBE
    while at < outage:
        calls += 1
        interval = min(cap, interval * 2)
        at += latency + interval
    return calls


def _gauges(gateway: procs.Proc) -> dict[str, float]:
    text = procs.http("GET", f"{gateway.ops_url}/metrics", timeout=10)[1].decode()
    found = {f"jobs_{state}": float(count) for state, count in _JOBS.findall(text)}
    healthy = _HEALTHY.findall(text)
    found["healthy"] = min((float(h) for h in healthy), default=float("nan"))
    return found


def _hold(sandbox: procs.Proc, gateway: procs.Proc, started: float, until: float,
          poll: float) -> dict[str, Any]:
    """Keep the sandbox down until ``until``; note when the gateway's gate closed."""
    down_at, last_note = None, started
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        if down_at is None and _gauges(gateway)["healthy"] == 0.0:
            down_at = time.monotonic() - started
        if time.monotonic() - last_note >= 60:
            last_note = time.monotonic()
            calls = procs.get_json(f"{sandbox.url}/sandbox/stats")["received"]
            say(f"recovery: {last_note - started:.0f} s into the outage, {calls} calls so far")
    return {"down_at": down_at}


def _drained(sandbox: procs.Proc, gateway: procs.Proc, n: int,
             timeout: float) -> dict[str, Any]:
    """Until the sandbox answered 200 to ``n`` distinct leads and the gateway's queue is empty."""
    deadline, seen_all = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if seen_all is None:
            rows = procs.get_json(f"{sandbox.url}/sandbox/requests")
            numbers = {r["form"].get("requestNumber") for r in rows if r["status"] == 200}
            seen_all = time.monotonic() if len(numbers) >= n else None
        if seen_all is not None:
            gauges = _gauges(gateway)
            if sum(gauges.get(f"jobs_{s}", 0.0) for s in _PENDING) == 0:
                return {"seen_all": seen_all, "empty": time.monotonic(), "gauges": gauges}
        time.sleep(0.2)
    return {"seen_all": seen_all, "empty": None, "gauges": _gauges(gateway), "timed_out": True}


def _warm_up(sandbox: procs.Proc, gateway: procs.Proc) -> None:
    """One lead delivered first: the outage meets a gateway that knows Calltouch was up (a new
    gate's first call is a probe of its own), with its pacer past its first window."""
    asyncio.run(relay._post_all(gateway.url, 1, 1))
    if _drained(sandbox, gateway, 1, 30).get("timed_out"):
        raise RuntimeError(f"the warm-up lead was not delivered; see {gateway.log}")
    procs.http("POST", f"{sandbox.url}/sandbox/reset")


def _outage(outage: float, opts: RecoveryOptions, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    with procs.sandbox(workdir, opts.latency) as sandbox:
        extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID,
                 "CTGW_RATE": f"{opts.rate:g}", "CTGW_PROBE_MAX": f"{opts.probe_max:g}s"}
        with procs.gateway(workdir, workdir / "queue.db", extra=extra) as gateway:
            _warm_up(sandbox, gateway)
            steal = probe.cpu_times()
            procs.http("POST", f"{sandbox.url}/sandbox/config", {"fault": "503", "fault_rate": 1})
            started = time.monotonic()
            posted = asyncio.run(relay._post_all(gateway.url, opts.leads, opts.post_concurrency))
            held = _hold(sandbox, gateway, started, started + outage, opts.poll)
            procs.http("POST", f"{sandbox.url}/sandbox/config", {"fault": None})
            ended = time.monotonic()
            done = _drained(sandbox, gateway, opts.leads, 3 * opts.ideal_seconds + 60)
            arrivals = procs.get_json(f"{sandbox.url}/sandbox/requests")
    marks = {"started": started, "ended": ended, **held}
    return {**_summarise(outage, opts, marks, posted, done, arrivals),
            "cpu_steal": round(probe.steal_since(steal), 4)}


def _summarise(outage: float, opts: RecoveryOptions, marks: Mapping[str, Any],
               posted: Mapping[str, Any], done: Mapping[str, Any],
               arrivals: list[dict[str, Any]]) -> dict[str, Any]:
    started, ended, down_at = marks["started"], marks["ended"], marks["down_at"]
    during = [a for a in arrivals if a["at"] < ended]
    after = sorted((a for a in arrivals if a["at"] >= ended), key=lambda a: a["at"])
    ok = [a for a in after if a["status"] == 200]
    numbers = {a["form"].get("requestNumber") for a in ok}
    last = max((a["at"] for a in ok), default=float("nan"))
    first = after[0]["at"] if after else float("nan")
    recovery = last - ended
    mean_latency = sum(opts.latency) / 2
    return {
        "outage_seconds": outage, "leads": opts.leads, "ideal_seconds": opts.ideal_seconds,
        "post_statuses": posted["statuses"],
        "post_seconds": round(posted["last_202"] - started, 3),
        "down_after_s": None if down_at is None else round(down_at, 2),
        "calls_during": len(during),
        "calls_before_down": None if down_at is None
        else sum(1 for a in during if a["at"] < started + down_at),
        "statuses_during": _counts(during),
        "scheduled_calls": scheduled_calls(outage, down_at or 0.0, mean_latency,
                                           opts.probe_max),
        "recovery_seconds": round(recovery, 3),
        "ratio_to_ideal": round(recovery / opts.ideal_seconds, 4),
        "first_call_after_s": round(first - ended, 3),
        "drain_seconds": round(last - first, 3),
        "steady_rate": round((len(ok) - 1) / (last - first), 3) if len(ok) > 1 else None,
        "queue_empty_after_s": None if done["empty"] is None
        else round(done["empty"] - ended, 3),
        "statuses_after": _counts(after),
        "rate_limited_429": sum(1 for a in arrivals if a["status"] == 429),
        "max_in_window": len(densest_window([a["at"] for a in arrivals])),
        "unique_delivered": len(numbers), "duplicates": len(ok) - len(numbers),
        "gauges_at_end": done["gauges"], "timed_out": bool(done.get("timed_out")),
        "arrivals": [[round(a["at"] - started, 4), a["status"]] for a in arrivals],
    }


def _counts(arrivals: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in arrivals:
        counts[str(a["status"])] = counts.get(str(a["status"]), 0) + 1
    return counts


def run(opts: RecoveryOptions, workdir: Path) -> dict[str, Any]:
    say(f"recovery: outages {list(opts.outages)} s, {opts.leads} leads queued in each, "
        f"{opts.rate:g}/s (ideal drain {opts.ideal_seconds:.0f} s), probes up to "
        f"{opts.probe_max:g} s apart, sandbox latency "
        f"{opts.latency}; about {sum(opts.outages) / 60 + len(opts.outages):.0f} min")
    points = []
    for outage in opts.outages:
        row = _outage(outage, opts, workdir / f"recovery-{outage:g}")
        points.append(row)
        say(f"recovery after {outage:g} s: {row['calls_during']} calls during it "
            f"(schedule {row['scheduled_calls']}); all {row['unique_delivered']} delivered "
            f"{row['recovery_seconds']:.1f} s after it = {row['ratio_to_ideal']:.2f}x ideal "
            f"(probe wait {row['first_call_after_s']:.1f} s, drain {row['drain_seconds']:.1f} s), "
            f"429s={row['rate_limited_429']}, duplicates={row['duplicates']}")
    return {"options": {**asdict(opts), "ideal_seconds": opts.ideal_seconds}, "points": points}


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def rows(result: Mapping[str, Any]) -> list[Row]:
    opts = result["options"]
    return [row for point in result["points"] for row in _point_rows(point, opts)]


def _point_rows(p: Mapping[str, Any], opts: Mapping[str, Any]) -> list[Row]:
    ideal, rate, cap = p["ideal_seconds"], opts["rate"], opts.get("probe_max", 8.0)
    complete = p["unique_delivered"] == p["leads"] and not p["timed_out"]
    ok = complete and p["recovery_seconds"] <= 1.2 * ideal + cap
    clean = p["rate_limited_429"] == 0 and p["max_in_window"] <= rate and p["duplicates"] == 0
    empty = p["queue_empty_after_s"]
    wait_bound = cap + opts["latency"][1]  # the last probe's answer starts the interval
    return [
        Row(f"recovery after a {p['outage_seconds']:g} s outage, {p['leads']} leads queued",
            f"{p['recovery_seconds']:.1f} s", f"{ideal:g} s ideal", _x(p["ratio_to_ideal"]),
            f"<= 1.2x + {cap:g} s, all delivered", ok),
        Row("  calls during the outage (before the gate closed)",
            f"{p['calls_during']} ({p['calls_before_down']})",
            f"{p['scheduled_calls']} by the schedule",
            _x(p["calls_during"] / p["scheduled_calls"]), "-", None),
        Row("  its end to the first call (the next probe)", f"{p['first_call_after_s']:.1f} s",
            f"{cap:g} s cap", "-", f"<= {wait_bound:g} s",
            p["first_call_after_s"] <= wait_bound),
        Row("  first call to last delivery", f"{p['drain_seconds']:.1f} s",
            f"{ideal:g} s ideal", _x(p["drain_seconds"] / ideal), "-", None),
        Row("  its end to an empty queue in /metrics", "-" if empty is None else f"{empty:.1f} s",
            f"{ideal:g} s ideal", "-" if empty is None else _x(empty / ideal), "-", None),
        Row("  429s; max in 1 s; duplicates",
            f"{p['rate_limited_429']}; {p['max_in_window']}; {p['duplicates']}", "-", "-",
            f"0; <= {rate:g}; 0", clean),
    ]
