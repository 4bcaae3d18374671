"""A deal's fields and their rules, and the payload the queue keeps of a valid deal (pure).

The payload is JSON of the normalised fields, in Calltouch's names but for ``tags`` (a list of
text), ``comment`` (text) and ``customFields`` (an object name: value), plus how the create is
to be matched to a lead: ``matching`` (given, or built from phones and e-mails), or, with no
contact at all, ``fallback`` (the custom source alone); and ``leadRequest: true`` when the
deal names a lead whose Calltouch ``requestId`` (the job's ``after_upstream``) goes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson

from gateway.errors import FieldError, Invalid
from gateway.kinds import fields as f
from gateway.kinds import leadservice as ls
from gateway.kinds import matching as m

LEAD_FIRST = "leadRequest"
OFFLINE = "оффлайн-визит"
SEARCH_DEPTH = 259200  # minutes, 180 days: Calltouch's worked example
MAX_CONTACTS = m.MAX_CONTACTS
_TYPES = frozenset({"request", "callContact", "requestContact", "customSources"})
_NORMALISERS: dict[str, Callable[[object], object]] = {
    "orderNumber": f.line, "status": f.line, "funnel": f.line, "currency": f.short_line,
    "manager": f.line, "orderName": f.line, "orderLink": f.normalise_url,
    "revenue": f.normalise_amount, "tags": f.normalise_tags, "comment": f.comment,
    "customFields": f.normalise_custom, "lead": f.line,
}
_DATES = frozenset({"orderDate", "statusDate"})
_CONTACTS: dict[str, Callable[[object], str]] = {
    "phones": f.normalise_phone, "emails": f.normalise_email,
}
_KNOWN = frozenset({*_NORMALISERS, *_DATES, *_CONTACTS, "matching"})


@dataclass(frozen=True, slots=True)
class Fallback:
    """The custom source of a deal that matches no lead (the settings may name another)."""

    source: str = OFFLINE
    medium: str = OFFLINE
    campaign: str = OFFLINE


@dataclass(slots=True)  # not frozen: see gateway.queue.base.Put
class Deal:
    """A valid deal; ``fields`` is its payload but the ``leadRequest`` marker."""

    order_number: str
    lead: str | None  # a lead sent through this gateway: its id or its requestNumber
    fields: dict[str, Any]


def validate(
    data: Mapping[str, object], zone: tzinfo, fallback: Fallback = Fallback(),
    *, now: datetime | None = None,
) -> Deal:
    """Normalise a decoded body into a :class:`Deal` or raise :class:`Invalid` naming every
    bad field. ``zone`` is the site's: dates with an offset are moved into it, and ``now``
    (default: the clock) dates what the deal leaves undated."""
    fields, errors = _read(data, zone)
    if errors:
        raise Invalid(errors, "invalid_deal")
    today = ls.write_date(now.astimezone(zone) if now is not None else datetime.now(zone))
    lead = fields.pop("lead", None)
    phones, emails = fields.pop("phones", []), fields.pop("emails", [])
    if "status" in fields:  # the status is dated as given, not as late as it is delivered
        fields.setdefault("statusDate", today)
    if "matching" not in fields:
        date = fields.get("orderDate") or fields.get("statusDate") or today
        if phones or emails:
            fields["matching"] = [*_contact_matching(phones, emails, date), custom(fallback)]
        else:
            fields["fallback"] = asdict(fallback)
    return Deal(fields["orderNumber"], lead, fields)


def _is_empty(value: object) -> bool:
    return not value and (value is None or isinstance(value, (str, list, dict)))


def _read(data: Mapping[str, object], zone: tzinfo) -> tuple[dict[str, Any], list[FieldError]]:
    fields: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, value in data.items():
        if name not in _KNOWN:
            errors.append(FieldError(name[:64], "unknown_field", "is not a deal field"))
        elif _is_empty(value):
            continue
        elif name in _CONTACTS:
            fields[name] = _contacts(name, value, errors)
        elif name == "matching":
            errors += m.check_matching(value, _TYPES)
            fields[name] = value  # Calltouch's own list: passed through as given
        else:
            try:
                normalised = _normalise(name, value, zone)
            except f.Bad as bad:
                errors.append(FieldError(name, bad.code, str(bad)))
                continue
            if normalised:  # text that was only spaces is not given
                fields[name] = normalised
    return fields, errors + _together(data, fields, errors)


def _normalise(name: str, value: object, zone: tzinfo) -> object:
    return ls.service_date(value, zone) if name in _DATES else _NORMALISERS[name](value)


def _contacts(name: str, value: object, errors: list[FieldError]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_CONTACTS:
        errors.append(FieldError(name, "too_many_contacts", f"at most {MAX_CONTACTS}"))
        return []
    found: dict[str, None] = {}
    for index, item in enumerate(items):
        try:
            found[_CONTACTS[name](item)] = None
        except f.Bad as bad:
            errors.append(FieldError(f"{name}[{index}]", bad.code, str(bad)))
    return list(found)


def _together(
    data: Mapping[str, object], fields: Mapping[str, Any], errors: Sequence[FieldError]
) -> list[FieldError]:
    """The rules between fields."""
    found: list[FieldError] = []
    if "orderNumber" not in fields and not any(e.field == "orderNumber" for e in errors):
        found.append(FieldError("orderNumber", "required", "is required"))
    if "matching" in fields and ("phones" in fields or "emails" in fields):
        found.append(FieldError("matching", "conflicting_fields",
                                "give matching or phones/emails, not both"))
    matching = fields.get("matching")
    if "lead" in fields and isinstance(matching, list) and len(matching) >= m.MAX_MATCHING:
        found.append(FieldError("matching", "invalid_matching",
                                f"with lead, at most {m.MAX_MATCHING - 1} entries"))
    if "statusDate" in fields and _is_empty(data.get("status")):
        found.append(FieldError("statusDate", "status_required", "is the date of a status"))
    return found


def _contact_matching(phones: list[str], emails: list[str], date: str) -> list[dict[str, Any]]:
    """Calls by the deal's phones, then form requests by its e-mails and phones."""
    depth = {"date": date, "searchDepth": SEARCH_DEPTH}
    found: list[dict[str, Any]] = []
    if phones:
        found.append({"type": "callContact", "callContactParams": {
            "phones": phones, **depth, "callTypeToMatch": "nearest"}})
    contacts = {k: v for k, v in (("emails", emails), ("phones", phones)) if v}
    found.append({"type": "requestContact", "requestContactParams": {
        **contacts, **depth, "requestTypeToMatch": "nearest"}})
    return found


def custom(fallback: Mapping[str, Any] | Fallback) -> dict[str, Any]:
    params = asdict(fallback) if isinstance(fallback, Fallback) else dict(fallback)
    return {"type": "customSources", "customSourceParams": params}


def payload(deal: Deal) -> bytes:
    return orjson.dumps({**deal.fields, LEAD_FIRST: True} if deal.lead else deal.fields)


def order_number(payload: bytes) -> str:
    return str(orjson.loads(payload)["orderNumber"])
