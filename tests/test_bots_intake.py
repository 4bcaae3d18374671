"""Bot scores against a real gateway relaying to the sandbox: with the production defaults, a
bot's lead is answered exactly like a person's, is never queued, and is counted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import Settings
from gateway.config_values import BotWeights
from gateway.sandbox.run import SandboxThread
from tests.support import TOKEN, Gateway, eventually, lead, sandbox_requests
from tests.test_intake import jobs_in_queue, received

SHOP = "https://shop.example.ru"  # an allowed origin: its answers carry CORS headers
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def gw(start_gateway: Any, settings: Settings) -> Gateway:
    # The production defaults, which conftest turns off for the other tests.
    gateway: Gateway = await start_gateway(replace(
        settings, bot_weights=BotWeights(), allowed_origins=frozenset({SHOP})
    ))
    return gateway


async def send(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str],
    content_type: str = "text/plain",
) -> tuple[aiohttp.ClientResponse, bytes]:
    data: bytes | dict[str, Any] = body if content_type == FORM else orjson.dumps(body)
    if content_type != FORM:
        headers = {**headers, "Content-Type": content_type}
    # Without skip_auto_headers aiohttp would name itself in User-Agent.
    async with http.post(url, data=data, headers=headers,
                         skip_auto_headers=["User-Agent"]) as resp:
        return resp, await resp.read()


def signals(gw: Gateway) -> dict[str, float | None]:
    value = gw.metrics.registry.get_sample_value
    return {s: value("ctgw_bot_signals_total", {"signal": s})
            for s in ("honeypot", "fast", "origin", "agent")}


async def delivered_numbers(http: aiohttp.ClientSession, sandbox: SandboxThread,
                            count: int) -> list[str]:
    async def arrived() -> bool:
        return len(await sandbox_requests(http, sandbox.url)) >= count

    await eventually(arrived, timeout=10)
    forms = [r["form"] for r in await sandbox_requests(http, sandbox.url)]
    assert not any(key.startswith("_") for form in forms for key in form), forms
    return [form["requestNumber"] for form in forms]


def person(origin: str) -> dict[str, str]:
    return {"User-Agent": CHROME, "Origin": origin}


BOTS = [
    # what the bot sends differently from a person (headers, body), the signals it fires
    pytest.param({}, {"_elapsed": 300}, {"fast": 1}, id="fast"),
    pytest.param({"User-Agent": "curl/8.5.0"}, {}, {"agent": 1}, id="bot-agent"),
    pytest.param({"User-Agent": None}, {}, {"agent": 1}, id="no-agent"),
    pytest.param({"User-Agent": "Python/3.11 aiohttp/3.9.5", "Origin": None}, {"_elapsed": None},
                 {"agent": 1, "origin": 1}, id="script"),
    pytest.param({"Origin": SHOP}, {"_elapsed": 0}, {"fast": 1}, id="fast-allowed-origin"),
    pytest.param({}, {"_honeypot": "http://spam.example"}, {"honeypot": 1}, id="honeypot"),
]


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "form"])
@pytest.mark.parametrize(("bot_headers", "bot_body", "fired"), BOTS)
async def test_a_bot_is_answered_like_a_person_and_never_relayed(
    gw: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread,
    bot_headers: dict[str, str | None], bot_body: dict[str, Any], fired: dict[str, int],
    as_form: bool,
) -> None:
    origin = bot_headers.get("Origin") or gw.url
    real_headers = person(origin)
    headers = {k: v for k, v in {**real_headers, **bot_headers}.items() if v is not None}
    body = {k: v for k, v in {**lead(1, _elapsed=5000), **bot_body}.items() if v is not None}
    content_type = FORM if as_form else "text/plain"
    if as_form:  # a form body carries every value as text
        body = {k: str(v) for k, v in body.items()}
    url = f"{gw.url}/leads"
    bot, bot_answer = await send(http, url, body, headers, content_type)
    real, real_answer = await send(http, url, lead(2, _elapsed=5000), real_headers)

    assert (bot.status, real.status) == (202, 202)
    assert orjson.loads(bot_answer).keys() == orjson.loads(real_answer).keys() == {"id", "status"}
    assert orjson.loads(bot_answer)["status"] == "queued"
    assert len(bot_answer) == len(real_answer)
    assert sorted(bot.headers) == sorted(real.headers)
    for name in ("Content-Type", "Access-Control-Allow-Origin", "Vary", "X-Content-Type-Options"):
        assert bot.headers.get(name) == real.headers.get(name), name
    bot_id = orjson.loads(bot_answer)["id"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{gw.url}/api/v1/leads/{bot_id}", headers=auth) as status:
        assert status.status == 404

    assert await delivered_numbers(http, sandbox, 1) == ["req-2"]
    assert await jobs_in_queue(gw) == 1
    assert received(gw, "browser", "spam") == 1
    assert received(gw, "browser", "accepted") == 1
    assert signals(gw) == {"honeypot": 0, "fast": 0, "origin": 0, "agent": 0, **fired}


async def test_a_real_browser_post_is_queued_and_delivered(
    gw: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    headers = {**person(gw.url), "Referer": f"{gw.url}/contacts"}
    resp, _ = await send(http, f"{gw.url}/leads", lead(3, _elapsed=5000), headers)
    assert resp.status == 202
    assert await delivered_numbers(http, sandbox, 1) == ["req-3"]
    assert received(gw, "browser", "accepted") == 1
    assert received(gw, "browser", "spam") == 0
    assert signals(gw) == {"honeypot": 0, "fast": 0, "origin": 0, "agent": 0}


@pytest.mark.parametrize(("threshold", "relayed"), [(2, True), (1, False)])
async def test_no_origin_nor_referer_alone_stays_below_the_default_threshold(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession, sandbox: SandboxThread,
    threshold: int, relayed: bool,
) -> None:
    gw: Gateway = await start_gateway(replace(
        settings, bot_weights=BotWeights(), bot_threshold=threshold
    ))
    headers = {"User-Agent": CHROME}  # neither Origin nor Referer: 1 point of the default 2
    resp, _ = await send(http, f"{gw.url}/leads", lead(4, _elapsed=5000), headers)
    assert resp.status == 202
    resp, _ = await send(http, f"{gw.url}/leads", lead(5, _elapsed=5000), person(gw.url))
    assert resp.status == 202
    expected = ["req-4", "req-5"] if relayed else ["req-5"]
    numbers = await delivered_numbers(http, sandbox, len(expected))
    assert sorted(numbers) == expected
    assert received(gw, "browser", "spam") == (0 if relayed else 1)
    assert signals(gw)["origin"] == 1  # counted either way: it shows how often it fires


async def test_the_token_api_is_not_scored(
    gw: Gateway, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    headers = {"User-Agent": "curl/8.5.0", "Authorization": f"Bearer {TOKEN}"}
    resp, _ = await send(http, f"{gw.url}/api/v1/leads", lead(6, _elapsed=0), headers,
                         "application/json")
    assert resp.status == 202
    assert await delivered_numbers(http, sandbox, 1) == ["req-6"]
    assert received(gw, "api", "accepted") == 1
    assert signals(gw) == {"honeypot": 0, "fast": 0, "origin": 0, "agent": 0}


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "form"])
async def test_a_bad_elapsed_is_a_field_error(
    gw: Gateway, http: aiohttp.ClientSession, as_form: bool
) -> None:
    body = {"fio": "Ivan", "_elapsed": "soon"}
    resp, answer = await send(http, f"{gw.url}/leads", body, person(gw.url),
                              FORM if as_form else "text/plain")
    assert resp.status == 422
    assert orjson.loads(answer)["errors"] == [{
        "field": "_elapsed", "code": "invalid_elapsed",
        "message": "must be whole milliseconds since the page loaded",
    }]
    assert await jobs_in_queue(gw) == 0


async def test_sandbox_mode_shows_spam_verdicts_at_info_and_to_the_demo_page(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tester's headless browser is easily scored a bot: in sandbox mode they are told so."""
    demo = await start_gateway(replace(settings, bot_weights=BotWeights(), sandbox=True))
    headless = CHROME.replace("Chrome/", "HeadlessChrome/")
    resp, _ = await send(http, f"{demo.url}/leads", lead(1, _elapsed=100),
                         {"User-Agent": headless})
    assert resp.status == 202  # answered like a person all the same
    async with http.get(f"{demo.url}/sandbox/spam") as answer:
        [verdict] = await answer.json()
    assert verdict["signals"] == ["fast", "origin", "agent"] and verdict["score"] == 5
    assert verdict["at"][:2] == "20"  # a wall-clock time, readable
    assert "Иван" not in str(verdict) and "79205550055" not in str(verdict)
    [line] = [r for r in caplog.records if "bot lead quarantined" in r.getMessage()]
    assert line.levelname == "INFO" and "signals=fast,origin,agent" in line.getMessage()


async def test_outside_sandbox_mode_spam_verdicts_stay_at_debug(
    gw: Gateway, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    resp, _ = await send(http, f"{gw.url}/leads", lead(1, _elapsed=100), {})
    assert resp.status == 202
    [line] = [r for r in caplog.records if "bot lead quarantined" in r.getMessage()]
    assert line.levelname == "DEBUG"
    async with http.get(f"{gw.url}/sandbox/spam") as answer:
        assert answer.status == 404
