"""Instructions per lead, gateway against bare aiohttp, counted by valgrind: no noise.

``python -m bench.instructions`` runs :mod:`bench.inproc` under callgrind with two lead counts
per server and divides the difference, so start-up cancels out. The event loop's thread is
what bounds throughput; the SQLite writer thread is shown apart (its B-tree work runs without
the GIL, on the other core). Wall-clock benchmarks on a shared machine move by ±30 %; this
figure moves by well under 1 %, so it is what a change to the hot path is judged by.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL, LARGE = 1000, 3000
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def _per_thread(target: str, count: int) -> list[int]:
    """Instructions per thread, largest first, of one run of ``count`` leads."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}/cg", sys.executable, "-m", "bench.inproc", target,
             str(count)],
            check=True, capture_output=True, timeout=1800,
        )
        totals = [int(m[1]) for f in Path(out).glob("cg*") if (m := _TOTAL.search(f.read_text()))]
    return sorted(totals, reverse=True)


def per_lead(target: str) -> tuple[int, int]:
    """(event loop thread, second busiest thread) instructions per lead."""
    small, large = _per_thread(target, SMALL), _per_thread(target, LARGE)
    small += [0] * (2 - len(small))
    large += [0] * (2 - len(large))
    loop, other = ((b - a) // (LARGE - SMALL) for a, b in zip(small[:2], large[:2], strict=True))
    return loop, other


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    bare_loop, _ = per_lead("bare")
    loop, writer = per_lead("gateway")
    print(f"bare aiohttp handler   {bare_loop:>9,} instructions per lead (event loop)")
    print(f"gateway                {loop:>9,} instructions per lead (event loop), "
          f"{loop / bare_loop:.2f}x bare")
    print(f"gateway SQLite writer  {writer:>9,} instructions per lead (own thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
