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

from gateway.config import ConfigError

CHUNK_LINES = 1000
DELIVERED = "ctgw_jobs_delivered_total{kind=\"deal."
TOKEN_VARIABLE = "CTGW_IMPORT_TOKEN"  # noqa: S105 -- the variable's name, not a token


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

    def add(self, lines: int, answer: dict[str, object], offset: int) -> None:
        self.sent += lines
        for name in ("accepted", "merged", "rejected"):
            value = answer.get(name)
            setattr(self, name, getattr(self, name) + (value if isinstance(value, int) else 0))
        errors = answer.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict) and isinstance(error.get("line"), int):
                error = {**error, "line": error["line"] + offset}  # the file's line number
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
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise ConfigError(TOKEN_VARIABLE, "required: an API token of the gateway (CTGW_API_TOKENS)")
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with stream:
        total = None if args.file == "-" else _count_lines(args.file)
        progress = asyncio.run(_post_all(stream, args.url, args.ops_url, token, total))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for error in progress.errors:
        print(f"line {error.get('line')}: {error.get('field')}: {error.get('message')}")
    print(progress.line())
    return 0 if progress.rejected == 0 else 1


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _chunks(stream: IO[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in stream:
        if line.strip():
            chunk.append(line if line.endswith("\n") else line + "\n")
        if len(chunk) == CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _post_all(
    stream: IO[str], url: str, ops_url: str | None, token: str, total: int | None
) -> Progress:
    progress = Progress(total)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession() as http:
        for chunk in _chunks(stream):
            async with http.post(f"{url.rstrip('/')}/api/v1/deals", data="".join(chunk),
                                 headers=headers) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 202:
                    raise ConfigError("--url", f"the gateway answered {resp.status}: {answer}")
            progress.add(len(chunk), answer, progress.sent)
            if ops_url is not None:
                progress.delivered = await _delivered(http, ops_url)
            if sys.stderr.isatty():  # a progress line for a person; a script gets the summary
                print("\r" + progress.line(), end="", file=sys.stderr, flush=True)
    return progress


async def _delivered(http: aiohttp.ClientSession, ops_url: str) -> int | None:
    try:
        async with http.get(f"{ops_url.rstrip('/')}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(DELIVERED)))
