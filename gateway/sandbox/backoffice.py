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
the sandbox registered, found by id, or by contact among those whose requestDate lies within a
``requestContact``'s ``searchDepth`` minutes before its ``date`` (1.0's by contact regardless of
date). Wordings Calltouch does not
document are the shared plan's. The HTTP side (limit, latency, faults, arrivals log) is
:mod:`gateway.sandbox.server`'s: an :class:`Endpoint` says how to read a call and answer it.

This module wires them: the state and what both APIs share are :mod:`gateway.sandbox.office`'s;
deals 2.0 are :mod:`gateway.sandbox.deals`'s and comments :mod:`gateway.sandbox.comments`'s,
which share :mod:`gateway.sandbox.leadservice`; deals 1.0 are :mod:`gateway.sandbox.orders`'s.
"""

from __future__ import annotations

from aiohttp import web

from gateway.sandbox.comments import comment
from gateway.sandbox.deals import create, update
from gateway.sandbox.leadservice import receive_json
from gateway.sandbox.office import OFFICE, Endpoint, json_response, no_access
from gateway.sandbox.orders import order_delete, order_register, order_update, receive_params

LEAD_SERVICE, LEGACY = "/lead-service/v1/api", "/calls-service/RestAPI/orders"


# --- wiring ------------------------------------------------------------------------------------

def _both(path: str) -> tuple[str, ...]:
    return path, path.rstrip("/")  # the documentation writes the 1.0 paths both ways


ENDPOINTS = (
    Endpoint("client-order/create", (f"{LEAD_SERVICE}/client-order/create",), ("POST",),
             receive_json("orders"), create, no_access),
    Endpoint("client-order/update", (f"{LEAD_SERVICE}/client-order/update",), ("POST",),
             receive_json("orders"), update, no_access),
    Endpoint("comment/lead/add", (f"{LEAD_SERVICE}/comment/lead/add",), ("POST",),
             receive_json("comments"), comment, no_access),
    Endpoint("orders/register", _both(f"{LEGACY}/register/"), ("GET", "POST"),
             receive_params, order_register, no_access),
    Endpoint("orders/update-by-id", _both(f"{LEGACY}/update-by-id/"), ("GET",),
             receive_params, order_update, no_access),
    Endpoint("orders/delete-by-id", _both(f"{LEGACY}/delete-by-id/"), ("GET",),
             receive_params, order_delete, no_access),
)


async def deals_view(request: web.Request) -> web.Response:
    office, site = request.app[OFFICE], request.query.get("site")
    books = list(office.deals.values()) if site is None else [office.deals.get(site, {})]
    return json_response({"deals": {
        number: deal for book in books for number, deal in book.items()}})


async def comments_view(request: web.Request) -> web.Response:
    return json_response({"comments": request.app[OFFICE].comments})


async def orders_view(request: web.Request) -> web.Response:
    return json_response({"orders": request.app[OFFICE].orders})


VIEWS = (("/sandbox/deals", deals_view), ("/sandbox/comments", comments_view),
         ("/sandbox/orders", orders_view))
