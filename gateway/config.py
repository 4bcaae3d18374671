"""Settings: one frozen dataclass, built once from the ``CTGW_*`` environment.

Nothing else in the package reads ``os.environ``; this module does no I/O beyond that mapping.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar
from urllib.parse import urlsplit

from gateway.config_points import PointsSettings, parse_costs, parse_pattern, parse_reserve

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_MOD_ID = re.compile(r"^[0-9a-z]{8}$")
_EGRESS = re.compile(r"^[a-z0-9_-]{1,64}$")
_SANDBOX_SITE_ID = "18990"
# An error line must not print a token, nor a queue URL (a PostgreSQL one holds a password).
_SECRET = frozenset({"CTGW_API_TOKENS", "CTGW_QUEUE", "CTGW_ACCESS_TOKEN", "CTGW_CLIENT_API_ID"})
_SIZE = re.compile(r"^(\d+)(|k|kb|kib|m|mb|mib|g|gb|gib)$")
_SIZE_UNITS = {"": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
# What the sandbox's back office is sent when no credential is set: it takes any.
SANDBOX_ACCESS_TOKEN = "sandbox-access-token"  # noqa: S105 -- the simulator's, not a secret
SANDBOX_CLIENT_API_ID = "sandbox-client-api-id"
# The customSources fallback of a deal that no lead matched: the ERP example's "offline visit".
DEAL_FALLBACK = "оффлайн-визит"
_RATE_FORM = "expected requests per second, a number above 0 and at most 1000, e.g. 5"
# Calltouch's published limit, requests per second per IP: above it, expect 429s.
CALLTOUCH_RATE = 5.0
DEFAULT_QUEUE = "sqlite:///./ct-gateway.db"
DEFAULT_LOG_LEVEL = "INFO"


class ConfigError(ValueError):
    """A ``CTGW_*`` variable is missing or malformed; ``str()`` names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


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


