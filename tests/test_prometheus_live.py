"""A real Prometheus scrapes a real gateway while leads flow; every shipped query must work.

The sandbox plays Calltouch. Leads flow for about twenty seconds through every path the
dashboard and the alert rules look at: accepted and delivered, invalid (422), a queue store
that cannot take a lead (5xx on intake), Calltouch failing (503), throttling (429) and
answering nonsense (a dead letter). Then every expression of the Grafana dashboard and every
rule of ``deploy/prometheus/alerts.yml`` is evaluated through Prometheus's HTTP API: none may
fail, every dashboard query must return data, and the rule groups must load and evaluate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    TOKEN,
    Process,
    eventually,
    lead,
    need_binary,
    post_lead,
    sandbox_config,
    spawn_gateway,
    spawn_sandbox,
)
from tests.test_backoffice import ACCESS_TOKEN, WRONG_ACCESS_TOKEN, deal, post_many
from tests.test_deploy_files import ALERTS, alert_names, dashboard_exprs, graph_panels
from tests.test_deploy_files import substitute_variables as grafana_variables_replaced

pytestmark = pytest.mark.slow

# Posts that must fail with a field error (422), each for its own reason.
INVALID_LEADS = (
    {"phoneNumber": "+7 920 555-00-55 ext", "email": "ivan@"},
    {"subject": "a lead without a contact"},
    {"fio": "Иван Петров", "favouriteColour": "green"},
)
DELIVERED = 'ctgw_leads_delivered_total{site="default"}'


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def prometheus(
    binary: str, workdir: Path, target: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Prometheus on a free loopback port, scraping ``target`` with the shipped rules."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "ct-gateway", "static_configs": [{"targets": [target]}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    log_file = workdir / "prometheus.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={address}",
                f"--web.console.templates={workdir}",
                f"--web.console.libraries={workdir}",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            yield f"http://{address}", proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def log_tail(workdir: Path, lines: int = 30) -> str:
    path = workdir / "prometheus.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def queue_store_locked(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock, as a stuck or failing store would: lead commits fail."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


# --- traffic ----------------------------------------------------------------------------


class Traffic:
    """Posts numbered leads to the gateway and counts the answers by status."""

    def __init__(self, http: aiohttp.ClientSession, gateway: str, ops: str) -> None:
        self.http, self.gateway, self.ops = http, gateway, ops
        self.n = 0
        self.statuses: dict[int, int] = {}

    async def post(self, body: dict[str, Any]) -> int:
        status, _ = await post_lead(self.http, self.gateway, body)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    async def leads(self, seconds: float, per_second: float = 4.0) -> None:
        """Valid leads, each new, for ``seconds``; every one must be acknowledged."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.n += 1
            status = await self.post(lead(self.n))
            assert status == 202, f"lead {self.n} answered {status}"
            await asyncio.sleep(1 / per_second)

    async def metric(self, sample: str) -> float:
        """The gateway's own value of one sample line (``name{labels}``), 0 if absent."""
        async with self.http.get(f"{self.ops}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0

    async def until(self, sample: str, minimum: float = 1.0, timeout: float = 8.0) -> None:
        async def reached() -> bool:
            return await self.metric(sample) >= minimum

        await eventually(reached, timeout=timeout, interval=0.2)


async def flow(traffic: Traffic, sandbox: str, db: Path) -> None:
    """About twenty seconds of leads through every path the dashboard and alerts show."""
    # The queue store refuses writes: the lead gets a 5xx (busy_timeout is 10 s), while
    # invalid leads, which never reach the store, are still answered 422.
    with queue_store_locked(db):
        stuck = asyncio.create_task(traffic.post(lead(0)))
        for body in INVALID_LEADS:
            assert await traffic.post(body) == 422
        assert await stuck >= 500
    await traffic.leads(2.0)
    await traffic.until(DELIVERED, 2)

    # Calltouch fails for a few seconds: retries with backoff.
    await sandbox_config(traffic.http, sandbox, fault="503")
    await traffic.leads(2.5)
    await traffic.until('ctgw_upstream_requests_total{method="register",outcome="server_error"}')
    # Calltouch throttles: the pacer backs off.
    await sandbox_config(traffic.http, sandbox, fault="429")
    await traffic.leads(1.5)
    await traffic.until('ctgw_upstream_requests_total{method="register",outcome="rate_limited"}')
    # Calltouch answers 200 without a requestId: a permanent failure, a dead letter.
    await sandbox_config(traffic.http, sandbox, fault="error200")
    await traffic.leads(1.0)
    await traffic.until('ctgw_leads_dead_total{reason="invalid_answer",site="default"}')
    await sandbox_config(traffic.http, sandbox, fault=None)

    for body in INVALID_LEADS:
        assert await traffic.post(body) == 422
    delivered = await traffic.metric(DELIVERED)
    await traffic.leads(3.0)
    await traffic.until(DELIVERED, delivered + 3)

    # The back office: a deal Calltouch takes and one without orderNumber (422 for the item);
    # then Calltouch refuses the gateway's Access-Token, and the next deal waits.
    tally = await post_many(traffic.http, traffic.gateway, "/api/v1/deals",
                            [deal("live-1"), {"status": "new"}])
    assert (tally["accepted"], tally["rejected"]) == (1, 1), tally
    await traffic.until('ctgw_jobs_delivered_total{kind="deal.create",site="default"}')
    await sandbox_config(traffic.http, sandbox, access_token=WRONG_ACCESS_TOKEN)
    await post_many(traffic.http, traffic.gateway, "/api/v1/deals", [deal("live-3")])
    await traffic.until('ctgw_upstream_auth_failures_total{method="client-order/create"}')


# --- evaluation -------------------------------------------------------------------------


async def query(http: aiohttp.ClientSession, prom: str, expr: str) -> dict[str, Any]:
    """``/api/v1/query`` at now; the whole answer (``status``, ``data`` or ``error``)."""
    params = {"query": expr, "time": f"{time.time():.3f}"}
    async with http.get(f"{prom}/api/v1/query", params=params) as resp:
        answer: dict[str, Any] = await resp.json(content_type=None)
        return answer


def values(answer: dict[str, Any]) -> list[float]:
    data = answer["data"]
    if data["resultType"] == "vector":
        return [float(s["value"][1]) for s in data["result"]]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return []


def dashboard_queries() -> dict[str, str]:
    """Each target's PromQL with Grafana's variables replaced, keyed by panel and refId."""
    titles = {panel["id"]: panel["title"] for panel in graph_panels()}
    named: dict[str, str] = {}
    for key, expr in dashboard_exprs().items():
        match = re.fullmatch(r"ctgw_dashboard:panel_(\d+)_(\w+)", key)
        assert match, key
        named[f"panel {match[1]} {titles[int(match[1])]!r} {match[2]}"] = (
            grafana_variables_replaced(expr)
        )
    return named


def rule_queries() -> dict[str, str]:
    """Every alerting and recording rule of alerts.yml, as the file has it."""
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        f"rule {group['name']}/{rule.get('alert') or rule.get('record')}": rule["expr"]
        for group in groups
        for rule in group["rules"]
    }


async def dashboard_failures(http: aiohttp.ClientSession, prom: str) -> list[str]:
    failures = []
    for name, expr in dashboard_queries().items():
        answer = await query(http, prom, expr)
        if answer.get("status") != "success":
            failures.append(f"{name}: {answer.get('errorType')}: {answer.get('error')}\n  {expr}")
        elif not any(math.isfinite(v) for v in values(answer)):
            failures.append(f"{name}: no data ({answer['data']['result']})\n  {expr}")
    return failures


async def rule_failures(http: aiohttp.ClientSession, prom: str) -> list[str]:
    failures = []
    for name, expr in rule_queries().items():
        answer = await query(http, prom, expr)
        if answer.get("status") != "success":
            failures.append(f"{name}: {answer.get('errorType')}: {answer.get('error')}\n  {expr}")
    async with http.get(f"{prom}/api/v1/rules") as resp:
        groups = (await resp.json())["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    if len(loaded) != len(rule_queries()):
        failures.append(f"Prometheus loaded {len(loaded)} rules, alerts.yml has "
                        f"{len(rule_queries())}")
    if {r["name"] for r in loaded if r["type"] == "alerting"} != set(alert_names()):
        failures.append(f"alerts loaded: {sorted(r['name'] for r in loaded)}")
    for rule in loaded:
        if rule["health"] != "ok" or rule.get("lastError"):
            failures.append(f"rule {rule['name']}: health {rule['health']!r} "
                            f"{rule.get('lastError')!r}")
    return failures


# --- the test ---------------------------------------------------------------------------


async def test_every_dashboard_and_alert_query_works_against_a_real_prometheus(
    http: aiohttp.ClientSession,
) -> None:
    binary = need_binary("prometheus")
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="ctgw-prom-") as tmp:
        workdir = Path(tmp)
        db = workdir / "q.db"
        try:
            sandbox_proc, sandbox = spawn_sandbox(latency="0.01,0.1")
            processes.append(sandbox_proc)
            gateway_proc, gateway, ops = spawn_gateway({
                "CTGW_SITE_ID": "18990",
                "CTGW_CALLTOUCH_URL": sandbox,
                "CTGW_QUEUE": f"sqlite:///{db}",
                "CTGW_LISTEN": "127.0.0.1:0",
                "CTGW_OPS_LISTEN": "127.0.0.1:0",
                "CTGW_CLIENT_RATE": "1000/s",  # every lead here comes from 127.0.0.1
                "CTGW_API_TOKENS": TOKEN,
                "CTGW_ACCESS_TOKEN": ACCESS_TOKEN,
                "CTGW_BATCH_LINGER": "200ms",
                "CTGW_POINTS_PER_HOUR": "10000",  # so the points panels have a budget to show
            })
            processes.append(gateway_proc)
            with prometheus(binary, workdir, ops.removeprefix("http://")) as (prom, prom_proc):
                await wait_ready(http, prom, prom_proc, workdir)
                await _run(http, prom, workdir, Traffic(http, gateway, ops), sandbox, db)
        finally:
            for proc in reversed(processes):
                proc.kill()


async def wait_ready(
    http: aiohttp.ClientSession, prom: str, proc: subprocess.Popen[bytes], workdir: Path
) -> None:
    async def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"Prometheus exited with {proc.returncode}:\n" + log_tail(workdir))
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{prom}/-/ready") as resp:
                return resp.status == 200
        return False

    try:
        await eventually(ready, timeout=20, interval=0.2)
    except AssertionError:
        pytest.fail("Prometheus did not become ready:\n" + log_tail(workdir))


async def _run(
    http: aiohttp.ClientSession, prom: str, workdir: Path, traffic: Traffic, sandbox: str,
    db: Path,
) -> None:
    await flow(traffic, sandbox, db)

    # Give Prometheus a few scrapes and rule evaluations to see the end of the traffic.
    failures: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        failures = [*await dashboard_failures(http, prom), *await rule_failures(http, prom)]
        if not failures:
            break
        await asyncio.sleep(1)
    assert not failures, (
        f"{len(failures)} failing expression(s) after traffic {traffic.statuses}:\n"
        + "\n".join(failures) + "\n--- prometheus log ---\n" + log_tail(workdir)
    )
