"""The only wiring: routes (each wrapped by the edge), one cleanup context per resource, and
the listeners.

Resources open in dependency order — queue, retention, upstream session, intake, ops listener,
relay — and close in reverse, so on shutdown the relay finishes its in-flight sends while
``/readyz`` still answers 503, and the queue closes last. :func:`start`
opens the public listener on top, as :func:`_ops_ctx` opens the ops one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.calltouch.client import CalltouchClient, upstream_session
from gateway.config import Settings
from gateway.intake import listener, snippet
from gateway.intake.backoffice import BackOffice
from gateway.intake.edge import edge, unmatched
from gateway.intake.handlers import Intake
from gateway.intake.listener import bound_address
from gateway.intake.quarantine import Quarantine
from gateway.kinds.comment import CommentKind
from gateway.kinds.deal import DealCreateKind, DealUpdateKind
from gateway.kinds.lead import LeadKind
from gateway.kinds.order1 import Order1Kind
from gateway.ops.endpoints import create_ops_app
from gateway.ops.metrics import Metrics, RequestStats
from gateway.ops.retention import Retention
from gateway.queue import Queue, open_queue
from gateway.relay.pacing import Pacer
from gateway.relay.relay import Relay, Sender
from gateway.sites import Sites, single_site
from gateway.upstream_gates import PointsSync, fleet_health_gate, health_gate, site_points

if TYPE_CHECKING:
    from gateway.relay.fleet_pace import FleetPace

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
TRACES = web.AppKey("traces", tuple[aiohttp.TraceConfig, ...])
QUEUE = web.AppKey("queue", Queue)
SESSION = web.AppKey("session", aiohttp.ClientSession)
RELAY = web.AppKey("relay", Relay)
INTAKE = web.AppKey("intake", Intake)
BACK_OFFICE = web.AppKey("back_office", BackOffice)
SITES = web.AppKey("sites", Sites)
OPS_RUNNER = web.AppKey("ops_runner", web.AppRunner)


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    upstream_traces: Sequence[aiohttp.TraceConfig] = (),
    sites: Sites | None = None,
) -> web.Application:
    """The public app; ``upstream_traces`` are extra aiohttp traces on the Calltouch session;
    ``sites`` those of ``CTGW_SITES`` (by default the one the variables describe)."""
    app = web.Application(
        client_max_size=settings.max_body, handler_args=listener.handler_args(settings)
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics = metrics or Metrics()
    app[TRACES] = tuple(upstream_traces)
    app[SITES] = sites = sites or single_site(settings)
    metrics.add_sites(sorted(sites.sites))
    app.cleanup_ctx.extend(
        [_queue_ctx, _retention_ctx, _session_ctx, _intake_ctx, _ops_ctx, _relay_ctx]
    )
    app.on_shutdown.append(_start_draining)
    _add_routes(app.router, settings, sites, metrics.http)
    return app


def _add_routes(
    router: web.UrlDispatcher, settings: Settings, sites: Sites, stats: RequestStats
) -> None:
    expect = listener.expect_handler(settings.max_body)
    # A bulk upload is invited up to its own limit (curl asks before a body of 1 MiB or more).
    expect_upload = listener.expect_handler(settings.max_upload)
    for method, path, handler in _routes(settings, sites):
        invite = expect_upload if path in UPLOADS else expect
        for verb in ("HEAD", "GET") if method == "GET" else (method,):  # as add_get does
            router.add_route(verb, path, edge(path, handler, stats), expect_handler=invite)
    # Last, so every route above is tried first: what none of them takes gets a JSON answer.
    router.add_route("*", "/{path:.*}", edge("unmatched", unmatched, stats),
                     expect_handler=expect)


def _routes(settings: Settings, sites: Sites) -> list[tuple[str, str, Handler]]:
    served = snippet.BySite.load(sites)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/leads", _browser),
        ("OPTIONS", "/leads", _preflight),
        ("POST", "/api/v1/leads", _api),
        ("GET", "/api/v1/leads/{id}", _status),
        ("GET", "/snippet.js", served.serve),
        ("POST", "/api/v1/deals", _post_deals),
        # The rest of the path: a CRM's number may hold "/" or "{" (1.0's own example does).
        ("GET", "/api/v1/deals/{order_number:.+}", _get_deal),
        ("POST", "/api/v1/comments", _post_comments),
        ("GET", "/api/v1/comments/{id}", _get_comment),
        *((method, LEGACY + path, _legacy) for method, path in LEGACY_ROUTES),
    ]
    if settings.sandbox:
        routes += [("GET", "/", snippet.demo), ("GET", "/sandbox/leads", _sandbox_leads),
                   ("GET", "/sandbox/spam", _sandbox_spam)]
    return routes


async def _browser(request: web.Request) -> web.Response:
    return await request.app[INTAKE].browser(request)


async def _preflight(request: web.Request) -> web.Response:
    return await request.app[INTAKE].preflight(request)


async def _api(request: web.Request) -> web.Response:
    return await request.app[INTAKE].api(request)


async def _status(request: web.Request) -> web.Response:
    return await request.app[INTAKE].status(request)


UPLOADS = frozenset({"/api/v1/deals", "/api/v1/comments"})
# Calltouch's own paths of deals 1.0: an integration changes only its base URL.
LEGACY = "/calls-service/RestAPI/orders/"
# Each with and without the trailing "/": the 1.0 doc writes update-by-id both ways.
LEGACY_ROUTES = tuple((method, name + end) for method, name in (
    ("GET", "register"), ("POST", "register"), ("GET", "update-by-id"), ("GET", "delete-by-id"),
) for end in ("/", ""))


async def _post_deals(request: web.Request) -> web.Response:
    return await request.app[BACK_OFFICE].post_deals(request)


async def _get_deal(request: web.Request) -> web.Response:
    return await request.app[BACK_OFFICE].get_deal(request)


async def _post_comments(request: web.Request) -> web.Response:
    return await request.app[BACK_OFFICE].post_comments(request)


async def _get_comment(request: web.Request) -> web.Response:
    return await request.app[BACK_OFFICE].get_comment(request)


async def _legacy(request: web.Request) -> web.Response:
    return await request.app[BACK_OFFICE].legacy(request)


async def _sandbox_leads(request: web.Request) -> web.Response:
    return await snippet.sandbox_leads(request.app[SESSION], request.app[SETTINGS].calltouch_url)


async def _sandbox_spam(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(list(request.app[INTAKE].spam_seen)), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    app[QUEUE] = queue = await open_queue(app[SETTINGS].queue_url)
    yield
    await queue.close()


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    retention = Retention(
        app[QUEUE], app[METRICS], settings.retention, settings.dead_retention,
        spam_retention=settings.spam_retention,
    )
    retention.start()
    yield
    await retention.stop()


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=app[SETTINGS].concurrency * 2)
    traces = app[TRACES]
    async with upstream_session(connector, traces) as session:
        app[SESSION] = session
        yield


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[SETTINGS], app[METRICS]
    fleet = await _open_fleet_pace(settings)
    pacer = fleet if fleet is not None else Pacer(settings.rate, started_full=True)
    metrics.rate_limit.set_function(lambda: pacer.current)
    metrics.rate_limit_max.set(settings.rate)
    client = CalltouchClient(app[SESSION], settings.calltouch_url, settings.upstream_timeout)
    senders = _senders(app[SITES], settings.batch_linger)
    shared = None if fleet is None else await fleet_health_gate(app[QUEUE], metrics, settings)
    health = shared or health_gate(app[QUEUE], metrics, settings)
    points = site_points(app[QUEUE], metrics, settings, app[SITES])
    app[RELAY] = relay = Relay(
        app[QUEUE], client, senders, [health, pacer], metrics,
        concurrency=settings.concurrency, max_age=settings.max_age,
        lease_timeout=settings.lease_timeout, sites=sorted(app[SITES].sites), points=points,
    )
    points_sync = PointsSync(points, app[QUEUE])
    await points_sync.start()
    relay.start()
    yield
    unsent = await relay.stop(settings.shutdown_grace)
    log.info("relay stopped unsent_in_flight=%d", unsent)
    await points_sync.stop()  # after the relay: its last calls' points are in the store
    if fleet is not None:  # after the relay, so that its last calls' stamps are recorded
        await fleet.close()
    if shared is not None:  # and their answers, and a probe slot it holds freed
        await shared.close()


def _senders(sites: Sites, linger: float) -> list[Sender]:
    """Every kind the sites can send: the back office's only for sites with its credential."""
    every = sites.sites.values()
    site_ids = {site.name: site.site_id for site in every}
    tokens = {site.name: site.access_token for site in every if site.access_token is not None}
    api_ids = {site.name: site.client_api_id for site in every if site.client_api_id is not None}
    senders: list[Sender] = [LeadKind(site_ids)]
    if tokens:
        senders += [DealCreateKind(site_ids, tokens, linger),
                    DealUpdateKind(site_ids, tokens, linger),
                    CommentKind(site_ids, tokens, linger)]
    if api_ids:
        senders.append(Order1Kind(api_ids))
    return senders


