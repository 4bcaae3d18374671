"""Checks and normal forms of the values that Calltouch's fields take (pure).

Each check takes what a decoded body holds and returns the value to store, or raises
:class:`Bad` with a stable code. The kinds build their field tables from these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeGuard

MAX_CUSTOM_FIELDS = 20
MAX_TAGS = 20
DATE_FORMAT = "%d.%m.%Y %H:%M:%S"

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]{2,}$")
# Control characters but tab; a one-line field refuses line breaks too. One search either way.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Scheme and authority only, [user@]host[:port] with a non-empty host and brackets only around
# a whole (IPv6) host: urlsplit() would do more, and its small cache misses on every new page.
# Possessive runs: a userinfo part is matched to its last "@" without backtracking.
_HTTP_URL = re.compile(
    r"(?i:https?)://(?:[^/?#\s@]*+@)*+(?:\[[^\[\]/?#\s@]++\]|[^\[\]/?#\s@:]++)"
    r"(?::[^/?#\s\[\]@]*+)?(?:[/?#]|\Z)"
)
_PHONE_MARKS = b" ()+-."
_PHONE_MESSAGE = "must be a Russian phone number: 11 digits starting 7 or 8"
_NOT_DIGIT = re.compile(r"[^0-9]")
_NOT_PHONE = re.compile(r"[^0-9\s()+\-.]")


class Bad(ValueError):
    """A value breaks a rule: ``code`` is the stable error code, the message says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _limited(limit: int, *, multiline: bool = False) -> Callable[[object], str]:
    """A text check of one limit: made once, so a lead's many fields pay no arguments for it."""
    control = _CONTROL if multiline else _LINE_CONTROL

    def text(value: object) -> str:
        if type(value) is not str:  # a JSON body's text is exactly str: one test when it is
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise Bad("invalid_type", "must be a string")
            value = str(value)
        stripped = value.strip()
        if len(stripped) > limit:
            raise Bad("too_long", f"must be at most {limit} characters")
        # isprintable() is cheaper than the regex and false for every control character, so the
        # regex runs only when it is false (as it is for a tab, a line break, a non-ASCII space).
        if not stripped.isprintable() and control.search(stripped):
            raise Bad("invalid_characters", "must not contain control characters")
        return stripped

    return text


short_line, line, long_line, _url = _limited(64), _limited(256), _limited(1024), _limited(2048)
_email_text, _session_text, _date_text = _limited(254), _limited(20), _limited(32)
_value, comment = _limited(1024, multiline=True), _limited(4096, multiline=True)


def normalise_phone(value: object) -> str:
    # The common shape, digits among spaces and ()+-. only, by one bytes.translate: no regex.
    marks_out = value.encode().translate(None, _PHONE_MARKS) if _short_ascii(value) else b""
    if marks_out.isdigit():
        digits = marks_out.decode()
    else:
        raw = short_line(value)
        if _NOT_PHONE.search(raw):
            raise Bad("invalid_phone", _PHONE_MESSAGE)
        digits = _NOT_DIGIT.sub("", raw)
    if len(digits) == 11 and digits[0] == "8":
        digits = "7" + digits[1:]
    elif len(digits) == 10:
        digits = "7" + digits
    if len(digits) != 11 or digits[0] != "7":
        raise Bad("invalid_phone", _PHONE_MESSAGE)
    return digits


def _short_ascii(value: object) -> TypeGuard[str]:
    return type(value) is str and len(value) <= 64 and value.isascii()


def normalise_email(value: object) -> str:
    email = _email_text(value)
    if not _EMAIL.match(email):
        raise Bad("invalid_email", "must be an e-mail address like name@example.com")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_url(value: object) -> str:
    url = _url(value)
    if not _HTTP_URL.match(url):
        raise Bad("invalid_url", "must be an http(s) URL")
    return url


def normalise_session(value: object) -> str:
    session = _session_text(value)
    if not session.isascii() or not session.isdigit():
        raise Bad("invalid_session", "must be the numeric Calltouch session id")
    return session


def normalise_tags(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    tags = [t.strip() for item in items for t in long_line(item).split(",") if t.strip()]
    if len(tags) > MAX_TAGS or any(len(t) > 64 for t in tags):
        raise Bad("too_many_tags", f"at most {MAX_TAGS} tags of at most 64 characters")
    return tags


def normalise_date(value: object) -> datetime:
    """The moment; :func:`validate` writes it in Calltouch's form once it knows the zone."""
    text = _date_text(value)
    for parse in (lambda s: datetime.strptime(s, DATE_FORMAT), datetime.fromisoformat):
        try:
            return parse(text)
        except ValueError:
            continue
    raise Bad("invalid_date", "must be dd.mm.yyyy hh:mm:ss or ISO 8601")


def calltouch_date(moment: datetime, zone: tzinfo | None) -> str:
    """``dd.mm.yyyy hh:mm:ss``: a moment with an offset is first moved into ``zone`` (the
    site's, in which Calltouch reads the text); one without is taken as the site's own time."""
    if moment.tzinfo is not None and zone is not None:
        try:
            moment = moment.astimezone(zone)
        except (OverflowError, ValueError):  # moved past year 1 or 9999
            raise Bad("invalid_date", "is out of range") from None
    # strftime writes year 1 as "1", which Calltouch would misread; and 1.0 counts in epoch ms.
    if moment.year < 1970:
        raise Bad("invalid_date", "is out of range")
    return moment.strftime(DATE_FORMAT)


def normalise_custom(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Bad("invalid_type", "must be an object of name: value")
    if len(value) > MAX_CUSTOM_FIELDS:
        raise Bad("too_many_custom_fields", f"at most {MAX_CUSTOM_FIELDS} custom fields")
    fields: dict[str, str] = {}
    for name, item in value.items():
        key = short_line(name)
        if not key or "[" in key or "]" in key:
            raise Bad("invalid_custom_field", "names must be non-empty, without brackets")
        text = _value(item)
        if not text:
            raise Bad("invalid_custom_field", f"value of {key!r} must not be empty")
        fields[key] = text
    return fields


_AMOUNT = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,20})?")
_CENTS = Decimal("0.01")
_AMOUNT_MESSAGE = "must be a non-negative amount below 10^15, like 1000 or 1000.50"


def normalise_amount(value: object) -> str:
    """Money as text of two decimals ("1000.00"): a number, or the text of one with a point."""
    if isinstance(value, str) and _AMOUNT.fullmatch(value.strip()):
        amount = Decimal(value.strip())
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        amount = Decimal(value)
    else:
        raise Bad("invalid_amount", _AMOUNT_MESSAGE)
    if not 0 <= amount < 10**15:
        raise Bad("invalid_amount", _AMOUNT_MESSAGE)
    # abs(): a JSON -0.0 is zero, not "-0.00".
    return str(abs(amount).quantize(_CENTS, ROUND_HALF_UP))
