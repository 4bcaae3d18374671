"""The ``CTGW_SITES`` file: one gateway in front of several Calltouch sites.

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

Every problem raises :class:`~gateway.sites_keys.SitesError`, one line naming the file, the
table and the key, e.g. ``CTGW_SITES: /etc/ct/sites.toml: [sites.shop] hosts: required``. It
never holds a secret's value: not a literal, not an ``env:`` variable's value, not a ``file:``'s
content.

Nothing here reads ``os.environ``: the caller passes the mapping.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from gateway import sites_keys as keys
from gateway.config import Settings
from gateway.config_values import parse_mod_id, parse_timezone
from gateway.sites import DEFAULT_TIMEZONE, Site, Sites, single_site
from gateway.sites_keys import SitesError

NAME = re.compile(r"[a-z0-9_-]{1,32}")
_NAME_RULE = "1 to 32 of a-z, 0-9, _ and -"
_TOKEN_FORM = 'expected NAME = {token = "...", sites = ["..."]}'  # noqa: S105 -- a form
_TOP_KEYS = ("sites", "tokens")
_SITE_KEYS = ("site_id", "mod_id", "hosts", "allowed_origins", "access_token", "client_api_id",
              "timezone", "points_per_hour", "points_per_day", "points_reserve",
              "deal_fallback_source")
_TOKEN_KEYS = ("token", "sites")
_TOML_AT = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)\Z")


def load_sites(path: str, env: Mapping[str, str]) -> Sites:
    """Read and check the sites file; raises :class:`SitesError` naming the bad key."""
    document = _read_toml(path)
    top = keys.At(path, "", env, Path(path).parent)
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
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise SitesError(path, "nested too deep to be a sites file") from None


def _toml_error(path: str, message: str) -> SitesError:
    match = _TOML_AT.search(message)
    problem = message[:match.start()] if match else message
    # "Illegal character '\t'" may be a character of a secret: the position says enough.
    problem = re.sub(r"(character)\s.*\Z", r"\1", problem)
    return SitesError(path, f"invalid TOML: {problem}", where=match[1] if match else None)


def _known_keys(table: Mapping[str, object], allowed: tuple[str, ...], at: keys.At) -> None:
    for key in table:
        if key not in allowed:
            raise at.error(_shown_key(key), f"unknown key (expected {', '.join(allowed)})")


def _shown_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else repr(key)


def _load_sites(raw: object, at: keys.At) -> dict[str, Site]:
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


def _claim(site: Site, owners: dict[str, str], api_ids: dict[str, str], at: keys.At) -> None:
    for host in site.hosts:
        if host in owners:
            raise at.error("hosts", f"{host!r} is already a host of [sites.{owners[host]}]")
        owners[host] = site.name
    if site.client_api_id is not None:
        if site.client_api_id in api_ids:
            raise at.error("client_api_id", f"the same as [sites.{api_ids[site.client_api_id]}]'s:"
                           " a 1.0 client could not be told apart (value hidden)")
        api_ids[site.client_api_id] = site.name


def _load_site(name: str, raw: object, at: keys.At) -> Site:
    if not isinstance(raw, dict):
        raise at.error(None, f"expected a table of the site's keys, not {keys.kind(raw)}")
    _known_keys(raw, _SITE_KEYS, at)
    return Site(
        name=name,
        site_id=keys.need(raw, "site_id", at, keys.site_id),
        mod_id=keys.get(raw, "mod_id", at, keys.parsed(parse_mod_id)),
        hosts=keys.need(raw, "hosts", at, keys.hosts),
        allowed_origins=keys.get(raw, "allowed_origins", at, keys.origins) or frozenset(),
        access_token=keys.get(raw, "access_token", at, keys.secret),
        client_api_id=keys.get(raw, "client_api_id", at, keys.secret),
        timezone=keys.get(raw, "timezone", at, keys.parsed(parse_timezone)) or DEFAULT_TIMEZONE,
        points_per_hour=keys.get(raw, "points_per_hour", at, keys.positive),
        points_per_day=keys.get(raw, "points_per_day", at, keys.positive),
        points_reserve=keys.get(raw, "points_reserve", at, keys.share),
        deal_fallback_source=keys.get(raw, "deal_fallback_source", at, keys.parsed(keys.label)),
    )


def _load_tokens(
    raw: object, at: keys.At, sites: Mapping[str, Site],
) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise at.error(None, f"{_TOKEN_FORM} entries, not {keys.kind(raw)}")
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
        token = keys.need(entry, "token", where, keys.token)
        if token in names:
            raise where.error("token", f"the same token as [tokens.{names[token]}]")
        names[token] = name
        tokens[token] = keys.need(entry, "sites", where, keys.site_names(sites))
    return tokens


def sites_of(settings: Settings, env: Mapping[str, str]) -> Sites:
    """The sites ``settings`` serve: the ``CTGW_SITES`` file's, or the one of the variables."""
    if settings.sites_file is None:
        return single_site(settings)
    return load_sites(settings.sites_file, env)
