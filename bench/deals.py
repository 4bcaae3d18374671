"""Deals: a bulk drain through lead-service, leads' latency meanwhile, and NDJSON intake.

Every server is its own process: the gateway, and the sandbox (0.3-0.9 s answers). Times are
``CLOCK_MONOTONIC`` in every process (the sandbox's rows carry the kernel's arrival stamp on
that clock), so a 202 read here and an arrival there are on one time line.

1. **Drain.** 20,000 deals go to ``POST /api/v1/deals`` as NDJSON, a few requests of 5,000
   lines one after another; the relay sends them up to 100 a call on the one pacer it shares
   with leads. The drain runs from the first 202 to the sandbox's arrival of the last deal
   call; its rate is set against ``rate x 100`` items/s. Leads go first, so each lead posted
   meanwhile takes a call slot from the deals. So the drain's rate is also set against what
   the slots the leads left could carry, and the deals' own rate is taken once the last lead
   has gone (over whole pacer windows: see :func:`steady_rate`).
2. **Leads during the drain.** A lead every 0.5 s through ``/leads`` (the snippet's headers)
   while the deals drain; latency is its arrival at the sandbox (its ``register`` row, matched
   by ``requestNumber``) minus its 202. The baseline is the same leads on the same processes
   before the drain, with nothing else queued (a few seconds after readiness: a gateway just
   ready may hold its first leads up to a second).
3. **NDJSON intake.** A separate gateway, whose relay is idle (``CTGW_RATE`` 0.001 towards a
   port nobody listens on: one call fails, the next is 1,000 s away), takes a 100,000-line
   upload generated chunk by chunk and streamed as the request body. Deals committed per
   second (lines / time from the request's start to its 202) are set against a 10,000-line
   upload to the same gateway just before (itself after a 2,000-line warm-up, not measured);
   the gateway's peak RSS during the upload (``VmHWM``, reset through ``/proc/PID/clear_refs``
   first, and ``VmRSS`` sampled meanwhile) against its RSS before.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import statistics
import threading
import time
import zoneinfo
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import payload, probe, procs
from bench.pyload import percentiles
from bench.relay import tightest_span
from bench.report import Row, median, say
from gateway.kinds import deal as deal_kind

TOKEN = "bench-deals-token-0123456789"  # the benchmark's own, not a secret
ACCESS_TOKEN = "bench-access-token"  # any non-empty one: the sandbox takes all
DEAL_METHODS = frozenset({deal_kind.METHOD_CREATE, deal_kind.METHOD_UPDATE})
SITE_ZONE = zoneinfo.ZoneInfo("Europe/Moscow")  # the gateway's default CTGW_TIMEZONE
MIB = 1024 * 1024
_DELIVERED = re.compile(
    r'^ctgw_jobs_delivered_total\{kind="([^"]+)"(?:,site="[^"]*")?\} (\S+)$', re.MULTILINE
)


@dataclass(frozen=True)
class DealsOptions:
    deals: int = 20_000
    request_lines: int = 5_000  # NDJSON lines per request of the drain
    leads: int = 60  # leads in each phase: baseline, then during the drain
    lead_interval: float = 0.5
    rounds: int = 1  # drain rounds (fresh processes each)
    ndjson_lines: int = 100_000
    ndjson_baseline_lines: int = 10_000
    ndjson_warmup_lines: int = 2_000  # posted first and not measured
    ndjson_rounds: int = 1
    chunk_lines: int = 1_000  # lines generated and written at a time
    settle: float = 3.0  # seconds between the gateway's readiness and the first lead
    latency: tuple[float, float] = (0.3, 0.9)
    faults: float = 0.0  # the share of calls the sandbox answers 503 to
    rate: float = 5.0
    batch: int = deal_kind.DealCreateKind.batch

    @property
    def ideal_rate(self) -> float:
        """Items per second if every call slot carried a full batch of deals."""
        return self.rate * self.batch


@dataclass(frozen=True)
class Upload:
    lines: int
    bytes: int
    started: float  # monotonic, as the request was begun
    answered: float  # monotonic, as its answer's head was read
    status: int
    answer: dict[str, Any]

    @property
    def seconds(self) -> float:
        return self.answered - self.started

    @property
    def accepted(self) -> int:
        return int(self.answer.get("accepted", 0))

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "bytes": self.bytes, "status": self.status,
                "seconds": round(self.seconds, 3), "rate": round(self.lines / self.seconds, 1),
                "accepted": self.accepted, "merged": self.answer.get("merged"),
                "rejected": self.answer.get("rejected"),
                "errors": (self.answer.get("errors") or [])[:5]}


# --- posting -------------------------------------------------------------------------------


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900, sock_read=300))


async def _chunks(lines: int, chunk: int, prefix: str, moment: datetime,
                  sent: list[int]) -> AsyncIterator[bytes]:
    """The upload, made a chunk at a time as the connection takes it: never whole."""
    for first in range(0, lines, chunk):
        data = payload.deal_lines(first, min(chunk, lines - first), prefix, moment)
        sent[0] += len(data)
        yield data


async def post_deals(session: aiohttp.ClientSession, url: str, lines: int,
                     body: bytes | None = None, *, chunk: int = 1_000,
                     prefix: str = "") -> Upload:
    """One NDJSON post: ``body`` as given, or ``lines`` deals streamed as they are made."""
    sent = [len(body) if body is not None else 0]
    data: bytes | AsyncIterator[bytes] = body if body is not None else _chunks(
        lines, chunk, prefix or secrets.token_hex(4), datetime.now(SITE_ZONE), sent)
    headers = {"Content-Type": payload.NDJSON, "Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    async with session.post(f"{url}/api/v1/deals", data=data, headers=headers) as response:
        answered = time.monotonic()
        raw = await response.read()
    answer: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        answer = orjson.loads(raw)
    return Upload(lines, sent[0], started, answered, response.status,
                  answer if isinstance(answer, dict) else {})


async def _lead(session: aiohttp.ClientSession, url: str, n: int, prefix: str,
                due: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    posted = time.monotonic()
    async with session.post(f"{url}/leads", data=payload.body(n, prefix),
                            headers=payload.browser_headers(url)) as response:
        await response.read()
    acked = time.monotonic()
    return {"number": f"{prefix}-{n}", "status": response.status, "acked": acked,
            "answer_s": acked - posted}


async def send_leads(session: aiohttp.ClientSession, url: str, numbers: range, prefix: str,
                     interval: float) -> list[dict[str, Any]]:
    """Leads open loop, one every ``interval`` s: lead *i* is posted at ``t0 + i * interval``."""
    t0 = time.monotonic()
    return list(await asyncio.gather(*(_lead(session, url, n, prefix, t0 + i * interval)
                                       for i, n in enumerate(numbers))))


# --- 1 and 2: the drain, and leads meanwhile -----------------------------------------------


async def _upload_all(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes],
                      sizes: Sequence[int], first_done: asyncio.Event) -> list[Upload]:
    uploads = []
    try:
        for body, lines in zip(bodies, sizes, strict=True):
            uploads.append(await post_deals(session, url, lines, body))
            first_done.set()
    finally:
        first_done.set()
    return uploads


async def _drain_posts(opts: DealsOptions, url: str) -> dict[str, Any]:
    """Baseline leads; then the deals, and (from the first 202 on) leads meanwhile."""
    prefix, moment = secrets.token_hex(4), datetime.now(SITE_ZONE)
    sizes = [min(opts.request_lines, opts.deals - first)
             for first in range(0, opts.deals, opts.request_lines)]
    # Made before the clock starts, so that making them slows neither the sender nor the 202s.
    bodies = [payload.deal_lines(first, n, f"{prefix}-d", moment)
              for first, n in zip(range(0, opts.deals, opts.request_lines), sizes, strict=True)]
    async with _session() as session:
        # A gateway just ready may hold its first leads up to a second: not what is measured.
        await asyncio.sleep(opts.settle)
        quiet = await send_leads(session, url, range(opts.leads), prefix, opts.lead_interval)
        await asyncio.sleep(1.0)  # the last baseline lead is delivered; the pacer is idle
        first_done = asyncio.Event()
        uploading = asyncio.create_task(_upload_all(session, url, bodies, sizes, first_done))
        await first_done.wait()
        busy = await send_leads(session, url, range(opts.leads, 2 * opts.leads), prefix,
                                opts.lead_interval)
        uploads = await uploading
    return {"quiet": quiet, "busy": busy, "uploads": uploads}


def delivered(gateway: procs.Proc) -> dict[str, int]:
    text = procs.http("GET", f"{gateway.ops_url}/metrics")[1].decode()
    return {kind: int(float(count)) for kind, count in _DELIVERED.findall(text)}


def _wait(gateway: procs.Proc, wanted: Mapping[str, int], timeout: float) -> dict[str, Any]:
    """Poll until the gateway counts ``wanted`` jobs delivered, by kind."""
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        seen = delivered(gateway)
        if all(seen.get(kind, 0) >= n for kind, n in wanted.items()):
            return {"delivered": seen, "timed_out": False}
        time.sleep(0.5)
    return {"delivered": seen, "timed_out": True}


def _drain_round(opts: DealsOptions, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    with procs.sandbox(workdir, opts.latency) as sandbox:
        extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID,
                 "CTGW_RATE": f"{opts.rate:g}", "CTGW_API_TOKENS": TOKEN,
                 "CTGW_ACCESS_TOKEN": ACCESS_TOKEN}
        if opts.faults:
            procs.http("POST", f"{sandbox.url}/sandbox/config",
                       {"fault": "503", "fault_rate": opts.faults})
        with procs.gateway(workdir, workdir / "queue.db", extra=extra) as gateway:
            steal = probe.cpu_times()
            posted = asyncio.run(_drain_posts(opts, gateway.url))
            say(f"deals: {opts.deals:,} posted, {2 * opts.leads} leads sent; waiting for the "
                "drain")
            ideal = opts.deals / opts.ideal_rate + 2 * opts.leads / opts.rate
            done = _wait(gateway, {deal_kind.KIND_CREATE: opts.deals, "lead": 2 * opts.leads},
                         2 * ideal + 60)
            cpu_steal = probe.steal_since(steal)
            rows = procs.get_json(f"{sandbox.url}/sandbox/requests", timeout=120)
            stats = procs.get_json(f"{sandbox.url}/sandbox/stats")
            applied = len(procs.get_json(f"{sandbox.url}/sandbox/deals", timeout=120)["deals"])
    return {**_drain_summary(opts, posted, rows, stats), "applied_deals": applied,
            "delivered": done["delivered"], "timed_out": done["timed_out"],
            "cpu_steal": round(cpu_steal, 4)}


def _calls(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Deal calls as the sandbox saw them: how many, and how full."""
    calls = [r for r in rows if r["method"] in DEAL_METHODS]
    items = [int(r["items"]) for r in calls]
    return {"calls": len(calls), "items": sum(items),
            "by_status": {str(s): sum(1 for r in calls if r["status"] == s)
                          for s in sorted({r["status"] for r in calls})},
            "items_per_call": {"mean": round(statistics.fmean(items), 2) if items else 0,
                               "min": min(items, default=0), "max": max(items, default=0)}}


