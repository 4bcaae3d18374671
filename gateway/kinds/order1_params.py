"""The checks of a deals 1.0 call's parameters: each operation's table and their rules (pure).

:func:`validate` turns the parameters of one ``register``, ``update`` or ``delete`` into an
:class:`~gateway.kinds.order1.Order`, normalised and in 1.0's own names, or raises
:class:`~gateway.errors.Invalid` naming every bad one; a parameter the doc does not list for
the operation is dropped and named, never refused. The kind itself (paths, payload, the call
and its answer) is :mod:`gateway.kinds.order1`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from urllib.parse import urlencode

from gateway.errors import FieldError, Invalid
from gateway.kinds import fields as f
from gateway.kinds.order1 import API_ID, MAX_IGNORED, PATHS, Op, Order

# update and delete go as GET (the doc allows nothing else): the whole query must pass the
# common 8 KiB request-line limit with the path, the token and an added orderId.
MAX_QUERY = 7168
LEAD_SERVICE_FORMAT = "%d-%m-%Y %H:%M:%S"
_CALL_IDS = frozenset({"callId", "callReferenceId"})
_REQUEST_IDS = frozenset({"requestId", "requestNumber"})
# orderNumber is optional, as documented: Calltouch then numbers the deal with its orderId.
_REQUIRED = ("orderSum", "orderStatus", "orderDate", "service")
_SUM_MESSAGE = "must be a number of roubles, e.g. 1000 or 1000.50"


def _digits(limit: int, code: str, message: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = f.short_line(value)
        if not (text.isascii() and text.isdigit() and len(text) <= limit):
            raise f.Bad(code, message)
        return text

    return check


_calltouch_id = _digits(19, "invalid_id", "must be a numeric Calltouch id")
_seconds = _digits(9, "invalid_seconds", "must be a whole number of seconds")


def normalise_sum(value: object) -> str:
    """Roubles, kopecks after a dot or a comma (written as a dot)."""
    text = f.short_line(value).replace(",", ".", 1)
    whole, _, part = text.removeprefix("-").partition(".")
    if not (whole.isascii() and whole.isdigit() and len(whole) <= 15):
        raise f.Bad("invalid_sum", _SUM_MESSAGE)
    if "." in text and not (part.isascii() and part.isdigit() and len(part) <= 4):
        raise f.Bad("invalid_sum", _SUM_MESSAGE)
    return text


def _tags(value: object) -> str:
    return ",".join(f.normalise_tags(value))


def _bind_to(value: object) -> str:
    text = f.short_line(value)
    if text not in ("calls", "requests"):
        raise f.Bad("invalid_bind_to", "must be calls or requests")
    return text


def normalise_date(value: object, zone: tzinfo) -> str:
    """``orderDate`` as calls-service reads it, ``dd.mm.yyyy hh:mm:ss`` in the site's zone, from
    that form, ISO 8601, or lead-service's ``dd-mm-yyyy hh:mm:ss``."""
    try:
        moment = f.normalise_date(value)
    except f.Bad as bad:
        if bad.code != "invalid_date":
            raise
        try:
            moment = datetime.strptime(str(value).strip(), LEAD_SERVICE_FORMAT)
        except ValueError:
            message = "must be dd.mm.yyyy hh:mm:ss, dd-mm-yyyy hh:mm:ss or ISO 8601"
            raise f.Bad("invalid_date", message) from None
    return f.calltouch_date(moment, zone)


_COMMON: dict[str, Callable[[object], str]] = {
    "orderSum": normalise_sum, "manager": f.line, "service": f.line, "tags": _tags,
    # The doc's register table says orderComment, its update table comment: take either.
    "orderComment": f.comment, "comment": f.comment,
    "source": f.line, "medium": f.line, "campaign": f.line, "content": f.line, "term": f.line,
}
_IDS: dict[str, Callable[[object], str]] = {"orderId": _calltouch_id, "orderNumber": f.line}
_CHECKS: dict[Op, dict[str, Callable[[object], str]]] = {
    "register": {
        **_COMMON, "orderNumber": f.line, "orderStatus": f.line,
        "callId": _calltouch_id, "callReferenceId": f.line,
        "requestId": _calltouch_id, "requestNumber": f.line,
        "phoneNumber": f.normalise_phone, "email": f.normalise_email,
        "linkTimeThreshold": _seconds, "bindTo": _bind_to,
    },
    "update": {**_COMMON, **_IDS, "status": f.line},
    "delete": dict(_IDS),
}


