"""HTTP handlers of the back office: deals 2.0, lead comments, and Calltouch's own 1.0 paths.

Each post is read (one item, an array, or an NDJSON stream: :mod:`.uploads`), validated by its
kind's module, and committed before the answer, as a lead is. Deals and 1.0 orders go into
chains, one per order number, so that their calls reach Calltouch in the order they were posted;
a comment, or a deal that names a lead, waits for that lead to be delivered.
"""

from __future__ import annotations

import functools
import logging
import time
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.config import Settings
from gateway.errors import BadRequest, FieldError, Invalid
from gateway.intake.handlers import json_response
from gateway.intake.listener import read_body
from gateway.intake.uploads import Item, open_upload
from gateway.kinds import comment as comments
from gateway.kinds import deal as deals
from gateway.kinds import deal_fields, deal_merge, order1, order1_params
from gateway.kinds import lead as leads
from gateway.ops.metrics import Metrics
from gateway.queue import PENDING, Put, PutResult, Queue, QueueError, State, Status
from gateway.queue.base import Link
from gateway.sites import Sites

log = logging.getLogger(__name__)
T = TypeVar("T")

# Items committed together: one transaction (one fsync) for this many of a bulk upload.
CHUNK = 500
# A JSON array is decoded whole: larger uploads go as NDJSON, which is read as a stream.
MAX_JSON = 8 << 20
MAX_LISTED_ERRORS = 100
_WAITING = (*PENDING, State.HELD)


@dataclass(slots=True)
class Tally:
    """What a many-item post did, for its answer."""

    accepted: int = 0
    merged: int = 0
    rejected: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)

    def reject(self, item: Item, errors: list[FieldError]) -> None:
        self.rejected += 1
        kind, number = item.position
        for error in errors:
            if len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append({kind: number, **error.as_dict()})

    def count(self, result: PutResult) -> None:
        if result.created:
            self.accepted += 1
        else:
            self.merged += 1

    def as_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "merged": self.merged, "rejected": self.rejected,
                "errors": self.errors}


