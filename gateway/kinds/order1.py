"""The legacy deals 1.0 kind: Calltouch's ``orders/register``, ``update-by-id``, ``delete-by-id``.

The gateway answers these paths as Calltouch does, so a 1.0 integration changes only its base
URL; each call is queued as one job and relayed one a call, in order per deal (:func:`chain`).
The payload keeps 1.0's own parameter names, normalised; the token (``clientApiId``) is never
in it: the sender adds the site's at send time. The checks of the parameters are
:mod:`gateway.kinds.order1_params`'s.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

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
# What an answer's session says of the lead's traffic, none of it personal (not ip, browser,
# url or the client ids); kept with the job as the lead kind keeps its source.
_SESSION_KEYS = ("source", "medium", "utmSource", "utmMedium", "utmCampaign", "utmContent",
                 "utmTerm", "keywords", "city")


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


def chain(order: Order) -> str:
    """The key that orders one deal's calls: its CRM number, else its Calltouch id. A register
    without a number is a chain of its own: nothing posted later can name it before Calltouch
    has given it an orderId, and what names that id then finds it delivered."""
    number = order.params.get("orderNumber")
    if number:
        return "n:" + number
    if "orderId" in order.params:
        return "id:" + order.params["orderId"]
    return "new:" + secrets.token_hex(16)


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


def read_answer(op: Op, reply: Reply, token: str = "", named: str = "") -> Verdict:
    """What Calltouch's answer to one 1.0 call means; ``token`` is blanked out of its text,
    ``named`` is the deal the call named (a delete's upstream id when its answer gives none)."""
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
    if 200 <= status < 300 and op == "delete":
        # The doc shows no answer of delete, and nothing waits for its id: a 2xx is done.
        return Delivered(named)
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
        order = from_payload(job.payload)
        named = order.params.get("orderId") or job.after_upstream or order.params.get(
            "orderNumber", "")
        return [read_answer(order.op, reply, self._tokens.get(job.site, ""), named)]
