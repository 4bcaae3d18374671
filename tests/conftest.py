"""Shared fixtures: real servers on loopback port 0, real SQLite files, the sandbox.

Every log line of the run (in-process records and the output of gateway subprocesses) is
kept in :data:`tests.support.LOG_LINES`; ``test_zz_no_pii.py`` reads them at the end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway import app
from gateway.config import Settings
from gateway.config_values import BotWeights, ClientRate, HostPort
from gateway.ops.logs import JsonFormatter
from gateway.ops.metrics import Metrics
from gateway.sandbox.run import SandboxThread
from tests.postgres import postgres, postgres_url
from tests.support import LOG_LINES, TOKEN, Gateway, Process, spawn_sandbox


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LOG_LINES.append(self.format(record))


@pytest.fixture(autouse=True, scope="session")
def keep_logs() -> Iterator[None]:
    handler = _Keep(logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Child processes a test starts; killed at its end, whatever happened."""
    started: list[Process] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def two_sandboxes(processes: list[Process]) -> Iterator[list[str]]:
    """Calltouch as two processes, for two gateways of one egress: merged on this host's clock
    they are what Calltouch sees; apart, they tell which gateway sent a call."""
    urls = []
    for _ in range(2):
        proc, url = spawn_sandbox("0.05,0.2")
        processes.append(proc)
        urls.append(url)
    yield urls


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    simulator = SandboxThread(latency=(0.0, 0.05))
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def settings(tmp_path: Path, sandbox: SandboxThread) -> Settings:
    return Settings(
        site_id="18990",
        calltouch_url=sandbox.url,
        listen=HostPort("127.0.0.1", 0),
        ops_listen=HostPort("127.0.0.1", 0),
        queue_url=f"sqlite:///{tmp_path / 'queue.db'}",
        api_tokens=(TOKEN,),
        upstream_timeout=2.0,
        client_rate=ClientRate(10_000.0, 10_000),  # the limiter has its own tests
        # aiohttp's client names itself in User-Agent, sends no Origin, and tests post the
        # instant a page loads: every one would be scored a bot. The bot tests turn them on.
        bot_weights=BotWeights(fast=0, origin=0, agent=0),
        shutdown_grace=2.0,
    )


@pytest.fixture
async def start_gateway(sandbox: SandboxThread) -> AsyncIterator[object]:
    """A factory: ``await start_gateway(settings)`` runs a gateway in this event loop.

    It asks for the sandbox so that pytest stops the gateways first: a relay still sending
    while the sandbox's loop closes leaves a half-accepted socket behind and can hold the
    sandbox's cleanup until its shutdown timeout."""
    runners: list[web.AppRunner] = []

    async def start(settings: Settings, traces: Sequence[aiohttp.TraceConfig] = ()) -> Gateway:
        running = await app.start(settings, Metrics(), traces)  # the production listeners
        runners.append(running.runner)
        return Gateway(running.url, running.ops_url, running.runner, running.metrics)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def gateway(start_gateway: object, settings: Settings) -> Gateway:
    return await start_gateway(settings)  # type: ignore[operator, no-any-return]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


__all__ = ["Gateway", "postgres", "postgres_url", "replace"]
