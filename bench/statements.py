"""The SQLite writer's statement cache: RSS after one ``put_many`` of every size 1 to 512.

``python -m bench.statements`` prints how much the process grew and how long the 131,328 puts
took. A group commit's size varies with the load, and each size is a statement of its own
length in the writer's cache, so this is the most a long-running gateway's cache can hold
(docs/performance.md, *The writer's statement cache*).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from gateway.queue import Put
from gateway.queue.sqlite import SQLiteQueue

LARGEST = 512


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        queue = await SQLiteQueue.open(f"sqlite:///{folder}/q.db")
        try:
            await queue.put_many([Put("lead", b"{}", "warm")], time.time())
            before, started, n = _rss_mib(), time.perf_counter(), 0
            for size in range(1, LARGEST + 1):
                puts = [Put("lead", b'{"fio": "x"}', f"k{n + i}") for i in range(size)]
                await queue.put_many(puts, time.time())
                n += size
            took = time.perf_counter() - started
            print(f"RSS +{_rss_mib() - before:.1f} MiB after a put_many of every size 1 to"
                  f" {LARGEST} ({n} puts in {took:.2f} s)")
        finally:
            await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