# Lower-case substrings of user agents that no person's browser sends.
DEFAULT_BOT_AGENTS = (
    "bot", "crawl", "spider", "slurp", "curl/", "wget/", "python-requests", "python-urllib",
    "aiohttp", "httpx", "go-http-client", "java/", "okhttp", "libwww", "scrapy", "phantomjs",
    "headlesschrome",
)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What a command that only reads or changes the store needs: no Calltouch settings."""

    queue_url: str = DEFAULT_QUEUE
    log_level: str = DEFAULT_LOG_LEVEL


@dataclass(frozen=True, slots=True)
class Settings:
    site_id: str
    mod_id: str | None = None
    calltouch_url: str = "https://api.calltouch.ru"
    listen: HostPort = HostPort("127.0.0.1", 8080)
    ops_listen: HostPort = HostPort("127.0.0.1", 9464)
    queue_url: str = DEFAULT_QUEUE
    rate: float = CALLTOUCH_RATE
    # Gateways with the same egress leave through one IP: they share one pace.
    egress: str = "default"
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    client_rate: ClientRate = ClientRate(10 / 60, 5)
    retention: float = 7 * 86400.0
    dead_retention: float = 30 * 86400.0
    spam_retention: float = 7 * 86400.0
    spam_max: int = 100_000
    max_age: float = 72 * 3600.0
    lease_timeout: float = 60.0
    timezone: str = "Europe/Moscow"
    log_level: str = DEFAULT_LOG_LEVEL
    max_body: int = 64 * 1024
    upstream_timeout: float = 15.0
    # While Calltouch is down, probes go 1, 2, 4 ... s apart up to this: a longer cap sends
    # fewer calls into an outage and sees its end later.
    probe_max: float = 8.0
    concurrency: int = 16
    shutdown_grace: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 1024
    bot_min_elapsed: float = 1.5
    bot_weights: BotWeights = BotWeights()
    bot_threshold: int = 2
    bot_agents: tuple[str, ...] = DEFAULT_BOT_AGENTS
    sandbox: bool = False
    # The back office: credentials are added at send time, never queued nor shown.
    access_token: str | None = field(default=None, repr=False)
    client_api_id: str | None = field(default=None, repr=False)
    max_upload: int = 64 << 20  # an NDJSON upload, read as a stream
    batch_linger: float = 1.0
    deal_source: str = DEAL_FALLBACK
    deal_medium: str = DEAL_FALLBACK
    deal_campaign: str = DEAL_FALLBACK
    # CTGW_SITES: a file of several sites (gateway.sites); read where the gateway starts.
    sites_file: str | None = None
    points: PointsSettings = field(default_factory=PointsSettings)

    def with_calltouch(self, url: str) -> Settings:
        return replace(self, calltouch_url=url)


def _req(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _parse(env: Mapping[str, str], name: str, conv: Callable[[str], T], default: T) -> T:
    raw = _req(env, name)
    if raw is None:
        return default
    try:
        return conv(raw)
    except ValueError as exc:
        shown = "(value hidden)" if name in _SECRET else f"(got {raw!r})"
        raise ConfigError(name, f"{exc} {shown}") from None


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
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http(s) URL")
    return raw.rstrip("/")


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
    # Browsers send scheme and host in lower case, with no trailing slash.
    origins = [o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip()]
    for origin in origins:
        parse_url(origin)
    return frozenset(origins)


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


def store_from_env(env: Mapping[str, str]) -> StoreSettings:
    """Only ``CTGW_QUEUE`` and ``CTGW_LOG_LEVEL``: no other variable can stop a store command."""
    return StoreSettings(
        queue_url=_parse(env, "CTGW_QUEUE", parse_queue, DEFAULT_QUEUE),
        log_level=_parse(env, "CTGW_LOG_LEVEL", parse_level, DEFAULT_LOG_LEVEL),
    )


def _site_id(env: Mapping[str, str], sandbox: bool) -> str:
    if _req(env, "CTGW_SITES") is not None:
        if _req(env, "CTGW_SITE_ID") is not None:
            raise ConfigError("CTGW_SITES", "and CTGW_SITE_ID are both set: the sites file names"
                              " every site's id; unset CTGW_SITE_ID")
        if sandbox:
            raise ConfigError("CTGW_SITES", "is set, but --sandbox relays to the simulator")
        return ""  # each site has its own, in the file
    if sandbox:
        # Both given, the operator meant one of them; guessing the sandbox would send a real
        # site's leads to the simulator, never to Calltouch.
        if _req(env, "CTGW_SITE_ID") is not None:
            raise ConfigError("CTGW_SITE_ID", "is set, but --sandbox relays to the simulator: "
                              "unset CTGW_SITE_ID or run without --sandbox")
        return _SANDBOX_SITE_ID
    site_id = _parse(env, "CTGW_SITE_ID", parse_site_id, None)
    if site_id is None:
        raise ConfigError("CTGW_SITE_ID", "required (or run with --sandbox)")
    return site_id


def from_env(env: Mapping[str, str], *, sandbox: bool = False) -> Settings:
    """Build and validate settings; raises :class:`ConfigError` naming the bad variable."""
    site_id = _site_id(env, sandbox)
    store = store_from_env(env)
    d = Settings(site_id=site_id)
    return Settings(
        site_id=site_id,
        mod_id=_parse(env, "CTGW_MOD_ID", parse_mod_id, None),
        calltouch_url=_parse(env, "CTGW_CALLTOUCH_URL", parse_url, d.calltouch_url),
        listen=_parse(env, "CTGW_LISTEN", parse_hostport, d.listen),
        ops_listen=_parse(env, "CTGW_OPS_LISTEN", parse_hostport, d.ops_listen),
        queue_url=store.queue_url,
        rate=_parse(env, "CTGW_RATE", parse_rate, d.rate),
        egress=_parse(env, "CTGW_EGRESS", parse_egress, d.egress),
        api_tokens=_parse(env, "CTGW_API_TOKENS", parse_tokens, d.api_tokens),
        allowed_origins=_parse(env, "CTGW_ALLOWED_ORIGINS", parse_origins, d.allowed_origins),
        trusted_proxies=_parse(env, "CTGW_TRUSTED_PROXIES", parse_networks, d.trusted_proxies),
        client_rate=_parse(env, "CTGW_CLIENT_RATE", parse_client_rate, d.client_rate),
        retention=_parse(env, "CTGW_RETENTION", parse_duration, d.retention),
        max_age=_parse(env, "CTGW_MAX_AGE", parse_duration, d.max_age),
        lease_timeout=_parse(env, "CTGW_LEASE_TIMEOUT", parse_lease, d.lease_timeout),
        timezone=_parse(env, "CTGW_TIMEZONE", parse_timezone, d.timezone),
        log_level=store.log_level,
        dead_retention=_parse(env, "CTGW_DEAD_RETENTION", parse_duration, d.dead_retention),
        spam_retention=_parse(env, "CTGW_SPAM_RETENTION", parse_duration, d.spam_retention),
        spam_max=_parse(env, "CTGW_SPAM_MAX", parse_count, d.spam_max),
        header_timeout=_parse(env, "CTGW_HEADER_TIMEOUT", parse_timeout, d.header_timeout),
        body_timeout=_parse(env, "CTGW_BODY_TIMEOUT", parse_timeout, d.body_timeout),
        max_connections=_parse(env, "CTGW_MAX_CONNECTIONS", parse_count, d.max_connections),
        probe_max=_parse(env, "CTGW_PROBE_MAX", parse_probe_max, d.probe_max),
        bot_min_elapsed=_parse(env, "CTGW_BOT_MIN_ELAPSED", parse_duration, d.bot_min_elapsed),
        bot_weights=_parse(env, "CTGW_BOT_WEIGHTS", parse_weights, d.bot_weights),
        bot_threshold=_parse(env, "CTGW_BOT_THRESHOLD", parse_count, d.bot_threshold),
        bot_agents=_parse(env, "CTGW_BOT_AGENTS", parse_agents, d.bot_agents),
        sandbox=sandbox,
        access_token=_parse(env, "CTGW_ACCESS_TOKEN", parse_secret,
                            SANDBOX_ACCESS_TOKEN if sandbox else None),
        client_api_id=_parse(env, "CTGW_CLIENT_API_ID", parse_secret,
                             SANDBOX_CLIENT_API_ID if sandbox else None),
        max_upload=_parse(env, "CTGW_MAX_UPLOAD", parse_size, d.max_upload),
        batch_linger=_parse(env, "CTGW_BATCH_LINGER", parse_linger, d.batch_linger),
        deal_source=_parse(env, "CTGW_DEAL_SOURCE", parse_label, d.deal_source),
        deal_medium=_parse(env, "CTGW_DEAL_MEDIUM", parse_label, d.deal_medium),
        deal_campaign=_parse(env, "CTGW_DEAL_CAMPAIGN", parse_label, d.deal_campaign),
        sites_file=_req(env, "CTGW_SITES"),
        points=_points(env),
    )


def _points(env: Mapping[str, str]) -> PointsSettings:
    d = PointsSettings()
    per_hour = _parse(env, "CTGW_POINTS_PER_HOUR", parse_count, None)
    per_day = _parse(env, "CTGW_POINTS_PER_DAY", parse_count, None)
    if (per_hour or per_day) and _req(env, "CTGW_SITES") is not None:
        raise ConfigError("CTGW_SITES", "and CTGW_POINTS_PER_HOUR/_PER_DAY are both set: the "
                          "sites file holds each site's budgets")
    return PointsSettings(
        per_hour, per_day,
        reserve=_parse(env, "CTGW_POINTS_RESERVE", parse_reserve, d.reserve),
        costs=_parse(env, "CTGW_POINT_COSTS", parse_costs, d.costs),
        refusal=_parse(env, "CTGW_POINTS_REFUSAL", parse_pattern, d.refusal),
        probe_every=_parse(env, "CTGW_POINTS_PROBE", parse_timeout, d.probe_every),
    )
