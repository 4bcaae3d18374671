"""HTTP handlers for leads: read → decode → validate → commit → answer.

Handlers stay thin: decoding lives in :mod:`.bodies`, the rules in :mod:`.leads`, durability
in the queue. Domain errors travel up as exceptions and become JSON at the edge
(:func:`gateway.web.edge`).
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections import deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from prometheus_client import Counter

from gateway.config import Settings
from gateway.errors import BadRequest, GatewayError, InvalidLead, Throttled
from gateway.ids import new_id
from gateway.intake import bodies
from gateway.intake.bots import BOT_SIGNALS, BotScorer, origin_names_site
from gateway.intake.clients import ClientLimiter, client_ip
from gateway.intake.edge import error_response
from gateway.intake.listener import read_body
from gateway.intake.quarantine import Quarantine
from gateway.kinds import lead as leads
from gateway.ops.metrics import NO_SITE, Metrics
from gateway.queue import Put, Quarantined, Queue, QueueError
from gateway.sites import Site, Sites

log = logging.getLogger(__name__)

DEMO_SPAM = 20
Answer = tuple[web.Response, str]  # the response and its outcome label for the metrics


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@dataclass(slots=True)
class Intake:
    settings: Settings
    queue: Queue
    metrics: Metrics
    quarantine: Quarantine
    sites: Sites
    draining: bool = False
    listening: bool = False  # set once the public listener is open: /readyz waits for it
    _zones: dict[str, zoneinfo.ZoneInfo] = field(init=False, repr=False)
    limiter: ClientLimiter = field(init=False, repr=False)
    _bots: BotScorer = field(init=False, repr=False)
    _signals: dict[str, Counter] = field(init=False, repr=False)
    # Sandbox mode only: the last spam verdicts, for the demo page (no personal data).
    spam_seen: deque[dict[str, object]] = field(
        default_factory=lambda: deque(maxlen=DEMO_SPAM), init=False, repr=False
    )

    def __post_init__(self) -> None:
        self._zones = {name: zoneinfo.ZoneInfo(site.timezone)
                       for name, site in self.sites.sites.items()}
        self.limiter = ClientLimiter(self.settings.client_rate)
        self._bots = BotScorer.from_settings(self.settings)
        self._signals = {s: self.metrics.bot_signals.labels(s) for s in BOT_SIGNALS}
        for site in self.sites.sites:  # every series from the start, for increase()
            for signal in BOT_SIGNALS:
                self.metrics.quarantined.labels(signal, site)

    def not_ready(self) -> str | None:
        """Why no lead is taken now, for ``/readyz``; ``None`` when they are."""
        if self.draining:
            return "draining"
        return None if self.listening else "starting"

    async def browser(self, request: web.Request) -> web.Response:
        return await self._counted(request, "browser")

    async def api(self, request: web.Request) -> web.Response:
        return await self._counted(request, "api")

    async def status(self, request: web.Request) -> web.Response:
        allowed = self.authorise(request)
        try:
            status = await self.queue.status(request.match_info["id"])
        except (QueueError, ConnectionError):
            log.exception("queue unavailable: a lead's status was not read")
            raise BadRequest("queue_unavailable", "cannot read it now; retry", 503) from None
        if status is None or status.kind != leads.KIND or status.site not in allowed:
            raise BadRequest("not_found", "no lead with this id", status=404)
        shown = status.as_dict()
        shown["attribution"] = (status.details or {}).get("attribution")
        return json_response(shown)

    async def _counted(self, request: web.Request, channel: leads.Channel) -> web.Response:
        named = NO_SITE  # until the post is routed to a configured site
        try:
            site = self._site(request, channel)
            named = site.name
            response, outcome = await self._accept(request, channel, site)
        except GatewayError as exc:
            self.metrics.count_received(channel, exc.outcome, named)
            if isinstance(exc, InvalidLead):
                for error in exc.errors:
                    self.metrics.validation_errors.labels(error.code).inc()
            if channel != "browser" or named == NO_SITE:
                raise
            # An allowed page must be able to read why (a 422, a 429): its browser hides an
            # answer without the CORS header, and the snippet would keep the lead to resend.
            response = error_response(exc)
        except web.HTTPException:
            self.metrics.count_received(channel, "rejected", named)
            raise
        else:
            self.metrics.count_received(channel, outcome, named)
        if channel == "browser":
            self._allow_origin(request.headers.get("Origin"), site, response)
        return response

    def site_at(self, request: web.Request) -> Site:
        """The site a browser's request is for, by its ``Host``."""
        site = self.sites.for_host(request.host)
        if site is None:
            raise BadRequest("unknown_site", "no site is served at this host", status=404)
        return site

    def _admit(self, request: web.Request, site: Site) -> bool:
        """A browser's lead may come in: its origin, its rate. Does the Origin name the site?"""
        origin = request.headers.get("Origin")
        named = origin_names_site(origin, request.host, site.allowed_origins)
        # A same-origin POST from a page with "Referrer-Policy: no-referrer" carries
        # "Origin: null"; it says nothing of a foreign site, so it is scored, not refused.
        if not named and origin not in (None, "null"):
            raise BadRequest("forbidden_origin", "this origin may not post leads", status=403)
        # A proxy may add its own header line rather than extend the client's: read them all.
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
        peer = client_ip(request.remote, forwarded, self.settings.trusted_proxies)
        if wait := self.limiter.take(peer):
            raise Throttled(wait)
        return named

    def _allow_origin(self, origin: str | None, site: Site, response: web.Response) -> None:
        if origin is not None and origin in site.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    def authorise(self, request: web.Request) -> frozenset[str]:
        """The sites the request's bearer token may post for; 401 without a known token."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # aiohttp decodes header bytes with surrogateescape; for_token encodes them back.
        # It compares against every token, always: the time taken tells nothing of which.
        allowed = self.sites.for_token(token.strip())
        if scheme.lower() != "bearer" or not allowed:
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="ct-gateway"'})
        return allowed

    def api_site(self, request: web.Request) -> str:
        """The site a server-side post is for: its token's one site, or ``?site=NAME``."""
        allowed = self.authorise(request)
        named = request.query.get("site")
        if named is None:
            if len(allowed) > 1:
                raise BadRequest("site_required", "this token serves several sites: add"
                                 " ?site=NAME", status=400)
            return next(iter(allowed))
        if named not in self.sites.sites:
            raise BadRequest("unknown_site", "no such site", status=404)
        if named not in allowed:
            raise BadRequest("forbidden_site", "this token may not post for this site", 403)
        return named

    def _site(self, request: web.Request, channel: leads.Channel) -> Site:
        if channel == "browser":
            return self.site_at(request)
        return self.sites.sites[self.api_site(request)]

    async def _accept(self, request: web.Request, channel: leads.Channel, site: Site) -> Answer:
        origin_named = self._admit(request, site) if channel == "browser" else False
        zone = self._zones[site.name]
        if self.draining:
            raise BadRequest("shutting_down", "the gateway is restarting; retry", status=503)
        if (request.content_length or 0) > self.settings.max_body:
            raise BadRequest("body_too_large", "the body is too large", status=413)
        body = await read_body(request, self.settings.body_timeout)
        data = bodies.decode(bodies.media_type(request.headers.get("Content-Type", "")), body)
        lead = leads.validate(data, channel, zone)
        put = leads.to_put(lead, zone, site.name)
        verdict = self._bot_verdict(request, lead, channel, site, origin_named)
        if verdict is not None:
            # A bot gets the answer a person gets, so it learns nothing; it is quarantined.
            return self._answer(self._quarantine(put, *verdict), "queued", 202, "spam")
        try:
            result = await self.queue.put(put, time.time())
        except (QueueError, ConnectionError):
            log.exception("queue unavailable: the lead was refused, not lost")
            raise BadRequest("queue_unavailable", "cannot store the lead now; retry", 503) from None
        if not result.created:
            return self._answer(result.status.id, result.status.public_status, 200, "duplicate")
        return self._answer(result.status.id, "queued", 202, "accepted")

    def _bot_verdict(
        self, request: web.Request, lead: leads.Lead, channel: leads.Channel, site: Site,
        origin_named: bool,
    ) -> tuple[tuple[str, ...], int | None] | None:
        """The signals and score of a bot's lead; ``None`` for a person's."""
        if lead.honeypot:
            self._signals["honeypot"].inc()
            return ("honeypot",), None
        if channel == "api":
            return None  # a token holder's server: the browser's signals do not apply
        headers = request.headers
        score = self._bots.score(lead.elapsed, headers.get("Origin"), headers.get("Referer"),
                                 headers.get("User-Agent"), request.host,
                                 allowed_origins=site.allowed_origins, origin_named=origin_named)
        # Counted below the threshold too: how often each fires on real leads guides the weights.
        for signal in score.signals:
            self._signals[signal].inc()
        return (score.signals, score.points) if score.bot else None

    def _quarantine(self, put: Put, signals: tuple[str, ...], points: int | None) -> str:
        """Keep a bot's lead apart (``ct-gateway spam list``); its id. Signal names and points
        only, never a header's or a field's value. In sandbox mode a tester sees the verdict at
        INFO and on the demo page, since it is easily a headless browser's."""
        job_id = new_id()
        reason = f"score={'-' if points is None else points} signals={','.join(signals)}"
        self.quarantine.add(Quarantined(job_id, put, reason, time.time()))
        for signal in signals:
            self.metrics.quarantined.labels(signal, put.site).inc()
        level = logging.INFO if self.settings.sandbox else logging.DEBUG
        log.log(level, "bot lead quarantined job=%s %s", job_id, reason)
        if self.settings.sandbox:
            self.spam_seen.appendleft(
                {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "signals": list(signals),
                 "score": points}
            )
        return job_id

    @staticmethod
    def _answer(job_id: str, status: str, code: int, outcome: str) -> Answer:
        return json_response({"id": job_id, "status": status}, code), outcome

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if origin not in self.site_at(request).allowed_origins:
            raise BadRequest("forbidden_origin", "this origin may not post leads", status=403)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })
