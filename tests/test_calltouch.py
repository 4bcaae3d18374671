"""The Calltouch client and the register call: every answer classified, the form, the stamp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calltouch.answers import (
    Delivered,
    Permanent,
    Retry,
    Verdict,
    http_failure,
    redact,
    scrub,
)
from gateway.calltouch.client import Call, CalltouchClient, Reply, trace_config, upstream_session
from gateway.kinds.lead import read_answer, register_form
from gateway.relay.pacing import Pacer
from gateway.sandbox import arrivals
from gateway.sandbox.server import LIMIT, NO_PARAMS
from tests.support import sandbox_requests, spawn_sandbox

OK = b'{"requestId": 5222103, "subject": "x", "client": {"fio": "x"}}'


def classify(status: int, headers: dict[str, str], body: bytes) -> Verdict:
    """A register answer as the relay reads it: HTTP first, then the lead kind's body check."""
    return http_failure(status, headers, body) or read_answer(status, body)


def kind(verdict: Verdict) -> tuple[str, str]:
    return type(verdict).__name__, verdict.code


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, OK, ("Delivered", "ok")),
    (201, b'{"requestId": "abc"}', ("Delivered", "ok")),
    (200, NO_PARAMS.encode(), ("Permanent", "invalid_answer")),
    (200, b'{"requestId": ""}', ("Permanent", "invalid_answer")),
    (200, b'{"message": "site not found"}', ("Permanent", "invalid_answer")),
    (200, b"[1, 2]", ("Permanent", "invalid_answer")),
    (200, b"\xff\xfe not json", ("Permanent", "invalid_answer")),
    (204, b"", ("Permanent", "invalid_answer")),
    (429, b'{"message": "Too Many Requests"}', ("Retry", "rate_limited")),
    (408, b"", ("Retry", "server_error")),
    (500, b"", ("Retry", "server_error")),
    (503, b"Service Unavailable", ("Retry", "server_error")),
    (400, b'{"error": "bad siteId"}', ("Permanent", "client_error")),
    (401, b"", ("Permanent", "client_error")),
    (404, b"<html>Not Found</html>", ("Permanent", "client_error")),
])
def test_every_answer_is_classified(status: int, body: bytes, expected: tuple[str, str]) -> None:
    assert kind(classify(status, {}, body)) == expected


def test_a_delivered_answer_keeps_calltouchs_request_id() -> None:
    assert classify(200, {}, OK) == Delivered("5222103", details={"attribution": None})


def test_a_delivered_answer_keeps_the_session_source_and_nothing_personal() -> None:
    answer = {"requestId": 7, "session": {"source": "yandex", "utmCampaign": "spring",
                                          "ip": "10.1.2.3", "phone": "79001234567"},
              "client": {"fio": "Иван", "phones": ["79001234567"]}}
    verdict = classify(200, {}, orjson.dumps(answer))
    assert verdict == Delivered(
        "7", details={"attribution": {"source": "yandex", "utmCampaign": "spring"}})


def test_a_permanent_failure_keeps_its_reason() -> None:
    outcome = classify(200, {}, NO_PARAMS.encode())
    assert isinstance(outcome, Permanent) and NO_PARAMS in outcome.detail
    assert classify(400, {}, b'{"error": "bad siteId"}') == Permanent(
        "client_error", "HTTP 400: bad siteId")


def retry_after(value: str) -> float | None:
    outcome = classify(429, {"Retry-After": value}, b"")
    assert isinstance(outcome, Retry)
    return outcome.retry_after


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), ("0", 0.0), ("-5", 0.0), ("99999", 3600.0), ("", None), ("soon", None),
    ("nan", None), ("inf", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
])
def test_retry_after_is_read_within_bounds(value: str, seconds: float | None) -> None:
    assert retry_after(value) == seconds


def test_retry_after_may_be_an_http_date() -> None:
    wait = retry_after(formatdate(time.time() + 120, usegmt=True))
    assert wait is not None and 115 <= wait <= 121


def test_retry_after_applies_to_server_errors_too() -> None:
    assert classify(503, {"Retry-After": "30"}, b"") == Retry("server_error", "HTTP 503", 30.0)


@given(st.integers(100, 599), st.dictionaries(st.just("Retry-After"), st.text(max_size=40)),
       st.binary(max_size=200))
def test_no_answer_breaks_the_classifier(status: int, headers: dict[str, str],
                                         body: bytes) -> None:
    outcome = classify(status, headers, body)
    wait = getattr(outcome, "retry_after", None)
    assert wait is None or 0.0 <= wait <= 3600.0


def test_reasons_carry_no_email_or_phone() -> None:
    text = redact("client ivan@example.com, phone +7 (920) 555-00-55, already exists")
    assert text == "client *** phone ***, already exists"  # the comma goes with the address
    assert len(redact("x" * 1000)) == 160


def test_the_register_form_uses_calltouch_names() -> None:
    fields: dict[str, Any] = {"fio": "Иван", "sessionId": 1845461367, "tags": ["a", "b c"],
                              "customFields": {"city": "Тула", "rooms": 3}}
    assert register_form(fields) == {
        "fio": "Иван", "sessionId": "1845461367", "tags": "a,b c",
        "customField[city]": "Тула", "customField[rooms]": "3",
    }


