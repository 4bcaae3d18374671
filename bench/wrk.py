"""Closed-loop throughput with ``wrk``: many connections posting leads as fast as answered.

Each request carries its own ``requestNumber`` (run prefix, wrk thread, counter), filled in by
a Lua ``request()`` function; ``done()`` prints one JSON line that we parse.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.payload import body_template, browser_headers

_LUA = """\
local head = [==[%(head)s]==]
local tail = [==[%(tail)s]==]
local prefix = "%(prefix)s"
local headers = %(headers)s
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  counter = counter + 1
  local number = prefix .. "-" .. tid .. "-" .. counter
  return wrk.format("POST", "/leads", headers, head .. number .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class Throughput:
    """A closed-loop run: ``ok`` answers (status < 400) in ``seconds``."""

    tool: str
    requests: int
    ok: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"tool": self.tool, "requests": self.requests, "ok": self.ok,
                "seconds": round(self.seconds, 3), "rate": round(self.rate, 1),
                "errors": self.errors, "latency_ms": self.latency_ms}


def available() -> bool:
    return shutil.which("wrk") is not None


def write_script(path: Path, prefix: str, url: str) -> Path:
    head, tail = body_template()
    headers = browser_headers(url)
    for part in (head, tail, *headers.values()):
        if "]==]" in part:
            raise ValueError("the lead template cannot be quoted as a Lua long string")
    table = ", ".join(f'["{k}"] = [==[{v}]==]' for k, v in headers.items())
    path.write_text(_LUA % {"head": head, "tail": tail, "prefix": prefix,
                            "headers": "{" + table + "}"}, encoding="utf-8")
    return path


def run(url: str, script: Path, *, seconds: float, connections: int,
        threads: int) -> Throughput:
    """One bounded wrk run against ``url``/leads."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(script), f"{url}/leads"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    data = orjson.loads(line.removeprefix("WRKJSON "))
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")}
    return Throughput(
        tool="wrk",
        requests=int(data["requests"]),
        ok=int(data["requests"]) - errors["status"],
        seconds=data["duration_us"] / 1e6,
        errors={k: v for k, v in errors.items() if v},
        latency_ms={"p50": data["p50_us"] / 1e3, "p99": data["p99_us"] / 1e3,
                    "mean": round(data["mean_us"] / 1e3, 3)},
    )
