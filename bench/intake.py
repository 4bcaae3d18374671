"""Intake: durable acknowledgements per second against a bare aiohttp handler, same run.

Rounds alternate the two servers (bare, gateway, gateway, bare, ...) so that drift in the
machine's noise falls on both alike. Each round starts a fresh server process (the gateway on
a fresh SQLite file, relaying to its in-process sandbox) and checks afterwards that the queue
holds at least as many leads as were acknowledged. Then latency at a fixed offered rate, open
loop, for both servers in the same way.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import probe, procs, wrk
from bench.report import median, say

TARGETS = ("bare", "gateway")


@dataclass(frozen=True)
class IntakeOptions:
    rounds: int = 5
    seconds: float = 5.0
    warmup: float = 1.0
    connections: int = 64
    threads: int = 1
    latency_rounds: int = 5
    latency_rate: float = 1000.0
    latency_seconds: float = 5.0
    tool: str = "auto"  # "wrk", "python" or "auto" (wrk when installed)

    @property
    def use_wrk(self) -> bool:
        return self.tool == "wrk" or (self.tool == "auto" and wrk.available())


@contextlib.contextmanager
def _server(name: str, workdir: Path) -> Iterator[tuple[procs.Proc, Path | None]]:
    workdir.mkdir(parents=True)
    if name == "bare":
        with procs.bare(workdir) as proc:
            yield proc, None
    else:
        db = workdir / "queue.db"
        with procs.gateway(workdir, db, sandbox=True) as proc:
            yield proc, db


def python_load(mode: str, url: str, *args: str, seconds: float) -> dict[str, Any]:
    """Run ``python -m bench.pyload MODE URL ARGS...`` in its own process; its JSON result."""
    cmd = [sys.executable, "-m", "bench.pyload", mode, url, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=True)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _closed_python(url: str, opts: IntakeOptions, seconds: float, prefix: str) -> wrk.Throughput:
    data = python_load("closed", url, "--connections", str(opts.connections),
                       "--seconds", str(seconds), "--prefix", prefix, seconds=seconds)
    return wrk.Throughput("python", data["requests"], data["ok"], data["seconds"],
                          {k: v for k, v in data["statuses"].items() if k != "202"},
                          data["latency_ms"])


def _load(url: str, opts: IntakeOptions, workdir: Path, seconds: float) -> wrk.Throughput:
    prefix = secrets.token_hex(4)
    if not opts.use_wrk:
        return _closed_python(url, opts, seconds, prefix)
    script = wrk.write_script(workdir / f"lead-{prefix}.lua", prefix, url)
    return wrk.run(url, script, seconds=seconds, connections=opts.connections,
                   threads=opts.threads)


def _committed(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        count: int = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        return count


def _throughput_round(name: str, workdir: Path, opts: IntakeOptions) -> dict[str, Any]:
    with _server(name, workdir) as (proc, db):
        warm = _load(proc.url, opts, workdir, opts.warmup)
        cpu, steal = proc.cpu_seconds(), probe.cpu_times()
        run = _load(proc.url, opts, workdir, opts.seconds)
        cpu, steal_share = proc.cpu_seconds() - cpu, probe.steal_since(steal)
    row: dict[str, Any] = {**run.as_dict(), "server_cpu_s": round(cpu, 2),
                           "cpu_ms_per_ok": round(1e3 * cpu / max(1, run.ok), 4),
                           "cpu_steal": round(steal_share, 4)}
    if db is not None:
        row["committed"] = committed = _committed(db)
        row["durable_ok"] = committed >= warm.ok + run.ok
    return row


def throughput(opts: IntakeOptions, workdir: Path) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for r in range(opts.rounds):
        for name in TARGETS if r % 2 == 0 else TARGETS[::-1]:
            row = _throughput_round(name, workdir / f"tput-{r}-{name}", opts)
            rounds[name].append(row)
            say(f"intake round {r + 1}/{opts.rounds} {name:<7} {row['rate']:8.0f} acks/s"
                f"  errors={row['errors'] or 0}  cpu={row['cpu_ms_per_ok']:.3f} ms/ack"
                f"  steal={row['cpu_steal']:.1%}")
    bare_rate = median([row["rate"] for row in rounds["bare"]])
    gw_rate = median([row["rate"] for row in rounds["gateway"]])
    per_round = [g["rate"] / b["rate"] for g, b in zip(rounds["gateway"], rounds["bare"],
                                                        strict=True)]
    return {
        "tool": "wrk" if opts.use_wrk else "python",
        "connections": opts.connections, "seconds": opts.seconds,
        "bare_rate": bare_rate, "gateway_rate": gw_rate, "ratio": gw_rate / bare_rate,
        "ratio_per_round": [round(x, 3) for x in per_round],
        "errors_total": sum(sum(row["errors"].values()) for row in rounds["gateway"]),
        "durable_ok": all(row["durable_ok"] for row in rounds["gateway"]),
        "rounds": rounds,
    }


def _latency_round(name: str, workdir: Path, opts: IntakeOptions) -> dict[str, Any]:
    with _server(name, workdir) as (proc, db):
        cpu, steal = proc.cpu_seconds(), probe.cpu_times()
        before = probe.answer_buckets(proc) if db else {}
        result = python_load(
            "open", proc.url, "--rate", str(opts.latency_rate),
            "--seconds", str(opts.latency_seconds), "--warmup", "1",
            "--prefix", secrets.token_hex(4), seconds=opts.latency_seconds,
        )
        if db:  # what the gateway itself measured, warm-up included, generator excluded
            result["server_side"] = probe.answer_summary(before, probe.answer_buckets(proc))
        result["server_cpu_s"] = round(proc.cpu_seconds() - cpu, 2)
        result["cpu_steal"] = round(probe.steal_since(steal), 4)
    result["all_202"] = set(result["statuses"]) == {"202"}
    return result


def latency(opts: IntakeOptions, workdir: Path) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for r in range(opts.latency_rounds):
        for name in TARGETS if r % 2 == 0 else TARGETS[::-1]:
            row = _latency_round(name, workdir / f"lat-{r}-{name}", opts)
            rounds[name].append(row)
            lat = row["latency_ms"]
            say(f"latency round {r + 1}/{opts.latency_rounds} {name:<7} p50={lat['p50']:.2f} ms"
                f" p99={lat['p99']:.2f} ms achieved={row['achieved_rate']:.0f}/s"
                f" statuses={row['statuses']} steal={row['cpu_steal']:.1%}"
                f" server-side={row.get('server_side', '-')}")
    summary: dict[str, Any] = {"offered_rate": opts.latency_rate, "rounds": rounds}
    for name in TARGETS:
        rows = rounds[name]
        summary[name] = {
            key: median([row["latency_ms"][key] for row in rows]) for key in ("p50", "p99")
        } | {"achieved_rate": median([row["achieved_rate"] for row in rows]),
             "all_202": all(row["all_202"] for row in rows)}
    summary["gateway"]["server_within_10ms"] = median(
        [row["server_side"].get("within_10ms", float("nan")) for row in rounds["gateway"]])
    return summary


def run(opts: IntakeOptions, workdir: Path) -> dict[str, Any]:
    say(f"intake: {opts.rounds} rounds x {len(TARGETS)} servers x {opts.seconds:g}s with "
        f"{'wrk' if opts.use_wrk else 'python (wrk not installed)'}, "
        f"{opts.connections} connections")
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {"fsync_ms_before": probe.fsync_ms(workdir)}
    say(f"disk: fsync p50 {results['fsync_ms_before']['p50']:.2f} ms,"
        f" p99 {results['fsync_ms_before']['p99']:.2f} ms")
    results["throughput"] = throughput(opts, workdir)
    say(f"latency: {opts.latency_rounds} rounds x {len(TARGETS)} servers, open loop at "
        f"{opts.latency_rate:g}/s for {opts.latency_seconds:g}s")
    results["latency"] = latency(opts, workdir)
    results["fsync_ms_after"] = probe.fsync_ms(workdir)
    return results
