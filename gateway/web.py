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
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_CONTENT_TYPE_OPTIONS = "X-Content-Type-Options"


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
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors become JSON here, and every answer is counted: one layer, on the hot path.

    Every error answer has one shape: ``{"error": code, "errors": [{field, code, message}]}``.
    """
    started = time.perf_counter()
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = _from_gateway(exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect passes through as it is
            _count(request, exc.status, started)
            raise
        response = _from_http(exc)
    except Exception:
        log.exception("unhandled error route=%s", _route(request))
        response = _internal_error()
    except BaseException:
        _count(request, 500, started)  # cancelled: the client went away
        raise
    response.headers[_CONTENT_TYPE_OPTIONS] = "nosniff"
    _count(request, response.status, started)
    return response


def _from_gateway(exc: GatewayError) -> web.Response:
    body = error_body(exc.error, [e.as_dict() for e in exc.errors])
    response = web.Response(
        status=exc.status, body=body, headers=exc.headers, content_type="application/json"
    )
    if exc.close_connection:
        response.force_close()
    return response


def _internal_error() -> web.Response:
    body = error_body("internal", [{"field": None, "code": "internal",
                                    "message": "internal error; the lead was not taken"}])
    return web.Response(status=500, body=body, content_type="application/json")


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _count(request: web.Request, status: int, started: float) -> None:
    method = request.method if request.method in _METHODS else "OTHER"
    request.app[METRICS].http.observe(
        _route(request), method, status, time.perf_counter() - started
    )
