"""Settings: one frozen dataclass, built once from the ``CTGW_*`` environment.

Nothing else in the package reads ``os.environ``; this module does no I/O beyond that mapping.
The values' types and the parsers of their text are in :mod:`gateway.config_values`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from gateway.config_points import PointsSettings, parse_costs, parse_pattern, parse_reserve
from gateway.config_values import (
    BotWeights,
    ClientRate,
    HostPort,
    IPNetwork,
    parse_agents,
    parse_client_rate,
    parse_count,
    parse_duration,
    parse_egress,
    parse_hostport,
    parse_label,
    parse_lease,
    parse_level,
    parse_linger,
    parse_mod_id,
    parse_networks,
    parse_origins,
    parse_probe_max,
    parse_queue,
    parse_rate,
    parse_secret,
    parse_site_id,
    parse_size,
    parse_timeout,
    parse_timezone,
    parse_tokens,
    parse_url,
    parse_weights,
)

T = TypeVar("T")

_SANDBOX_SITE_ID = "18990"
# An error line must not print a token, nor a queue URL (a PostgreSQL one holds a password).
_SECRET = frozenset({"CTGW_API_TOKENS", "CTGW_QUEUE", "CTGW_ACCESS_TOKEN", "CTGW_CLIENT_API_ID"})
# What the sandbox's back office is sent when no credential is set: it takes any.
SANDBOX_ACCESS_TOKEN = "sandbox-access-token"  # noqa: S105 -- the simulator's, not a secret
SANDBOX_CLIENT_API_ID = "sandbox-client-api-id"
# The customSources fallback of a deal that no lead matched: the ERP example's "offline visit".
DEAL_FALLBACK = "оффлайн-визит"
# Calltouch's published limit, requests per second per IP: above it, expect 429s.
CALLTOUCH_RATE = 5.0
DEFAULT_QUEUE = "sqlite:///./ct-gateway.db"
DEFAULT_LOG_LEVEL = "INFO"


class ConfigError(ValueError):
    """A ``CTGW_*`` variable is missing or malformed; ``str()`` names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


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


def store_from_env(env: Mapping[str, str]) -> StoreSettings:
    """Only ``CTGW_QUEUE`` and ``CTGW_LOG_LEVEL``: no other variable can stop a store command."""
    return StoreSettings(
        queue_url=_parse(env, "CTGW_QUEUE", parse_queue, DEFAULT_QUEUE),
        log_level=_parse(env, "CTGW_LOG_LEVEL", parse_level, DEFAULT_LOG_LEVEL),
    )


# What the variables say of the one site, and where a sites file says it of each of its sites:
# with CTGW_SITES both set, the variable would be used by no site, and silently.
_OF_ONE_SITE = {
    "CTGW_SITE_ID": "site_id", "CTGW_MOD_ID": "mod_id", "CTGW_ALLOWED_ORIGINS": "allowed_origins",
    "CTGW_TIMEZONE": "timezone", "CTGW_ACCESS_TOKEN": "access_token",
    "CTGW_CLIENT_API_ID": "client_api_id", "CTGW_POINTS_PER_HOUR": "points_per_hour",
    "CTGW_POINTS_PER_DAY": "points_per_day",
}


def _one_site_variables(env: Mapping[str, str]) -> None:
    for variable, key in _OF_ONE_SITE.items():
        if _req(env, variable) is not None:
            raise ConfigError("CTGW_SITES", f"and {variable} are both set: the sites file gives"
                              f" each site its own {key}; unset {variable}")
    if _req(env, "CTGW_API_TOKENS") is not None:
        raise ConfigError("CTGW_SITES", "and CTGW_API_TOKENS are both set: the sites file's"
                          " [tokens] binds each token to its sites; unset CTGW_API_TOKENS")


def _site_id(env: Mapping[str, str], sandbox: bool) -> str:
    if _req(env, "CTGW_SITES") is not None:
        _one_site_variables(env)
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
    return PointsSettings(
        per_hour, per_day,
        reserve=_parse(env, "CTGW_POINTS_RESERVE", parse_reserve, d.reserve),
        costs=_parse(env, "CTGW_POINT_COSTS", parse_costs, d.costs),
        refusal=_parse(env, "CTGW_POINTS_REFUSAL", parse_pattern, d.refusal),
        probe_every=_parse(env, "CTGW_POINTS_PROBE", parse_timeout, d.probe_every),
    )
