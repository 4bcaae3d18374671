"""What deals 2.0 and lead comments share: Calltouch's lead-service API (pure).

Its paths and headers, its date form, the entry matching a lead by its ``requestId``, and the
reading of its answers into one verdict per job; the check of its ``matching`` lists is
:mod:`gateway.kinds.matching`'s. Lead-service answers a wrong token and a validation error
with HTTP 200 or a 4xx alike, so its senders read 4xx answers too (``reads_errors``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

import orjson

from gateway.calltouch.answers import Defer, Permanent, Retry, Verdict, error_text, redact
from gateway.calltouch.client import Reply
from gateway.kinds import fields as f
from gateway.queue.base import Job

PATHS = {
    "create": "/lead-service/v1/api/client-order/create",
    "update": "/lead-service/v1/api/client-order/update",
    "comments": "/lead-service/v1/api/comment/lead/add",
}
DATE_FORMAT = "%d-%m-%Y %H:%M:%S"
AUTH_DELAY = 30.0  # a wrong token is fixed by a person: look again now and then, no attempt
_AUTH_MARKS = ("access token", "ошибка доступа")
_ITEM_PATH = re.compile(r"^(?P<key>[A-Za-z]+)\[(?P<index>[0-9]{1,6})\]\.?(?P<rest>.*)$", re.S)

ItemVerdict = Callable[[Mapping[str, Any], Job], Verdict]


def headers(token: str, site_id: str) -> dict[str, str]:
    return {"Access-Token": token, "SiteId": site_id}


def parse_date(value: object) -> datetime:
    """A moment from ``dd-mm-yyyy hh:mm:ss``, ``dd.mm.yyyy hh:mm:ss`` or ISO 8601."""
    if not isinstance(value, str) or len(text := value.strip()) > 40:
        raise f.Bad("invalid_date", "must be dd-mm-yyyy hh:mm:ss or ISO 8601")
    for fmt in (DATE_FORMAT, f.DATE_FORMAT):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise f.Bad("invalid_date", "must be dd-mm-yyyy hh:mm:ss or ISO 8601") from None


def write_date(moment: datetime) -> str:
    """Lead-service's form, the year always four digits (strftime writes year 5 as "5")."""
    return (f"{moment.day:02d}-{moment.month:02d}-{moment.year:04d} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")


def service_date(value: object, zone: tzinfo) -> str:
    """``dd-mm-yyyy hh:mm:ss`` in the site's time: a moment with an offset is moved into
    ``zone``; one without is taken as the site's own time."""
    moment = parse_date(value)
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(zone)
        except (OverflowError, ValueError):  # moved past year 1 or 9999
            raise f.Bad("invalid_date", "is out of range") from None
    return write_date(moment)


def read_moment(text: object) -> datetime | None:
    """A date this module wrote, back as a moment; ``None`` when it is not one."""
    try:
        return datetime.strptime(text, DATE_FORMAT) if isinstance(text, str) else None
    except ValueError:
        return None


def request_entry(request_id: str | None) -> dict[str, Any]:
    """The entry matching a lead by its Calltouch ``requestId`` (a job's ``after_upstream``).
    ``None`` (a wiring fault: the job did not wait for its lead) goes as null: Calltouch then
    rejects the item loudly rather than matching it to nothing."""
    value: int | str | None = request_id
    if request_id is not None and request_id.isascii() and request_id.isdigit():
        value = int(request_id)
    return {"type": "request", "requestParams": {"requestId": value}}


# --- answers -------------------------------------------------------------------------------


def read_batch(
    reply: Reply, jobs: Sequence[Job], items_key: str, item_verdict: ItemVerdict
) -> list[Verdict]:
    """One verdict per job from a lead-service answer (2xx or 4xx) to a batch of ``jobs``."""
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        data = None
    inner = data.get("data") if isinstance(data, dict) else None
    if _auth_failed(reply.status, data, inner):
        detail = f"HTTP {reply.status}: " + redact(error_text(reply.body))
        return [Defer("auth_failed", detail, AUTH_DELAY) for _ in jobs]
    if isinstance(inner, dict) and inner.get("type") == "validationError":
        return _violations(inner, len(jobs), items_key)
    items = inner.get(items_key) if isinstance(inner, dict) else None
    if not isinstance(items, list):
        if reply.failure is not None:  # a 4xx of no known shape: what HTTP alone says
            return [reply.failure for _ in jobs]
        detail = f"HTTP {reply.status} without {items_key}: " + redact(error_text(reply.body))
        return [Retry("invalid_answer", detail) for _ in jobs]
    verdicts: list[Verdict] = []
    for index, job in enumerate(jobs):
        item = items[index] if index < len(items) else None
        verdicts.append(item_verdict(item, job) if isinstance(item, dict) else
                        Retry("invalid_answer", f"no result for item {index}"))
    return verdicts


def _auth_failed(status: int | None, data: object, inner: object) -> bool:
    if status in (401, 403):
        return True
    messages = [m.get("message") for m in (data, inner) if isinstance(m, dict)]
    return any(isinstance(m, str) and any(k in m.casefold() for k in _AUTH_MARKS)
               for m in messages)


def _violations(inner: Mapping[str, Any], count: int, items_key: str) -> list[Verdict]:
    """Nothing of the batch was applied: the items named are wrong, the rest may go again at
    once. A violation that names no item (the list itself) condemns every item."""
    error_data = inner.get("validationErrorData")
    found = error_data.get("violations") if isinstance(error_data, dict) else None
    named: dict[int, list[str]] = {}
    general: list[str] = []
    for violation in found if isinstance(found, list) else []:
        if not isinstance(violation, dict):
            continue
        path, message = str(violation.get("fieldPath", "")), str(violation.get("message", ""))
        match = _ITEM_PATH.match(path)
        if match and match["key"] == items_key and int(match["index"]) < count:
            named.setdefault(int(match["index"]), []).append(_said(match["rest"], message))
        else:
            general.append(_said(path, message))
    if not named:
        detail = redact("; ".join(general) or "validation error")
        return [Permanent("rejected", detail) for _ in range(count)]
    verdicts: list[Verdict] = []
    for index in range(count):
        if index in named:
            verdicts.append(Permanent("rejected", redact("; ".join(named[index]))))
        else:
            verdicts.append(Defer("batch_rejected", "another item of its call was invalid"))
    return verdicts


def _said(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def item_error(item: Mapping[str, Any]) -> str | None:
    """An item's ``error`` text, ``None`` when it has none."""
    error = item.get("error")
    if error in (None, ""):
        return None
    return error if isinstance(error, str) else orjson.dumps(error).decode()


def says(text: str, *marks: str) -> bool:
    folded = text.casefold()
    return any(mark in folded for mark in marks)
