"""The sandbox's deals 2.0: ``client-order/create`` and ``client-order/update``.

A batch of orders is checked whole: any violation answers a validation error and nothing is
applied. Otherwise each order gets one result, in order: a created deal is kept under its
``SiteId`` and ``orderNumber``, an update changes only what the order carries, and the order's
``matching`` list, if any, is searched for the lead the deal is bound to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.sandbox.leadservice import (
    BAD_CUSTOM,
    BAD_DATE,
    BAD_TAGS,
    BLANK,
    DEAL_MATCHING,
    MAX_NUMBER,
    NOT_NUMBER,
    NOT_OBJECT,
    NOT_STRING,
    TOO_LONG,
    Violation,
    batch,
    has_text,
    invalid,
    matching_problems,
    token_refused,
)
from gateway.sandbox.office import (
    EXISTS,
    NOT_FOUND,
    OFFICE,
    BackOffice,
    Received,
    describe_match,
    is_date,
    is_number,
    json_response,
    match_lead,
)


def create(request: web.Request, received: Received) -> web.Response:
    return _deals(request.app[OFFICE], received, _create_one)


def update(request: web.Request, received: Received) -> web.Response:
    return _deals(request.app[OFFICE], received, _update_one)


Outcome = tuple[int | None, str | None]  # calltouchOrderId, error
Apply = Callable[[BackOffice, str, dict[str, Any]], Outcome]


def _deals(office: BackOffice, received: Received, apply: Apply) -> web.Response:
    if (refused := token_refused(office, received)) is not None:
        return refused
    orders, problems = batch(received.body, "orders")
    problems += [p for i, item in enumerate(orders) for p in _order_problems(f"orders[{i}]", item)]
    if problems:
        return invalid(problems)
    crm = received.body.get("crm")
    results = [{"orderNumber": order["orderNumber"], **dict(zip(
        ("calltouchOrderId", "error"), apply(office, received.site,
                                             {"crm": crm, **order} if crm else order),
        strict=True))} for order in orders]
    return json_response({"meta": [], "data": {"orders": results}})


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
            deal["matching"], deal["matched"] = value, describe_match(match_lead(office, value))
        elif key != "orderNumber":
            deal[key] = value


# --- validation --------------------------------------------------------------------------------

def _order_problems(at: str, order: Any) -> list[Violation]:
    if not isinstance(order, dict):
        return [(at, NOT_OBJECT)]
    found = _number_problems(f"{at}.orderNumber", order.get("orderNumber"))
    found += [(f"{at}.{key}", BAD_DATE) for key in ("orderDate", "statusDate")
              if key in order and not is_date(order[key])]
    if "revenue" in order and not is_number(order["revenue"]):
        found.append((f"{at}.revenue", NOT_NUMBER))
    if "addTags" in order and _tags(order["addTags"]) is None:
        found.append((f"{at}.addTags", BAD_TAGS))
    if "customFields" in order and _custom(order["customFields"]) is None:
        found.append((f"{at}.customFields", BAD_CUSTOM))
    note = order.get("addNewComment")
    if "addNewComment" in order and not (isinstance(note, dict) and has_text(note.get("text"))):
        found.append((f"{at}.addNewComment.text", BLANK))
    return found + matching_problems(f"{at}.matching", order.get("matching"), DEAL_MATCHING)


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
    tags = [t["tag"].strip() for t in listed if isinstance(t, dict) and has_text(t.get("tag"))]
    return (overwrite, tags) if len(tags) == len(listed) else None


def _custom(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, list):
        return None
    pairs = {f["field"]: f.get("value") for f in value
             if isinstance(f, dict) and has_text(f.get("field"))}
    return pairs if len(pairs) == len(value) else None
