"""The deal kinds (deals 2.0): a CRM's deal, created and then updated at Calltouch (pure).

This module owns the create and update calls made of a deal's payloads and what their answers
mean: the two senders the relay drives. A deal's fields, their rules and the payload the queue
keeps are :mod:`gateway.kinds.deal_fields`'s; how a later update folds into one still queued
or follows one already sent is :mod:`gateway.kinds.deal_merge`'s. A deal is keyed by its
``orderNumber``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.calltouch.answers import Convert, Delivered, Permanent, Retry, Verdict, redact
from gateway.calltouch.client import Call, Reply
from gateway.kinds import leadservice as ls
from gateway.kinds.deal_fields import LEAD_FIRST, Fallback, custom, order_number
from gateway.queue.base import Job

KIND_CREATE = "deal.create"
KIND_UPDATE = "deal.update"
METHOD_CREATE = "client-order/create"
METHOD_UPDATE = "client-order/update"
_SCALARS = (
    "orderNumber", "orderDate", "status", "statusDate", "revenue", "funnel", "currency",
    "manager", "orderName", "orderLink",
)


# --- the calls -----------------------------------------------------------------------------


def matching_of(fields: Mapping[str, Any], request_id: str | None) -> list[dict[str, Any]]:
    """A create's matching: the lead's request first when the deal named one (and the queue
    gave its requestId), then its own list, or the custom source alone."""
    first = [ls.request_entry(request_id)] if fields.get(LEAD_FIRST) and request_id else []
    rest = fields.get("matching") or [custom(fields.get("fallback") or Fallback())]
    return [*first, *rest]


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
