"""A real nginx with the shipped snippet in front of the gateway, on the site's origin.

Loopback has room for distinct hosts: clients connect from 127.0.0.3 and 127.0.0.4, nginx
listens on 127.0.0.5 and reaches the gateway from 127.0.0.2, the one trusted proxy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import Settings
from gateway.config_values import ClientRate
from tests.support import lead, need_binary

SNIPPET = Path(__file__).parent.parent / "deploy" / "nginx" / "ct-gateway.conf"
NGINX_HOST, PROXY_FROM = "127.0.0.5", "127.0.0.2"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _config(tmp: Path, port: int, upstream: str) -> Path:
    location = SNIPPET.read_text().replace("http://127.0.0.1:8080/", f"{upstream}/")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    server {{
        listen {NGINX_HOST}:{port};
        proxy_bind {PROXY_FROM};
        {location}
    }}
}}
""")
    return conf


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Any]:
    binary = need_binary("nginx")
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: str) -> str:
        port = _free_port(NGINX_HOST)
        conf = _config(tmp_path, port, upstream)
        check = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        procs.append(proc)
        for _ in range(100):  # nginx has no readiness signal but its port
            try:
                socket.create_connection((NGINX_HOST, port), timeout=0.1).close()
                return f"http://{NGINX_HOST}:{port}/ct-gateway"
            except OSError:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)  # waits a little, and notices an nginx that died
                assert proc.poll() is None, (tmp_path / "error.log").read_text()
        raise AssertionError("nginx did not listen")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def post_from(source: str, url: str, n: int, **headers: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.post(f"{url}/leads", json=lead(n), headers=headers) as resp:
        return resp.status


async def test_the_gateway_sees_clients_through_nginx(
    start_gateway: Any, settings: Settings, nginx_factory: Any
) -> None:
    gw = await start_gateway(replace(
        settings,
        client_rate=ClientRate(10 / 60, 5),
        trusted_proxies=(ipaddress.ip_network(f"{PROXY_FROM}/32"),),
    ))
    site = nginx_factory(gw.url)
    first = [await post_from("127.0.0.3", site, n) for n in range(7)]
    assert first[:5] == [202] * 5 and first[5:] == [429, 429]  # limited as one client
    # Another visitor behind the same nginx is another client to the gateway.
    assert await post_from("127.0.0.4", site, 100, Origin=f"http://{site.split('/')[2]}") == 202
    # The first visitor forging X-Forwarded-For still is itself: nginx appends the real peer.
    assert await post_from("127.0.0.3", site, 101, **{"X-Forwarded-For": "198.51.100.1"}) == 429
    # Past the proxy, a forged header from an untrusted peer is ignored.
    direct = [await post_from("127.0.0.6", gw.url, 200 + n, **{"X-Forwarded-For": f"192.0.2.{n}"})
              for n in range(7)]
    assert direct.count(202) == 5
