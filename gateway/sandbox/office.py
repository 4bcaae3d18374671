"""The sandbox back office's state and what its 2.0 and 1.0 methods share.

How a call is described (:class:`Received`, :class:`Endpoint`), what the back office keeps
(:class:`Lead`, :class:`BackOffice` and its :data:`OFFICE` key), the wordings and readers of
values both APIs use, and the finding of a lead by a ``matching`` list (:class:`Found`), which
deals 2.0 and comments search and a 1.0 deal's answer describes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

NO_ACCESS = {"meta": [], "data": {"message": "Ошибка доступа"}}
EXISTS = "Сделка с таким orderNumber уже существует"
NOT_FOUND = "Сделка не найдена"
# What a lead registered with a sessionId is attributed to: fixed, plausible values.
SESSION: dict[str, str] = {
    "source": "yandex", "medium": "cpc", "utmSource": "yandex", "utmMedium": "cpc",
    "utmCampaign": "sandbox", "utmContent": "ad-1", "utmTerm": "купить", "keywords": "купить",
    "city": "Москва",
}
PARAMS = {"request": "requestParams", "call": "callParams", "callContact": "callContactParams",
          "requestContact": "requestContactParams", "customSources": "customSourceParams"}
_DATE = re.compile(r"\d\d-\d\d-\d{4} \d\d:\d\d:\d\d")


@dataclass(frozen=True, slots=True)
class Received:
    """A call as read: ``form`` and ``body`` go to the arrivals log, ``token`` never does."""

    form: dict[str, str] = field(default_factory=dict)
    body: Any = None
    items: int = 1
    site: str = ""
    token: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A Calltouch method: where it is, how a call is read, its answer and its error200."""

    method: str
    paths: tuple[str, ...]
    verbs: tuple[str, ...]
    receive: Callable[[web.Request], Awaitable[Received]]
    answer: Callable[[web.Request, Received], web.Response]
    error200: Callable[[], web.Response]


@dataclass(frozen=True, slots=True)
class Lead:
    request_id: int
    request_number: str
    phone: str
    email: str
    tags: frozenset[str]
    session: dict[str, Any] | None
    at: datetime | None = None  # its requestDate, in the site's time; None: not given


@dataclass(frozen=True, slots=True)
class Found:
    kind: str  # "request", "call" or "customSources"
    lead: Lead | None = None
    call_id: int | None = None
    source: dict[str, Any] | None = None


@dataclass
class BackOffice:
    access_token: str = ""  # empty: any non-empty token is accepted
    client_api_id: str = ""
    leads: dict[int, Lead] = field(default_factory=dict)
    deals: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # SiteId, number
    comments: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # 1.0, by orderNumber
    next_id: int = 7071000

    def clear(self) -> None:
        """Forget what was applied; the tokens are configuration, as latency is, and stay."""
        for kept in (self.leads, self.deals, self.orders):
            kept.clear()
        self.comments.clear()

    def configure(self, data: Mapping[str, Any]) -> None:
        for key in ("access_token", "client_api_id"):
            value = data.get(key, getattr(self, key))
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string or null")
            setattr(self, key, value or "")

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def add_lead(self, request_id: int, number: str, form: Mapping[str, str],
                 session: dict[str, Any] | None) -> None:
        self.leads[request_id] = Lead(
            request_id, number, _phone(form.get("phoneNumber", "")),
            form.get("email", "").strip().lower(), frozenset(split_tags(form.get("tags", ""))),
            session, _moment(form.get("requestDate", ""), "%d.%m.%Y %H:%M:%S"))

    def lead_by_contact(
        self, phones: Iterable[Any], emails: Iterable[Any],
        window: tuple[datetime, int] | None = None,
    ) -> Lead | None:
        """The nearest lead is the latest one; phones are tried before e-mails, as documented.
        ``window``: a matching's ``date`` and ``searchDepth`` (minutes before it) that a lead's
        requestDate must fall in; a lead registered without one is not ruled out by it."""
        latest = [lead for lead in sorted(self.leads.values(), key=lambda lead: -lead.request_id)
                  if window is None or lead.at is None
                  or window[0] - timedelta(minutes=window[1]) <= lead.at <= window[0]]
        wanted = {_phone(str(p)) for p in phones} - {""}
        mails = {str(e).strip().lower() for e in emails} - {""}
        return (next((lead for lead in latest if lead.phone in wanted), None)
                or next((lead for lead in latest if lead.email in mails), None))

    def lead_by_number(self, number: str) -> Lead | None:
        return next((lead for lead in self.leads.values() if lead.request_number == number), None)


OFFICE = web.AppKey("sandbox_office", BackOffice)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def no_access() -> web.Response:
    return json_response(NO_ACCESS)


def _phone(raw: str) -> str:
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) == 10:
        digits = "7" + digits
    return "7" + digits[1:] if len(digits) == 11 and digits[0] == "8" else digits


def split_tags(tags: str) -> list[str]:
    return [tag.strip() for tag in tags.split(",") if tag.strip()]


def as_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.strip().isdigit() else 0


def is_number(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True
    try:
        return isinstance(value, str) and float(value) == float(value)
    except ValueError:
        return False


def is_date(value: Any, pattern: re.Pattern[str] = _DATE, form: str = "%d-%m-%Y %H:%M:%S") -> bool:
    try:
        return isinstance(value, str) and bool(pattern.fullmatch(value)) and bool(
            datetime.strptime(value, form))
    except ValueError:
        return False


# --- matching a lead ---------------------------------------------------------------------------

def match_lead(office: BackOffice, matching: list[dict[str, Any]]) -> Found | None:
    """The first entry that finds something wins; the ones below it are not tried."""
    for entry in matching:
        found = _find(office, entry["type"], entry[PARAMS[entry["type"]]])
        if found is not None:
            return found
    return None


def _find(office: BackOffice, kind: str, params: dict[str, Any]) -> Found | None:
    if kind == "call":
        call_id = as_int(params["callId"])
        return Found("call", call_id=call_id) if call_id >= 1 else None
    if kind == "customSources":
        return Found("customSources", source=dict(params))
    if kind == "callContact":
        return None  # the sandbox has no calls to find by phone
    lead = (office.leads.get(as_int(params["requestId"])) if kind == "request" else
            office.lead_by_contact(params.get("phones") or [], params.get("emails") or [],
                                   _window(params)))
    return Found("request", lead=lead) if lead is not None and _tagged(lead, params) else None


def _window(params: Mapping[str, Any]) -> tuple[datetime, int] | None:
    """A requestContact's search window, when its ``date`` and ``searchDepth`` read."""
    date, depth = _moment(params.get("date"), "%d-%m-%Y %H:%M:%S"), params.get("searchDepth")
    if date is None or isinstance(depth, bool) or not isinstance(depth, int):
        return None
    return date, depth


def _moment(text: object, form: str) -> datetime | None:
    try:
        return datetime.strptime(text, form) if isinstance(text, str) else None
    except ValueError:
        return None


def _tagged(lead: Lead, params: dict[str, Any]) -> bool:
    tags = set(params.get("tags") or [])
    return not tags or (bool(tags & lead.tags) if params.get("tagsLogic") == "or"
                        else tags <= lead.tags)


def describe_match(found: Found | None) -> dict[str, Any] | None:
    if found is None:
        return None
    if found.lead is not None:
        return {"type": "request", "requestId": str(found.lead.request_id),
                "requestNumber": found.lead.request_number}
    if found.call_id is not None:
        return {"type": "call", "callId": str(found.call_id)}
    return {"type": found.kind, **(found.source or {})}
