"""Drive a server app in this process over in-memory transports: no sockets, no load tool.

``python -m bench.inproc {bare,gateway} N`` posts N snippet-shaped leads over 64 connections
and exits. Its only use is under ``valgrind`` (:mod:`bench.instructions`), which counts the
instructions it took: a figure the noise of a shared machine does not move. The gateway's relay
is not started (what is counted is intake), and its queue is a SQLite file in a temp dir.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import bare, payload
from gateway.__main__ import tune_gc
from gateway.app import create_app
from gateway.config import Settings
from gateway.config_values import ClientRate, HostPort
from gateway.relay import relay

CONNECTIONS = 64
_HOST = "127.0.0.1:8080"


class _Transport(asyncio.Transport):
    """Takes what the server writes; calls ``answered`` when an answer's head goes out."""

    def __init__(self, answered: Callable[[], None]) -> None:
        super().__init__()
        self._answered = answered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self._answered()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)


def _request(n: int, prefix: str) -> bytes:
    body = payload.body(n, prefix)
    headers = {"Host": _HOST, **payload.browser_headers(f"http://{_HOST}"),
               "Content-Length": str(len(body))}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /leads HTTP/1.1\r\n{head}\r\n".encode() + body


async def drive(app: web.Application, count: int, *, tune: bool) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if tune:
        tune_gc()  # the gateway's, as `ct-gateway serve` sets it once it listens
    server = runner.server
    assert server is not None
    prefix = secrets.token_hex(4)
    requests = iter([_request(n, prefix) for n in range(count)])

    async def connection() -> None:
        answered = asyncio.Event()
        protocol = server()
        protocol.connection_made(_Transport(answered.set))
        for request in requests:
            answered.clear()
            protocol.data_received(request)
            await answered.wait()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    await runner.cleanup()


def _gateway_app(workdir: Path) -> web.Application:
    relay.Relay.start = lambda self: None  # type: ignore[method-assign]
    settings = Settings(
        site_id="18990", calltouch_url="http://127.0.0.1:9", listen=HostPort("127.0.0.1", 0),
        ops_listen=HostPort("127.0.0.1", 0), queue_url=f"sqlite:///{workdir / 'queue.db'}",
        client_rate=ClientRate(1e9, 1_000_000_000),
    )
    return create_app(settings)


def main(argv: list[str]) -> None:
    target, count = argv[0], int(argv[1])
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as workdir:
        app = bare.create_app() if target == "bare" else _gateway_app(Path(workdir))
        asyncio.run(drive(app, count, tune=target == "gateway"))


if __name__ == "__main__":
    main(sys.argv[1:])
