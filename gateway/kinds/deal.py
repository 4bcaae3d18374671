"""The deal kinds (deals 2.0): a CRM's deal, created and then updated at Calltouch (pure).

This module owns a deal's shape: its fields and their rules, the payload the queue keeps, how a
later update folds into one still queued or follows one already sent, the create and update
calls made of payloads, and what their answers mean. A deal is keyed by its ``orderNumber``.

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

from gateway.calltouch.answers import Convert, Delivered, Permanent, Retry, Verdict, redact
from gateway.calltouch.client import Call, Reply
from gateway.errors import FieldError, Invalid
from gateway.kinds import fields as f
from gateway.kinds import leadservice as ls
from gateway.queue.base import Job

KIND_CREATE = "deal.create"
KIND_UPDATE = "deal.update"
METHOD_CREATE = "client-order/create"
METHOD_UPDATE = "client-order/update"
LEAD_FIRST = "leadRequest"
OFFLINE = "оффлайн-визит"
SEARCH_DEPTH = 259200  # minutes, 180 days: Calltouch's worked example
MAX_CONTACTS = ls.MAX_CONTACTS
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
_STATUS = ("status", "statusDate")
_NOT_UPDATED = ("matching", "fallback", LEAD_FIRST)  # what only a create sends
_SCALARS = (
    "orderNumber", "orderDate", "status", "statusDate", "revenue", "funnel", "currency",
    "manager", "orderName", "orderLink",
)


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
            fields["matching"] = [*_contact_matching(phones, emails, date), _custom(fallback)]
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
            errors += ls.check_matching(value, _TYPES)
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
    if "lead" in fields and isinstance(matching, list) and len(matching) >= ls.MAX_MATCHING:
        found.append(FieldError("matching", "invalid_matching",
                                f"with lead, at most {ls.MAX_MATCHING - 1} entries"))
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


def _custom(fallback: Mapping[str, Any] | Fallback) -> dict[str, Any]:
    params = asdict(fallback) if isinstance(fallback, Fallback) else dict(fallback)
    return {"type": "customSources", "customSourceParams": params}


def matching_of(fields: Mapping[str, Any], request_id: str | None) -> list[dict[str, Any]]:
    """A create's matching: the lead's request first when the deal named one (and the queue
    gave its requestId), then its own list, or the custom source alone."""
    first = [ls.request_entry(request_id)] if fields.get(LEAD_FIRST) and request_id else []
    rest = fields.get("matching") or [_custom(fields.get("fallback") or Fallback())]
    return [*first, *rest]


def payload(deal: Deal) -> bytes:
    return orjson.dumps({**deal.fields, LEAD_FIRST: True} if deal.lead else deal.fields)


def order_number(payload: bytes) -> str:
    return str(orjson.loads(payload)["orderNumber"])


# --- one deal's successive payloads -------------------------------------------------------


def _older_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """``new`` sets a status dated before ``old``'s: an older status arriving late."""
    was, now = ls.read_moment(old.get("statusDate")), ls.read_moment(new.get("statusDate"))
    return was is not None and now is not None and now < was


def merge(queued: bytes, new: bytes) -> bytes:
    """One payload of ``queued`` and a later ``new`` of the same deal, still unsent.

    A field given later wins, but an older status never replaces a newer one; tags add up,
    comments join, custom fields merge by name. The lead marker stays the queued job's: it
    goes with that job's ``after``.
    """
    old, later = orjson.loads(queued), orjson.loads(new)
    later.pop(LEAD_FIRST, None)
    if _older_status(old, later):
        for name in _STATUS:
            later.pop(name, None)
    merged = {**old, **later}
    if "tags" in old and "tags" in later:
        merged["tags"] = list(dict.fromkeys([*old["tags"], *later["tags"]]))
    if "comment" in old and "comment" in later:
        merged["comment"] = old["comment"] + "\n" + later["comment"]
    if "customFields" in old and "customFields" in later:
        merged["customFields"] = {**old["customFields"], **later["customFields"]}
    if "matching" in merged:
        merged.pop("fallback", None)
    return orjson.dumps(merged)


def follow(previous: bytes | None, new: bytes) -> bytes | None:
    """The update to queue after ``previous`` (the deal's latest payload sent or in flight;
    ``None`` when purged): ``new`` without what only a create sends and without an older
    status; ``None`` when nothing but the ``orderNumber`` is left."""
    later = orjson.loads(new)
    for name in _NOT_UPDATED:
        later.pop(name, None)
    if previous is not None:
        old = orjson.loads(previous)
        if _older_status(old, later):
            for name in _STATUS:
                later.pop(name, None)
        _drop_unchanged(old, later)
    return orjson.dumps(later) if later.keys() - {"orderNumber"} else None


