"""Who the client is, and whether it may post another lead now (pure; clock injected)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.config_values import ClientRate, IPNetwork


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_ip(peer: str | None, forwarded: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The socket peer; behind a trusted proxy, the rightmost forwarded hop not itself trusted.

    Only hops appended by trusted proxies count: whatever a client wrote into
    ``X-Forwarded-For`` itself stands left of them and is never reached first.
    """
    if not peer:
        return "unknown"
    if not forwarded or not trusted:
        return peer  # the common case, on every lead: no parsing
    address = _ip(peer)
    if address is None or not any(address in net for net in trusted):
        return peer
    for hop in reversed(forwarded.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # junk where a proxy's entry should be: trust nothing further left
        if not any(hop_ip in net for net in trusted):
            return str(hop_ip)
        address = hop_ip
    return str(address)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class ClientLimiter:
    """A token bucket per client, at most ``max_clients`` of them (least recently seen go)."""

    def __init__(
        self, rate: ClientRate, max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Plain floats: take() runs on every browser lead.
        self._burst, self._per_second = float(rate.burst), rate.per_second
        self._max = max_clients
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Take a token: 0.0 when allowed, else the seconds until the next one."""
        now = self._clock()
        bucket = self._buckets.pop(client, None)  # re-inserted below: dicts keep order, an LRU
        if bucket is None:
            if len(self._buckets) >= self._max:  # room for this one: the least recent goes
                del self._buckets[next(iter(self._buckets))]
            bucket = _Bucket(self._burst, now)
        tokens = bucket.tokens + (now - bucket.at) * self._per_second
        tokens = tokens if tokens < self._burst else self._burst
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._per_second
        bucket.tokens, bucket.at = tokens, now
        self._buckets[client] = bucket
        return wait
