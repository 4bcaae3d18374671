"""The edge of the public listener: errors as JSON, and every answer counted."""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError
from gateway.ops.metrics import RequestStats

log = logging.getLogger(__name__)

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


def edge(route: str, handler: Handler, stats: RequestStats) -> Handler:
    """``handler`` with errors as JSON and every answer counted under ``route``.

    Not an aiohttp middleware: one of those costs every request a chain of wrappers and a
    look-up of its route, about 10 % of a lead's CPU at full load. Each route is wrapped once.
    Every error answer has one shape: ``{"error": code, "errors": [{field, code, message}]}``.
    """

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        method = request.method if request.method in _METHODS else "OTHER"
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect passes through as it is
                stats.observe(route, method, exc.status, time.perf_counter() - started)
                raise
            response = _from_http(exc)
        except Exception:
            log.exception("unhandled error route=%s", route)
            response = _internal_error()
        except BaseException:  # cancelled: the client went away
            stats.observe(route, method, 500, time.perf_counter() - started)
            raise
        response.headers[_CONTENT_TYPE_OPTIONS] = "nosniff"
        stats.observe(route, method, response.status, time.perf_counter() - started)
        return response

    return answer


async def unmatched(request: web.Request) -> web.Response:
    """The catch-all route's handler: 405 when another method has this path, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound


def error_response(exc: GatewayError) -> web.Response:
    """The JSON answer to a domain error, in the one shape of every error."""
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
