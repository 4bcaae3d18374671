"""``ct-gateway deals import FILE.ndjson``: post an ERP's export through the gateway's own API.

The file (or ``-``, stdin) is read a chunk of lines at a time and each chunk is posted as
NDJSON to ``/api/v1/deals``, so the upload goes through the same validation, dedup and merging
as any other post: running the same file again adds nothing new. A progress line on stderr
(on a terminal) shows what was sent and accepted, and, given the ops listener, what Calltouch
has taken so far; the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import aiohttp
import orjson

from gateway.config import ConfigError

CHUNK_LINES = 1000
DELIVERED = "ctgw_jobs_delivered_total{kind=\"deal."
TOKEN_VARIABLE = "CTGW_IMPORT_TOKEN"  # noqa: S105 -- the variable's name, not a token


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines of the file to post as one request, with each one's line number in the file:
    blank lines are not sent, so the gateway's own numbers count only these."""

    lines: list[bytes]
    numbers: list[int]


@dataclass(slots=True)
class Progress:
    total: int | None
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    accepted: int = 0
    merged: int = 0
    rejected: int = 0
    delivered: int | None = None
    errors: list[dict[str, object]] = field(default_factory=list)

    def add(self, chunk: Chunk, answer: dict[str, object]) -> None:
        self.sent += len(chunk.lines)
        for name in ("accepted", "merged", "rejected"):
            value = answer.get(name)
            setattr(self, name, getattr(self, name) + (value if isinstance(value, int) else 0))
        errors = answer.get("errors")
        for error in errors if isinstance(errors, list) else []:
            line = error.get("line") if isinstance(error, dict) else None
            if isinstance(error, dict) and isinstance(line, int) and 0 < line <= len(chunk.numbers):
                error = {**error, "line": chunk.numbers[line - 1]}  # the file's line number
            if len(self.errors) < 100:
                self.errors.append(error)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.sent / elapsed
        parts = [f"sent {self.sent}" + ("" if self.total is None else f"/{self.total}"),
                 f"accepted {self.accepted}", f"merged {self.merged}",
                 f"rejected {self.rejected}"]
        if self.delivered is not None:
            parts.append(f"delivered {self.delivered}")
        parts.append(f"{rate:.0f} lines/s")
        if self.total is not None and rate > 0:
            parts.append(f"left {max(0.0, (self.total - self.sent) / rate):.0f}s")
        return ", ".join(parts)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deals = sub.add_parser("deals", help="the back office's deals")
    deals_sub = deals.add_subparsers(dest="action", required=True)
    importing = deals_sub.add_parser(
        "import", help="post an NDJSON file of deals through the gateway",
        description=f"Post FILE (NDJSON, one deal a line; - for stdin) to the gateway's "
        f"/api/v1/deals, {CHUNK_LINES} lines a request. The API token is read from "
        f"{TOKEN_VARIABLE}.",
    )
    importing.add_argument("file", help="the NDJSON file, or - for stdin")
    importing.add_argument("--url", default="http://127.0.0.1:8080",
                           help="the gateway's public listener (default %(default)s)")
    importing.add_argument("--ops-url", default=None,
                           help="its ops listener, to show what Calltouch took so far")


def run(args: argparse.Namespace) -> int:
    """Post the file; a failure that stops it early (no file, no gateway, a line that is not
    UTF-8, an answer that is not the gateway's) is a :class:`ConfigError`: one line, exit 2."""
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise ConfigError(TOKEN_VARIABLE, "required: an API token of the gateway (CTGW_API_TOKENS)")
    stream = sys.stdin.buffer if args.file == "-" else _open(args.file)
    with stream:
        total = _count_lines(stream)
        progress = asyncio.run(_post_all(stream, args.file, args.url, args.ops_url, token,
                                         total))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for error in progress.errors:
        print(f"line {error.get('line')}: {error.get('field')}: {error.get('message')}")
    print(progress.line())
    return 0 if progress.rejected == 0 else 1


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")  # closed by run's with
    except OSError as exc:
        raise ConfigError(path, f"cannot read it: {exc.strerror or exc}") from None


def _count_lines(stream: IO[bytes]) -> int | None:
    """The file's lines, for the progress line; ``None`` for a pipe (``<(zcat …)``, stdin),
    which can be read once only."""
    if not stream.seekable():
        return None
    total = sum(1 for line in stream if line.strip())
    stream.seek(0)
    return total


def _stopped(progress: Progress, problem: str, option: str = "--url") -> ConfigError:
    """Why the import stopped, and how far it got: a rerun of the whole file is safe, what
    was posted merges instead of being queued twice."""
    return ConfigError(option, f"{problem}; lines posted before it: {progress.sent}"
                       " (a rerun of the file adds nothing twice)")


def _chunks(stream: IO[bytes], name: str, progress: Progress) -> Iterator[Chunk]:
    """The file's non-blank lines, ``CHUNK_LINES`` a chunk. Read as bytes and split at each
    newline byte alone, as the gateway splits them, so that both count the same lines."""
    chunk = Chunk([], [])
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise _stopped(progress, f"line {number} is not UTF-8 text", name) from None
        chunk.lines.append(line if line.endswith(b"\n") else line + b"\n")
        chunk.numbers.append(number)
        if len(chunk.lines) == CHUNK_LINES:
            yield chunk
            chunk = Chunk([], [])
    if chunk.lines:
        yield chunk


async def _post_all(
    stream: IO[bytes], name: str, url: str, ops_url: str | None, token: str, total: int | None
) -> Progress:
    progress = Progress(total)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession() as http:
        for chunk in _chunks(stream, name, progress):
            answer = await _post(http, f"{url.rstrip('/')}/api/v1/deals", chunk, headers,
                                 progress)
            progress.add(chunk, answer)
            if ops_url is not None:
                progress.delivered = await _delivered(http, ops_url)
            if sys.stderr.isatty():  # a progress line for a person; a script gets the summary
                print("\r" + progress.line(), end="", file=sys.stderr, flush=True)
    return progress


async def _post(
    http: aiohttp.ClientSession, url: str, chunk: Chunk, headers: dict[str, str],
    progress: Progress,
) -> dict[str, object]:
    """The gateway's tally of one chunk; any other outcome stops the import."""
    try:
        async with http.post(url, data=b"".join(chunk.lines), headers=headers) as resp:
            status, text = resp.status, await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _stopped(progress, f"cannot reach the gateway at {url}: {exc or type(exc).__name__}"
                       ) from None
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):  # a proxy's error page, or not a gateway at all
        raise _stopped(progress, f"{url} answered {status} without the gateway's JSON")
    if status != 202:
        raise _stopped(progress, f"the gateway answered {status}: {answer}")
    return answer


async def _delivered(http: aiohttp.ClientSession, ops_url: str) -> int | None:
    try:
        async with http.get(f"{ops_url.rstrip('/')}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(DELIVERED)))
