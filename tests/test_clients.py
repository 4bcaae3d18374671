"""Client identity behind proxies, and the per-client limit on /leads."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from gateway.config import Settings
from gateway.config_values import ClientRate
from gateway.intake.clients import ClientLimiter, client_ip
from tests.support import lead

PROXY = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", None, PROXY, "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", PROXY, "203.0.113.9"),  # untrusted peer: header ignored
        ("203.0.113.9", "1.2.3.4", (), "203.0.113.9"),
        ("10.0.0.5", "198.51.100.7", PROXY, "198.51.100.7"),
        ("10.0.0.5", "1.2.3.4, 198.51.100.7", PROXY, "198.51.100.7"),  # forged left part
        ("10.0.0.5", "198.51.100.7, 10.0.0.6", PROXY, "198.51.100.7"),  # two proxies
        ("10.0.0.5", "junk", PROXY, "10.0.0.5"),
        ("10.0.0.5", "10.0.0.7", PROXY, "10.0.0.7"),
        (None, None, PROXY, "unknown"),
        ("::1", None, PROXY, "::1"),
    ],
)
def test_client_ip(peer: str | None, forwarded: str | None, trusted: Any, expected: str) -> None:
    assert client_ip(peer, forwarded, trusted) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_refill() -> None:
    clock = Clock()
    limiter = ClientLimiter(ClientRate(10 / 60, 5), clock=clock)
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    assert limiter.take("a") == pytest.approx(6.0)
    assert limiter.take("b") == 0.0  # another client is not affected
    clock.now = 6.0
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0


def test_tracked_clients_are_bounded() -> None:
    limiter = ClientLimiter(ClientRate(1.0, 1), max_clients=100, clock=Clock())
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    assert limiter.take("10.0.0.0") == 0.0  # long evicted: starts with a full bucket


async def flood(url: str, local: str, count: int, headers: LooseHeaders | None = None,
                first: int = 0) -> list[aiohttp.ClientResponse]:
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        answers = []
        for i in range(first, first + count):
            async with http.post(f"{url}/leads", json=lead(i), headers=headers) as resp:
                await resp.read()
                answers.append(resp)
        return answers


async def test_a_flood_is_limited_while_another_client_is_served(
    start_gateway: Any, settings: Settings
) -> None:
    gw = await start_gateway(replace(settings, client_rate=ClientRate(10 / 60, 5)))
    answers = await flood(gw.url, "127.0.0.2", 60)
    accepted = [a for a in answers if a.status in (200, 202)]
    throttled = [a for a in answers if a.status == 429]
    assert len(accepted) <= 5 + 1 and len(accepted) + len(throttled) == 60
    assert all(int(a.headers["Retry-After"]) >= 1 for a in throttled)
    other = await flood(gw.url, "127.0.0.3", 3, first=1000)
    assert [a.status for a in other] == [202, 202, 202]
    value = gw.metrics.registry.get_sample_value
    throttled_leads = {"channel": "browser", "outcome": "throttled", "site": "default"}
    assert value("ctgw_leads_received_total", throttled_leads) == len(throttled)


async def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(
    start_gateway: Any, settings: Settings
) -> None:
    gw = await start_gateway(replace(settings, client_rate=ClientRate(10 / 60, 5)))
    answers = []
    for i in range(20):
        forged = {"X-Forwarded-For": f"192.0.2.{i}"}
        answers += await flood(gw.url, "127.0.0.4", 1, forged, first=i)
    assert sum(a.status in (200, 202) for a in answers) <= 6


async def test_a_forged_line_before_the_proxys_own_line_is_not_the_client(
    start_gateway: Any, settings: Settings
) -> None:
    """A proxy that adds its own ``X-Forwarded-For`` line (HAProxy's ``option forwardfor``)
    leaves the client's forged line first: the lines are one list, read from the right."""
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    gw = await start_gateway(replace(settings, client_rate=ClientRate(10 / 60, 5),
                                     trusted_proxies=loopback))
    answers = []
    for i in range(20):
        lines = CIMultiDict([("X-Forwarded-For", f"192.0.2.{i}"),
                             ("X-Forwarded-For", "198.51.100.7")])
        answers += await flood(gw.url, "127.0.0.5", 1, lines, first=i)
    assert sum(a.status in (200, 202) for a in answers) <= 6
