"""The lead kind: a form lead, validated here and relayed to ``requests/{site_id}/register/``.

This module owns all of a lead's shape: its fields and their rules, the payload the queue
keeps (JSON of Calltouch's own field names), the register call made of it, and what that
call's answer means.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal

import orjson

from gateway.calltouch.answers import Delivered, Permanent, Verdict, error_text, redact
from gateway.calltouch.client import Call, Reply
from gateway.errors import FieldError, InvalidLead
from gateway.ids import new_id
from gateway.kinds import fields as f
from gateway.queue.base import DEFAULT_SITE, Job, Put

KIND = "lead"
METHOD = "register"
REGISTER_PATH = "/calls-service/RestAPI/requests/{site_id}/register/"
Channel = Literal["browser", "api"]
CONTACT_FIELDS = ("fio", "phoneNumber", "email")
# What register's answer says of the lead's traffic source (its "session"): the ERP example
# reads it into its order.
ATTRIBUTION = ("source", "medium", "utmSource", "utmMedium", "utmCampaign", "utmContent",
               "utmTerm", "keywords", "city")
DATE_FORMAT = f.DATE_FORMAT
MAX_CUSTOM_FIELDS = f.MAX_CUSTOM_FIELDS
# The largest integer a browser's Number holds exactly: Math.round(performance.now()) never
# exceeds it, so a real page, however long it stayed open, is never refused.
MAX_ELAPSED = 2**53 - 1

_NORMALISERS: dict[str, Callable[[object], object]] = {
    "fio": f.line,
    "phoneNumber": f.normalise_phone,
    "email": f.normalise_email,
    "subject": f.line,
    "comment": f.comment,
    "tags": f.normalise_tags,
    "requestUrl": f.normalise_url,
    "sessionId": f.normalise_session,
    "requestNumber": f.line,
    "requestDate": f.normalise_date,
    "customFields": f.normalise_custom,
}
_BROWSER_FORBIDDEN = frozenset({"requestDate"})
# What the snippet says about the submission itself: read here, never relayed.
_SIGNAL_FIELDS = frozenset({"_honeypot", "_elapsed"})


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


def normalise_elapsed(value: object) -> int:
    if isinstance(value, str):  # a form body carries it as text
        text = value.strip()
        # 16 digits already pass MAX_ELAPSED: no int() of a digit run as long as a body.
        value = int(text) if text.isascii() and text.isdigit() and len(text) <= 16 else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ELAPSED:
        raise f.Bad("invalid_elapsed", "must be whole milliseconds since the page loaded")
    return value


def _is_empty(value: object) -> bool:
    return not value and (value is None or isinstance(value, (str, list, dict)))


def validate(data: Mapping[str, object], channel: Channel, zone: tzinfo | None = None) -> Lead:
    """Normalise a decoded body into a :class:`Lead` or raise :class:`InvalidLead`.

    ``zone`` is the site's time zone: a ``requestDate`` with an offset is moved into it.
    """
    fields, errors = _fields(data, channel)
    if isinstance(moment := fields.get("requestDate"), datetime):
        try:
            fields["requestDate"] = f.calltouch_date(moment, zone)
        except f.Bad as bad:
            errors.append(FieldError("requestDate", bad.code, str(bad)))
    elapsed = None
    if not _is_empty(raw := data.get("_elapsed")):
        try:
            elapsed = normalise_elapsed(raw)
        except f.Bad as bad:
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
    fields: dict[str, object] = {}
    errors: list[FieldError] = []
    forbidden = _BROWSER_FORBIDDEN if channel == "browser" else frozenset()
    for name, value in data.items():
        normalise = _NORMALISERS.get(name)
        if normalise is None:
            if name not in _SIGNAL_FIELDS:
                errors.append(FieldError(name[:64], "unknown_field", "is not a lead field"))
            continue
        if _is_empty(value):
            continue
        if name in forbidden:
            errors.append(FieldError(name, "not_allowed", "may only be set by server-side callers"))
            continue
        try:
            normalised = normalise(value)
        except f.Bad as bad:
            errors.append(FieldError(name, bad.code, str(bad)))
            continue
        if normalised:  # text, a list, a mapping or a moment: falsy only when empty
            fields[name] = normalised
    return fields, errors


@functools.lru_cache(maxsize=8)
def accepted_date(second: int, zone: tzinfo) -> str:
    """``requestDate`` of a lead accepted in ``second``: leads of one second share the text."""
    return datetime.fromtimestamp(second, zone).strftime(DATE_FORMAT)


def to_put(lead: Lead, zone: tzinfo, site: str = DEFAULT_SITE) -> Put:
    """The job to queue. What must not change on a late delivery is fixed now: the lead's time
    (the moment it was accepted) and its number (dedup here, idempotency at Calltouch)."""
    given_number = lead.request_number
    payload = dict(lead.fields)
    if given_number is None:
        payload["requestNumber"] = "ctgw-" + new_id()
    if "requestDate" not in payload:
        payload["requestDate"] = accepted_date(int(time.time()), zone)
    return Put(KIND, orjson.dumps(payload), given_number, site)


def register_form(fields: Mapping[str, Any]) -> dict[str, str]:
    """Calltouch's form encoding: ``customField[NAME]``, tags comma-joined."""
    form: dict[str, str] = {}
    for name, value in fields.items():
        if name == "customFields":
            form.update({f"customField[{k}]": str(v) for k, v in value.items()})
        elif name == "tags":
            form["tags"] = ",".join(value)
        else:
            form[name] = str(value)
    return form


def attribution(answer: Mapping[str, Any]) -> dict[str, str] | None:
    """The traffic source Calltouch found for the lead: nothing personal, so it is kept and
    shown by the lead's status. ``None`` when Calltouch found no session."""
    session = answer.get("session")
    if not isinstance(session, dict):
        return None
    return {key: str(session[key])[:256] for key in ATTRIBUTION
            if isinstance(session.get(key), (str, int))}


def read_answer(status: int, body: bytes) -> Delivered | Permanent:
    """A 2xx register answer: delivered when it names a ``requestId``. Calltouch answers 200
    with an error text when no parameter was given."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("requestId") not in (None, ""):
        return Delivered(str(data["requestId"]), details={"attribution": attribution(data)})
    return Permanent("invalid_answer", f"HTTP {status} without requestId: "
                     + redact(error_text(body)))


class LeadKind:
    """Leads go one per call, to the register endpoint of their site's Calltouch id."""

    kind = KIND
    method = METHOD
    batch = 1
    linger = 0.0
    reads_errors = False

    def __init__(self, site_ids: Mapping[str, str]) -> None:
        self._site_ids = dict(site_ids)

    def call(self, jobs: Sequence[Job]) -> Call:
        [job] = jobs
        path = REGISTER_PATH.format(site_id=self._site_ids[job.site])
        return Call("POST", path, form=register_form(orjson.loads(job.payload)))

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        assert reply.status is not None
        return [read_answer(reply.status, reply.body)]
