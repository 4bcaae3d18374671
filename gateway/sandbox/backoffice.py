"""The sandbox's back office: deals 2.0, comments on leads and deals 1.0, as documented.

* ``POST /lead-service/v1/api/client-order/create`` and ``…/update`` (headers ``Access-Token``,
  ``SiteId``; JSON ``{"orders": [...]}``, at most 100): one result per order, in order; or a
  validation error for the whole batch, nothing applied.
* ``POST /lead-service/v1/api/comment/lead/add`` (JSON ``{"comments": [...]}``): a comment goes
  to the lead its first matching entry finds.
* ``GET|POST /calls-service/RestAPI/orders/register/``, ``GET …/update-by-id/``,
  ``GET …/delete-by-id/``: deals 1.0, one a call, token ``clientApiId``.
* ``GET /sandbox/deals`` (``?site=`` for one SiteId), ``/sandbox/comments``, ``/sandbox/orders``:
  what was applied, for tests to compare with what they posted.

Calls are not simulated: any ``callId`` ≥ 1 is found, no ``callContact`` is. Leads are the ones
the sandbox registered, found by id or contact regardless of date. Wordings Calltouch does not
document are the shared plan's. The HTTP side (limit, latency, faults, arrivals log) is
:mod:`gateway.sandbox.server`'s: an :class:`Endpoint` says how to read a call and answer it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

LEAD_SERVICE, LEGACY = "/lead-service/v1/api", "/calls-service/RestAPI/orders"
MAX_ITEMS, MAX_MATCHING, MAX_NUMBER, MAX_DEPTH = 100, 20, 256, 525600
NO_TOKEN = "Access token не найден"  # noqa: S105 (an answer's wording, no secret)
NO_ACCESS = {"meta": [], "data": {"message": "Ошибка доступа"}}
BAD_CLIENT_API_ID = "Неверный clientApiId"
EXISTS = "Сделка с таким orderNumber уже существует"
NOT_FOUND = "Сделка не найдена"
NO_LEAD, NO_REQUEST = "Лид не найден", "Заявка не найдена"
BOTH = "Нельзя создать сделку одновременно по звонку и заявке"
BLANK = "This value should not be blank."
TOO_LONG = f"This value is too long. It should have {MAX_NUMBER} characters or less."
NOT_STRING, NOT_LIST = "This value should be of type string.", "This value should be of type array."
NOT_OBJECT, NOT_NUMBER = "This value should be of type object.", "This value should be a number."
BAD_DATE = "Неверный формат даты, ожидается dd-mm-yyyy hh:mm:ss"
TOO_MANY = f"Не более {MAX_ITEMS} элементов"
TOO_MANY_MATCHING = f"Не более {MAX_MATCHING} типов матчинга"
UNKNOWN_MATCHING = "Неизвестный тип матчинга"
NO_CONTACT = "Должен быть передан хотя бы один из параметров – emails или phones"
BAD_DEPTH = f"Значение должно быть от 1 до {MAX_DEPTH}"
BAD_LOGIC = "Значение должно быть and или or"
BAD_TAGS = 'Ожидается {"overwrite": bool, "tags": [{"tag": "..."}]}'
BAD_CUSTOM = 'Ожидается [{"field": "...", "value": "..."}]'
# What a lead registered with a sessionId is attributed to: fixed, plausible values.
SESSION: dict[str, str] = {
    "source": "yandex", "medium": "cpc", "utmSource": "yandex", "utmMedium": "cpc",
    "utmCampaign": "sandbox", "utmContent": "ad-1", "utmTerm": "купить", "keywords": "купить",
    "city": "Москва",
}
PARAMS = {"request": "requestParams", "call": "callParams", "callContact": "callContactParams",
          "requestContact": "requestContactParams", "customSources": "customSourceParams"}
DEAL_MATCHING, COMMENT_MATCHING = frozenset(PARAMS), frozenset(PARAMS) - {"customSources"}
REGISTER_NAMES = {"orderSum": "sum", "orderStatus": "status", "orderComment": "comment"}
UPDATE_NAMES = {"orderSum": "sum"}
MSK = timezone(timedelta(hours=3))  # Calltouch's dates are Moscow time, which has no DST
_DATE = re.compile(r"\d\d-\d\d-\d{4} \d\d:\d\d:\d\d")
_LEGACY_DATE = re.compile(r"\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d")
Violation = tuple[str, str]  # fieldPath, message


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
            form.get("email", "").strip().lower(), frozenset(_split(form.get("tags", ""))),
            session)

    def lead_by_contact(self, phones: Iterable[Any], emails: Iterable[Any]) -> Lead | None:
        """The nearest lead is the latest one; phones are tried before e-mails, as documented."""
        latest = sorted(self.leads.values(), key=lambda lead: -lead.request_id)
        wanted = {_phone(str(p)) for p in phones} - {""}
        mails = {str(e).strip().lower() for e in emails} - {""}
        return (next((lead for lead in latest if lead.phone in wanted), None)
                or next((lead for lead in latest if lead.email in mails), None))

    def lead_by_number(self, number: str) -> Lead | None:
        return next((lead for lead in self.leads.values() if lead.request_number == number), None)


OFFICE = web.AppKey("sandbox_office", BackOffice)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _no_access() -> web.Response:
    return _json(NO_ACCESS)


def _phone(raw: str) -> str:
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) == 10:
        digits = "7" + digits
    return "7" + digits[1:] if len(digits) == 11 and digits[0] == "8" else digits


def _split(tags: str) -> list[str]:
    return [tag.strip() for tag in tags.split(",") if tag.strip()]


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _as_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.strip().isdigit() else 0


def _is_number(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True
    try:
        return isinstance(value, str) and float(value) == float(value)
    except ValueError:
        return False


def _is_date(value: Any, pattern: re.Pattern[str] = _DATE, form: str = "%d-%m-%Y %H:%M:%S") -> bool:
    try:
        return isinstance(value, str) and bool(pattern.fullmatch(value)) and bool(
            datetime.strptime(value, form))
    except ValueError:
        return False


# --- reading a call ----------------------------------------------------------------------------

def _receive_json(key: str) -> Callable[[web.Request], Awaitable[Received]]:
    async def receive(request: web.Request) -> Received:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        items = body.get(key) if isinstance(body, dict) else None
        return Received(body=body, items=len(items) if isinstance(items, list) else 1,
                        site=request.headers.get("SiteId", ""),
                        token=request.headers.get("Access-Token", ""))
    return receive


async def _receive_params(request: web.Request) -> Received:
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    form.update(request.query)
    return Received(form=form, token=form.pop("clientApiId", ""))


# --- lead-service validation -------------------------------------------------------------------

def _refused(office: BackOffice, received: Received) -> web.Response | None:
    token = received.token.strip()
    if not token or not received.site or (office.access_token and token != office.access_token):
        return _json({"message": NO_TOKEN}, 401)
    return None


def _invalid(violations: list[Violation]) -> web.Response:
    data = {"type": "validationError", "apiErrorData": None, "validationErrorData": {
        "violations": [{"fieldPath": path, "message": text} for path, text in violations]}}
    return _json({"meta": [], "data": data}, 400)


def _batch(body: Any, key: str) -> tuple[list[Any], list[Violation]]:
    if not isinstance(body, dict):
        return [], [("", NOT_OBJECT)]
    items = body.get(key)
    if not items:
        return [], [(key, BLANK)]
    if not isinstance(items, list):
        return [], [(key, NOT_LIST)]
    return (items, []) if len(items) <= MAX_ITEMS else ([], [(key, TOO_MANY)])


def _order_problems(at: str, order: Any) -> list[Violation]:
    if not isinstance(order, dict):
        return [(at, NOT_OBJECT)]
    found = _number_problems(f"{at}.orderNumber", order.get("orderNumber"))
    found += [(f"{at}.{key}", BAD_DATE) for key in ("orderDate", "statusDate")
              if key in order and not _is_date(order[key])]
    if "revenue" in order and not _is_number(order["revenue"]):
        found.append((f"{at}.revenue", NOT_NUMBER))
    if "addTags" in order and _tags(order["addTags"]) is None:
        found.append((f"{at}.addTags", BAD_TAGS))
    if "customFields" in order and _custom(order["customFields"]) is None:
        found.append((f"{at}.customFields", BAD_CUSTOM))
    note = order.get("addNewComment")
    if "addNewComment" in order and not (isinstance(note, dict) and _text(note.get("text"))):
        found.append((f"{at}.addNewComment.text", BLANK))
    return found + _matching_problems(f"{at}.matching", order.get("matching"), DEAL_MATCHING)


def _number_problems(at: str, number: Any) -> list[Violation]:
    if number is None or (isinstance(number, str) and not number.strip()):
        return [(at, BLANK)]
    if not isinstance(number, str):
        return [(at, NOT_STRING)]
    return [(at, TOO_LONG)] if len(number) > MAX_NUMBER else []


def _tags(value: Any) -> tuple[bool, list[str]] | None:
    """``addTags``: a list of ``{"tag"}`` (as create shows) or ``{"overwrite", "tags"}``."""
    overwrite, listed = (value.get("overwrite", False), value.get("tags")) if isinstance(
        value, dict) else (False, value)
    if not isinstance(listed, list) or not isinstance(overwrite, bool):
        return None
    tags = [t["tag"].strip() for t in listed if isinstance(t, dict) and _text(t.get("tag"))]
    return (overwrite, tags) if len(tags) == len(listed) else None


def _custom(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, list):
        return None
    pairs = {f["field"]: f.get("value") for f in value
             if isinstance(f, dict) and _text(f.get("field"))}
    return pairs if len(pairs) == len(value) else None


def _matching_problems(at: str, matching: Any, types: frozenset[str],
                       required: bool = False) -> list[Violation]:
    if matching is None or matching == []:
        return [(at, BLANK)] if required else []
    if not isinstance(matching, list):
        return [(at, NOT_LIST)]
    if len(matching) > MAX_MATCHING:
        return [(at, TOO_MANY_MATCHING)]
    found: list[Violation] = []
    for j, entry in enumerate(matching):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in types:
            found.append((f"{at}[{j}].type", UNKNOWN_MATCHING))
        else:
            found += _params_problems(f"{at}[{j}].{PARAMS[kind]}", kind, entry.get(PARAMS[kind]))
    return found


def _params_problems(at: str, kind: str, params: Any) -> list[Violation]:
    if not isinstance(params, dict):
        return [(at, BLANK)]
    found: list[Violation] = []
    tags = params.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(_text(t) for t in tags)):
        found.append((f"{at}.tags", NOT_LIST))
    elif isinstance(tags, list) and len(tags) > 1 and params.get("tagsLogic") not in ("and", "or"):
        found.append((f"{at}.tagsLogic", BAD_LOGIC))
    if kind in ("request", "call"):
        key = f"{kind}Id"
        ok = _text(params.get(key)) or _as_int(params.get(key)) > 0
        return found + ([] if ok else [(f"{at}.{key}", BLANK)])
    return found + (_contact_problems(at, kind, params) if kind != "customSources" else [])


def _contact_problems(at: str, kind: str, params: dict[str, Any]) -> list[Violation]:
    def listed(key: str) -> bool:
        value = params.get(key)
        return isinstance(value, list) and bool(value) and all(_text(v) for v in value)

    found: list[Violation] = []
    if not listed("phones") and (kind == "callContact" or not listed("emails")):
        found.append((f"{at}.phones", BLANK if kind == "callContact" else NO_CONTACT))
    if not _is_date(params.get("date")):
        found.append((f"{at}.date", BAD_DATE if "date" in params else BLANK))
    to_match = "callTypeToMatch" if kind == "callContact" else "requestTypeToMatch"
    if not _text(params.get(to_match)):
        found.append((f"{at}.{to_match}", BLANK))
    depth = params.get("searchDepth")
    if not (isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth <= MAX_DEPTH):
        found.append((f"{at}.searchDepth", BAD_DEPTH))
    return found


# --- matching a lead ---------------------------------------------------------------------------

def _match(office: BackOffice, matching: list[dict[str, Any]]) -> Found | None:
    """The first entry that finds something wins; the ones below it are not tried."""
    for entry in matching:
        found = _find(office, entry["type"], entry[PARAMS[entry["type"]]])
        if found is not None:
            return found
    return None


def _find(office: BackOffice, kind: str, params: dict[str, Any]) -> Found | None:
    if kind == "call":
        call_id = _as_int(params["callId"])
        return Found("call", call_id=call_id) if call_id >= 1 else None
    if kind == "customSources":
        return Found("customSources", source=dict(params))
    if kind == "callContact":
        return None  # the sandbox has no calls to find by phone
    lead = (office.leads.get(_as_int(params["requestId"])) if kind == "request" else
            office.lead_by_contact(params.get("phones") or [], params.get("emails") or []))
    return Found("request", lead=lead) if lead is not None and _tagged(lead, params) else None


def _tagged(lead: Lead, params: dict[str, Any]) -> bool:
    tags = set(params.get("tags") or [])
    return not tags or (bool(tags & lead.tags) if params.get("tagsLogic") == "or"
                        else tags <= lead.tags)


def _matched(found: Found | None) -> dict[str, Any] | None:
    if found is None:
        return None
    if found.lead is not None:
        return {"type": "request", "requestId": str(found.lead.request_id),
                "requestNumber": found.lead.request_number}
    if found.call_id is not None:
        return {"type": "call", "callId": str(found.call_id)}
    return {"type": found.kind, **(found.source or {})}


# --- deals 2.0 ---------------------------------------------------------------------------------

def create(request: web.Request, received: Received) -> web.Response:
    return _deals(request.app[OFFICE], received, _create_one)


def update(request: web.Request, received: Received) -> web.Response:
    return _deals(request.app[OFFICE], received, _update_one)


Outcome = tuple[int | None, str | None]  # calltouchOrderId, error
Apply = Callable[[BackOffice, str, dict[str, Any]], Outcome]


def _deals(office: BackOffice, received: Received, apply: Apply) -> web.Response:
    if (refused := _refused(office, received)) is not None:
        return refused
    orders, problems = _batch(received.body, "orders")
    problems += [p for i, item in enumerate(orders) for p in _order_problems(f"orders[{i}]", item)]
    if problems:
        return _invalid(problems)
    crm = received.body.get("crm")
    results = [{"orderNumber": order["orderNumber"], **dict(zip(
        ("calltouchOrderId", "error"), apply(office, received.site,
                                             {"crm": crm, **order} if crm else order),
        strict=True))} for order in orders]
    return _json({"meta": [], "data": {"orders": results}})


def _create_one(office: BackOffice, site: str, order: dict[str, Any]) -> Outcome:
    book = office.deals.setdefault(site, {})
    if order["orderNumber"] in book:
        return None, EXISTS
    deal = {"orderNumber": order["orderNumber"], "siteId": site,
            "calltouchOrderId": office.new_id(), "tags": [], "comments": [], "customFields": {},
            "matching": [], "matched": None, "updates": 0}
    _apply(office, deal, order)
    book[order["orderNumber"]] = deal
    return deal["calltouchOrderId"], None


def _update_one(office: BackOffice, site: str, order: dict[str, Any]) -> Outcome:
    deal = office.deals.get(site, {}).get(order["orderNumber"])
    if deal is None:
        return None, NOT_FOUND
    _apply(office, deal, order)
    deal["updates"] += 1
    return deal["calltouchOrderId"], None


def _apply(office: BackOffice, deal: dict[str, Any], order: dict[str, Any]) -> None:
    """Only what the order carries changes; tags and comments add to what the deal has."""
    for key, value in order.items():
        if key == "addTags":
            overwrite, tags = _tags(value) or (False, [])
            kept = [] if overwrite else deal["tags"]
            deal["tags"] = kept + [tag for tag in dict.fromkeys(tags) if tag not in kept]
        elif key == "addNewComment":
            deal["comments"].append(value["text"])
        elif key == "customFields":
            deal["customFields"].update(_custom(value) or {})
        elif key == "matching":
            deal["matching"], deal["matched"] = value, _matched(_match(office, value))
        elif key != "orderNumber":
            deal[key] = value


# --- comments ----------------------------------------------------------------------------------

def comment(request: web.Request, received: Received) -> web.Response:
    office = request.app[OFFICE]
    if (refused := _refused(office, received)) is not None:
        return refused
    items, problems = _batch(received.body, "comments")
    problems += [p for i, one in enumerate(items) for p in _comment_problems(f"comments[{i}]", one)]
    if problems:
        return _invalid(problems)
    return _json({"meta": [], "data": {"comments": [
        _comment_one(office, received.site, item) for item in items]}})


def _comment_problems(at: str, item: Any) -> list[Violation]:
    if not isinstance(item, dict):
        return [(at, NOT_OBJECT)]
    found = _matching_problems(f"{at}.matching", item.get("matching"), COMMENT_MATCHING, True)
    return found + ([] if _text(item.get("addComment")) else [(f"{at}.addComment", BLANK)])


def _comment_one(office: BackOffice, site: str, item: dict[str, Any]) -> dict[str, Any]:
    found = _match(office, item["matching"])
    if found is None:
        return {"requestInfo": None, "callInfo": None, "commented": False, "error": NO_LEAD}
    lead, call = found.lead, found.call_id
    office.comments.append({"siteId": site, "text": item["addComment"],
                            "requestId": str(lead.request_id) if lead else None,
                            "callId": str(call) if call else None})
    return {
        "requestInfo": {"requestId": str(lead.request_id), "requestNumber": lead.request_number}
        if lead else None,
        "callInfo": {"callId": str(call), "callReferenceId": None, "sipCallId": None}
        if call else None,
        "commented": True, "error": None,
    }


# --- deals 1.0 ---------------------------------------------------------------------------------

def _legacy_refused(office: BackOffice, token: str) -> web.Response | None:
    if not token.strip() or (office.client_api_id and token != office.client_api_id):
        return _json({"message": BAD_CLIENT_API_ID}, 401)
    return None


def order_register(request: web.Request, received: Received) -> web.Response:
    office, params = request.app[OFFICE], received.form
    if (refused := _legacy_refused(office, received.token)) is not None:
        return refused
    found, problem = _bind(office, params)
    problem = _register_problem(office, params) or problem
    if problem is not None:
        return _json({"message": problem}, 400)
    order_id = office.new_id()
    order: dict[str, Any] = {
        "orderId": order_id, "orderNumber": params.get("orderNumber") or str(order_id),
        "tags": [], "customFields": {}, "matched": _matched(found), "updates": 0, "deleted": False}
    _set_params(order, params, REGISTER_NAMES)
    office.orders[order["orderNumber"]] = order
    return _json(_order_view(order) | {"currentAmount": float(order["sum"])})


def _register_problem(office: BackOffice, params: Mapping[str, str]) -> str | None:
    for name in ("orderSum", "orderStatus", "orderDate", "service"):
        if not params.get(name, "").strip():
            return f"Не указан обязательный параметр {name}"
    if not _is_number(params["orderSum"]):
        return "Неверный формат параметра orderSum"
    if not _is_date(params["orderDate"], _LEGACY_DATE, "%d.%m.%Y %H:%M:%S"):
        return "Неверный формат параметра orderDate, ожидается dd.mm.yyyy hh:mm:ss"
    held = office.orders.get(params.get("orderNumber", ""))
    return EXISTS if held is not None and not held["deleted"] else None


def _bind(office: BackOffice, params: Mapping[str, str]) -> tuple[Found | None, str | None]:
    """The lead a 1.0 deal is created by: a call, a request, or a request found by contact."""
    by_call = "callId" in params or "callReferenceId" in params
    if by_call and ("requestId" in params or "requestNumber" in params):
        return None, BOTH
    if by_call:  # a callReferenceId is found too, but names no callId to answer with
        call_id = _as_int(params.get("callId"))
        return (Found("call", call_id=call_id) if call_id >= 1 else None), None
    if "requestId" in params or "requestNumber" in params:
        lead = (office.leads.get(_as_int(params["requestId"])) if "requestId" in params
                else office.lead_by_number(params["requestNumber"]))
        return (Found("request", lead=lead), None) if lead is not None else (None, NO_REQUEST)
    if params.get("bindTo") == "calls":
        return None, None
    lead = office.lead_by_contact([params.get("phoneNumber", "")], [params.get("email", "")])
    return (Found("request", lead=lead) if lead is not None else None), None


def _set_params(order: dict[str, Any], params: Mapping[str, str], names: dict[str, str]) -> None:
    for key, value in params.items():
        if key.startswith("custom[") and key.endswith("]"):
            order["customFields"][key[7:-1]] = value
        elif key == "tags":  # 1.0 replaces the tags: it has no way to add some
            order["tags"] = _split(value)
        elif key not in ("orderId", "orderNumber"):
            order[names.get(key, key)] = value


def _order_view(order: dict[str, Any]) -> dict[str, Any]:
    matched, created = order["matched"] or {}, datetime.strptime(
        order["orderDate"], "%d.%m.%Y %H:%M:%S").replace(tzinfo=MSK)
    view: dict[str, Any] = {"orderId": order["orderId"]}
    if matched.get("type") in ("call", "request"):
        key = f"{matched['type']}Id"
        view[key] = int(matched[key])
    return view | {
        "dateCreated": int(created.timestamp() * 1000), "status": order.get("status"),
        "realSum": None, "offered": None, "sent": created.strftime("%d.%m.%Y"),
        "sum": order.get("sum"), "isMarked": None, "commentsCount": 0, "currentAmount": None,
        "orderNumber": order["orderNumber"]}


def _held(office: BackOffice, params: Mapping[str, str]) -> dict[str, Any] | None:
    """By orderId first, then by orderNumber, as documented; a deleted deal is not found."""
    live = [order for order in office.orders.values() if not order["deleted"]]
    return (next((o for o in live if str(o["orderId"]) == params.get("orderId")), None)
            or next((o for o in live if o["orderNumber"] == params.get("orderNumber")), None))


def order_update(request: web.Request, received: Received) -> web.Response:
    office = request.app[OFFICE]
    if (refused := _legacy_refused(office, received.token)) is not None:
        return refused
    order = _held(office, received.form)
    if order is None:
        return _json({"message": NOT_FOUND}, 400)
    if received.form.get("orderSum") and not _is_number(received.form["orderSum"]):
        return _json({"message": "Неверный формат параметра orderSum"}, 400)
    _set_params(order, received.form, UPDATE_NAMES)
    order["updates"] += 1
    matched = order["matched"] or {}
    lead = office.leads.get(_as_int(matched.get("requestId")))
    client = None if lead is None else {
        "fio": None, "clientId": lead.request_id,
        "phones": [{"phoneNumber": lead.phone, "phoneType": "WORK"}] if lead.phone else [],
        "contacts": [{"contactValue": lead.email}] if lead.email else None}
    return _json({"orderId": order["orderId"], "orderNumber": order["orderNumber"],
                  "order": _order_view(order), "client": client,
                  "orderComments": order.get("comment", ""),
                  "session": lead.session if lead else None})


def order_delete(request: web.Request, received: Received) -> web.Response:
    office = request.app[OFFICE]
    if (refused := _legacy_refused(office, received.token)) is not None:
        return refused
    order = _held(office, received.form)
    if order is None:
        return _json({"message": NOT_FOUND}, 400)
    order["deleted"] = True
    return _json({"orderId": order["orderId"], "deleted": True})


# --- wiring ------------------------------------------------------------------------------------

def _both(path: str) -> tuple[str, ...]:
    return path, path.rstrip("/")  # the documentation writes the 1.0 paths both ways


ENDPOINTS = (
    Endpoint("client-order/create", (f"{LEAD_SERVICE}/client-order/create",), ("POST",),
             _receive_json("orders"), create, _no_access),
    Endpoint("client-order/update", (f"{LEAD_SERVICE}/client-order/update",), ("POST",),
             _receive_json("orders"), update, _no_access),
    Endpoint("comment/lead/add", (f"{LEAD_SERVICE}/comment/lead/add",), ("POST",),
             _receive_json("comments"), comment, _no_access),
    Endpoint("orders/register", _both(f"{LEGACY}/register/"), ("GET", "POST"),
             _receive_params, order_register, _no_access),
    Endpoint("orders/update-by-id", _both(f"{LEGACY}/update-by-id/"), ("GET",),
             _receive_params, order_update, _no_access),
    Endpoint("orders/delete-by-id", _both(f"{LEGACY}/delete-by-id/"), ("GET",),
             _receive_params, order_delete, _no_access),
)


async def deals_view(request: web.Request) -> web.Response:
    office, site = request.app[OFFICE], request.query.get("site")
    books = list(office.deals.values()) if site is None else [office.deals.get(site, {})]
    return _json({"deals": {number: deal for book in books for number, deal in book.items()}})


async def comments_view(request: web.Request) -> web.Response:
    return _json({"comments": request.app[OFFICE].comments})


async def orders_view(request: web.Request) -> web.Response:
    return _json({"orders": request.app[OFFICE].orders})


VIEWS = (("/sandbox/deals", deals_view), ("/sandbox/comments", comments_view),
         ("/sandbox/orders", orders_view))
