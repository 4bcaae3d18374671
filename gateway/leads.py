"""The lead model: normalisation and validation of Calltouch's register fields (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal, TypeGuard

from .errors import FieldError, InvalidLead

Channel = Literal["browser", "api"]

MAX_CUSTOM_FIELDS = 20
MAX_TAGS = 20
CONTACT_FIELDS = ("fio", "phoneNumber", "email")
DATE_FORMAT = "%d.%m.%Y %H:%M:%S"
# The largest integer a browser's Number holds exactly: Math.round(performance.now()) never
# exceeds it, so a real page, however long it stayed open, is never refused.
MAX_ELAPSED = 2**53 - 1

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]{2,}$")
# Control characters but tab; a one-line field refuses line breaks too. One search either way.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Scheme and authority only (urlsplit() would do more, and cost 5 us a lead: its cache of 128
# misses, as every page's URL differs): [user@]host[:port], the host non-empty, brackets only
# around a whole (IPv6) host.
# Possessive runs: a userinfo part is matched up to its last "@" without the backtracking that
# an optional greedy one costs on every URL that has none.
_HTTP_URL = re.compile(
    r"(?i:https?)://(?:[^/?#\s@]*+@)*+(?:\[[^\[\]/?#\s@]++\]|[^\[\]/?#\s@:]++)"
    r"(?::[^/?#\s\[\]@]*+)?(?:[/?#]|\Z)"
)
_PHONE_MARKS = b" ()+-."
_PHONE_MESSAGE = "must be a Russian phone number: 11 digits starting 7 or 8"
_NOT_DIGIT = re.compile(r"[^0-9]")
_NOT_PHONE = re.compile(r"[^0-9\s()+\-.]")


class _Bad(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)  # not frozen: see gateway.queue.base.Put
class Lead:
    """A valid, normalised lead; ``fields`` holds only what is set, in Calltouch's names."""

    fields: Mapping[str, Any]
    honeypot: bool = False
    elapsed: int | None = None  # ms from page load to submission, as the snippet measured it

    @property
    def request_number(self) -> str | None:
        value = self.fields.get("requestNumber")
        return value if isinstance(value, str) else None


def _limited(limit: int, *, multiline: bool = False) -> Callable[[object], str]:
    """A text check of one limit: made once, so a lead's many fields pay no arguments for it."""
    control = _CONTROL if multiline else _LINE_CONTROL

    def text(value: object) -> str:
        if type(value) is not str:  # a JSON body's text is exactly str: one test when it is
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise _Bad("invalid_type", "must be a string")
            value = str(value)
        stripped = value.strip()
        if len(stripped) > limit:
            raise _Bad("too_long", f"must be at most {limit} characters")
        # isprintable() is false for every control character and costs a C loop; only text
        # that also holds a tab, a line break or a non-ASCII space meets the regex.
        if not stripped.isprintable() and control.search(stripped):
            raise _Bad("invalid_characters", "must not contain control characters")
        return stripped

    return text


_name, _line, _long_line, _url = _limited(64), _limited(256), _limited(1024), _limited(2048)
_email_text, _session_text, _date_text = _limited(254), _limited(20), _limited(32)
_value, _comment = _limited(1024, multiline=True), _limited(4096, multiline=True)


def normalise_phone(value: object) -> str:
    # The common shape, digits among spaces and ()+-. only, by one C loop over bytes.
    marks_out = value.encode().translate(None, _PHONE_MARKS) if _short_ascii(value) else b""
    if marks_out.isdigit():
        digits = marks_out.decode()
    else:
        raw = _name(value)
        if _NOT_PHONE.search(raw):
            raise _Bad("invalid_phone", _PHONE_MESSAGE)
        digits = _NOT_DIGIT.sub("", raw)
    if len(digits) == 11 and digits[0] == "8":
        digits = "7" + digits[1:]
    elif len(digits) == 10:
        digits = "7" + digits
    if len(digits) != 11 or digits[0] != "7":
        raise _Bad("invalid_phone", _PHONE_MESSAGE)
    return digits


def _short_ascii(value: object) -> TypeGuard[str]:
    return type(value) is str and len(value) <= 64 and value.isascii()


def normalise_email(value: object) -> str:
    email = _email_text(value)
    if not _EMAIL.match(email):
        raise _Bad("invalid_email", "must be an e-mail address like name@example.com")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_url(value: object) -> str:
    url = _url(value)
    if not _HTTP_URL.match(url):
        raise _Bad("invalid_url", "must be an http(s) URL")
    return url


def normalise_session(value: object) -> str:
    session = _session_text(value)
    if not session.isascii() or not session.isdigit():
        raise _Bad("invalid_session", "must be the numeric Calltouch session id")
    return session


