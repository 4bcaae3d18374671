"""Sites: the ``CTGW_SITES`` file, one gateway in front of several Calltouch sites.

``CTGW_SITES=/etc/ct/sites.toml`` names a TOML file (read with :mod:`tomllib`)::

    [sites.shop]                        # NAME: 1 to 32 of a-z, 0-9, _ and - (a metric label)
    site_id = "12345"                   # required: the numeric Calltouch site id (or 12345)
    mod_id = "abcd1234"                 # optional: the 8-character counter id ([0-9a-z])
    hosts = ["shop.ru", "www.shop.ru"]  # required: the site's own host names, no port;
                                        # browser leads are routed by their Host header
    allowed_origins = ["https://promo.shop.ru"]  # optional: other origins that may post
    access_token = "env:SHOP_CT_TOKEN"  # optional secret: the back office's access token
    client_api_id = "file:/run/credentials/ct-gateway.service/shop-api-id"  # optional secret
    timezone = "Asia/Yekaterinburg"     # optional IANA zone, default Europe/Moscow
    points_per_hour = 500               # optional positive integers
    points_per_day = 5000
    points_reserve = "20%"              # optional share of the hour kept for leads (0.2 too;
                                        # default CTGW_POINTS_RESERVE)
    deal_fallback_source = "offline"    # optional text: a deal no lead matched

    [sites.blog]
    site_id = "67890"
    hosts = ["blog.example.com"]

    [tokens]                            # API bearer tokens and the sites each may post for
    crm = {token = "env:CRM_TOKEN", sites = ["shop"]}
    erp = {token = "file:/run/secrets/erp-token", sites = ["shop", "blog"]}

Each ``[tokens]`` entry is ``NAME = {token = "...", sites = ["..."]}`` (the same NAME rule as a
site's); a ``[tokens.NAME]`` table with ``token`` and ``sites`` keys is the same thing. The key
is a name, never the token, so no secret is ever a TOML key nor shown in an error. A token is at
least 16 characters; every site it names must exist; ``[tokens]`` may be left out.

A secret (``access_token``, ``client_api_id``, ``token``) is the value itself, or
``env:VARIABLE`` (from the environment mapping given to :func:`load_sites`, surrounding blanks
stripped), or ``file:/path`` (the file's UTF-8 text with one trailing newline stripped: systemd
credentials, Docker secrets; a relative path is taken from the sites file's directory). A
literal secret therefore cannot begin with ``env:`` or ``file:``.

Host names are lower-cased, a trailing dot dropped and an international name stored in its
ASCII (``xn--``) form, which is what browsers send; a host belongs to one site only. Two sites
may not share a ``client_api_id`` (a 1.0 client is told apart by it). An unknown key anywhere
is an error: a misspelt optional key must not pass as missing.

Every problem raises :class:`SitesError`, one line naming the file, the table and the key, e.g.
``CTGW_SITES: /etc/ct/sites.toml: [sites.shop] hosts: required``. It never holds a secret's
value: not a literal, not an ``env:`` variable's value, not a ``file:``'s content.

Nothing here reads ``os.environ``: the caller passes the mapping.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from gateway.config import ConfigError, Settings
from gateway.config_points import parse_reserve
from gateway.config_values import (
    parse_label,
    parse_mod_id,
    parse_secret,
    parse_site_id,
    parse_timezone,
    parse_url,
)
from gateway.queue.base import DEFAULT_SITE

T = TypeVar("T")

VARIABLE = "CTGW_SITES"
DEFAULT_TIMEZONE = "Europe/Moscow"
MIN_TOKEN = 16
NAME = re.compile(r"[a-z0-9_-]{1,32}")
_NAME_RULE = "1 to 32 of a-z, 0-9, _ and -"
_HOST = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                   r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_HOST_FORM = "expected a host name without scheme, port or path, e.g. shop.ru"
_ORIGIN_FORM = "expected an origin: http(s)://host[:port], e.g. https://shop.ru"
_SECRET_FORM = "expected a string: the value itself, env:VARIABLE or file:/path"  # noqa: S105
_TOKEN_FORM = 'expected NAME = {token = "...", sites = ["..."]}'  # noqa: S105 -- a form
_MAX_SECRET_FILE = 4096  # bytes: more is not a credential (and /dev/zero must not hang us)
_TOP_KEYS = ("sites", "tokens")
_SITE_KEYS = ("site_id", "mod_id", "hosts", "allowed_origins", "access_token", "client_api_id",
              "timezone", "points_per_hour", "points_per_day", "points_reserve",
              "deal_fallback_source")
_TOKEN_KEYS = ("token", "sites")
_TOML_AT = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)\Z")


class SitesError(ConfigError):
    """The ``CTGW_SITES`` file is unreadable or wrong: ``str()`` names the file, the table (e.g.
    ``[sites.shop]``) and the key; never a secret's value."""

    def __init__(self, path: str, problem: str, *, where: str | None = None,
                 key: str | None = None) -> None:
        place = " ".join(p for p in (where, key) if p)
        super().__init__(VARIABLE, f"{path}: {place}: {problem}" if place else f"{path}: {problem}")
        self.path = path
        self.where = where
        self.key = key


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
            return self._by_host.get(_host_name(_without_port(host)), default)
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


