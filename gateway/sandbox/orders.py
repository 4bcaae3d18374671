"""The sandbox's deals 1.0: ``orders/register``, ``orders/update-by-id``, ``orders/delete-by-id``.

One deal a call, its parameters in the query or a form, the token in ``clientApiId``. A deal
registered is bound to a call, a request, or a request found by the lead's contact, and kept
by ``orderNumber`` for ``/sandbox/orders``; an update or a delete finds it by ``orderId`` first,
then by ``orderNumber``. A refusal is one message, not a list of violations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from gateway.sandbox.office import (
    EXISTS,
    NOT_FOUND,
    OFFICE,
    BackOffice,
    Found,
    Received,
    as_int,
    describe_match,
    is_date,
    is_number,
    json_response,
    split_tags,
)

BAD_CLIENT_API_ID = "Неверный clientApiId"
NO_REQUEST = "Заявка не найдена"
BOTH = "Нельзя создать сделку одновременно по звонку и заявке"
REGISTER_NAMES = {"orderSum": "sum", "orderStatus": "status", "orderComment": "comment"}
UPDATE_NAMES = {"orderSum": "sum"}
MSK = timezone(timedelta(hours=3))  # Calltouch's dates are Moscow time, which has no DST
_LEGACY_DATE = re.compile(r"\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d")


async def receive_params(request: web.Request) -> Received:
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    form.update(request.query)
    return Received(form=form, token=form.pop("clientApiId", ""))


def _legacy_refused(office: BackOffice, token: str) -> web.Response | None:
    if not token.strip() or (office.client_api_id and token != office.client_api_id):
        return json_response({"message": BAD_CLIENT_API_ID}, 401)
    return None


def order_register(request: web.Request, received: Received) -> web.Response:
    office, params = request.app[OFFICE], received.form
    if (refused := _legacy_refused(office, received.token)) is not None:
        return refused
    found, problem = _bind(office, params)
    problem = _register_problem(office, params) or problem
    if problem is not None:
        return json_response({"message": problem}, 400)
    order_id = office.new_id()
    order: dict[str, Any] = {
        "orderId": order_id, "orderNumber": params.get("orderNumber") or str(order_id),
        "tags": [], "customFields": {}, "matched": describe_match(found), "updates": 0,
        "deleted": False}
    _set_params(order, params, REGISTER_NAMES)
    office.orders[order["orderNumber"]] = order
    return json_response(_order_view(order) | {"currentAmount": float(order["sum"])})


def _register_problem(office: BackOffice, params: Mapping[str, str]) -> str | None:
    for name in ("orderSum", "orderStatus", "orderDate", "service"):
        if not params.get(name, "").strip():
            return f"Не указан обязательный параметр {name}"
    if not is_number(params["orderSum"]):
        return "Неверный формат параметра orderSum"
    if not is_date(params["orderDate"], _LEGACY_DATE, "%d.%m.%Y %H:%M:%S"):
        return "Неверный формат параметра orderDate, ожидается dd.mm.yyyy hh:mm:ss"
    held = office.orders.get(params.get("orderNumber", ""))
    return EXISTS if held is not None and not held["deleted"] else None


def _bind(office: BackOffice, params: Mapping[str, str]) -> tuple[Found | None, str | None]:
    """The lead a 1.0 deal is created by: a call, a request, or a request found by contact."""
    by_call = "callId" in params or "callReferenceId" in params
    if by_call and ("requestId" in params or "requestNumber" in params):
        return None, BOTH
    if by_call:  # a callReferenceId is found too, but names no callId to answer with
        call_id = as_int(params.get("callId"))
        return (Found("call", call_id=call_id) if call_id >= 1 else None), None
    if "requestId" in params or "requestNumber" in params:
        lead = (office.leads.get(as_int(params["requestId"])) if "requestId" in params
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
            order["tags"] = split_tags(value)
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
        return json_response({"message": NOT_FOUND}, 400)
    if received.form.get("orderSum") and not is_number(received.form["orderSum"]):
        return json_response({"message": "Неверный формат параметра orderSum"}, 400)
    _set_params(order, received.form, UPDATE_NAMES)
    order["updates"] += 1
    matched = order["matched"] or {}
    lead = office.leads.get(as_int(matched.get("requestId")))
    client = None if lead is None else {
        "fio": None, "clientId": lead.request_id,
        "phones": [{"phoneNumber": lead.phone, "phoneType": "WORK"}] if lead.phone else [],
        "contacts": [{"contactValue": lead.email}] if lead.email else None}
    return json_response({"orderId": order["orderId"], "orderNumber": order["orderNumber"],
                          "order": _order_view(order), "client": client,
                          "orderComments": order.get("comment", ""),
                          "session": lead.session if lead else None})


def order_delete(request: web.Request, received: Received) -> web.Response:
    office = request.app[OFFICE]
    if (refused := _legacy_refused(office, received.token)) is not None:
        return refused
    order = _held(office, received.form)
    if order is None:
        return json_response({"message": NOT_FOUND}, 400)
    order["deleted"] = True
    return json_response({"orderId": order["orderId"], "deleted": True})