def _drop_unchanged(old: Mapping[str, Any], later: dict[str, Any]) -> None:
    """Leave out what ``old`` already said: the same file posted twice queues nothing."""
    for name in [n for n in later if n != "orderNumber" and old.get(n) == later[n]]:
        del later[name]
    if isinstance(later.get("tags"), list) and isinstance(old.get("tags"), list):
        later["tags"] = [tag for tag in later["tags"] if tag not in old["tags"]] or None
    if isinstance(later.get("customFields"), dict) and isinstance(old.get("customFields"), dict):
        changed = {k: v for k, v in later["customFields"].items()
                   if old["customFields"].get(k) != v}
        later["customFields"] = changed or None
    for name in ("tags", "customFields"):
        if name in later and later[name] is None:
            del later[name]


# --- the calls -----------------------------------------------------------------------------


def _order(fields: Mapping[str, Any]) -> dict[str, Any]:
    order = {name: fields[name] for name in _SCALARS if name in fields}
    if "customFields" in fields:
        order["customFields"] = [{"field": k, "value": v}
                                 for k, v in fields["customFields"].items()]
    if "comment" in fields:
        order["addNewComment"] = {"text": fields["comment"]}
    return order


def create_order(fields: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
    """A create carries the comment too: a deal given with one is not sent an update."""
    order = {"matching": matching_of(fields, request_id), **_order(fields)}
    if fields.get("tags"):
        order["addTags"] = [{"tag": tag} for tag in fields["tags"]]
    return order


def update_order(fields: Mapping[str, Any]) -> dict[str, Any]:
    order = _order(fields)
    if fields.get("tags"):
        order["addTags"] = {"overwrite": False, "tags": [{"tag": t} for t in fields["tags"]]}
    return order


class _DealSender:
    """Deals go up to 100 a call, all of one site (the relay leases per site)."""

    kind: str
    method: str
    path: str
    batch = 100
    reads_errors = True  # lead-service answers a wrong token or a bad item with a 4xx too

    def __init__(
        self, site_ids: Mapping[str, str], tokens: Mapping[str, str], linger: float
    ) -> None:
        self._site_ids, self._tokens = dict(site_ids), dict(tokens)
        self.linger = linger

    def call(self, jobs: Sequence[Job]) -> Call:
        site = jobs[0].site
        assert all(job.site == site for job in jobs), "a call carries the jobs of one site"
        orders = [self._order(orjson.loads(job.payload), job) for job in jobs]
        return Call("POST", self.path, json={"orders": orders},
                    headers=ls.headers(self._tokens[site], self._site_ids[site]))

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        return ls.read_batch(reply, jobs, "orders", self._verdict)

    def _order(self, fields: Mapping[str, Any], job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def _failed(self, error: str) -> Verdict:
        raise NotImplementedError

    def _verdict(self, item: Mapping[str, Any], job: Job) -> Verdict:
        named = item.get("orderNumber")
        if named is not None and str(named) != order_number(job.payload):
            return Retry("invalid_answer", "the result names another orderNumber")
        if (error := ls.item_error(item)) is not None:
            return self._failed(error)
        upstream = item.get("calltouchOrderId")
        if isinstance(upstream, bool) or not isinstance(upstream, int | str) or upstream == "":
            return Retry("invalid_answer", "a result without calltouchOrderId")
        return Delivered(str(upstream))


class DealCreateKind(_DealSender):
    kind = KIND_CREATE
    method = METHOD_CREATE
    path = ls.PATHS["create"]

    def _order(self, fields: Mapping[str, Any], job: Job) -> dict[str, Any]:
        return create_order(fields, job.after_upstream)

    def _failed(self, error: str) -> Verdict:
        if ls.says(error, "уже существует", "already exists"):
            return Convert(KIND_UPDATE)  # Calltouch holds it already: update it instead
        return Permanent("rejected", redact(error))


class DealUpdateKind(_DealSender):
    kind = KIND_UPDATE
    method = METHOD_UPDATE
    path = ls.PATHS["update"]

    def _order(self, fields: Mapping[str, Any], job: Job) -> dict[str, Any]:
        return update_order(fields)

    def _failed(self, error: str) -> Verdict:
        if ls.says(error, "не найден", "not found"):
            return Retry("not_found", redact(error))  # its create may not have landed yet
        return Permanent("rejected", redact(error))

