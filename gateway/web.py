"""Middlewares of the public listener: errors as JSON at the edge, and HTTP metrics."""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import GatewayError
from .metrics import Metrics

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}


def error_body(error: str, errors: list[dict[str, str | None]]) -> bytes:
    return orjson.dumps({"error": error, "errors": errors})


def _from_http(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http_error")
    body = error_body(code, [{"field": None, "code": code, "message": exc.reason}])
    headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
    return web.Response(
        status=exc.status, body=body, headers=headers, content_type="application/json"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer has one shape: ``{"error": code, "errors": [{field, code, message}]}``."""
    try:
        response = await handler(request)
    except GatewayError as exc:
        body = error_body(exc.error, [e.as_dict() for e in exc.errors])
        response = web.Response(
            status=exc.status, body=body, headers=exc.headers, content_type="application/json"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _from_http(exc)
    except Exception:
        log.exception("unhandled error route=%s", _route(request))
        body = error_body("internal", [{"field": None, "code": "internal",
                                        "message": "internal error; the lead was not taken"}])
        response = web.Response(status=500, body=body, content_type="application/json")
    response.headers.update(_SECURITY_HEADERS)
    return response


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics = request.app[METRICS]
        route = _route(request)
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.http.labels(route, method, str(status)).inc()
        metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