@dataclass(slots=True)
class BackOffice:
    settings: Settings
    queue: Queue
    metrics: Metrics
    sites: Sites
    site_of: Callable[[web.Request], str]  # the site a token's request is for (Intake.api_site)
    is_draining: Callable[[], bool]
    _zones: dict[str, zoneinfo.ZoneInfo] = field(init=False, repr=False)
    _fallbacks: dict[str, deal_fields.Fallback] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self._zones = {name: zoneinfo.ZoneInfo(site.timezone)
                       for name, site in self.sites.sites.items()}
        self._fallbacks = {
            name: deal_fields.Fallback(site.deal_fallback_source or s.deal_source, s.deal_medium,
                                       s.deal_campaign)
            for name, site in self.sites.sites.items()
        }

    # -- deals 2.0 ------------------------------------------------------------------------

    async def post_deals(self, request: web.Request) -> web.Response:
        site = self._admit(request)
        return await self._upload(request, deals.KIND_CREATE, site,
                                  functools.partial(self._deal_link, site), self._append)

    async def _deal_link(self, site: str, data: dict[str, Any]) -> Link:
        deal = deal_fields.validate(data, self._zones[site], self._fallbacks[site])
        after = None if deal.lead is None else await self._lead_job(site, deal.lead)
        payload = deal_fields.payload(deal)
        return Link(
            deal.order_number,
            Put(deals.KIND_CREATE, payload, deal.order_number, site, after=after),
            Put(deals.KIND_UPDATE, payload, None, site),
            merge=deal_merge.merge, follow=deal_merge.follow,
        )

    async def get_deal(self, request: web.Request) -> web.Response:
        site = self.site_of(request)
        number = request.match_info["order_number"]
        chain = await self._read(self.queue.chain(site, number))
        if not chain:
            raise BadRequest("not_found", "no deal with this orderNumber", status=404)
        return json_response(deal_status(number, chain))

    # -- comments -------------------------------------------------------------------------

    async def post_comments(self, request: web.Request) -> web.Response:
        site = self._admit(request)
        return await self._upload(request, comments.KIND, site,
                                  functools.partial(self._comment_put, site), self._put)

    async def _comment_put(self, site: str, data: dict[str, Any]) -> Put:
        comment = comments.validate(data)
        after = None if comment.lead is None else await self._lead_job(site, comment.lead)
        return Put(comments.KIND, comments.payload(comment), comments.dedup_key(comment),
                   site, after=after)

    async def get_comment(self, request: web.Request) -> web.Response:
        site = self.site_of(request)
        status = await self._read(self.queue.status(request.match_info["id"]))
        if status is None or status.kind != comments.KIND or status.site != site:
            raise BadRequest("not_found", "no comment with this id", status=404)
        return json_response(status.as_dict())

    # -- deals 1.0, on Calltouch's own paths ----------------------------------------------

    async def legacy(self, request: web.Request) -> web.Response:
        """``orders/register/``, ``update-by-id/``, ``delete-by-id/``: one call each, queued
        in order per deal. The caller's ``clientApiId`` is the credential and names the site;
        it is checked here and never kept: the sender adds the configured one."""
        op = order1.op_for_path(request.path)
        if op is None:
            raise web.HTTPNotFound
        params = dict(request.query)
        if request.method == "POST":
            # Bounded as a lead's body is: 408 past the deadline, 400 for one that cannot be
            # decoded (bad gzip), 413 past CTGW_MAX_BODY; a bare read() waited and raised 500s.
            body = await read_body(request, self.settings.body_timeout)
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        site = self._legacy_site(params.pop(order1.API_ID, ""))
        self._check_draining()
        try:
            order = order1_params.validate(op, params, self._zones[site])
        except Invalid as exc:
            self._received(order1.KIND, "invalid", site)
            raise exc from None
        put = Put(order1.KIND, order1.payload(order), None, site)
        [result] = await self._append([Link(order1.chain(order), put, put)])
        self._received(order1.KIND, "accepted", site)
        return json_response({"id": result.status.id, "status": result.status.public_status},
                             202)

    def _legacy_site(self, given: str) -> str:
        if all(site.client_api_id is None for site in self.sites.sites.values()):
            raise BadRequest("not_configured", "deals 1.0 are off: no clientApiId is set"
                             " (CTGW_CLIENT_API_ID)", status=503)
        site = self.sites.by_client_api_id(given)  # constant time, against every site's
        if site is None:
            raise web.HTTPUnauthorized
        return site.name

    # -- what the routes share ------------------------------------------------------------

    def _admit(self, request: web.Request) -> str:
        site = self.site_of(request)
        if self.sites.sites[site].access_token is None:
            raise BadRequest("not_configured", "the back office is off for this site: no"
                             " access token is set (CTGW_ACCESS_TOKEN)", status=503)
        self._check_draining()
        return site

    def _check_draining(self) -> None:
        if self.is_draining():
            raise BadRequest("shutting_down", "the gateway is restarting; retry", status=503)

    async def _upload(
        self, request: web.Request, kind: str, site: str,
        make: Callable[[dict[str, Any]], Awaitable[Any]],
        commit: Callable[[list[Any]], Awaitable[list[PutResult]]],
    ) -> web.Response:
        upload = await open_upload(request, min(self.settings.max_upload, MAX_JSON),
                                   self.settings.max_upload, idle=self.settings.body_timeout)
        if upload.single:
            return await self._one(upload, kind, site, make, commit)
        tally = Tally()
        async for chunk in _chunks(upload, CHUNK):
            made = []
            for item in chunk:
                thing = await self._made(item, make, tally)
                if thing is not None:
                    made.append(thing)
            for result in await commit(made) if made else []:
                tally.count(result)
        self._received(kind, "accepted", site, tally.accepted + tally.merged)
        self._received(kind, "invalid", site, tally.rejected)
        return json_response(tally.as_dict(), 202)

    async def _one(
        self, upload: Any, kind: str, site: str,
        make: Callable[[dict[str, Any]], Awaitable[Any]],
        commit: Callable[[list[Any]], Awaitable[list[PutResult]]],
    ) -> web.Response:
        async for item in upload:
            try:
                thing = await make(_judged(item))
            except Invalid:
                self._received(kind, "invalid", site)
                raise
            [result] = await commit([thing])
            self._received(kind, "accepted", site)
            return json_response(
                {"id": result.status.id, "status": result.status.public_status}, 202
            )
        raise BadRequest("empty_body", "the body holds no item", 400)

    async def _made(
        self, item: Item, make: Callable[[dict[str, Any]], Awaitable[Any]], tally: Tally
    ) -> Any:
        if item.value is None:
            tally.reject(item, [item.error] if item.error else [])
            return None
        try:
            return await make(item.value)
        except Invalid as exc:
            tally.reject(item, exc.errors)
            return None

    async def _append(self, links: list[Link]) -> list[PutResult]:
        return await self._write(self.queue.append_many(links, time.time()))

    async def _put(self, puts: list[Put]) -> list[PutResult]:
        """Free items in one transaction, so that the relay sees a bulk upload whole and sends
        it in full batches (one put each let it send the first few alone, its linger over);
        an item that waits for its lead looks at that lead in a transaction of its own."""
        now = time.time()
        free = [put for put in puts if put.after is None]
        results = await self._write(self.queue.put_many(free, now)) if free else []
        for put in puts:
            if put.after is not None:
                results.append(await self._write(self.queue.put(put, now)))
        return results

    async def _lead_job(self, site: str, ref: str) -> str:
        """The job id of the lead ``ref`` names (its id, or its requestNumber) on ``site``."""
        status = await self._read(self.queue.status(ref))
        if status is None or status.kind != leads.KIND or status.site != site:
            status = await self._read(self.queue.find(site, leads.KIND, ref))
        if status is None:
            raise Invalid([FieldError("lead", "unknown_lead",
                                      "names no lead sent through this gateway")], "invalid_item")
        return str(status.id)

    async def _write(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (QueueError, ConnectionError):
            log.exception("queue unavailable: the post was refused, not lost")
            raise BadRequest("queue_unavailable", "cannot store it now; retry", 503) from None

    async def _read(self, pending: Awaitable[T]) -> T:
        return await self._write(pending)

    def _received(self, kind: str, outcome: str, site: str, count: int = 1) -> None:
        if count:
            self.metrics.jobs_received.labels(kind, outcome, site).inc(count)


def _judged(item: Item) -> dict[str, Any]:
    """The value of a post's one item; an item the reader refused (nested too deep) is
    answered as the same item in an array is judged, not handed on as ``None``."""
    if item.value is None:
        raise Invalid([item.error] if item.error else [], "invalid_item")
    return item.value


async def _chunks(upload: Any, size: int) -> AsyncIterator[list[Item]]:
    chunk: list[Item] = []
    async for item in upload:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def deal_status(number: str, chain: list[Status]) -> dict[str, object]:
    """A deal as ``GET /api/v1/deals/{orderNumber}`` shows it: its first call not yet
    delivered (or its last), and no personal data."""
    current = next((s for s in chain if s.state != State.DELIVERED), chain[-1])
    created = chain[0]
    return {
        "orderNumber": number,
        "status": current.public_status,
        "calltouchOrderId": created.upstream_id,
        "attempts": current.attempts,
        "last_error": current.last_error,
        "pending_update": any(s.kind == deals.KIND_UPDATE and s.state in _WAITING
                              for s in chain),
    }
