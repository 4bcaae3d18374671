"""Servers under test, each in its own process: the gateway, the sandbox, the bare baseline.

Every process is started with a log file, waited for with a bound, and stopped with SIGTERM
(then SIGKILL after a grace period) when its ``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

LOOPBACK = "127.0.0.1"
SITE_ID = "18990"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    ops_url: str = ""
    ready_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak RSS) in KiB, from ``/proc/PID/status``."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def cpu_seconds(self) -> float:
        """User + system CPU time the process (all its threads) has used so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, grace: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, body: object = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """A small synchronous HTTP call for control and polling (never for load)."""
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, timeout: float = 30.0) -> Any:
    status, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}")
    return orjson.loads(body)


def _spawn(args: list[str], log: Path, env: Mapping[str, str] | None = None,
           stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
    log_file = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, *args], env=None if env is None else dict(env),
            stdout=subprocess.PIPE if stdout_pipe else log_file, stderr=log_file,
            start_new_session=True,
        )
    finally:
        log_file.close()


def _read_url_line(popen: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """Wait (bounded) for the ``<marker> URL`` line a child prints when it listens."""
    stream: IO[bytes] | None = popen.stdout
    assert stream is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stream], [], [], left)
        if not ready:
            break
        line = stream.readline().decode()
        if not line:
            break
        if line.startswith(marker):
            return line.split()[-1]
    popen.kill()
    raise RuntimeError(f"no '{marker}' line within {timeout}s (exit {popen.poll()})")


@contextlib.contextmanager
def _running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


@contextlib.contextmanager
def bare(workdir: Path) -> Iterator[Proc]:
    log = workdir / "bare.log"
    popen = _spawn(["-m", "bench.bare", f"{LOOPBACK}:0"], log, stdout_pipe=True)
    url = _read_url_line(popen, "listening", 30)
    with _running(Proc("bare", popen, url, log)) as proc:
        yield proc


@contextlib.contextmanager
def sandbox(workdir: Path, latency: tuple[float, float]) -> Iterator[Proc]:
    log = workdir / "sandbox.log"
    args = ["-m", "gateway.sandbox", "--listen", f"{LOOPBACK}:0",
            "--latency", f"{latency[0]},{latency[1]}"]
    popen = _spawn(args, log, stdout_pipe=True)
    url = _read_url_line(popen, "sandbox listening", 30)
    with _running(Proc("sandbox", popen, url, log)) as proc:
        yield proc


def gateway_env(db: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTGW_")}
    env.update({
        "CTGW_QUEUE": f"sqlite:///{db.resolve()}",
        "CTGW_LISTEN": f"{LOOPBACK}:{free_port()}",
        "CTGW_OPS_LISTEN": f"{LOOPBACK}:{free_port()}",
        # One client IP sends everything here; the per-client limit must not be what we measure.
        "CTGW_CLIENT_RATE": "1000000/s",
    })
    env.update(extra)
    return env


@contextlib.contextmanager
def gateway(workdir: Path, db: Path, *, sandbox: bool = False,
            extra: Mapping[str, str] | None = None, ready_timeout: float = 60.0) -> Iterator[Proc]:
    """``python -m gateway serve`` on ``db``; yields once ``/readyz`` answers 200."""
    env = gateway_env(db, extra or {})
    log = workdir / "gateway.log"
    started = time.monotonic()
    args = ["-m", "gateway", "serve", *(["--sandbox"] if sandbox else [])]
    popen = _spawn(args, log, env=env)
    proc = Proc("gateway", popen, f"http://{env['CTGW_LISTEN']}", log,
                ops_url=f"http://{env['CTGW_OPS_LISTEN']}")
    with _running(proc):
        wait_ready(proc, ready_timeout)
        proc.ready_seconds = time.monotonic() - started
        yield proc


def wait_ready(proc: Proc, timeout: float) -> None:
    """Poll ``/readyz`` until it answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        with contextlib.suppress(OSError):
            if http("GET", f"{proc.ops_url}/readyz", timeout=2)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout}s; see {proc.log}")