def normalise_tags(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    tags = [t.strip() for item in items for t in _long_line(item).split(",") if t.strip()]
    if len(tags) > MAX_TAGS or any(len(t) > 64 for t in tags):
        raise _Bad("too_many_tags", f"at most {MAX_TAGS} tags of at most 64 characters")
    return tags


def normalise_date(value: object) -> datetime:
    """The moment; :func:`validate` writes it in Calltouch's form once it knows the zone."""
    text = _date_text(value)
    for parse in (lambda s: datetime.strptime(s, DATE_FORMAT), datetime.fromisoformat):
        try:
            return parse(text)
        except ValueError:
            continue
    raise _Bad("invalid_date", "must be dd.mm.yyyy hh:mm:ss or ISO 8601")


def calltouch_date(moment: datetime, zone: tzinfo | None) -> str:
    """``dd.mm.yyyy hh:mm:ss``: a moment with an offset is first moved into ``zone`` (the
    site's, in which Calltouch reads the text); one without is taken as the site's own time."""
    if moment.tzinfo is not None and zone is not None:
        try:
            moment = moment.astimezone(zone)
        except (OverflowError, ValueError):  # moved past year 1 or 9999
            raise _Bad("invalid_date", "is out of range") from None
    return moment.strftime(DATE_FORMAT)


def normalise_custom(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Bad("invalid_type", "must be an object of name: value")
    if len(value) > MAX_CUSTOM_FIELDS:
        raise _Bad("too_many_custom_fields", f"at most {MAX_CUSTOM_FIELDS} custom fields")
    fields: dict[str, str] = {}
    for name, item in value.items():
        key = _name(name)
        if not key or "[" in key or "]" in key:
            raise _Bad("invalid_custom_field", "names must be non-empty, without brackets")
        text = _value(item)
        if not text:
            raise _Bad("invalid_custom_field", f"value of {key!r} must not be empty")
        fields[key] = text
    return fields


def normalise_elapsed(value: object) -> int:
    if isinstance(value, str):  # a form body carries it as text
        text = value.strip()
        # 16 digits already pass MAX_ELAPSED: no int() of a digit run as long as a body.
        value = int(text) if text.isascii() and text.isdigit() and len(text) <= 16 else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ELAPSED:
        raise _Bad("invalid_elapsed", "must be whole milliseconds since the page loaded")
    return value


_NORMALISERS: dict[str, Callable[[object], object]] = {
    "fio": _line,
    "phoneNumber": normalise_phone,
    "email": normalise_email,
    "subject": _line,
    "comment": _comment,
    "tags": normalise_tags,
    "requestUrl": normalise_url,
    "sessionId": normalise_session,
    "requestNumber": _line,
    "requestDate": normalise_date,
    "customFields": normalise_custom,
}
_BROWSER_FORBIDDEN = frozenset({"requestDate"})
# What the snippet says about the submission itself: read here, never relayed.
_SIGNAL_FIELDS = frozenset({"_honeypot", "_elapsed"})


_SIZED = (str, list, dict)  # a tuple: ``str | list | dict`` would build a union per call


def _is_empty(value: object) -> bool:
    return not value and (value is None or isinstance(value, _SIZED))  # the common case: truthy


def validate(data: Mapping[str, object], channel: Channel, zone: tzinfo | None = None) -> Lead:
    """Normalise a decoded body into a :class:`Lead` or raise :class:`InvalidLead`.

    ``zone`` is the site's time zone: a ``requestDate`` with an offset is moved into it.
    """
    fields, errors = _fields(data, channel)
    if isinstance(moment := fields.get("requestDate"), datetime):
        try:
            fields["requestDate"] = calltouch_date(moment, zone)
        except _Bad as bad:
            errors.append(FieldError("requestDate", bad.code, str(bad)))
    elapsed = None
    if (raw := data.get("_elapsed")) or not _is_empty(raw):
        try:
            elapsed = normalise_elapsed(raw)
        except _Bad as bad:
            errors.append(FieldError("_elapsed", bad.code, str(bad)))
    if not errors and fields.keys().isdisjoint(CONTACT_FIELDS):
        message = "at least one of fio, phoneNumber, email is required"
        errors.append(FieldError(None, "contact_required", message))
    if errors:
        raise InvalidLead(errors)
    return Lead(fields, honeypot=not _is_empty(data.get("_honeypot")), elapsed=elapsed)


def _fields(
    data: Mapping[str, object], channel: Channel
) -> tuple[dict[str, object], list[FieldError]]:
    # Runs for every field of every lead: one dict look-up decides what applies.
    fields: dict[str, object] = {}
    errors: list[FieldError] = []
    forbidden = _BROWSER_FORBIDDEN if channel == "browser" else frozenset()
    for name, value in data.items():
        normalise = _NORMALISERS.get(name)
        if normalise is None:
            if name not in _SIGNAL_FIELDS:
                errors.append(FieldError(name[:64], "unknown_field", "is not a lead field"))
            continue
        if not value and _is_empty(value):  # the call only for the rare falsy value
            continue
        if name in forbidden:
            errors.append(FieldError(name, "not_allowed", "may only be set by server-side callers"))
            continue
        try:
            normalised = normalise(value)
        except _Bad as bad:
            errors.append(FieldError(name, bad.code, str(bad)))
            continue
        if normalised:  # text, a list, a mapping or a moment: falsy only when empty
            fields[name] = normalised
    return fields, errors