def _host_name(raw: str) -> str:
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


# -- reading the file -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _At:
    """Where a value sits, to name it in an error; and what a secret is resolved against."""

    path: str
    where: str
    env: Mapping[str, str]
    base: Path

    def error(self, key: str | None, problem: str) -> SitesError:
        return SitesError(self.path, problem, where=self.where, key=key)

    def inside(self, where: str) -> _At:
        return _At(self.path, where, self.env, self.base)


def load_sites(path: str, env: Mapping[str, str]) -> Sites:
    """Read and check the sites file; raises :class:`SitesError` naming the bad key."""
    document = _read_toml(path)
    top = _At(path, "", env, Path(path).parent)
    _known_keys(document, _TOP_KEYS, top)
    sites = _load_sites(document.get("sites"), top.inside("[sites]"))
    tokens = _load_tokens(document.get("tokens", {}), top.inside("[tokens]"), sites)
    return Sites(sites, tokens)


def _read_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise SitesError(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # its str() shows the byte: the position is enough
        raise SitesError(path, f"not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, str(exc)) from None


def _toml_error(path: str, message: str) -> SitesError:
    match = _TOML_AT.search(message)
    problem = message[:match.start()] if match else message
    # "Illegal character '\t'" may be a character of a secret: the position says enough.
    problem = re.sub(r"(character)\s.*\Z", r"\1", problem)
    return SitesError(path, f"invalid TOML: {problem}", where=match[1] if match else None)


def _known_keys(table: Mapping[str, object], allowed: tuple[str, ...], at: _At) -> None:
    for key in table:
        if key not in allowed:
            raise at.error(_shown_key(key), f"unknown key (expected {', '.join(allowed)})")


def _shown_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else repr(key)


def _load_sites(raw: object, at: _At) -> dict[str, Site]:
    if raw is None:
        raise at.error(None, "required: at least one [sites.NAME] table")
    if not isinstance(raw, dict) or not raw:
        raise at.error(None, "expected [sites.NAME] tables, at least one")
    sites: dict[str, Site] = {}
    owners: dict[str, str] = {}  # host -> site name
    api_ids: dict[str, str] = {}  # client_api_id -> site name
    for name, table in raw.items():
        if not NAME.fullmatch(name):
            raise at.error(_shown_key(name), f"a site name must be {_NAME_RULE} "
                           "(it is a metric label)")
        site = _load_site(name, table, at.inside(f"[sites.{name}]"))
        _claim(site, owners, api_ids, at.inside(f"[sites.{name}]"))
        sites[name] = site
    return sites


def _claim(site: Site, owners: dict[str, str], api_ids: dict[str, str], at: _At) -> None:
    for host in site.hosts:
        if host in owners:
            raise at.error("hosts", f"{host!r} is already a host of [sites.{owners[host]}]")
        owners[host] = site.name
    if site.client_api_id is not None:
        if site.client_api_id in api_ids:
            raise at.error("client_api_id", f"the same as [sites.{api_ids[site.client_api_id]}]'s:"
                           " a 1.0 client could not be told apart (value hidden)")
        api_ids[site.client_api_id] = site.name


def _load_site(name: str, raw: object, at: _At) -> Site:
    if not isinstance(raw, dict):
        raise at.error(None, f"expected a table of the site's keys, not {_kind(raw)}")
    _known_keys(raw, _SITE_KEYS, at)
    return Site(
        name=name,
        site_id=_need(raw, "site_id", at, _site_id),
        mod_id=_get(raw, "mod_id", at, _parsed(parse_mod_id)),
        hosts=_need(raw, "hosts", at, _hosts),
        allowed_origins=_get(raw, "allowed_origins", at, _origins) or frozenset(),
        access_token=_get(raw, "access_token", at, _secret),
        client_api_id=_get(raw, "client_api_id", at, _secret),
        timezone=_get(raw, "timezone", at, _parsed(parse_timezone)) or DEFAULT_TIMEZONE,
        points_per_hour=_get(raw, "points_per_hour", at, _positive),
        points_per_day=_get(raw, "points_per_day", at, _positive),
        points_reserve=_get(raw, "points_reserve", at, _share),
        deal_fallback_source=_get(raw, "deal_fallback_source", at, _parsed(_text)),
    )


def _load_tokens(raw: object, at: _At, sites: Mapping[str, Site]) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise at.error(None, f"{_TOKEN_FORM} entries, not {_kind(raw)}")
    tokens: dict[str, frozenset[str]] = {}
    names: dict[str, str] = {}  # token -> its entry's name
    for index, (name, entry) in enumerate(raw.items(), 1):
        # An entry that is not {token = ..., sites = ...} may be a token written as the key:
        # it is named by its place in the file, not by its key.
        shown = NAME.fullmatch(name) and isinstance(entry, dict) and "token" in entry
        where = at.inside(f"[tokens.{name}]" if shown else f"[tokens] entry #{index} (name hidden)")
        if not NAME.fullmatch(name):
            raise where.error(None, f"a token name must be {_NAME_RULE}")
        if not isinstance(entry, dict):
            raise where.error(None, _TOKEN_FORM)
        _known_keys(entry, _TOKEN_KEYS, where)
        token = _need(entry, "token", where, _token)
        if token in names:
            raise where.error("token", f"the same token as [tokens.{names[token]}]")
        names[token] = name
        tokens[token] = _need(entry, "sites", where, _site_names(sites))
    return tokens


# -- one value -------------------------------------------------------------------------------

Convert = Callable[[object, _At, str], T]


def _get(table: Mapping[str, object], key: str, at: _At, convert: Convert[T]) -> T | None:
    return convert(table[key], at, key) if key in table else None


def _need(table: Mapping[str, object], key: str, at: _At, convert: Convert[T]) -> T:
    value = _get(table, key, at, convert)
    if value is None:
        raise at.error(key, "required")
    return value


def _kind(value: object) -> str:
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    return next((name for cls, name in kinds if isinstance(value, cls)), "a date or time")


def _string(raw: object, at: _At, key: str) -> str:
    if not isinstance(raw, str):
        raise at.error(key, f"expected a string, not {_kind(raw)}")
    return raw


def _parsed(parse: Callable[[str], T]) -> Convert[T]:
    """A string through one of config's ``parse_*`` helpers; a non-secret is shown when bad."""

    def convert(raw: object, at: _At, key: str) -> T:
        text = _string(raw, at, key)
        try:
            return parse(text)
        except ValueError as exc:
            raise at.error(key, f"{exc} (got {text!r})") from None

    return convert


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected some text")
    return parse_label(raw)


def _site_id(raw: object, at: _At, key: str) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # site_id = 12345 reads as well as "12345"
    return _parsed(parse_site_id)(raw, at, key)


def _positive(raw: object, at: _At, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        shown = repr(raw) if isinstance(raw, int | float | str) else _kind(raw)
        raise at.error(key, f"expected a whole number above 0 (got {shown})")
    return raw


def _share(raw: object, at: _At, key: str) -> float:
    """A share of the hour, as CTGW_POINTS_RESERVE takes it: ``"10%"`` or ``0.1``."""
    text = str(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
    return _parsed(parse_reserve)(text, at, key)


def _strings(raw: object, at: _At, key: str, example: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise at.error(key, f"expected a non-empty array of strings, e.g. {example}")
    return raw


def _hosts(raw: object, at: _At, key: str) -> tuple[str, ...]:
    hosts = [_parsed(_host_name)(h, at, key) for h in _strings(raw, at, key, '["shop.ru"]')]
    return tuple(dict.fromkeys(hosts))  # in the file's order, each once


def _origin(raw: str) -> str:
    # Browsers send scheme and host in lower case, with no trailing slash.
    origin = parse_url(raw.strip().rstrip("/").lower())
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(_ORIGIN_FORM) from None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(_ORIGIN_FORM)
    return origin


def _origins(raw: object, at: _At, key: str) -> frozenset[str]:
    if raw == []:
        return frozenset()
    items = _strings(raw, at, key, '["https://promo.shop.ru"]')
    return frozenset(_parsed(_origin)(o, at, key) for o in items)


def _site_names(sites: Mapping[str, Site]) -> Convert[frozenset[str]]:
    def convert(raw: object, at: _At, key: str) -> frozenset[str]:
        names = _strings(raw, at, key, '["shop"]')
        for name in names:
            if name not in sites:
                raise at.error(key, f"unknown site {name!r} (sites: {', '.join(sites)})")
        return frozenset(names)

    return convert


# -- secrets: never shown ---------------------------------------------------------------------


def _secret(raw: object, at: _At, key: str) -> str:
    if not isinstance(raw, str):
        raise at.error(key, f"{_SECRET_FORM}, not {_kind(raw)} (value hidden)")
    if raw.startswith("env:"):
        value, source = _from_env(raw.removeprefix("env:"), at, key)
    elif raw.startswith("file:"):
        value, source = _from_file(raw.removeprefix("file:"), at, key)
    else:
        value, source = raw, "the value"
    if not value:
        raise at.error(key, f"{source} is empty")
    try:
        parse_secret(value)
    except ValueError as exc:
        raise at.error(key, f"{source}: {exc} (value hidden)") from None
    return value


def _from_env(variable: str, at: _At, key: str) -> tuple[str, str]:
    if not variable:
        raise at.error(key, "env: names no variable, e.g. env:SHOP_CT_TOKEN")
    if variable not in at.env:
        raise at.error(key, f"the environment variable {variable} is not set")
    return at.env[variable].strip(), f"the environment variable {variable}"


def _from_file(name: str, at: _At, key: str) -> tuple[str, str]:
    if not name:
        raise at.error(key, "file: names no file, e.g. file:/run/secrets/shop-token")
    path = at.base / name  # an absolute name stays as it is
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise at.error(key, f"cannot read the file {path}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise at.error(key, f"the file {path} is longer than {_MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # its str() would show a byte of the secret
        raise at.error(key, f"the file {path} is not UTF-8 text") from None
    if text.endswith("\n"):  # what `echo secret > file` leaves (or a Windows editor's \r\n)
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text, f"the file {path}"


def _token(raw: object, at: _At, key: str) -> str:
    token = _secret(raw, at, key)
    if len(token) < MIN_TOKEN:
        raise at.error(key, f"a token must be at least {MIN_TOKEN} characters (value hidden)")
    return token


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


def sites_of(settings: Settings, env: Mapping[str, str]) -> Sites:
    """The sites ``settings`` serve: the ``CTGW_SITES`` file's, or the one of the variables."""
    if settings.sites_file is None:
        return single_site(settings)
    return load_sites(settings.sites_file, env)
