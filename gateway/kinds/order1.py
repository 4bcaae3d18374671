"""The legacy deals 1.0 kind: Calltouch's ``orders/register``, ``update-by-id``, ``delete-by-id``.

The gateway answers these paths as Calltouch does, so a 1.0 integration changes only its base
URL; each call is queued as one job and relayed one a call, in order per deal (:func:`chain`).
The payload keeps 1.0's own parameter names, normalised; the token (``clientApiId``) is never
in it: the sender adds the site's at send time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Literal, cast
from urllib.parse import urlencode

import orjson

from gateway.calltouch.answers import (
    Defer,
    Delivered,
    Permanent,
    Retry,
    Verdict,
    error_text,
    redact,
)
from gateway.calltouch.client import Call, Reply
from gateway.errors import FieldError, Invalid
from gateway.kinds import fields as f
from gateway.queue.base import Job

KIND = "order1"
METHOD = "orders"  # the sender's one metric label; METHODS names each operation's
Op = Literal["register", "update", "delete"]
_BASE = "/calls-service/RestAPI/orders/"
PATHS: dict[Op, str] = {
    "register": _BASE + "register/",
    "update": _BASE + "update-by-id/",
    "delete": _BASE + "delete-by-id/",
}
METHODS: dict[Op, str] = {op: "orders/" + path[len(_BASE):-1] for op, path in PATHS.items()}
API_ID = "clientApiId"  # the 1.0 token's parameter
AUTH_DELAY = 30.0
MAX_IGNORED = 20
# update and delete go as GET (the doc allows nothing else): the whole query must pass the
# common 8 KiB request-line limit with the path, the token and an added orderId.
MAX_QUERY = 7168
LEAD_SERVICE_FORMAT = "%d-%m-%Y %H:%M:%S"
_CALL_IDS = frozenset({"callId", "callReferenceId"})
_REQUEST_IDS = frozenset({"requestId", "requestNumber"})
_REQUIRED = ("orderNumber", "orderSum", "orderStatus", "orderDate", "service")
# What an answer's session says of the lead's traffic, none of it personal (not ip, browser,
# url or the client ids); kept with the job as the lead kind keeps its source.
_SESSION_KEYS = ("source", "medium", "utmSource", "utmMedium", "utmCampaign", "utmContent",
                 "utmTerm", "keywords", "city")
_SUM_MESSAGE = "must be a number of roubles, e.g. 1000 or 1000.50"


@dataclass(frozen=True, slots=True)
class Order:
    """A valid 1.0 call: its operation and its parameters, normalised, in 1.0's names.

    ``ignored`` names the parameters that were dropped as undocumented (names, never values).
    """

    op: Op
    params: dict[str, str]
    ignored: tuple[str, ...] = ()


def op_for_path(path: str) -> Op | None:
    """The operation a 1.0 path stands for; the doc writes update's with and without ``/``."""
    wanted = path if path.endswith("/") else path + "/"
    return next((op for op, known in PATHS.items() if known == wanted), None)


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
    text = f.calltouch_date(moment, zone)
    # strftime writes year 1 as "1": Calltouch would misread it; and it counts in epoch ms.
    if not 1970 <= int(text[6:-9]) <= 9999:
        raise f.Bad("invalid_date", "is out of range")
    return text


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


def chain(order: Order) -> str:
    """The key that orders one deal's calls: its CRM number, else its Calltouch id."""
    number = order.params.get("orderNumber")
    return "n:" + number if number else "id:" + order.params["orderId"]


def payload(order: Order) -> bytes:
    """What the queue keeps: ``{"op": ..., "params": {...}}``; no token, no dedup key (1.0 calls
    are events, not idempotent: the chain keeps them in order, a repeat is a new call)."""
    return orjson.dumps({"op": order.op, "params": order.params})


def from_payload(data: bytes) -> Order:
    stored = orjson.loads(data)
    return Order(stored["op"], dict(stored["params"]))


def _order_id(data: object) -> str | None:
    """register and delete answer ``orderId`` at the top; the doc's update answer nests it in
    ``order`` (the sandbox's does not)."""
    if not isinstance(data, dict):
        return None
    inner = data.get("order")
    value = data.get("orderId", inner.get("orderId") if isinstance(inner, dict) else None)
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return None
    return str(value)


def _details(data: dict[str, object]) -> dict[str, object] | None:
    details: dict[str, object] = {
        key: str(data[key]) for key in ("callId", "requestId")
        if isinstance(data.get(key), int | str) and not isinstance(data[key], bool)
    }
    session = data.get("session")
    if isinstance(session, dict):
        # redact(): a search phrase or a UTM tag may hold what a visitor typed.
        details.update({key: redact(value, 256) for key in _SESSION_KEYS
                        if isinstance(value := session.get(key), str) and value})
    return details or None


def read_answer(op: Op, reply: Reply, token: str = "") -> Verdict:
    """What Calltouch's answer to one 1.0 call means; ``token`` is blanked out of its text."""
    status = reply.status
    if status is None or status in (408, 429) or status >= 500:
        return reply.failure or Retry("server_error", f"HTTP {status}")
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        data = None
    upstream = _order_id(data) if 200 <= status < 300 else None
    if upstream is not None:
        return Delivered(upstream, details=_details(cast(dict[str, object], data)))
    text = error_text(reply.body)
    message = redact(text.replace(token, "***") if token else text)
    if status in (401, 403) or API_ID.lower() in message.lower():
        return Defer("auth_failed", f"HTTP {status}: clientApiId refused: {message}", AUTH_DELAY)
    if 200 <= status < 300:
        return Retry("invalid_answer", f"HTTP {status} without orderId: {message}")
    if status == 400 and op != "register":
        # The queue sends an update only after its deal's register was delivered: final.
        return Permanent("not_found", f"HTTP 400: {message}")
    return Permanent("rejected", f"HTTP {status}: {message}")


class Order1Kind:
    """1.0 calls go one a call: register as a POST form, update and delete as GET (the only
    method the doc gives them), the site's ``clientApiId`` in the query of each."""

    kind = KIND
    method = METHOD
    batch = 1
    linger = 0.0
    reads_errors = True  # a wrong token and an unknown deal come as 4xx: read() tells them

    def __init__(self, client_api_ids: Mapping[str, str]) -> None:
        self._tokens = dict(client_api_ids)

    def call(self, jobs: Sequence[Job]) -> Call:
        [job] = jobs
        order = from_payload(job.payload)
        params = {k: v for k, v in order.params.items() if k != API_ID}
        token = {API_ID: self._tokens[job.site]}
        if order.op == "register":
            # A form keeps the phone and e-mail out of URLs (and their logs) and a long
            # comment out of the request line.
            return Call("POST", PATHS["register"], query=token, form=params)
        if job.after_upstream is not None and "orderId" not in params:
            params["orderId"] = job.after_upstream  # the id its register was given
        return Call("GET", PATHS[order.op], query={**params, **token})

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        [job] = jobs
        op = from_payload(job.payload).op
        return [read_answer(op, reply, self._tokens.get(job.site, ""))]
