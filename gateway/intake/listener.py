"""The public listener: a TCP site that caps open connections.

A flood of idle or slow connections must not take the file descriptors and memory that real
visitors need. Past the cap a connection is answered ``503`` at once and closed: a browser's
snippet keeps the lead and sends it again, where a silently dropped socket would make it wait.
Slow clients are cut off elsewhere: headers by aiohttp's keep-alive timer (see
:func:`handler_args`), bodies by the intake's read deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.config import Settings
from gateway.errors import ClientGone, MalformedBody, SlowClient
from gateway.intake.edge import error_body
from gateway.ops.logs import ClientErrors
from gateway.ops.metrics import Metrics

_BODY = error_body("too_many_connections", [{
    "field": None, "code": "too_many_connections", "message": "the gateway is busy; retry",
}])
_TURN_AWAY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


_protocol_log = logging.getLogger("gateway.http")
_protocol_log.addFilter(ClientErrors())
# Every answer's ``Server`` header, also of those aiohttp gives a request it cannot parse before
# any of our code runs: no versions for scanners.
web_response.SERVER_SOFTWARE = "ct-gateway"  # type: ignore[attr-defined]


def handler_args(settings: Settings) -> dict[str, object]:
    """Per-connection limits for :class:`aiohttp.web.Application`'s ``handler_args``.

    aiohttp's keep-alive timer starts when a connection opens and again after each answer, and
    closes the connection if no complete request head has arrived when it fires; trickling bytes
    do not reset it. So it is also the header read timeout a slow-loris client meets.
    """
    return {
        "keepalive_timeout": settings.header_timeout,
        # Lines as nginx's default buffers take them. aiohttp's default of 128 headers stays:
        # a lower cap refuses more heads under a flood, and a refused head takes aiohttp's error
        # path, where exceptions keep it in reference cycles a while, so memory grows.
        "max_field_size": 8190,
        "max_line_size": 8190,
        "logger": _protocol_log,
        # After an early answer (413, 408) read the rest of a body only briefly, then close.
        "lingering_time": 1.0,
    }


_UNPARSABLE = error_body("unparsable_request", [{
    "field": None, "code": "unparsable_request", "message": "the request is not valid HTTP",
}]).decode()


class _QuietHandler(RequestHandler):
    """aiohttp answers a request it cannot parse with the parser's message, which quotes the
    bytes sent (a token, a phone); this one answers in the gateway's words instead."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:  # aiohttp's own 500 quotes nothing (no debug here)
            return super().handle_error(request, status, exc, message)
        response = super().handle_error(request, status, exc, _UNPARSABLE)
        response.content_type = "application/json"
        return response


class _TurnAway(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_TURN_AWAY)
        transport.close()


class CappedSite(web.BaseSite):
    """Like :class:`aiohttp.web.TCPSite`, turning away connections past ``max_connections``."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *,
        max_connections: int, on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(runner, backlog=512)
        self._host, self._port = host, port
        self._max = max_connections
        self._on_refused = on_refused
        self._handlers = runner.server

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def open_connections(self) -> int:
        return 0 if self._handlers is None else len(self._handlers.connections)

    def _protocol(self) -> asyncio.Protocol:
        assert self._handlers is not None
        if self.open_connections() >= self._max:
            self._on_refused()
            return _TurnAway()
        # As web.Server() makes its handlers, of the class that keeps the bytes to itself; the
        # server's handler arguments have no public accessor.
        return _QuietHandler(self._handlers, loop=asyncio.get_running_loop(),
                             **self._handlers._kwargs)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog
        )


def bound_address(runner: web.BaseRunner) -> str:
    """``http://host:port`` of a runner's first site (its real port when it asked for 0)."""
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def listen(runner: web.AppRunner, settings: Settings, metrics: Metrics) -> CappedSite:
    """Open the public listener of a set-up runner of :func:`gateway.app.create_app`."""
    site = CappedSite(
        runner, settings.listen.host, settings.listen.port,
        max_connections=settings.max_connections, on_refused=metrics.connections_refused.inc,
    )
    metrics.connections.set_function(site.open_connections)
    await site.start()
    return site


async def read_body(request: web.Request, deadline: float) -> bytes:
    """The request body, or 408 when the client takes over ``deadline`` seconds to send it."""
    try:
        if request.content.is_eof():
            return await request.read()  # already all here, as a form's small body mostly is
        async with asyncio.timeout(deadline):
            return await request.read()
    except TimeoutError:
        raise SlowClient from None
    except (HttpProcessingError, web.RequestPayloadError):  # e.g. gzip that is not
        raise MalformedBody from None
    except ConnectionError:
        raise ClientGone from None


def expect_handler(max_body: int) -> Callable[[web.Request], Awaitable[None]]:
    """``Expect`` handling for every route, in place of aiohttp's default.

    The default answers any value but ``100-continue`` with a plain-text 417 that echoes the
    header and never reaches the edge's JSON errors. RFC 9110 lets a server ignore an
    expectation it does not know, so we do; and a body over the limit is not invited, the
    handler answers 413 unread.
    """

    async def handle(request: web.Request) -> None:
        expect = request.headers.get("Expect", "")
        if request.version != (1, 1) or expect.lower() != "100-continue":
            return
        if (request.content_length or 0) > max_body:
            return
        with contextlib.suppress(ConnectionError):  # the client left; the read will notice
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the body's size

    return handle