@pytest.mark.skipif(not arrivals.STAMPED, reason="SO_TIMESTAMPNS is Linux's")
async def test_a_slot_is_stamped_no_earlier_than_its_request_reached_calltouch() -> None:
    """The pacer's window holds only if a stamp is never earlier than the write it stands for."""
    proc, url = spawn_sandbox("0,0")
    pacer = Pacer(LIMIT)
    slots = [await pacer.acquire() for _ in range(LIMIT)]  # more in a second would be refused
    path = "/calls-service/RestAPI/requests/18990/register/"
    try:
        async with aiohttp.ClientSession(trace_configs=[trace_config()]) as session:
            client = CalltouchClient(session, url, timeout=5.0)
            for n, slot in enumerate(slots):
                call = Call("POST", path, form={"subject": f"s{n}"})
                reply = await client.send(call, slot.written)
                assert isinstance(reply, Reply) and reply.status == 200, reply
                assert isinstance(read_answer(reply.status, reply.body), Delivered)
            rows = await sandbox_requests(session, url)
    finally:
        proc.kill()
    arrived = {row["form"]["subject"]: row["at"] for row in rows}
    lags = sorted(slot.sent_at - arrived[f"s{n}"] for n, slot in enumerate(slots)
                  if slot.sent_at is not None)
    # Stamped before the write, every lag was 20-38 us below zero. The kernel may stamp an
    # arrival a little late (its receive path can run after the sender returns), hence the
    # median for the side and a bound for the rest.
    assert len(lags) == len(slots) and lags[len(lags) // 2] > 0, lags
    assert lags[0] > -0.001 and lags[-1] < 0.5, lags


async def test_a_dropped_get_is_not_sent_again_behind_the_pacers_back() -> None:
    """aiohttp re-sends an idempotent request once when a kept-alive connection drops after
    it: a deals 1.0 update (a GET) would reach Calltouch twice under one pace slot."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            if len(seen) == 2:  # read, then the connection drops without an answer
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    call = Call("GET", "/calls-service/RestAPI/orders/update-by-id/", query={"id": "1"})
    try:
        async with upstream_session(aiohttp.TCPConnector()) as session:
            client = CalltouchClient(session, f"http://127.0.0.1:{port}", timeout=5.0)
            first = await client.send(call, lambda at: None)
            second = await client.send(call, lambda at: None)
    finally:
        server.close()
    assert first.status == 200
    assert second.status is None and isinstance(second.failure, Retry), second
    assert len(seen) == 2  # the relay retries it, at its own pace


@contextlib.asynccontextmanager
async def answer_in_parts(parts: list[bytes], head: bytes) -> AsyncIterator[str]:
    """The URL of a Calltouch that writes ``head`` and then each of ``parts`` apart, as a WAN
    delivers them (the pause is the network's, not a wait for an event)."""
    answered = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
        finally:
            writer.close()
            answered.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        await answered.wait()
    finally:
        server.close()
        await server.wait_closed()


async def send_once(url: str) -> Reply:
    async with upstream_session(aiohttp.TCPConnector()) as session:
        client = CalltouchClient(session, url, timeout=5.0)
        return await client.send(Call("POST", "/r/", form={"a": "b"}), lambda at: None)


async def test_an_answer_in_several_segments_is_read_whole() -> None:
    body = OK[:-1] + b', "pad": "' + b"x" * 3000 + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    async with answer_in_parts([body[:700], body[700:]], head % len(body)) as url:
        reply = await send_once(url)
    assert reply.body == body
    assert isinstance(read_answer(reply.status or 0, reply.body), Delivered)


async def test_a_redirect_is_not_followed_behind_the_pacers_back() -> None:
    head = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere/\r\nContent-Length: 0\r\n\r\n"
    async with answer_in_parts([], head) as url:
        reply = await send_once(url)
    assert reply.status == 302 and isinstance(reply.failure, Permanent), reply


async def test_a_call_without_a_body_is_stamped_when_written_not_when_answered() -> None:
    """A deals 1.0 update is a GET: stamped only at its answer, it held its pace slot (and the
    grant five calls later) for the whole round trip."""
    stamps: list[float] = []
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await answer.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    call = Call("GET", "/calls-service/RestAPI/orders/update-by-id/", query={"id": "1"})
    try:
        async with upstream_session(aiohttp.TCPConnector()) as session:
            client = CalltouchClient(session, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                     timeout=5.0)
            started = time.monotonic()
            sending = asyncio.create_task(client.send(call, stamps.append))
            await arrived.wait()
            await asyncio.sleep(0)  # the stamp's turn, queued before the server read the request
            stamped = list(stamps)
            answer.set()
            reply = await sending
    finally:
        server.close()
        await server.wait_closed()
    assert reply.status == 200
    assert len(stamped) == 1 and started <= stamped[0], stamped


def test_scrub_blanks_out_the_payloads_own_values_quoted_back() -> None:
    payload = orjson.dumps({"fio": " Анастасия Прекрасная ", "status": "new",
                            "customFields": [{"name": "kid", "value": "Серафим"}]})
    message = "fio 'Анастасия Прекрасная' is too long; Серафим; status new is fine"
    assert scrub(message, payload) == "fio '***' is too long; ***; status new is fine"
    assert scrub("as is", b"not json") == "as is"


def test_scrub_finds_a_value_as_redact_leaves_it_spaced_and_cut() -> None:
    comment = "Client Ivan Petrov\nasks  to call back after lunch, 5 Lenina street " * 3
    payload = orjson.dumps({"comment": comment, "fio": "Anna  Smirnova"})
    message = redact(f'fio "Anna  Smirnova"; comment "{comment}"')
    assert scrub(message, payload) == 'fio "***"; comment "***'