def steady_rate(calls: Sequence[Mapping[str, Any]], count: int) -> tuple[float, int]:
    """Items/s over whole pacer windows, and the calls it spans: from the first call to the
    last that is a multiple of ``count`` calls later. The pacer lets call *k* out a window
    after call *k - count*, so these spans are whole windows, however the calls bunch within
    one (a plain first-to-last span would count a part of a burst as if it were a window)."""
    ordered = sorted(calls, key=lambda r: r["at"])
    last = (len(ordered) - 1) // count * count
    if last < count:
        return float("nan"), len(ordered)
    items = sum(int(r["items"]) for r in ordered[:last])
    return items / (ordered[last]["at"] - ordered[0]["at"]), last + 1


def _drain_summary(opts: DealsOptions, posted: Mapping[str, Any],
                   rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any]) -> dict[str, Any]:
    uploads: list[Upload] = posted["uploads"]
    calls = [r for r in rows if r["method"] in DEAL_METHODS]
    if not calls or not uploads:
        raise RuntimeError("no deal call reached the sandbox; see the gateway log")
    first_202 = min(u.answered for u in uploads)
    start = min(u.started for u in uploads)
    last = max(r["at"] for r in calls)
    drain = last - first_202
    leads_in = [r for r in rows if r["method"] == "register" and first_202 <= r["at"] <= last]
    lead_share = len(leads_in) / (opts.rate * drain)  # of the call slots the drain had
    # Once the last lead has gone, the deals have every slot: their own rate, in the same run.
    last_lead = max((r["at"] for r in leads_in), default=-math.inf)
    alone, alone_calls = steady_rate([r for r in calls if r["at"] > last_lead],
                                     max(1, math.floor(opts.rate)))
    rate = opts.deals / drain
    left_for_deals = opts.ideal_rate * max(1e-9, 1 - lead_share)
    return {
        "deals": opts.deals,
        "uploads": [u.as_dict() for u in uploads],
        "all_accepted": all(u.status == 202 for u in uploads)
        and sum(u.accepted for u in uploads) == opts.deals,
        "drain_seconds": round(drain, 3),
        "items_per_s": round(rate, 2),
        "ratio_to_ideal": round(rate / opts.ideal_rate, 4),
        "lead_calls_in_drain": len(leads_in),
        "lead_slot_share": round(lead_share, 4),
        "ideal_left_by_leads": round(left_for_deals, 2),
        "ratio_to_slots_left": round(rate / left_for_deals, 4),
        "alone_items_per_s": round(alone, 2),
        "alone_ratio_to_ideal": round(alone / opts.ideal_rate, 4),
        "alone_calls": alone_calls,
        "all_calls_per_s": round(
            (sum(1 for r in calls if r["at"] >= first_202) + len(leads_in)) / drain, 3),
        "from_upload_start_items_per_s": round(opts.deals / (last - start), 2),
        "deal_calls_before_first_202": sum(1 for r in calls if r["at"] < first_202),
        **_calls(rows),
        "received": stats["received"], "sandbox_by_status": stats["by_status"],
        "rate_limited_429": stats["by_status"].get("429", 0),
        "max_in_window": stats["max_in_window"],
        "tightest_span_s": round(tightest_span([r["at"] for r in rows], int(opts.rate)), 4),
        "leads": {"quiet": _latency(posted["quiet"], rows, None),
                  "busy": _latency(posted["busy"], rows, last)},
    }


