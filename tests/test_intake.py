"""Intake against a real gateway on loopback, relaying to the sandbox on its own thread."""

from __future__ import annotations

import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.app import OPS_RUNNER, QUEUE, create_app
from gateway.config import Settings
from gateway.config_values import ClientRate
from gateway.intake.listener import bound_address
from gateway.ops.metrics import NO_SITE
from gateway.queue import State
from gateway.sandbox.run import SandboxThread
from tests.support import PII_SAMPLES, TOKEN, Gateway, eventually, lead, sandbox_requests

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
PATHS = ("/leads", "/api/v1/leads")
SHOP = "https://shop.example.ru"


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any],
    content_type: str | None = JSON, **headers: str,
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    if "/api/" in url:
        headers = {**AUTH, **headers}
    if isinstance(body, dict):
        body = orjson.dumps(body)
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with http.post(url, data=body, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp, orjson.loads(await resp.read())


def assert_error(body: dict[str, Any], error: str) -> None:
    assert body["error"] == error
    assert body["errors"], body
    for item in body["errors"]:
        assert item.keys() == {"field", "code", "message"}
        assert isinstance(item["code"], str)
        assert isinstance(item["message"], str)
        assert item["message"]


async def status_of(http: aiohttp.ClientSession, gw: Gateway, job_id: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/api/v1/leads/{job_id}", headers=AUTH) as resp:
        assert resp.status == 200
        text = await resp.text()
    for personal in (*PII_SAMPLES, "+7 (920) 555-00-55", "ivan@"):
        assert personal not in text
    body: dict[str, Any] = orjson.loads(text)
    return body


async def jobs_in_queue(gw: Gateway) -> int:
    """Jobs to relay: quarantined spam is kept in the store too, but is not queued."""
    stats = await gw.runner.app[QUEUE].stats()
    return sum(n for state, n in stats.counts.items() if state != State.SPAM)


def received(gw: Gateway, channel: str, outcome: str, site: str = "default") -> float | None:
    labels = {"channel": channel, "outcome": outcome, "site": site}
    return gw.metrics.registry.get_sample_value("ctgw_leads_received_total", labels)


async def chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"fio": "'
    for _ in range(size // 4096):
        yield b"x" * 4096
    yield b'"}'


TOO_BIG = b'{"fio": "' + b"x" * 64 * 1024 + b'"}'
BAD_INPUTS = [
    # content type, body, status, error, (field, code) of the single error
    (JSON, b'{"fio": "Ivan"', 400, "malformed_json", (None, "malformed_json")),
    (JSON, b'{"fio": "\xff\xfe"}', 400, "malformed_json", (None, "malformed_json")),
    (JSON, b'{"fio": "Ivan", "n": NaN}', 400, "malformed_json", (None, "malformed_json")),
    ("text/plain", b'["fio", "Ivan"]', 400, "malformed_json", (None, "malformed_json")),
    (JSON, b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', 400, "malformed_json",
     (None, "malformed_json")),
    (FORM, b"fio=%FF", 400, "malformed_form", (None, "malformed_form")),
    (FORM, b"fio=a&fio=b", 400, "malformed_form", (None, "malformed_form")),
    (JSON, TOO_BIG, 413, "body_too_large", (None, "body_too_large")),
    ("image/png", b"\x89PNG\r\n\x1a\n", 415, "unsupported_media_type",
     (None, "unsupported_media_type")),
    (None, b'{"fio": "Ivan"}', 415, "unsupported_media_type", (None, "unsupported_media_type")),
    (JSON, b'{"fio": "Ivan", "phoneNumber": "123"}', 422, "invalid_lead",
     ("phoneNumber", "invalid_phone")),
    (JSON, b'{"email": "ivan@"}', 422, "invalid_lead", ("email", "invalid_email")),
    (JSON, b'{"fio": "Ivan", "phone": "79205550055"}', 422, "invalid_lead",
     ("phone", "unknown_field")),
    (JSON, b'{"subject": "no contact"}', 422, "invalid_lead", (None, "contact_required")),
    (FORM, b"fio=Ivan&customField[]=x", 422, "invalid_lead",
     ("customFields", "invalid_custom_field")),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("content_type", "body", "status", "error", "field_code"), BAD_INPUTS)
async def test_bad_inputs(
    gateway: Gateway, http: aiohttp.ClientSession, path: str, content_type: str | None,
    body: bytes, status: int, error: str, field_code: tuple[str | None, str],
) -> None:
    resp, answer = await post(http, gateway.url + path, body, content_type)
    assert resp.status == status
    assert answer.keys() == {"error", "errors"}
    assert_error(answer, error)
    [item] = answer["errors"]
    assert (item["field"], item["code"]) == field_code
    assert await jobs_in_queue(gateway) == 0


@pytest.mark.parametrize("path", PATHS)
async def test_a_chunked_body_over_the_limit_is_413(
    gateway: Gateway, http: aiohttp.ClientSession, path: str
) -> None:
    resp, answer = await post(http, gateway.url + path, chunks(80 * 1024))  # type: ignore[arg-type]
    assert resp.status == 413
    assert_error(answer, "body_too_large")


@pytest.mark.parametrize("path", PATHS)
async def test_a_lead_is_queued_then_delivered_and_its_status_has_no_pii(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread, path: str
) -> None:
    resp, answer = await post(http, gateway.url + path, lead(1))
    assert resp.status == 202
    assert answer.keys() == {"id", "status"}
    assert answer["status"] == "queued"
    assert (await status_of(http, gateway, answer["id"]))["id"] == answer["id"]

    async def delivered() -> bool:
        return (await status_of(http, gateway, answer["id"]))["status"] == "delivered"

    await eventually(delivered, timeout=10)
    status = await status_of(http, gateway, answer["id"])
    assert status["request_id"]
    [arrival] = await sandbox_requests(http, sandbox.url)
    assert arrival["form"]["phoneNumber"] == "79205550055"
    assert arrival["form"]["requestNumber"] == "req-1"


async def test_a_repeated_request_number_answers_200_with_the_same_id(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    first, created = await post(http, f"{gateway.url}/leads", lead(2))
    again, repeated = await post(http, f"{gateway.url}/api/v1/leads", lead(2, subject="again"))
    assert (first.status, again.status) == (202, 200)
    assert repeated["id"] == created["id"]
    assert repeated["status"] in ("queued", "delivered")
    assert await jobs_in_queue(gateway) == 1

    async def arrived() -> bool:
        return bool(await sandbox_requests(http, sandbox.url))

    await eventually(arrived, timeout=10)
    third, last = await post(http, f"{gateway.url}/leads", lead(2))
    assert (third.status, last["id"]) == (200, created["id"])
    assert await jobs_in_queue(gateway) == 1
    assert [r["form"].get("subject") for r in await sandbox_requests(http, sandbox.url)] == [None]
    assert received(gateway, "browser", "duplicate") == 1
    assert received(gateway, "api", "duplicate") == 1


@pytest.mark.parametrize("authorization", [
    None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer ",
])
async def test_the_api_needs_a_valid_bearer_token(
    gateway: Gateway, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, url, body in (
        ("POST", f"{gateway.url}/api/v1/leads", orjson.dumps(lead(3))),
        ("GET", f"{gateway.url}/api/v1/leads/whatever", None),
    ):
        async with http.request(
            method, url, data=body, headers={"Content-Type": JSON, **headers}
        ) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert_error(await resp.json(), "unauthorized")
    assert await jobs_in_queue(gateway) == 0
    # No token, no site: counted under site="" (NO_SITE), the default site's count stays 0.
    assert received(gateway, "api", "rejected", NO_SITE) == 1
    assert received(gateway, "api", "rejected") == 0


async def test_lower_case_bearer_is_accepted(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp, _ = await post(
        http, f"{gateway.url}/api/v1/leads", lead(4), Authorization=f"bearer  {TOKEN} "
    )
    assert resp.status == 202


async def test_status_of_an_unknown_lead_is_404(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/api/v1/leads/no-such-id", headers=AUTH) as resp:
        assert resp.status == 404
        assert_error(await resp.json(), "not_found")


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://127.0.0.1", "http://127.0.0.1:1",
    SHOP + ".evil.example",
])
async def test_a_foreign_origin_is_403_on_leads(
    gateway: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    resp, answer = await post(http, f"{gateway.url}/leads", lead(5), Origin=origin)
    assert resp.status == 403
    assert_error(answer, "forbidden_origin")
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert await jobs_in_queue(gateway) == 0


async def test_origin_null_is_not_refused(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    # What a browser sends for a same-origin POST under "Referrer-Policy: no-referrer".
    resp, _ = await post(http, f"{gateway.url}/leads", lead(8), Origin="null")
    assert resp.status == 202
    assert await jobs_in_queue(gateway) == 1


async def test_same_origin_is_accepted(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp, _ = await post(http, f"{gateway.url}/leads", lead(6), Origin=gateway.url)
    assert resp.status == 202


async def test_the_api_does_not_check_origin(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp, _ = await post(http, f"{gateway.url}/api/v1/leads", lead(7), Origin="https://x.example")
    assert resp.status == 202


async def test_allowed_origins_get_cors_headers(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession
) -> None:
    gw: Gateway = await start_gateway(replace(settings, allowed_origins=frozenset({SHOP})))
    resp, _ = await post(http, f"{gw.url}/leads", lead(8), "text/plain", Origin=SHOP)
    assert resp.status == 202
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in resp.headers["Vary"]

    async with http.options(f"{gw.url}/leads", headers={"Origin": SHOP}) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == SHOP
    async with http.options(f"{gw.url}/leads", headers={"Origin": "https://x.example"}) as bad:
        assert bad.status == 403
        assert_error(await bad.json(), "forbidden_origin")
    resp, _ = await post(http, f"{gw.url}/leads", lead(9), Origin="https://x.example")
    assert resp.status == 403


async def test_an_allowed_origin_can_read_why_its_lead_was_refused(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """Without the CORS header a browser hides a 422 or a 429 from the page: the snippet
    could not tell a refused lead from a network failure, and would keep it to resend."""
    gw: Gateway = await start_gateway(replace(
        settings, allowed_origins=frozenset({SHOP}), client_rate=ClientRate(1 / 60, 1)))
    invalid = {**lead(10), "phoneNumber": "12"}
    resp, answer = await post(http, f"{gw.url}/leads", invalid, "text/plain", Origin=SHOP)
    assert resp.status == 422
    assert_error(answer, "invalid_lead")
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in resp.headers["Vary"]
    resp, answer = await post(http, f"{gw.url}/leads", lead(11), "text/plain", Origin=SHOP)
    assert resp.status == 429
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert received(gw, "browser", "invalid") == 1
    assert received(gw, "browser", "throttled") == 1
    assert await jobs_in_queue(gw) == 0


async def test_a_field_cut_inside_an_emoji_is_delivered_mended(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    """The snippet cuts a long field by UTF-16 units; a cut inside an emoji leaves half of it,
    which JSON.stringify writes as a lone surrogate escape. The lead is kept, not refused."""
    body = ('{"fio": "Иван", "phoneNumber": "+79205550055", "comment": "ok \\ud83d",'
            ' "requestNumber": "cut-1"}').encode()
    resp, answer = await post(http, f"{gateway.url}/leads", body, "text/plain")
    assert resp.status == 202, answer

    async def arrived() -> bool:
        return bool(await sandbox_requests(http, sandbox.url))

    await eventually(arrived, timeout=10)
    [arrival] = await sandbox_requests(http, sandbox.url)
    assert arrival["form"]["comment"] == "ok \ufffd"


async def test_form_urlencoded_with_custom_fields_reaches_calltouch(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    form = {
        "fio": "Иван Петров", "phoneNumber": "8 (920) 555-00-55", "tags": "new, vip",
        "customField[utm_source]": "yandex", "customField[Город]": "Москва",
        "requestNumber": "form-1",
    }
    async with http.post(f"{gateway.url}/leads", data=form) as resp:
        assert resp.status == 202

    async def arrived() -> bool:
        return bool(await sandbox_requests(http, sandbox.url))

    await eventually(arrived, timeout=10)
    [arrival] = await sandbox_requests(http, sandbox.url)
    sent = arrival["form"]
    assert sent["phoneNumber"] == "79205550055"
    assert sent["tags"] == "new,vip"
    assert sent["customField[utm_source]"] == "yandex"
    assert sent["customField[Город]"] == "Москва"
    assert sent["requestNumber"] == "form-1"


async def test_a_honeypot_lead_looks_accepted_but_is_never_relayed(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    resp, answer = await post(http, f"{gateway.url}/leads", lead(10, _honeypot="http://spam"))
    assert resp.status == 202
    assert answer.keys() == {"id", "status"}
    assert answer["status"] == "queued"
    async with http.get(f"{gateway.url}/api/v1/leads/{answer['id']}", headers=AUTH) as status:
        assert status.status == 404
    real, _ = await post(http, f"{gateway.url}/leads", lead(11, _honeypot=""))
    assert real.status == 202

    async def arrived() -> bool:
        return bool(await sandbox_requests(http, sandbox.url))

    await eventually(arrived, timeout=10)
    numbers = [r["form"]["requestNumber"] for r in await sandbox_requests(http, sandbox.url)]
    assert numbers == ["req-11"]
    assert await jobs_in_queue(gateway) == 1
    assert received(gateway, "browser", "spam") == 1


async def test_leads_received_are_counted_by_outcome(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    browser, api = f"{gateway.url}/leads", f"{gateway.url}/api/v1/leads"
    for url, body, content_type in (
        (browser, lead(20), JSON),
        (browser, lead(21), JSON),
        (browser, lead(20), JSON),
        (browser, {"phoneNumber": "1"}, JSON),
        (browser, b"{", JSON),
        (browser, b"x", "image/png"),
        (browser, lead(22, _honeypot="x"), JSON),
        (api, lead(23), JSON),
        (api, {"email": "x", "bogus": 1}, JSON),
    ):
        await post(http, url, body, content_type)
    expected = {
        ("browser", "accepted"): 2, ("browser", "duplicate"): 1, ("browser", "invalid"): 1,
        ("browser", "rejected"): 2, ("browser", "spam"): 1,
        ("api", "accepted"): 1, ("api", "invalid"): 1, ("api", "rejected"): 0,
    }
    assert {key: received(gateway, *key) for key in expected} == expected
    errors = gateway.metrics.registry.get_sample_value
    assert errors("ctgw_validation_errors_total", {"code": "invalid_phone"}) == 1
    assert errors("ctgw_validation_errors_total", {"code": "unknown_field"}) == 1


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/leads", 405), ("PUT", "/api/v1/leads", 405), ("GET", "/nowhere", 404),
])
async def test_other_routes_and_methods_answer_the_error_shape(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with http.request(method, gateway.url + path, headers=AUTH) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert_error(await resp.json(), "method_not_allowed" if status == 405 else "not_found")
        assert ("Allow" in resp.headers) == (status == 405)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_request_date_is_the_acceptance_time_in_the_configured_zone(
    gateway: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    zone = zoneinfo.ZoneInfo("Europe/Moscow")
    before = datetime.now(zone).replace(microsecond=0)
    resp, _ = await post(http, f"{gateway.url}/api/v1/leads", lead(40, requestNumber=None))
    after = datetime.now(zone)
    assert resp.status == 202

    async def relayed() -> bool:
        return len(await sandbox_requests(http, sandbox.url)) == 1

    await eventually(relayed, timeout=10)
    [sent] = await sandbox_requests(http, sandbox.url)
    stamped = datetime.strptime(sent["form"]["requestDate"], "%d.%m.%Y %H:%M:%S")
    assert before <= stamped.replace(tzinfo=zone) <= after


async def test_readyz_waits_for_the_public_listener(settings: Settings) -> None:
    """The ops listener opens first; until the public one is open, /readyz says starting."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()  # every resource and the ops listener, no public listener yet
    try:
        async with aiohttp.ClientSession() as http:
            ops = bound_address(runner.app[OPS_RUNNER])
            async with http.get(f"{ops}/readyz") as resp:
                assert (resp.status, await resp.json()) == (503, {"status": "starting"})
    finally:
        await runner.cleanup()


async def test_readyz_is_ready_once_started(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.ops_url}/readyz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ready"})
