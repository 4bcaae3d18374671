"""An open-loop HTTP/1.1 load generator on raw asyncio protocols.

Request *i* is due at ``t0 + i / rate`` whether or not earlier ones were answered, so a slow
server cannot slow the offered load down; latency counts from the moment a request was due
(no coordinated omission). Requests go out on idle keep-alive connections, a new one opened
when none is idle. Requests are pre-built bytes and answers are parsed only as far as the
status line and ``Content-Length``: the generator shares two cores with the server under
test, and an aiohttp client would spend several times more CPU per request than this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

Sample = tuple[int, float, float, float]  # status (0: failed), due, sent, answered


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.alive = True
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self._buf[:end]).split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self._buf) < end + 4 + length:
            return
        del self._buf[: end + 4 + length]
        self._finish(int(lines[0].split()[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._finish(0)

    def _finish(self, status: int) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)


class Client:
    """Keep-alive connections to one server; ``post`` sends pre-built request bytes."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self._host, self._port)
        self._all.append(conn)
        return conn

    async def post(self, request: bytes, due: float) -> Sample:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            conn = await self._connection()
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(request)
            status = await asyncio.wait_for(conn.waiter, self._timeout)
        except (OSError, TimeoutError):
            return 0, due, sent, loop.time()
        if conn.alive:
            self._idle.append(conn)
        return status, due, sent, loop.time()

    def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()


def request_bytes(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def schedule(client: Client, requests: Sequence[bytes], rate: float) -> list[Sample]:
    """Send ``requests`` at ``rate`` per second, each at its due time; gather every answer."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for i, request in enumerate(requests):
        due = start + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(client.post(request, due)))
    return list(await asyncio.gather(*tasks))
