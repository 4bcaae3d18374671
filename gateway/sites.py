"""Sites: each Calltouch site a gateway serves, and how a request finds its own.

A browser lead finds its site by its ``Host`` header, an API call by its bearer token (and
``?site=``), a 1.0 call by its ``clientApiId``. Without ``CTGW_SITES`` there is one site,
``default``, made of the ``CTGW_*`` variables (:func:`single_site`); with it, the sites are the
file's (:mod:`gateway.sites_file`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.queue.base import DEFAULT_SITE

DEFAULT_TIMEZONE = "Europe/Moscow"
_HOST = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                   r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_HOST_FORM = "expected a host name without scheme, port or path, e.g. shop.ru"


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    site_id: str
    mod_id: str | None = None
    hosts: tuple[str, ...] = ()
    allowed_origins: frozenset[str] = frozenset()
    access_token: str | None = field(default=None, repr=False)
    client_api_id: str | None = field(default=None, repr=False)
    timezone: str = DEFAULT_TIMEZONE
    points_per_hour: int | None = None
    points_per_day: int | None = None
    points_reserve: float | None = None  # None: the gateway's CTGW_POINTS_RESERVE
    deal_fallback_source: str | None = None


@dataclass(frozen=True, slots=True)
class Sites:
    sites: dict[str, Site]
    tokens: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)  # token -> names
    # The site of every host no site names: the one site made of CTGW_SITE_ID and the rest.
    fallback: str | None = None
    _by_host: dict[str, Site] = field(init=False, repr=False, compare=False)
    _tokens: tuple[tuple[bytes, frozenset[str]], ...] = field(init=False, repr=False,
                                                               compare=False)
    _api_ids: tuple[tuple[bytes, Site], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_host = {host: site for site in self.sites.values() for host in site.hosts}
        tokens = tuple((token.encode(), names) for token, names in self.tokens.items())
        api_ids = tuple((site.client_api_id.encode(), site) for site in self.sites.values()
                        if site.client_api_id is not None)
        object.__setattr__(self, "_by_host", by_host)
        object.__setattr__(self, "_tokens", tokens)
        object.__setattr__(self, "_api_ids", api_ids)

    def for_host(self, host: str) -> Site | None:
        """The site a ``Host`` header names (port stripped, any case), or None."""
        default = None if self.fallback is None else self.sites[self.fallback]
        if default is not None and not self._by_host:
            return default  # one site serving every host: nothing to look up
        try:
            return self._by_host.get(host_name(_without_port(host)), default)
        except ValueError:
            return default

    def for_token(self, token: str) -> frozenset[str]:
        """The names of the sites a bearer token may post for; empty for an unknown token.

        Compared in constant time with every token, so the time taken tells nothing of them."""
        given = token.encode("utf-8", "surrogateescape")
        found: frozenset[str] = frozenset()
        for value, names in self._tokens:
            if hmac.compare_digest(given, value):
                found = names
        return found

    def by_client_api_id(self, value: str) -> Site | None:
        """The site whose ``client_api_id`` this is (constant-time comparisons), or None."""
        given = value.encode("utf-8", "surrogateescape")
        found: Site | None = None
        for expected, site in self._api_ids:
            if hmac.compare_digest(given, expected):
                found = site
        return found


def _without_port(header: str) -> str:
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end >= 0 else "?"
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise ValueError("not a Host header")
        return header[:end + 1]
    if header.count(":") == 1:
        host, _, port = header.partition(":")
        if not port.isdigit():
            raise ValueError("not a Host header")
        return host
    return header  # a name, or an IPv6 address written without brackets


def host_name(raw: str) -> str:
    """A host name as it is compared: lower case, ASCII, no trailing dot; IPv6 in brackets."""
    host = raw.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise ValueError(_HOST_FORM) from None
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid international domain name") from None
    host = host.removesuffix(".")
    if not _HOST.fullmatch(host):
        raise ValueError(_HOST_FORM)
    return host


def single_site(settings: Settings) -> Sites:
    """Without ``CTGW_SITES``: one site named ``default``, of ``CTGW_SITE_ID`` and the other
    variables, serving every host, and every ``CTGW_API_TOKENS`` token may post for it."""
    site = Site(
        DEFAULT_SITE, settings.site_id, settings.mod_id, (), settings.allowed_origins,
        settings.access_token, settings.client_api_id, settings.timezone,
        settings.points.per_hour, settings.points.per_day,
    )
    every = frozenset({DEFAULT_SITE})
    return Sites({DEFAULT_SITE: site}, {token: every for token in settings.api_tokens},
                 fallback=DEFAULT_SITE)
