"""Slow and greedy clients against the real public listener, over raw sockets.

A raw socket lets a test do what a browser never would: trickle a request head or a body byte
by byte, or hold connections open without asking for anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.config import Settings
from tests.support import Gateway, eventually, lead

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(gateway: Gateway) -> Conn:
    url = urlsplit(gateway.url)
    assert url.hostname is not None and url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return int(head[0].split()[1]), headers, body


async def _get(conn: Conn, path: str = "/api/v1/leads/none") -> int:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    status, _, _ = await _answer(reader)
    return status


@contextlib.asynccontextmanager
async def _trickling(writer: asyncio.StreamWriter, byte: bytes) -> AsyncIterator[None]:
    """Send one byte every 50 ms for as long as the block runs (far longer than any timeout)."""

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                writer.write(byte)
                await writer.drain()
                await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()
        writer.close()


async def _rest(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes. Closing with our trickle unread makes the
    kernel answer with a reset rather than a FIN; either way the connection is closed."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def _time(fn: Callable[[], object]) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await fn()  # type: ignore[misc]
    return loop.time() - started


@pytest.fixture
def strict(settings: Settings) -> Settings:
    return replace(settings, header_timeout=1.0, body_timeout=1.0, max_connections=4)


async def test_a_slow_request_head_is_cut_off_while_others_are_served(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    reader, writer = await _connect(gateway)
    writer.write(b"POST /leads HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
    async with _trickling(writer, b"a"):
        other = await _connect(gateway)
        assert await _get(other) == 401  # a normal client on its own connection is answered
        other[1].close()
        # The server closes without a word: read() returns at EOF, long before the trickle ends.
        waited = await _time(lambda: asyncio.wait_for(_rest(reader), timeout=10))
    assert 0.8 < waited < 5, waited


async def test_a_slow_body_gets_408_and_the_connection_closes(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    reader, writer = await _connect(gateway)
    body = orjson.dumps(lead(1))
    writer.write(
        b"POST /leads HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
    )
    async with _trickling(writer, b" "):
        status, headers, answer = await asyncio.wait_for(_answer(reader), timeout=10)
        assert status == 408
        assert headers["Connection"] == "close"
        assert orjson.loads(answer)["error"] == "body_timeout"
        assert await asyncio.wait_for(_rest(reader), timeout=5) == b""
    sample = gateway.metrics.registry.get_sample_value
    assert sample("ctgw_leads_received_total", {"channel": "browser", "outcome": "rejected",
                                         "site": "default"}) == 1


async def test_connections_past_the_cap_are_turned_away_then_served_again(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    held = [await _connect(gateway) for _ in range(4)]
    for conn in held:
        assert await _get(conn) == 401  # answered, so the server holds each connection now
    reader, writer = await _connect(gateway)
    status, headers, answer = await asyncio.wait_for(_answer(reader), timeout=5)
    assert (status, headers["Retry-After"]) == (503, "1")
    assert orjson.loads(answer)["error"] == "too_many_connections"
    assert await reader.read() == b""
    writer.close()
    sample = gateway.metrics.registry.get_sample_value
    assert sample("ctgw_http_connections_refused_total") == 1
    assert sample("ctgw_http_connections") == 4

    held.pop()[1].close()

    async def served() -> bool:
        conn = await _connect(gateway)
        try:
            return await _get(conn) == 401
        except asyncio.IncompleteReadError:
            return False
        finally:
            conn[1].close()

    await eventually(served, timeout=5, interval=0.05)
    for _, held_writer in held:
        held_writer.close()


async def test_idle_connections_are_closed_after_the_header_timeout(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    conn = await _connect(gateway)
    assert await _get(conn) == 401
    waited = await _time(lambda: asyncio.wait_for(conn[0].read(), timeout=10))
    conn[1].close()
    assert 0.8 < waited < 5, waited


@pytest.mark.parametrize("expect", ["!", "x" * 200, "100-continue, foo", "102-processing"])
async def test_an_unknown_expectation_is_ignored(
    start_gateway: Callable[..., object], strict: Settings, expect: str
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    reader, writer = await _connect(gateway)
    body = orjson.dumps(lead(2))
    writer.write(
        f"POST /leads HTTP/1.1\r\nHost: gw\r\nExpect: {expect}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    status, _, answer = await asyncio.wait_for(_answer(reader), timeout=5)
    writer.close()
    assert status == 202, answer
    assert expect.encode() not in answer


async def test_100_continue_is_sent_only_for_a_body_within_the_limit(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    reader, writer = await _connect(gateway)
    body = orjson.dumps(lead(3))
    head = "POST /leads HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n" \
           "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    writer.write(head.format(len(body)).encode())
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert (await asyncio.wait_for(_answer(reader), timeout=5))[0] == 202
    writer.write(head.format(strict.max_body + 1).encode())
    status, _, answer = await asyncio.wait_for(_answer(reader), timeout=5)
    writer.close()
    assert (status, orjson.loads(answer)["error"]) == (413, "body_too_large")


async def _exchange(gateway: Gateway, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await _connect(gateway)
    writer.write(raw)
    try:
        return await asyncio.wait_for(_answer(reader), timeout=5)
    finally:
        writer.close()


@pytest.mark.parametrize("raw", [
    b"POST /leads HTTP/1.1\r\nHost: gw\r\nX-Key: sk-do-not-echo\x01\r\n\r\n",  # bad char
    b"POST /leads HTTP/1.1\r\nHost: gw\r\nX-Key: sk-do-not-echo" + b"a" * 9000 + b"\r\n\r\n",
    b"POST /leads HTTP/1.1\r\nHost: gw\r\nX-Key: a\r\n sk-do-not-echo\r\n\r\n",  # obs-fold
    b"POST /leads?sk-do-not-echo HTTP/1.1 junk\r\nHost: gw\r\n\r\n",  # bad request line
], ids=["bad-char", "long-line", "obs-fold", "request-line"])
async def test_a_request_aiohttp_cannot_parse_is_answered_without_its_bytes(
    start_gateway: Callable[..., object], strict: Settings, raw: bytes
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    status, headers, body = await _exchange(gateway, raw)
    assert 400 <= status < 500 and b"do-not-echo" not in body, body
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    assert orjson.loads(body)["error"] == "unparsable_request"


async def test_a_body_that_does_not_match_its_content_encoding_is_400(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    body = orjson.dumps(lead(4))
    status, _, answer = await _exchange(gateway, (
        f"POST /leads HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body)
    assert (status, orjson.loads(answer)["error"]) == (400, "malformed_body")


async def test_an_undecodable_body_closes_the_connection_without_an_error_log(
    start_gateway: Callable[..., object], strict: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    reader, writer = await _connect(gateway)
    body = b"this is not gzip" * 64
    writer.write((
        f"POST /leads HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body)
    try:
        status, headers, answer = await asyncio.wait_for(_answer(reader), timeout=5)
        rest = await asyncio.wait_for(reader.read(), timeout=5)  # EOF: the server closed
    finally:
        writer.close()
    assert (status, orjson.loads(answer)["error"]) == (400, "malformed_body")
    assert headers.get("Connection") == "close" and rest == b""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_content_type_full_of_comments_is_415_not_a_recursion_error(
    start_gateway: Callable[..., object], strict: Settings
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    status, _, answer = await _exchange(gateway, (
        "POST /leads HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json; x=" + "(" * 3000
        + "\r\nContent-Length: 2\r\n\r\n{}"
    ).encode())
    # media type "application/json" with a junk parameter is still JSON: {} lacks a contact
    assert status == 422, answer


async def test_a_client_hanging_up_mid_body_is_no_server_error(
    start_gateway: Callable[..., object], strict: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    _, writer = await _connect(gateway)
    writer.write(b"POST /leads HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 500\r\n\r\n{\"fio\": ")
    await writer.drain()
    writer.close()
    sample = gateway.metrics.registry.get_sample_value
    labels = {"channel": "browser", "outcome": "rejected", "site": "default"}

    async def counted() -> bool:
        return sample("ctgw_leads_received_total", labels) == 1

    await eventually(counted, timeout=5, interval=0.02)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert not sample("ctgw_http_requests_total",
                      {"route": "/leads", "method": "POST", "status": "500"})


async def test_an_unparsable_request_is_answered_without_banner_or_logged_bytes(
    start_gateway: Callable[..., object], strict: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: Gateway = await start_gateway(strict)  # type: ignore[misc]
    secret = "Bearer sk-0123456789abcdef-do-not-log"
    status, headers, body = await _exchange(
        gateway, f"POST /leads HTTP/1.1\r\nHost: gw\r\nBad Name: {secret}\r\n\r\n".encode()
    )
    assert status == 400
    assert "do-not-log" not in body.decode("latin-1") and "Bad Name" not in body.decode("latin-1")
    assert orjson.loads(body)["error"] == "unparsable_request"
    assert "aiohttp" not in headers.get("Server", "") and "Python" not in headers.get("Server", "")
    logged = [r.getMessage() + str(r.exc_info) + str(r.exc_text) for r in caplog.records]
    assert not any(secret in line or "do-not-log" in line for line in logged)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
