"""Helpers shared by the tests (not fixtures: plain functions and constants)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.ops.metrics import Metrics

TOKEN = "test-token-0123456789abcdef"
LOG_LINES: list[str] = []
# Personal values the tests post; none may ever show in a log line.
PII_SAMPLES = ("Иван Петров", "Ivan Petrov", "79205550055", "ivan@example.com", "1845461367")


@dataclass
class Gateway:
    url: str
    ops_url: str
    runner: web.AppRunner
    metrics: Metrics


def lead(n: int = 0, **extra: Any) -> dict[str, Any]:
    """A valid lead carrying the sample personal data, numbered for dedup."""
    return {
        "fio": "Иван Петров",
        "phoneNumber": "+7 (920) 555-00-55",
        "email": "ivan@example.com",
        "sessionId": "1845461367",
        "requestUrl": "https://shop.example.ru/contacts",
        "requestNumber": f"req-{n}",
        **extra,
    }


# The queue backends a gateway test runs on, as the ``params`` of its ``queue_url`` fixture.
QUEUE_BACKENDS = ("sqlite", "postgresql")


def queue_url_of(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty store of the backend ``request.param`` names: a SQLite file in
    ``tmp_path``, or a database of the session's PostgreSQL (``postgres_url``: skipped without
    PostgreSQL, failed in CI)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def need_binary(name: str) -> str:
    """Path of a binary the test needs: skip without it, but fail in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it, or run .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1
) -> None:
    """Poll an outside system (the sandbox) until ``check`` holds; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def sandbox_requests(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/sandbox/requests") as resp:
        rows: list[dict[str, Any]] = await resp.json()
        return rows


async def sandbox_stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/sandbox/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def sandbox_config(http: aiohttp.ClientSession, url: str, **config: Any) -> None:
    async with http.post(f"{url}/sandbox/config", json=config) as resp:
        assert resp.status == 200, await resp.text()


async def post_lead(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/leads", json=body) as resp:
        return resp.status, await resp.json()


class Process:
    """A child process whose output lines are kept (and go to LOG_LINES for the PII check)."""

    def __init__(self, args: list[str], env: dict[str, str], marker: str) -> None:
        import subprocess
        import threading

        self.lines: list[str] = []
        self._found = threading.Event()
        self._marker = marker
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._found.wait(20):
            self.kill()
            raise AssertionError(f"{args} did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            LOG_LINES.append(line.rstrip("\n"))
            if self._marker in line:
                self._found.set()
        self._found.set()

    def line_with(self, marker: str) -> str:
        return next(line for line in self.lines if marker in line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child gateway: no CTGW_* from outside, coverage of nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTGW_")}
    # Test clients look like bots (aiohttp's User-Agent, no Origin), so bot scoring is off
    # unless ``extra`` turns it on.
    return {**env, "CTGW_BOT_WEIGHTS": "fast=0,origin=0,agent=0", **extra}


def spawn_sandbox(latency: str = "0.05,0.3") -> tuple[Process, str]:
    import sys

    proc = Process(
        [sys.executable, "-m", "gateway.sandbox", "--listen", "127.0.0.1:0", "--latency", latency],
        child_env(), "sandbox listening",
    )
    return proc, proc.line_with("sandbox listening").split()[-1]


def spawn_gateway(env: dict[str, str]) -> tuple[Process, str, str]:
    """``python -m gateway serve`` on free ports; returns the process, public and ops URLs."""
    import re
    import sys

    env = {"CTGW_CLIENT_RATE": "100000/s", **env}  # tests post fast from one address
    proc = Process([sys.executable, "-m", "gateway", "serve"], child_env(**env), "listening public")
    match = re.search(r"public=(\S+) ops=(\S+?)\"", proc.line_with("listening public"))
    assert match, proc.lines
    return proc, match[1], match[2]
