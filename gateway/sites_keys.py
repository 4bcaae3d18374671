"""One key of the ``CTGW_SITES`` file: its value checked and converted, or an error naming it.

Each converter takes the raw TOML value, where it sits (:class:`At`) and its key, and returns
the value or raises :class:`SitesError` naming the file, the table and the key. A secret
(``access_token``, ``client_api_id``, ``token``) is never shown: not a literal, not an ``env:``
variable's value, not a ``file:``'s content.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.config import ConfigError
from gateway.config_points import parse_reserve
from gateway.config_values import (
    parse_label,
    parse_origin,
    parse_secret,
    parse_site_id,
)
from gateway.sites import Site, host_name

T = TypeVar("T")

VARIABLE = "CTGW_SITES"
MIN_TOKEN = 16
_SECRET_FORM = "expected a string: the value itself, env:VARIABLE or file:/path"  # noqa: S105
_MAX_SECRET_FILE = 4096  # bytes: more is not a credential (and /dev/zero must not hang us)


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
class At:
    """Where a value sits, to name it in an error; and what a secret is resolved against."""

    path: str
    where: str
    env: Mapping[str, str]
    base: Path

    def error(self, key: str | None, problem: str) -> SitesError:
        return SitesError(self.path, problem, where=self.where, key=key)

    def inside(self, where: str) -> At:
        return At(self.path, where, self.env, self.base)


Convert = Callable[[object, At, str], T]


def get(table: Mapping[str, object], key: str, at: At, convert: Convert[T]) -> T | None:
    return convert(table[key], at, key) if key in table else None


def need(table: Mapping[str, object], key: str, at: At, convert: Convert[T]) -> T:
    value = get(table, key, at, convert)
    if value is None:
        raise at.error(key, "required")
    return value


def kind(value: object) -> str:
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    return next((name for cls, name in kinds if isinstance(value, cls)), "a date or time")


def _string(raw: object, at: At, key: str) -> str:
    if not isinstance(raw, str):
        raise at.error(key, f"expected a string, not {kind(raw)}")
    return raw


def parsed(parse: Callable[[str], T]) -> Convert[T]:
    """A string through one of :mod:`gateway.config_values`' ``parse_*`` helpers; a non-secret
    is shown when bad."""

    def convert(raw: object, at: At, key: str) -> T:
        text = _string(raw, at, key)
        try:
            return parse(text)
        except ValueError as exc:
            raise at.error(key, f"{exc} (got {text!r})") from None

    return convert


def label(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected some text")
    return parse_label(raw)


def site_id(raw: object, at: At, key: str) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # site_id = 12345 reads as well as "12345"
    return parsed(parse_site_id)(raw, at, key)


def positive(raw: object, at: At, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        shown = repr(raw) if isinstance(raw, int | float | str) else kind(raw)
        raise at.error(key, f"expected a whole number above 0 (got {shown})")
    return raw


def share(raw: object, at: At, key: str) -> float:
    """A share of the hour, as CTGW_POINTS_RESERVE takes it: ``"10%"`` or ``0.1``."""
    text = str(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
    return parsed(parse_reserve)(text, at, key)


def _strings(raw: object, at: At, key: str, example: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise at.error(key, f"expected a non-empty array of strings, e.g. {example}")
    return raw


def hosts(raw: object, at: At, key: str) -> tuple[str, ...]:
    hosts = [parsed(host_name)(h, at, key) for h in _strings(raw, at, key, '["shop.ru"]')]
    return tuple(dict.fromkeys(hosts))  # in the file's order, each once


def origins(raw: object, at: At, key: str) -> frozenset[str]:
    if raw == []:
        return frozenset()
    items = _strings(raw, at, key, '["https://promo.shop.ru"]')
    return frozenset(parsed(parse_origin)(o, at, key) for o in items)


def site_names(sites: Mapping[str, Site]) -> Convert[frozenset[str]]:
    def convert(raw: object, at: At, key: str) -> frozenset[str]:
        names = _strings(raw, at, key, '["shop"]')
        for name in names:
            if name not in sites:
                raise at.error(key, f"unknown site {name!r} (sites: {', '.join(sites)})")
        return frozenset(names)

    return convert


def secret(raw: object, at: At, key: str) -> str:
    if not isinstance(raw, str):
        raise at.error(key, f"{_SECRET_FORM}, not {kind(raw)} (value hidden)")
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


def _from_env(variable: str, at: At, key: str) -> tuple[str, str]:
    if not variable:
        raise at.error(key, "env: names no variable, e.g. env:SHOP_CT_TOKEN")
    if variable not in at.env:
        raise at.error(key, f"the environment variable {variable} is not set")
    return at.env[variable].strip(), f"the environment variable {variable}"


def _from_file(name: str, at: At, key: str) -> tuple[str, str]:
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


def token(raw: object, at: At, key: str) -> str:
    token = secret(raw, at, key)
    if len(token) < MIN_TOKEN:
        raise at.error(key, f"a token must be at least {MIN_TOKEN} characters (value hidden)")
    return token