def _latency(sent: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
             drain_end: float | None) -> dict[str, Any]:
    """Each lead's arrival at the sandbox minus its 202 (ms); ``drain_end``: only those acked
    before the last deal call arrived count as during the drain."""
    arrived: dict[str, float] = {}
    for row in rows:
        number = row["method"] == "register" and row["status"] == 200 and row["form"].get(
            "requestNumber")
        if number and number not in arrived:
            arrived[number] = row["at"]
    acked = [s for s in sent if s["status"] == 202]
    counted = [s for s in acked if drain_end is None or s["acked"] <= drain_end]
    latency = [arrived[s["number"]] - s["acked"] for s in counted if s["number"] in arrived]
    return {"sent": len(sent), "acked": len(acked), "counted": len(counted),
            "delivered": sum(1 for s in acked if s["number"] in arrived),
            "latency_ms": percentiles(latency),
            "answer_ms": percentiles([s["answer_s"] for s in counted]),
            "each_ms": [round(x * 1e3, 1) for x in latency]}  # in the order they were sent


# --- 3: NDJSON intake -----------------------------------------------------------------------


class RssSampler:
    """``VmRSS`` of a process every ``interval`` s on a thread, keeping the highest seen."""

    def __init__(self, proc: procs.Proc, interval: float = 0.02) -> None:
        self._proc, self._interval = proc, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_kib, self.samples = 0, 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, self._proc.memory()["VmRSS"])
                self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); False where that is refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _intake_round(opts: DealsOptions, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    extra = {
        # Nobody listens there: the one call the pacer lets out at 0.001/s fails at once.
        "CTGW_CALLTOUCH_URL": f"http://{procs.LOOPBACK}:{procs.free_port()}",
        "CTGW_SITE_ID": procs.SITE_ID, "CTGW_RATE": "0.001", "CTGW_API_TOKENS": TOKEN,
        "CTGW_ACCESS_TOKEN": ACCESS_TOKEN,
        "CTGW_MAX_UPLOAD": str(max(64 * MIB, opts.ndjson_lines * 1024)),
    }
    with procs.gateway(workdir, workdir / "queue.db", extra=extra) as gateway:
        fresh = gateway.memory()["VmRSS"]
        # Not measured: a gateway's first upload runs cold (about half the rate of the next).
        warm = asyncio.run(_post_streamed(gateway.url, opts.ndjson_warmup_lines, opts))
        small = asyncio.run(_post_streamed(gateway.url, opts.ndjson_baseline_lines, opts))
        time.sleep(1.0)
        before = gateway.memory()["VmRSS"]
        reset = reset_peak(gateway.pid)
        cpu, steal = gateway.cpu_seconds(), probe.cpu_times()
        with RssSampler(gateway) as sampler:
            big = asyncio.run(_post_streamed(gateway.url, opts.ndjson_lines, opts))
        cpu = gateway.cpu_seconds() - cpu
        memory = gateway.memory()
    peak = max(sampler.peak_kib, memory["VmHWM"] if reset else 0)
    return {
        "warmup": warm.as_dict(), "baseline": small.as_dict(), "upload": big.as_dict(),
        "all_accepted": warm.status == small.status == big.status == 202
        and small.accepted == opts.ndjson_baseline_lines and big.accepted == opts.ndjson_lines,
        "rate_ratio": round((big.lines / big.seconds) / (small.lines / small.seconds), 4),
        "rss_fresh_mib": round(fresh / 1024, 1), "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1), "rss_after_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_growth_mib": round((peak - before) / 1024, 1),
        "hwm_reset": reset, "hwm_mib": round(memory["VmHWM"] / 1024, 1),
        "sampled_peak_mib": round(sampler.peak_kib / 1024, 1), "rss_samples": sampler.samples,
        "body_mib": round(big.bytes / MIB, 1),
        "gateway_cpu_us_per_deal": round(cpu / big.lines * 1e6, 1),
        "cpu_steal": round(probe.steal_since(steal), 4),
    }


async def _post_streamed(url: str, lines: int, opts: DealsOptions) -> Upload:
    async with _session() as session:
        return await post_deals(session, url, lines, chunk=opts.chunk_lines)


# --- the run ------------------------------------------------------------------------------


def _ms(summary: Mapping[str, Any], key: str) -> float:
    return float(summary["latency_ms"].get(key, float("nan")))


def run(opts: DealsOptions, workdir: Path) -> dict[str, Any]:
    say(f"deals: {opts.rounds} drain round(s) of {opts.deals:,} deals at {opts.rate:g} calls/s "
        f"(ideal {opts.ideal_rate:g} items/s), {opts.leads} leads before and during, sandbox "
        f"latency {opts.latency}; {opts.ndjson_rounds} intake round(s) of "
        f"{opts.ndjson_lines:,} lines")
    drains = []
    for r in range(opts.rounds):
        row = _drain_round(opts, workdir / f"drain-{r}")
        drains.append(row)
        busy, quiet = row["leads"]["busy"], row["leads"]["quiet"]
        say(f"deals drain {r + 1}/{opts.rounds}: {row['drain_seconds']:.1f} s, "
            f"{row['items_per_s']:.0f} items/s = {row['ratio_to_ideal']:.2f}x ideal, "
            f"{row['ratio_to_slots_left']:.2f}x the slots leads left; {row['calls']} calls, "
            f"429s={row['rate_limited_429']}, max_in_window={row['max_in_window']}; lead p50 "
            f"{_ms(busy, 'p50'):.0f} ms during, {_ms(quiet, 'p50'):.0f} ms quiet")
    intakes = []
    for r in range(opts.ndjson_rounds):
        row = _intake_round(opts, workdir / f"intake-{r}")
        intakes.append(row)
        say(f"deals intake {r + 1}/{opts.ndjson_rounds}: {row['upload']['rate']:.0f} deals/s "
            f"({row['baseline']['rate']:.0f}/s for {opts.ndjson_baseline_lines:,}), peak RSS "
            f"{row['peak_rss_mib']:.1f} MiB from {row['rss_before_mib']:.1f} MiB")
    return {"options": {**opts.__dict__, "ideal_rate": opts.ideal_rate},
            "drain": _medians(drains) if drains else None,
            "intake": _intake_medians(intakes) if intakes else None,
            "drain_rounds": drains, "intake_rounds": intakes}


def _medians(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def mid(key: str) -> float:
        return median([r[key] for r in rounds])

    def lead(phase: str, key: str) -> float:
        return median([_ms(r["leads"][phase], key) for r in rounds])

    quiet = {k: lead("quiet", k) for k in ("p50", "p99", "max")}
    busy = {k: lead("busy", k) for k in ("p50", "p99", "max")}
    return {
        "deals": rounds[0]["deals"],
        **{k: mid(k) for k in ("drain_seconds", "items_per_s", "ratio_to_ideal",
                               "ratio_to_slots_left", "ideal_left_by_leads", "lead_slot_share",
                               "alone_items_per_s", "alone_ratio_to_ideal", "alone_calls",
                               "all_calls_per_s", "from_upload_start_items_per_s", "calls",
                               "tightest_span_s")},
        "items_per_call": {"mean": median([r["items_per_call"]["mean"] for r in rounds]),
                           "min": min(r["items_per_call"]["min"] for r in rounds),
                           "max": max(r["items_per_call"]["max"] for r in rounds)},
        "rate_limited_429": sum(r["rate_limited_429"] for r in rounds),
        "max_in_window": max(r["max_in_window"] for r in rounds),
        "complete": all(r["all_accepted"] and r["applied_deals"] == r["deals"]
                        and not r["timed_out"] for r in rounds),
        "leads_quiet_ms": quiet, "leads_busy_ms": busy,
        "answer_quiet_p50_ms": median([r["leads"]["quiet"]["answer_ms"]["p50"] for r in rounds]),
        "answer_busy_p50_ms": median([r["leads"]["busy"]["answer_ms"]["p50"] for r in rounds]),
        "leads_counted": min(r["leads"]["busy"]["counted"] for r in rounds),
        "leads_sent": rounds[0]["leads"]["busy"]["sent"],
        "leads_delivered": all(
            r["leads"][p]["delivered"] == r["leads"][p]["sent"] for r in rounds
            for p in ("quiet", "busy")),
    }


def _intake_medians(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def mid(key: str, sub: str | None = None) -> float:
        return median([r[key][sub] if sub else r[key] for r in rounds])

    return {
        "lines": rounds[0]["upload"]["lines"], "baseline_lines": rounds[0]["baseline"]["lines"],
        "rate": mid("upload", "rate"), "baseline_rate": mid("baseline", "rate"),
        "rate_ratio": mid("rate_ratio"), "seconds": mid("upload", "seconds"),
        **{k: mid(k) for k in ("rss_before_mib", "peak_rss_mib", "peak_growth_mib", "body_mib",
                               "gateway_cpu_us_per_deal")},
        "hwm_reset": all(r["hwm_reset"] for r in rounds),
        "all_accepted": all(r["all_accepted"] for r in rounds),
    }


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def rows(result: Mapping[str, Any]) -> list[Row]:
    drain, intake = result["drain"], result["intake"]
    return [*(_drain_rows(drain, result["options"]) if drain else []),
            *(_intake_rows(intake) if intake else [])]


def _drain_rows(d: Mapping[str, Any], opts: Mapping[str, Any]) -> list[Row]:
    ideal, rate = opts["ideal_rate"], opts["rate"]
    per_call = d["items_per_call"]
    ok = d["ratio_to_slots_left"] >= 0.95 and d["complete"]
    return [
        Row(f"deals drain, {d['deals']:,} as NDJSON, leads meanwhile",
            f"{d['items_per_s']:.0f} items/s", f"{ideal:g}/s ideal", _x(d["ratio_to_ideal"]),
            "-", None),
        Row(f"  deals alone, after the last lead ({d['alone_calls']:.0f} calls)",
            f"{d['alone_items_per_s']:.0f} items/s", f"{ideal:g}/s ideal",
            _x(d["alone_ratio_to_ideal"]), ">= 0.95x", d["alone_ratio_to_ideal"] >= 0.95),
        Row(f"  whole drain against the slots {d['leads_sent']} leads left "
            f"({d['lead_slot_share']:.0%})", f"{d['items_per_s']:.0f} items/s",
            f"{d['ideal_left_by_leads']:.0f}/s", _x(d["ratio_to_slots_left"]),
            ">= 0.95x, all applied", ok),
        Row("  all calls (deals + leads) per second", f"{d['all_calls_per_s']:.2f}/s",
            f"{rate:g}/s limit", _x(d["all_calls_per_s"] / rate), "-", None),
        Row("  drain time, first 202 to last deal call", f"{d['drain_seconds']:.1f} s",
            f"{d['deals'] / ideal:.1f} s ideal", _x(d["deals"] / ideal / d["drain_seconds"]),
            "-", None),
        Row("  items/s from the upload's start", f"{d['from_upload_start_items_per_s']:.0f}",
            f"{ideal:g}/s ideal", _x(d["from_upload_start_items_per_s"] / ideal), "-", None),
        Row("  deal calls; items a call (mean, min, max)", f"{d['calls']:.0f}",
            f"{per_call['mean']:.1f}, {per_call['min']}, {per_call['max']}",
            _x(per_call["mean"] / opts["batch"]), "-", None),
        Row("  upstream 429s", str(d["rate_limited_429"]), "-", "-", "0",
            d["rate_limited_429"] == 0),
        Row("  max calls in a 1 s window", str(d["max_in_window"]), "-", "-", f"<= {rate:g}",
            d["max_in_window"] <= rate),
        *_lead_rows(d),
    ]


def _lead_rows(d: Mapping[str, Any]) -> list[Row]:
    busy, quiet = d["leads_busy_ms"], d["leads_quiet_ms"]
    n = f"{d['leads_counted']} of {d['leads_sent']}"
    return [
        Row(f"lead 202 -> sandbox p50, during the drain ({n})", f"{busy['p50']:.0f} ms",
            f"{quiet['p50']:.1f} ms no drain", _x(busy["p50"] / quiet["p50"]), "-", None),
        Row(f"  lead p99{' (the max, of so few)' if d['leads_counted'] <= 100 else ''}",
            f"{busy['p99']:.0f} ms",
            f"{quiet['p99']:.1f} ms no drain", _x(busy["p99"] / quiet["p99"]),
            "all delivered", d["leads_delivered"]),
        Row("  lead post -> 202 p50 (intake's own share)", f"{d['answer_busy_p50_ms']:.1f} ms",
            f"{d['answer_quiet_p50_ms']:.1f} ms no drain",
            _x(d["answer_busy_p50_ms"] / d["answer_quiet_p50_ms"]), "-", None),
    ]


def _intake_rows(i: Mapping[str, Any]) -> list[Row]:
    growth_ok = i["peak_growth_mib"] < i["body_mib"]
    return [
        Row(f"NDJSON intake, {i['lines']:,} lines streamed", f"{i['rate']:.0f} deals/s",
            f"{i['baseline_rate']:.0f}/s for {i['baseline_lines']:,}", _x(i["rate_ratio"]),
            "all 202, all accepted", i["all_accepted"]),
        Row(f"  gateway peak RSS in it ({i['body_mib']:.0f} MiB body)",
            f"{i['peak_rss_mib']:.1f} MiB", f"{i['rss_before_mib']:.1f} MiB before",
            _x(i["peak_rss_mib"] / i["rss_before_mib"]), "growth < body size", growth_ok),
        Row("  gateway CPU a deal; upload time", f"{i['gateway_cpu_us_per_deal']:.0f} us",
            f"{i['seconds']:.1f} s", "-", "-", None),
    ]
