"""Medians, the summary table, the environment of a run, and the JSON results file."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def say(message: str) -> None:
    """Progress on stderr, so stdout keeps only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "-"}[self.ok]


def table(rows: Sequence[Row]) -> str:
    header = ("metric", "value", "baseline", "ratio", "target", "")
    cells = [header, *((r.metric, r.value, r.baseline, r.ratio, r.target, r.verdict)
                       for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip()
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _filesystem(path: Path) -> str:
    """The mount type under ``path`` (tmpfs would make fsync meaningless)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def _git() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "gateway"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{'+dirty' if dirty else ''}"


def environment(workdir: Path) -> dict[str, Any]:
    import aiohttp

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "workdir": str(workdir),
        "filesystem": _filesystem(workdir),
        "argv": sys.argv,
    }


def save(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path
