"""The values of settings, and the parsers of their text.

Each ``parse_*`` takes one setting's text and returns its value, or raises :class:`ValueError`
saying the form it expected; :mod:`gateway.config` adds the variable's name, and
:mod:`gateway.sites` the file, table and key. No parser reads the environment or a file.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_MOD_ID = re.compile(r"^[0-9a-z]{8}$")
_EGRESS = re.compile(r"^[a-z0-9_-]{1,64}$")
_SIZE = re.compile(r"^(\d+)(|k|kb|kib|m|mb|mib|g|gb|gib)$")
_SIZE_UNITS = {"": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_RATE_FORM = "expected requests per second, a number above 0 and at most 1000, e.g. 5"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClientRate:
    """Leads per client IP: ``per_second`` refill, ``burst`` bucket size."""

    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class BotWeights:
    """Points each bot signal adds to a browser lead's score (0 turns a signal off)."""

    fast: int = 2  # sent sooner than ``bot_min_elapsed`` after the page loaded
    origin: int = 1  # neither ``Origin`` nor ``Referer`` names the site
    agent: int = 2  # a user agent from ``bot_agents``


def parse_duration(raw: str) -> float:
    match = _DURATION.match(raw)
    if not match:
        raise ValueError("expected a duration like 30s, 15m, 72h or 7d")
    return float(match[1]) * _UNITS[match[2]]


def parse_hostport(raw: str) -> HostPort:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return HostPort(host.strip("[]") or "0.0.0.0", int(port))


def parse_lease(raw: str) -> float:
    seconds = parse_duration(raw)
    # A lease must outlast the pacer's wait and the upstream timeout, or sends would overlap.
    if seconds < 20:
        raise ValueError("must be at least 20s")
    return seconds


def parse_rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:  # float's own message ("could not convert…") does not say the form
        raise ValueError(_RATE_FORM) from None
    if not 0 < value <= 1000:
        raise ValueError(_RATE_FORM)
    return value


def parse_client_rate(raw: str) -> ClientRate:
    count, _, per = raw.partition("/")
    if not count.isdigit() or int(count) < 1 or per not in _PER:
        raise ValueError("expected COUNT/UNIT, e.g. 10/min (units: s, min, h)")
    return ClientRate(int(count) / _PER[per], max(1, min(5, int(count))))


def parse_url(raw: str) -> str:
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port not a number, or out of range
    except ValueError:
        raise ValueError("expected an http(s) URL with a port of 1 to 65535, if any") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL")
    return raw.rstrip("/")


ORIGIN_FORM = "expected an origin: http(s)://host[:port], e.g. https://shop.ru"


def parse_origin(raw: str) -> str:
    """One origin as browsers send it: scheme and host in lower case, no trailing slash."""
    origin = raw.strip().rstrip("/").lower()
    try:
        parse_url(origin)
    except ValueError:
        raise ValueError(ORIGIN_FORM) from None
    parts = urlsplit(origin)
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(ORIGIN_FORM)
    return origin


def parse_queue(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme == "sqlite" and len(parts.path) >= 2:
        return raw
    if parts.scheme in ("postgresql", "postgres") and parts.hostname and len(parts.path) >= 2:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        return raw
    raise ValueError("expected sqlite:///relative/path.db, sqlite:////absolute/path.db or "
                     "postgresql://user:password@host:port/database")


def parse_origins(raw: str) -> frozenset[str]:
    return frozenset(parse_origin(o) for o in raw.split(",") if o.strip())


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in raw.split(",") if n.strip())


def parse_tokens(raw: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in raw.split(",") if t.strip())
    if any(len(t) < 16 for t in tokens):
        raise ValueError("each token must be at least 16 characters")
    return tokens


def parse_mod_id(raw: str) -> str:
    if not _MOD_ID.match(raw):
        raise ValueError("expected the 8-character Calltouch counter id ([0-9a-z])")
    return raw


def parse_egress(raw: str) -> str:
    if not _EGRESS.fullmatch(raw):
        raise ValueError("expected 1 to 64 of a-z, 0-9, _ and -, e.g. dc1-nat")
    return raw


def parse_site_id(raw: str) -> str:
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError("expected the numeric Calltouch site id")
    return raw


def parse_timezone(raw: str) -> str:
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory
        raise ValueError("unknown time zone") from None
    return raw


def parse_count(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1_000_000:
        raise ValueError("expected a whole number from 1 to 1000000")
    return int(raw)


def parse_timeout(raw: str) -> float:
    seconds = parse_duration(raw)
    if not 0 < seconds <= 3600:
        raise ValueError("expected a duration above 0 and at most 1h")
    return seconds


def parse_probe_max(raw: str) -> float:
    seconds = parse_duration(raw)
    if not 1 <= seconds <= 30:
        raise ValueError("expected a duration from 1s to 30s")
    return seconds


def parse_weights(raw: str) -> BotWeights:
    weights: dict[str, int] = {}
    for item in raw.split(","):
        name, _, value = item.strip().partition("=")
        if name not in BotWeights.__dataclass_fields__ or not value.isdigit():
            raise ValueError("expected NAME=POINTS pairs, e.g. fast=2,origin=1,agent=2")
        weights[name] = int(value)
    return replace(BotWeights(), **weights)


def parse_agents(raw: str) -> tuple[str, ...]:
    return tuple(a.strip().lower() for a in raw.split(",") if a.strip())


def parse_size(raw: str) -> int:
    match = _SIZE.match(raw.strip().lower())
    if not match or not 1 <= int(match[1]) * _SIZE_UNITS[match[2]] <= 1 << 40:
        raise ValueError("expected a size in bytes, e.g. 67108864, 64MiB or 512KiB")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def parse_linger(raw: str) -> float:
    seconds = parse_duration(raw)
    if seconds > 60:
        raise ValueError("expected a duration of at most 60s, e.g. 1s or 250ms")
    return seconds


def parse_secret(raw: str) -> str:
    if len(raw) > 512 or not raw.isprintable():
        raise ValueError("expected printable text of at most 512 characters")
    return raw


def parse_label(raw: str) -> str:
    if len(raw) > 256 or not raw.isprintable():
        raise ValueError("expected printable text of at most 256 characters")
    return raw


def parse_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level
