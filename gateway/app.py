"""The only wiring: routes (each wrapped by the edge), and one cleanup context per resource.

Resources open in dependency order — queue, upstream session, intake and relay, ops listener —
and close in reverse, so on shutdown the relay finishes its in-flight sends while ``/readyz``
still answers 503, and the queue closes last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence

import aiohttp
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from . import listener, snippet
from .calltouch import CalltouchClient, trace_config
from .config import Settings
from .intake import Intake, json_response
from .metrics import Metrics
from .pacing import Pacer
from .queue import PENDING, Queue, State, open_queue
from .relay import LeadSender, Relay
from .retention import Retention
from .web import METRICS, edge, unmatched

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", Queue)
SESSION = web.AppKey("session", aiohttp.ClientSession)
INTAKE = web.AppKey("intake", Intake)
RELAY = web.AppKey("relay", Relay)
OPS_RUNNER = web.AppKey("ops_runner", web.AppRunner)
TRACES = web.AppKey("traces", tuple[aiohttp.TraceConfig, ...])


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    upstream_traces: Sequence[aiohttp.TraceConfig] = (),
) -> web.Application:
    """The public app; ``upstream_traces`` are extra aiohttp traces on the Calltouch session."""
    app = web.Application(
        client_max_size=settings.max_body,
        handler_args=listener.handler_args(settings),
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics = metrics or Metrics()
    app[TRACES] = tuple(upstream_traces)
    app.cleanup_ctx.extend(
        [_queue_ctx, _retention_ctx, _session_ctx, _intake_ctx, _ops_ctx, _relay_ctx]
    )
    app.on_shutdown.append(_start_draining)
    served = snippet.Snippet.load(settings.mod_id, cross_origin=bool(settings.allowed_origins))
    routes = [
        ("POST", "/leads", _browser),
        ("OPTIONS", "/leads", _preflight),
        ("POST", "/api/v1/leads", _api),
        ("GET", "/api/v1/leads/{id}", _status),
        ("GET", "/snippet.js", served.serve),
    ]
    if settings.sandbox:
        routes += [("GET", "/", snippet.demo), ("GET", "/sandbox/leads", _sandbox_leads)]
    expect = listener.expect_handler(settings.max_body)
    for method, path, handler in routes:
        for verb in ("HEAD", "GET") if method == "GET" else (method,):  # as add_get does
            app.router.add_route(
                verb, path, edge(path, handler, metrics.http), expect_handler=expect
            )
    # Last, so every route above is tried first: what none of them takes gets a JSON answer.
    app.router.add_route("*", "/{path:.*}", edge("unmatched", unmatched, metrics.http),
                         expect_handler=expect)
    return app


def _browser(request: web.Request) -> Awaitable[web.Response]:
    return request.app[INTAKE].browser(request)  # not awaited here: one coroutine layer fewer


async def _preflight(request: web.Request) -> web.Response:
    return await request.app[INTAKE].preflight(request)


def _api(request: web.Request) -> Awaitable[web.Response]:
    return request.app[INTAKE].api(request)


async def _status(request: web.Request) -> web.Response:
    return await request.app[INTAKE].status(request)


async def _sandbox_leads(request: web.Request) -> web.Response:
    return await snippet.sandbox_leads(request.app[SESSION], request.app[SETTINGS].calltouch_url)


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    app[QUEUE] = queue = await open_queue(app[SETTINGS].queue_url)
    yield
    await queue.close()


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    retention = Retention(app[QUEUE], app[METRICS], settings.retention, settings.dead_retention)
    retention.start()
    yield
    await retention.stop()


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=app[SETTINGS].concurrency * 2)
    async with aiohttp.ClientSession(
        connector=connector, trace_configs=[trace_config(), *app[TRACES]],
        raise_for_status=False,
    ) as session:
        app[SESSION] = session
        yield


async def _intake_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[SETTINGS], app[METRICS]
    pacer = Pacer(settings.rate)
    client = CalltouchClient(
        app[SESSION], settings.calltouch_url, settings.site_id, settings.upstream_timeout
    )
    relay = Relay(
        app[QUEUE], pacer, [LeadSender(client)], metrics,
        concurrency=settings.concurrency, max_age=settings.max_age,
        lease_timeout=settings.lease_timeout,
    )
    metrics.rate_limit.set_function(lambda: pacer.current)
    metrics.rate_limit_max.set(settings.rate)
    app[RELAY] = relay
    app[INTAKE] = Intake(settings, app[QUEUE], metrics, relay.wake)
    yield


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    app[RELAY].start()
    app[METRICS].ready.set(1)
    yield
    unsent = await app[RELAY].stop(app[SETTINGS].shutdown_grace)
    log.info("relay stopped unsent_in_flight=%d", unsent)


async def _start_draining(app: web.Application) -> None:
    app[INTAKE].draining = True
    app[METRICS].ready.set(0)


async def _ops_ctx(app: web.Application) -> AsyncIterator[None]:
    runner = web.AppRunner(create_ops_app(app), access_log=None)
    await runner.setup()
    listen = app[SETTINGS].ops_listen
    await web.TCPSite(runner, listen.host, listen.port).start()
    app[OPS_RUNNER] = runner
    yield
    await runner.cleanup()


def create_ops_app(main: web.Application) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz``, on their own listener."""
    metrics = main[METRICS]
    export = make_aiohttp_handler(metrics.registry)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        stats = await main[QUEUE].stats()
        metrics.queue.jobs = {s.value: stats.counts[s] for s in (*PENDING, State.DEAD)}
        oldest = stats.oldest_pending_at
        metrics.queue.oldest_age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return await export(request)

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if main[INTAKE].draining:
            return json_response({"status": "draining"}, 503)
        try:
            await main[QUEUE].status("readyz-probe")
        except Exception as exc:
            log.warning("readiness: queue unavailable: %s", type(exc).__name__)
            return json_response({"status": "queue_unavailable"}, 503)
        return json_response({"status": "ready"})

    ops = web.Application()
    ops.router.add_get("/metrics", metrics_handler)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    return ops


def bound_address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"
