"""The ops listener's app: ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.ops.metrics import Metrics
from gateway.queue import PENDING, Queue, State

log = logging.getLogger(__name__)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def create_ops_app(
    queue: Queue, metrics: Metrics, not_ready: Callable[[], str | None]
) -> web.Application:
    """``not_ready()`` says why the gateway takes no leads now (``starting`` until its public
    listener is open, ``draining`` once it stops), or ``None``."""
    export = make_aiohttp_handler(metrics.registry)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        stats = await queue.stats()
        metrics.queue.jobs = {
            s.value: stats.counts[s] for s in (*PENDING, State.HELD, State.DEAD, State.SPAM)
        }
        oldest = stats.oldest_pending_at
        metrics.queue.oldest_age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return await export(request)

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if (why := not_ready()) is not None:
            return _json({"status": why}, 503)
        try:
            await queue.ping()
        except Exception as exc:
            log.warning("readiness: queue unavailable: %s", type(exc).__name__)
            return _json({"status": "queue_unavailable"}, 503)
        return _json({"status": "ready"})

    ops = web.Application()
    ops.router.add_get("/metrics", metrics_handler)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    return ops
