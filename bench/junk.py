"""Hostile traffic for ``python -m bench flood`` and ``tests/test_flood.py``, in its own process.

``python -m bench.junk URL --connections C --loris L --sources 127.2.0.0/16 [--token T]``
prints ``flooding URL`` once every connection has had an answer, floods until SIGTERM or
SIGINT, then prints ``junk {json}``: answers by status and by kind, the rate, the slow-loris
connections and how long the gateway let them hang on.

Each connection comes from the next address of ``--sources`` (Linux accepts any 127/8 source),
sends up to ``--per-connection`` requests of kinds drawn from :data:`bench.hostile.MIX` (each
waits for its answer: a closed loop, as fast as the gateway answers), and goes. Slow-loris
connections trickle a request head (or a body) a byte at a time until the gateway cuts them
off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from bench.hostile import KINDS, MIX, PARSE_ERRORS, Target, browser, request


@dataclass
class Tally:
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status); 0: none
    connections: int = 0
    connect_errors: int = 0
    loris_held: list[float] = field(default_factory=list)  # seconds until the gateway cut one
    loris_answers: Counter[int] = field(default_factory=Counter)
    first: float = 0.0
    last: float = 0.0

    def summary(self) -> dict[str, object]:
        by_status: Counter[int] = Counter()
        by_kind: dict[str, dict[int, int]] = {}
        for (kind, status), count in sorted(self.answers.items()):
            by_status[status] += count
            by_kind.setdefault(kind, {})[status] = count
        total, seconds = sum(by_status.values()), max(1e-9, self.last - self.first)
        held = self.loris_held
        return {
            "requests": total, "seconds": round(seconds, 3), "rate": round(total / seconds, 1),
            "by_status": dict(sorted(by_status.items())), "by_kind": by_kind,
            "connections": self.connections, "connect_errors": self.connect_errors,
            "loris": {"cut": len(held), "answers": dict(self.loris_answers),
                      "held_median_s": round(statistics.median(held), 3) if held else None,
                      "held_max_s": round(max(held), 3) if held else None},
        }


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One answer's status, and whether the connection may carry another request."""
    while True:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
        status = int(head[0].split()[1])
        if status >= 200:
            break  # a 1xx (100 Continue) is followed by the real answer
    headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", ""):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.read()
        return status, False
    return status, "close" not in headers.get("connection", "")


class Flood:
    def __init__(self, target: Target, sources: Iterator[str], per_connection: int,
                 mix: list[str]) -> None:
        self.target, self.sources, self.per_connection = target, sources, per_connection
        self.mix = mix
        self.tally = Tally()
        self.stop = asyncio.Event()
        self._n = itertools.count()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            conn = await asyncio.open_connection(self.target.host, self.target.port,
                                                 local_addr=(next(self.sources), 0))
        except OSError:
            self.tally.connect_errors += 1
            await asyncio.sleep(0.05)  # paced retry: nothing to await but time
            return None
        self.tally.connections += 1
        return conn

    async def worker(self, started: Callable[[], None]) -> None:
        while not self.stop.is_set():
            conn = await self._connect()
            if conn is None:
                continue
            reader, writer = conn
            try:
                for _ in range(self.per_connection):
                    if self.stop.is_set() or not await self._one(reader, writer):
                        break
                    started()
            finally:
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        kind = random.choice(self.mix)
        n = next(self._n)
        status, again = 0, False
        try:
            writer.write(KINDS[kind][1](self.target, n))
            status, again = await asyncio.wait_for(read_answer(reader), 15)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                IndexError, TimeoutError):
            pass  # no (readable) answer: counted as status 0
        self.tally.last = time.monotonic()
        self.tally.first = self.tally.first or self.tally.last
        self.tally.answers[kind, status] += 1
        return again and kind not in PARSE_ERRORS

    async def loris(self, interval: float) -> None:
        """Trickle a request head (even n) or a body (odd n) until the gateway cuts it off."""
        for n in itertools.count():
            conn = await self._connect()
            if conn is None:
                continue
            reader, writer = conn
            opened = time.monotonic()
            if n % 2:
                head = request(self.target, "POST", "/leads", browser(self.target))
                writer.write(head.replace(b"\r\n\r\n", b"\r\nContent-Length: 4000\r\n\r\n{"))
            else:
                writer.write(f"POST /leads HTTP/1.1\r\nHost: {self.target.host}\r\nX-Slow: "
                             .encode())
            got = await self._trickle(reader, writer, interval)
            writer.close()
            if got is None:
                return  # stopped before the gateway cut it
            self.tally.loris_held.append(time.monotonic() - opened)
            with contextlib.suppress(ValueError, IndexError):
                self.tally.loris_answers[int(got.split(b" ", 2)[1]) if got else 0] += 1

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       interval: float) -> bytes | None:
        """Bytes the gateway sent before it closed the connection; None if stopped first."""
        got = b""
        while not self.stop.is_set():
            try:
                writer.write(b"a")
                chunk = await asyncio.wait_for(reader.read(4096), interval)
            except TimeoutError:
                continue
            except OSError:
                return got
            if not chunk:
                return got
            got += chunk
        return None


async def flood(url: str, connections: int, loris: int, sources: str, token: str,
                per_connection: int, loris_interval: float,
                kinds: list[str] | None = None) -> dict[str, object]:
    parts = urlsplit(url)
    target = Target(parts.hostname or "127.0.0.1", parts.port or 80, token)
    pool = itertools.cycle(str(ip) for ip in ipaddress.ip_network(sources).hosts())
    job = Flood(target, pool, per_connection, kinds or MIX)
    answered: set[int] = set()
    ready = asyncio.Event()

    def started(worker: int) -> Callable[[], None]:
        def mark() -> None:
            answered.add(worker)
            if len(answered) == connections:
                ready.set()
        return mark

    def stop() -> None:
        job.stop.set()
        ready.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(job.worker(started(i))) for i in range(connections)]
    tasks += [asyncio.create_task(job.loris(loris_interval)) for _ in range(loris)]
    if connections:
        await ready.wait()  # every connection has had an answer: the flood is at full strength
    print(f"flooding {url}", flush=True)
    await job.stop.wait()
    _, pending = await asyncio.wait(tasks, timeout=20)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return job.tally.summary()


def command(url: str, *, connections: int, loris: int, sources: str, token: str,
            per_connection: int = 8, loris_interval: float = 0.2) -> list[str]:
    """The arguments after ``python`` that start a flood of ``url``."""
    return ["-m", "bench.junk", url, "--connections", str(connections), "--loris", str(loris),
            "--sources", sources, "--token", token, "--per-connection", str(per_connection),
            "--loris-interval", str(loris_interval)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.junk", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--loris", type=int, default=16)
    parser.add_argument("--sources", default="127.2.0.0/16", help="client addresses to use")
    parser.add_argument("--token", default="", help="a valid API token, to reach the parsers")
    parser.add_argument("--per-connection", type=int, default=8)
    parser.add_argument("--loris-interval", type=float, default=0.2, help="seconds per byte")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated kinds to send, of: {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    if args.only and not set(args.only) <= KINDS.keys():
        parser.error(f"unknown kinds: {', '.join(set(args.only) - KINDS.keys())}")
    summary = asyncio.run(flood(args.url, args.connections, args.loris, args.sources,
                                args.token, args.per_connection, args.loris_interval, args.only))
    sys.stdout.write("junk " + orjson.dumps(summary, option=orjson.OPT_NON_STR_KEYS).decode()
                     + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