def _custom(name: str) -> Callable[[object], str] | None:
    """``custom[NAME]``: a check of its value, or ``None`` when it is no such name."""
    inner = name[7:-1] if name.startswith("custom[") and name.endswith("]") else None
    if inner is None:
        return None
    if not inner.strip() or "[" in inner or "]" in inner or len(inner) > 64 \
            or not inner.isprintable():
        raise f.Bad("invalid_custom_field", "names must be custom[NAME], one line, no brackets")
    return f.long_line


def _check_of(op: Op, name: str, zone: tzinfo) -> Callable[[object], str] | None:
    if name == "orderDate" and op == "register":
        return functools.partial(normalise_date, zone=zone)
    return _CHECKS[op].get(name) or (_custom(name) if op != "delete" else None)


def validate(op: str, params: Mapping[str, str], zone: tzinfo) -> Order:
    """Normalise one 1.0 call's parameters into an :class:`Order` or raise :class:`Invalid`.

    ``clientApiId`` is the handler's to check: it is dropped here, never stored. Other
    parameters the doc does not list for ``op`` are dropped too (and named in ``ignored``):
    Calltouch ignores them, and a drop-in must not refuse a call that Calltouch takes.
    """
    if op not in PATHS:
        raise Invalid([FieldError(None, "unknown_operation", "is not a 1.0 deal method")],
                      "invalid_order")
    known: Op = op
    out: dict[str, str] = {}
    errors: list[FieldError] = []
    ignored: list[str] = []
    for name, value in params.items():
        if name == API_ID:
            continue
        try:
            check = _check_of(known, name, zone)
            if check is None:
                if len(ignored) < MAX_IGNORED:
                    ignored.append(name[:64])
                continue
            _put(known, out, name, value, check)
        except f.Bad as bad:
            errors.append(FieldError(name[:64], bad.code, str(bad)))
    errors += _rules(known, out, {e.field for e in errors})
    if errors:
        raise Invalid(errors, "invalid_order")
    return Order(known, out, tuple(ignored))


def _put(op: Op, out: dict[str, str], name: str, value: object,
         check: Callable[[object], str]) -> None:
    if isinstance(value, str) and not value.strip():
        # An empty parameter of an update clears that value at Calltouch (says the doc); an
        # empty one elsewhere is as if not given.
        if op == "update" and name not in _IDS:
            out[name] = ""
        return
    out[name] = check(value)


def _rules(op: Op, out: dict[str, str], failed: set[str | None]) -> list[FieldError]:
    """What the parameters must say together (a parameter that failed its own check is not
    reported missing as well)."""
    errors: list[FieldError] = []
    if op == "register":
        errors += [FieldError(name, "required", "is required") for name in _REQUIRED
                   if name not in out and name not in failed]
        if not out.keys().isdisjoint(_CALL_IDS) and not out.keys().isdisjoint(_REQUEST_IDS):
            message = "a deal binds to a call or to a request, not both"
            errors.append(FieldError(None, "call_and_request", message))
    elif out.keys().isdisjoint(_IDS) and failed.isdisjoint(_IDS):
        errors.append(FieldError(None, "order_required", "orderId or orderNumber is required"))
    elif len(urlencode(out)) > MAX_QUERY:
        message = f"the parameters must encode to at most {MAX_QUERY} bytes of URL"
        errors.append(FieldError(None, "too_long", message))
    if sum(name.startswith("custom[") for name in out) > f.MAX_CUSTOM_FIELDS:
        message = f"at most {f.MAX_CUSTOM_FIELDS} custom fields"
        errors.append(FieldError("custom", "too_many_custom_fields", message))
    return errors