async def _open_fleet_pace(settings: Settings) -> FleetPace | None:
    """Gateways on one PostgreSQL queue are a fleet: those of one egress share one pace, kept
    in that database. A gateway on SQLite is alone and paces in process."""
    if not settings.queue_url.startswith(("postgresql://", "postgres://")):
        return None
    from gateway.relay import fleet_pace  # asyncpg is loaded only by those who use it

    bound = settings.upstream_timeout + fleet_pace.BOUND_SLACK
    return await fleet_pace.FleetPace.open(
        settings.queue_url, settings.egress, settings.rate, bound=bound
    )


async def _intake_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    quarantine = Quarantine(app[QUEUE], settings.spam_max)
    sites = app[SITES]
    app[INTAKE] = intake = Intake(settings, app[QUEUE], app[METRICS], quarantine, sites)
    app[BACK_OFFICE] = BackOffice(settings, app[QUEUE], app[METRICS], sites, intake.api_site,
                                  lambda: intake.draining)
    quarantine.start()
    yield
    await quarantine.stop()


async def _start_draining(app: web.Application) -> None:
    app[INTAKE].draining = True
    app[METRICS].ready.set(0)


async def _ops_ctx(app: web.Application) -> AsyncIterator[None]:
    ops = create_ops_app(app[QUEUE], app[METRICS], app[INTAKE].not_ready)
    runner = web.AppRunner(ops, access_log=None)
    await runner.setup()
    listen = app[SETTINGS].ops_listen
    await web.TCPSite(runner, listen.host, listen.port).start()
    app[OPS_RUNNER] = runner
    yield
    await runner.cleanup()


@dataclass(frozen=True, slots=True)
class Running:
    """A started gateway: its runner, the listeners' URLs and its metrics."""

    runner: web.AppRunner
    url: str
    ops_url: str
    metrics: Metrics


async def start(
    settings: Settings,
    metrics: Metrics | None = None,
    upstream_traces: Sequence[aiohttp.TraceConfig] = (),
    sites: Sites | None = None,
) -> Running:
    """Open every resource and both listeners; ``await running.runner.cleanup()`` stops it."""
    app = create_app(settings, metrics, upstream_traces, sites)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await listener.listen(runner, settings, app[METRICS])
    except BaseException:
        await runner.cleanup()
        raise
    # Only now: a client that trusts /readyz finds the public listener open.
    app[INTAKE].listening = True
    app[METRICS].ready.set(1)
    return Running(runner, bound_address(runner), bound_address(app[OPS_RUNNER]), app[METRICS])
