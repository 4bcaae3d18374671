"""The back office end to end: deals 2.0, comments and Calltouch's 1.0 paths, through a real
gateway to the sandbox, on loopback.

Every test runs on both queue backends (``queue_url``): a SQLite file, and a database of a real
PostgreSQL. Each ends by checking that the log lines it caused and the ops ``/metrics`` hold none of
the personal data, tokens or ``clientApiId`` it posted. The 2,000-deal run is in
``test_backoffice_slow.py``; the helpers here are shared with it.
"""
# The documented wordings and the values of Calltouch's examples are Russian.

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Settings
from gateway.sandbox.leadservice import BAD_DATE
from tests.support import (
    LOG_LINES,
    QUEUE_BACKENDS,
    TOKEN,
    Process,
    eventually,
    lead,
    queue_url_of,
    sandbox_config,
    sandbox_requests,
    spawn_gateway,
    spawn_sandbox,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NDJSON = {**AUTH, "Content-Type": "application/x-ndjson"}
ACCESS_TOKEN = "access-token-right-0123456789"
WRONG_ACCESS_TOKEN = "access-token-wrong-9876543210"
# The 1.0 documentation's own example clientApiId, as an unmodified client would send it.
CLIENT_API_ID = "GllU3tbwhrTkA1Chryud4xIT48WE8FPeNyrGQQswIb3nr"
LEGACY = "/calls-service/RestAPI/orders"
CREATE, UPDATE = "client-order/create", "client-order/update"
COMMENT = "comment/lead/add"
# Personal data the deals carry (as the leads of tests.support.lead() do).
PHONE, EMAIL, NAME = "+7 (920) 555-00-55", "ivan@example.com", "Иван Петров"
PERSONAL = ("79205550055", "9205550055", EMAIL, NAME, "Ivan Petrov", "1845461367")
SECRETS = (TOKEN, ACCESS_TOKEN, WRONG_ACCESS_TOKEN, CLIENT_API_ID)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_PHONE = re.compile(r"(?<!\d)[78]\d{10}(?!\d)")


# --- helpers (test_backoffice_slow.py uses them too) ----------------------------------------


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store on each backend in turn."""
    return queue_url_of(request, tmp_path)


def gateway_env(queue_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    return {
        "CTGW_SITE_ID": "18990",
        "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": queue_url,
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_API_TOKENS": TOKEN,
        "CTGW_BATCH_LINGER": "200ms",
        **extra,
    }


def ndjson(items: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


async def post_many(
    http: aiohttp.ClientSession, url: str, path: str, items: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Post ``items`` as NDJSON; the 202's tally."""
    async with http.post(url + path, data=ndjson(items), headers=NDJSON) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 202, body
        return body


async def post_one(
    http: aiohttp.ClientSession, url: str, path: str, item: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(url + path, json=item, headers=AUTH) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 202, body
        return body


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str] = AUTH) -> Any:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def deal_status(http: aiohttp.ClientSession, url: str, number: str) -> dict[str, Any]:
    body: dict[str, Any] = await get_json(http, f"{url}/api/v1/deals/{number}")
    return body


async def sandbox_view(http: aiohttp.ClientSession, url: str, name: str) -> Any:
    return (await get_json(http, f"{url}/sandbox/{name}", {}))[name]


async def metrics_text(http: aiohttp.ClientSession, ops_url: str) -> str:
    async with http.get(f"{ops_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """A sample's value from a /metrics text; 0 when the series does not exist."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def pending(http: aiohttp.ClientSession, ops_url: str) -> float:
    """Jobs ready, leased or delayed (the gauge does not show held ones)."""
    text = await metrics_text(http, ops_url)
    return sum(sample(text, "ctgw_queue_jobs", state=s) for s in ("ready", "leased", "delayed"))


async def settled(http: aiohttp.ClientSession, ops_url: str) -> bool:
    return await pending(http, ops_url) == 0


def calls(rows: list[dict[str, Any]], *methods: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["method"] in methods]


def numbers_of(row: dict[str, Any]) -> list[str]:
    return [order["orderNumber"] for order in (row["json"] or {}).get("orders", [])]


async def assert_clean(
    http: aiohttp.ClientSession, lines: Sequence[str], ops_urls: Iterable[str],
    extra: Iterable[str] = (),
) -> None:
    """No personal value, token or clientApiId posted is in the log lines nor in /metrics."""
    assert lines, "the run logged nothing: the check would prove nothing"
    banned = (*PERSONAL, *SECRETS, *extra)
    leaks = [line[:300] for line in lines
             if any(b in line for b in banned) or _EMAIL.search(line) or _PHONE.search(line)]
    for ops in ops_urls:  # its numbers are no phones (a byte count may look like one)
        text = await metrics_text(http, ops)
        leaks += [f"/metrics: {b}" for b in banned if b in text]
        assert "ctgw_jobs_received_total" in text
    assert leaks == []


def deal(number: str, **fields: Any) -> dict[str, Any]:
    """A deal of the CRM, with a contact (so: personal data) to match it by."""
    return {"orderNumber": number, "status": "new", "statusDate": "01-03-2024 10:00:00",
            "orderDate": "01-03-2024 09:00:00", "revenue": 1000, "manager": NAME,
            "phones": [PHONE], "emails": [EMAIL], **fields}


def lines_since(start: int) -> list[str]:
    return LOG_LINES[start:]


@pytest.fixture
def backoffice_settings(settings: Settings, queue_url: str) -> Settings:
    return replace(settings, queue_url=queue_url, access_token=ACCESS_TOKEN,
                   client_api_id=CLIENT_API_ID, batch_linger=0.2)


# --- 2: one item Calltouch refuses -------------------------------------------------------


def by_phone(date: str) -> list[dict[str, Any]]:
    """A deal's own matching: the lead of its phone, searched for before ``date``."""
    return [{"type": "requestContact", "requestContactParams": {
        "phones": ["79205550055"], "date": date, "searchDepth": 600,
        "requestTypeToMatch": "nearest"}}]


async def test_an_item_calltouch_refuses_dies_with_its_message_and_the_other_99_go(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    start = len(LOG_LINES)
    await sandbox_config(http, sandbox.url, access_token=ACCESS_TOKEN)
    gw = await start_gateway(backoffice_settings)
    # The gateway checks that a matching date reads as dd-mm-yyyy hh:mm:ss (strptime takes a
    # one-digit day); Calltouch, as the sandbox has it, wants two digits: only it refuses.
    bad = deal("bad-37", matching=by_phone("1-03-2024 10:00:00"))
    del bad["phones"], bad["emails"]
    items = [bad if i == 37 else deal(f"ok-{i:02d}") for i in range(100)]
    tally = await post_many(http, gw.url, "/api/v1/deals", items)
    assert tally == {"accepted": 100, "merged": 0, "rejected": 0, "errors": []}

    async def all_settled() -> bool:
        return len(await sandbox_view(http, sandbox.url, "deals")) == 99 and await settled(
            http, gw.ops_url)

    await eventually(all_settled, timeout=20)
    dead = await deal_status(http, gw.url, "bad-37")
    assert dead["status"] == "dead", dead
    assert BAD_DATE in dead["last_error"] and "matching[0]" in dead["last_error"], dead
    assert dead["calltouchOrderId"] is None
    held = await sandbox_view(http, sandbox.url, "deals")
    assert sorted(held) == sorted(f"ok-{i:02d}" for i in range(100) if i != 37)
    for number in ("ok-00", "ok-36", "ok-38", "ok-99"):
        shown = await deal_status(http, gw.url, number)
        assert shown["status"] == "delivered", shown
        assert shown["calltouchOrderId"] == str(held[number]["calltouchOrderId"])
    rows = calls(await sandbox_requests(http, sandbox.url), CREATE)
    # The whole batch refused once, then the 99 again, without the one.
    assert [(r["status"], r["items"]) for r in rows] == [(400, 100), (200, 99)], rows
    assert "bad-37" not in numbers_of(rows[1])
    await assert_clean(http, lines_since(start), [gw.ops_url])


async def test_a_deal_calltouch_refused_goes_when_the_crm_posts_it_again_mended(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    await sandbox_config(http, sandbox.url, access_token=ACCESS_TOKEN)
    gw = await start_gateway(backoffice_settings)

    bad = {k: v for k, v in deal("fix-1").items() if k not in ("phones", "emails")}
    first = await post_one(http, gw.url, "/api/v1/deals", {**bad, "matching": by_phone(
        "1-03-2024 10:00:00")})  # one digit of day: the sandbox refuses it, as Calltouch does

    async def status_is(wanted: str) -> bool:
        return (await deal_status(http, gw.url, "fix-1"))["status"] == wanted

    await eventually(lambda: status_is("dead"), timeout=20)
    again = await post_one(http, gw.url, "/api/v1/deals", {**bad, "matching": by_phone(
        "01-03-2024 10:00:00")})
    assert again["id"] == first["id"], (first, again)  # the create again, not an update after it
    await eventually(lambda: status_is("delivered"), timeout=20)
    assert "fix-1" in await sandbox_view(http, sandbox.url, "deals")
    rows = calls(await sandbox_requests(http, sandbox.url), CREATE, UPDATE)
    assert [(r["method"], r["status"]) for r in rows] == [(CREATE, 400), (CREATE, 200)], rows


# --- 3: comments -------------------------------------------------------------------------


async def test_500_comments_go_100_a_call_and_a_repeated_key_adds_nothing(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    start = len(LOG_LINES)
    gw = await start_gateway(backoffice_settings)
    items = [{"callId": 1000 + i, "comment": f"note {i}", "key": f"k-{i}"} for i in range(500)]
    tally = await post_many(http, gw.url, "/api/v1/comments", items)
    assert tally == {"accepted": 500, "merged": 0, "rejected": 0, "errors": []}

    async def all_commented() -> bool:
        return len(await sandbox_view(http, sandbox.url, "comments")) >= 500 and await settled(
            http, gw.ops_url)

    await eventually(all_commented, timeout=30)
    rows = calls(await sandbox_requests(http, sandbox.url), COMMENT)
    assert [(r["status"], r["items"]) for r in rows] == [(200, 100)] * 5, rows
    got = await sandbox_view(http, sandbox.url, "comments")
    assert sorted(c["text"] for c in got) == sorted(f"note {i}" for i in range(500))

    # The same key again, before and after its delivery: the same job, sent once.
    repeat = {"callId": 7, "comment": "перезвонить", "key": "crm-note-1"}
    first = await post_one(http, gw.url, "/api/v1/comments", repeat)
    again = await post_one(http, gw.url, "/api/v1/comments", repeat)
    assert again["id"] == first["id"]
    once = await post_many(http, gw.url, "/api/v1/comments", [repeat, repeat])
    assert once["accepted"] == 0 and once["merged"] == 2, once

    async def delivered() -> bool:
        shown = await get_json(http, f"{gw.url}/api/v1/comments/{first['id']}")
        return bool(shown["status"] == "delivered")

    await eventually(delivered, timeout=10)
    late = await post_one(http, gw.url, "/api/v1/comments", repeat)
    assert late["id"] == first["id"] and late["status"] == "delivered"
    await eventually(lambda: settled(http, gw.ops_url), timeout=10)
    got = await sandbox_view(http, sandbox.url, "comments")
    assert [c["text"] for c in got].count("перезвонить") == 1
    assert len(calls(await sandbox_requests(http, sandbox.url), COMMENT)) == 6
    await assert_clean(http, lines_since(start), [gw.ops_url])


async def test_a_comment_on_a_lead_still_queued_waits_for_it_and_names_its_request_id(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    start = len(LOG_LINES)
    gw = await start_gateway(backoffice_settings)
    await sandbox_config(http, sandbox.url, fault="503")
    sent = await post_one(http, gw.url, "/api/v1/leads", lead(5))
    note = await post_one(http, gw.url, "/api/v1/comments",
                          {"lead": sent["id"], "comment": "клиент просил перезвонить"})
    by_number = await post_one(http, gw.url, "/api/v1/comments",
                               {"lead": "req-5", "comment": "второй комментарий"})

    async def tried_twice() -> bool:
        rows = calls(await sandbox_requests(http, sandbox.url), "register")
        return len(rows) >= 2  # seconds apart (backoff): the comment had time to go, if free

    await eventually(tried_twice, timeout=15)
    assert calls(await sandbox_requests(http, sandbox.url), COMMENT) == []
    shown = await get_json(http, f"{gw.url}/api/v1/comments/{note['id']}")
    assert shown["status"] == "queued" and shown["request_id"] is None, shown
    await sandbox_config(http, sandbox.url, fault=None)

    async def commented() -> bool:
        ids = (note["id"], by_number["id"])
        shown = [await get_json(http, f"{gw.url}/api/v1/comments/{i}") for i in ids]
        return all(s["status"] == "delivered" for s in shown)

    await eventually(commented, timeout=20)
    request_id = (await get_json(http, f"{gw.url}/api/v1/leads/{sent['id']}"))["request_id"]
    assert request_id
    got = await sandbox_view(http, sandbox.url, "comments")
    assert sorted((c["text"], c["requestId"]) for c in got) == sorted([
        ("клиент просил перезвонить", request_id), ("второй комментарий", request_id)])
    rows = await sandbox_requests(http, sandbox.url)
    [registered] = [r for r in calls(rows, "register") if r["status"] == 200]
    commenting = calls(rows, COMMENT)
    assert commenting and all(r["at"] > registered["at"] for r in commenting)
    assert all(entry["matching"] == [{"type": "request", "requestParams": {
        "requestId": int(request_id)}}] for r in commenting for entry in r["json"]["comments"])
    await assert_clean(http, lines_since(start), [gw.ops_url])


# --- 4: deals 1.0 on Calltouch's own paths -----------------------------------------------

# The documentation's examples: register by call (GET), update and delete by orderNumber.
REGISTER_BY_CALL = {
    "clientApiId": CLIENT_API_ID, "callId": "32496964", "orderNumber": "K2TU/sm{7u4X3F",
    "orderSum": "1000", "orderStatus": "start", "orderDate": "26.03.2018 10:00:00",
    "manager": "Коля", "service": "AmoCRM", "tags": "mytag1,mytag2,mytag3",
}
REGISTER_BY_PHONE = {
    "clientApiId": CLIENT_API_ID, "orderNumber": "J2eTSacsKduifb", "orderSum": "1000",
    "orderStatus": "status", "orderDate": "25.03.2018 11:00:00", "phoneNumber": "79205550055",
    "linkTimeThreshold": "600", "manager": "Коля", "service": "AmoCRM",
    "tags": "mytag1,mytag2,mytag3",
}


def update_of(number: str) -> dict[str, str]:
    return {"clientApiId": CLIENT_API_ID, "orderNumber": number, "orderSum": "100000",
            "status": "selling", "manager": "Алексей", "service": "RetailCRM",
            "tags": "newtag1,newtag2"}


def delete_of(number: str) -> dict[str, str]:
    return {"clientApiId": CLIENT_API_ID, "orderNumber": number}


async def legacy_get(
    http: aiohttp.ClientSession, url: str, method: str, params: dict[str, str],
    *, slash: bool = True,
) -> int:
    """As a 1.0 integration calls Calltouch: a GET with the query; it reads only the status.
    ``slash``: the path ends with "/", as most of the doc writes it."""
    async with http.get(f"{url}{LEGACY}/{method}{'/' if slash else ''}", params=params) as resp:
        await resp.read()
        return resp.status


def ops_of(rows: list[dict[str, Any]], number: str) -> list[tuple[str, int]]:
    """The 1.0 calls the sandbox got for one deal, in arrival order."""
    legacy = [r for r in rows if r["method"].startswith("orders/")]
    return [(r["method"], r["status"]) for r in sorted(legacy, key=lambda r: r["at"])
            if r["form"].get("orderNumber") == number]


async def test_an_unmodified_1_0_client_registers_updates_and_deletes_through_the_gateway(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    start = len(LOG_LINES)
    await sandbox_config(http, sandbox.url, client_api_id=CLIENT_API_ID)
    gw = await start_gateway(backoffice_settings)
    a, b = REGISTER_BY_CALL["orderNumber"], REGISTER_BY_PHONE["orderNumber"]
    assert await legacy_get(http, gw.url, "register", REGISTER_BY_CALL) == 202
    # POST: the parameters, the token too, as a form (the documentation's other way).
    async with http.post(f"{gw.url}{LEGACY}/register/", data=REGISTER_BY_PHONE) as resp:
        assert resp.status == 202, await resp.text()
    assert await legacy_get(http, gw.url, "update-by-id", update_of(a)) == 202
    assert await legacy_get(http, gw.url, "update-by-id", {**update_of(b), "status": "work"}) \
        == 202
    assert await legacy_get(http, gw.url, "delete-by-id", delete_of(a)) == 202
    wrong = {**update_of(a), "clientApiId": "another-login-api-id"}
    assert await legacy_get(http, gw.url, "update-by-id", wrong) == 401
    assert await legacy_get(http, gw.url, "delete-by-id", {"orderNumber": a}) == 401

    async def applied() -> bool:
        orders = await sandbox_view(http, sandbox.url, "orders")
        return bool(orders.get(a, {}).get("deleted")) and orders.get(b, {}).get("updates") == 1

    await eventually(applied, timeout=20)
    await eventually(lambda: settled(http, gw.ops_url), timeout=10)
    orders = await sandbox_view(http, sandbox.url, "orders")
    assert set(orders) == {a, b}
    assert orders[a]["matched"] == {"type": "call", "callId": "32496964"}
    assert (orders[a]["status"], orders[a]["sum"], orders[a]["manager"]) == (
        "selling", "100000", "Алексей")
    assert orders[a]["tags"] == ["newtag1", "newtag2"] and orders[a]["updates"] == 1
    assert (orders[b]["status"], orders[b]["deleted"]) == ("work", False)
    rows = await sandbox_requests(http, sandbox.url)
    assert ops_of(rows, a) == [("orders/register", 200), ("orders/update-by-id", 200),
                               ("orders/delete-by-id", 200)]
    assert ops_of(rows, b) == [("orders/register", 200), ("orders/update-by-id", 200)]
    assert all("clientApiId" not in r["form"] for r in rows)  # the sandbox's log never has it
    await assert_clean(http, lines_since(start), [gw.ops_url])


async def test_a_sigkill_between_1_0_calls_loses_none_and_keeps_their_order(
    queue_url: str, http: aiohttp.ClientSession, processes: list[Process],
) -> None:
    box, box_url = spawn_sandbox("0.0,0.02")
    processes.append(box)
    await sandbox_config(http, box_url, client_api_id=CLIENT_API_ID, fault="503")
    env = gateway_env(queue_url, box_url, CTGW_CLIENT_API_ID=CLIENT_API_ID,
                      CTGW_LEASE_TIMEOUT="20s")
    first, url, ops = spawn_gateway(env)
    processes.append(first)
    number = REGISTER_BY_PHONE["orderNumber"]
    assert await legacy_get(http, url, "register", REGISTER_BY_PHONE) == 202
    assert await legacy_get(http, url, "update-by-id", update_of(number)) == 202

    async def refused_and_waiting() -> bool:
        tried = calls(await sandbox_requests(http, box_url), "orders/register")
        text = await metrics_text(http, ops)
        return bool(tried) and sample(text, "ctgw_queue_jobs", state="delayed") == 1 \
            and sample(text, "ctgw_queue_jobs", state="leased") == 0

    await eventually(refused_and_waiting, timeout=15)
    first.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.proc.wait, 10)
    rows = await sandbox_requests(http, box_url)
    assert {r["status"] for r in rows} == {503}  # nothing was applied before the kill
    assert calls(rows, "orders/update-by-id") == []  # nor sent: it waits for its register

    second, url, ops = spawn_gateway(env)
    processes.append(second)
    assert await legacy_get(http, url, "delete-by-id", delete_of(number)) == 202
    await sandbox_config(http, box_url, fault=None)

    async def deleted() -> bool:
        order = (await sandbox_view(http, box_url, "orders")).get(number)
        return order is not None and bool(order["deleted"])

    await eventually(deleted, timeout=30)
    order = (await sandbox_view(http, box_url, "orders"))[number]
    assert (order["status"], order["sum"], order["updates"]) == ("selling", "100000", 1)
    ok = [(m, s) for m, s in ops_of(await sandbox_requests(http, box_url), number) if s == 200]
    assert ok == [("orders/register", 200), ("orders/update-by-id", 200),
                  ("orders/delete-by-id", 200)]
    await assert_clean(http, [*first.lines, *second.lines], [ops])


# --- 5: a wrong Access-Token -------------------------------------------------------------


async def test_a_wrong_access_token_burns_no_attempt_and_the_right_one_delivers_them_all(
    queue_url: str, http: aiohttp.ClientSession, processes: list[Process],
    capsys: pytest.CaptureFixture[str],
) -> None:
    box, box_url = spawn_sandbox("0.0,0.02")
    processes.append(box)
    await sandbox_config(http, box_url, access_token=ACCESS_TOKEN)
    wrong, url, ops = spawn_gateway(gateway_env(queue_url, box_url,
                                                CTGW_ACCESS_TOKEN=WRONG_ACCESS_TOKEN))
    processes.append(wrong)
    numbers = [f"auth-{i}" for i in range(4)]
    failures: list[float] = []
    for tries, number in enumerate(numbers, 1):  # one call each: the others wait, deferred
        await post_one(http, url, "/api/v1/deals", deal(number))

        async def refused(tries: int = tries) -> bool:
            rows = calls(await sandbox_requests(http, box_url), CREATE)
            return len([r for r in rows if r["status"] == 401]) >= tries

        await eventually(refused, timeout=10)
        await eventually(lambda: settled_but_deferred(http, ops, len(failures) + 1), timeout=10)
        text = await metrics_text(http, ops)
        failures.append(sample(text, "ctgw_upstream_auth_failures_total", method=CREATE))
    assert failures == sorted(failures) and failures[0] >= 1 and failures[-1] >= 4, failures
    for number in numbers:
        shown = await deal_status(http, url, number)
        assert (shown["status"], shown["attempts"]) == ("queued", 0), shown
    assert await sandbox_view(http, box_url, "deals") == {}
    wrong.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(wrong.proc.wait, 15) == 0

    right, url, right_ops = spawn_gateway(gateway_env(queue_url, box_url,
                                                      CTGW_ACCESS_TOKEN=ACCESS_TOKEN))
    processes.append(right)
    begun = asyncio.get_running_loop().time()

    async def all_delivered() -> bool:
        return sorted(await sandbox_view(http, box_url, "deals")) == numbers

    # Refused jobs wait out their deferral (30 s) even after the restart.
    await eventually(all_delivered, timeout=45, interval=0.5)
    waited = asyncio.get_running_loop().time() - begun
    for number in numbers:
        shown = await deal_status(http, url, number)
        assert (shown["status"], shown["attempts"]) == ("delivered", 1), shown
    with capsys.disabled():
        print(f"\n[auth] refused calls={int(failures[-1])}, delivered {len(numbers)} deals"
              f" {waited:.1f}s after the restart with the right token")
    await assert_clean(http, [*wrong.lines, *right.lines], [right_ops])


async def settled_but_deferred(http: aiohttp.ClientSession, ops_url: str, deferred: int) -> bool:
    """Every refused job is back in the queue, deferred, none leased."""
    text = await metrics_text(http, ops_url)
    return sample(text, "ctgw_queue_jobs", state="leased") == 0 and sample(
        text, "ctgw_queue_jobs", state="delayed") == deferred


# --- 6: bodies and paths the routes must take, or refuse in their own words ---------------

# One object nested deeper than the upload limit (uploads.MAX_DEPTH, 8).
DEEP = {"orderNumber": "deep-1", "comment": "x", "customFields": {"a": [[[[[[[[[1]]]]]]]]]}}


async def test_a_lone_item_nested_too_deep_is_refused_as_it_is_inside_an_array(
    start_gateway: Any, backoffice_settings: Settings, http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(backoffice_settings)
    async with http.post(f"{gw.url}/api/v1/deals", json=[DEEP], headers=AUTH) as resp:
        assert resp.status == 202
        [in_array] = (await resp.json())["errors"]
    for path in ("/api/v1/deals", "/api/v1/comments"):
        async with http.post(gw.url + path, json=DEEP, headers=AUTH) as resp:
            body = await resp.json()
            assert resp.status == 422, body
        assert body["error"] == "invalid_item", body
        [error] = body["errors"]
        assert error == {k: v for k, v in in_array.items() if k != "index"} and \
            error["code"] == "too_deep", body
    text = await metrics_text(http, gw.ops_url)
    assert sample(text, "ctgw_jobs_received_total", kind="deal.create", outcome="invalid") == 2
    assert sample(text, "ctgw_jobs_received_total", kind="comment", outcome="invalid") == 1


async def raw_answer(url: str, head: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send ``head`` (and whatever part of a body it holds) on a socket of its own and leave
    the rest unsent: the status and body of the answer, when one comes in ``timeout``."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        async with asyncio.timeout(timeout):
            status_line = await reader.readline()
            headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = int(re.search(r"Content-Length: (\d+)", headers, re.I)[1])  # type: ignore[index]
            return int(status_line.split()[1]), await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_1_0_post_body_that_cannot_be_read_is_400_a_stalled_one_408_a_big_one_413(
    start_gateway: Any, backoffice_settings: Settings,
) -> None:
    gw = await start_gateway(replace(backoffice_settings, body_timeout=1.0))
    register = f"POST {LEGACY}/register/?clientApiId={CLIENT_API_ID} HTTP/1.1\r\nHost: gw\r\n" \
        "Content-Type: application/x-www-form-urlencoded\r\n"
    status, body = await raw_answer(
        gw.url, (register + "Content-Encoding: gzip\r\nContent-Length: 7\r\n\r\nnotgzip").encode())
    assert (status, orjson.loads(body)["error"]) == (400, "malformed_body"), body
    begun = asyncio.get_running_loop().time()
    status, body = await raw_answer(
        gw.url, (register + "Content-Length: 100\r\n\r\norderNumber=").encode())
    assert (status, orjson.loads(body)["error"]) == (408, "body_timeout"), body
    assert asyncio.get_running_loop().time() - begun < 5
    big = backoffice_settings.max_body + 1
    status, body = await raw_answer(
        gw.url, (register + f"Content-Length: {big}\r\n\r\n").encode() + b"x" * big)
    assert status == 413, body


async def test_1_0_paths_are_taken_with_and_without_their_trailing_slash(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    await sandbox_config(http, sandbox.url, client_api_id=CLIENT_API_ID)
    gw = await start_gateway(backoffice_settings)
    a, b = REGISTER_BY_CALL["orderNumber"], REGISTER_BY_PHONE["orderNumber"]
    assert await legacy_get(http, gw.url, "register", REGISTER_BY_CALL, slash=False) == 202
    async with http.post(f"{gw.url}{LEGACY}/register", data=REGISTER_BY_PHONE) as resp:
        assert resp.status == 202, await resp.text()
    assert await legacy_get(http, gw.url, "update-by-id", update_of(a), slash=False) == 202
    assert await legacy_get(http, gw.url, "update-by-id", update_of(b)) == 202
    assert await legacy_get(http, gw.url, "delete-by-id", delete_of(a), slash=False) == 202

    async def applied() -> bool:
        orders = await sandbox_view(http, sandbox.url, "orders")
        return bool(orders.get(a, {}).get("deleted")) and orders.get(b, {}).get("updates") == 1

    await eventually(applied, timeout=20)
    rows = await sandbox_requests(http, sandbox.url)
    assert ops_of(rows, a) == [("orders/register", 200), ("orders/update-by-id", 200),
                               ("orders/delete-by-id", 200)]


async def test_a_deal_whose_order_number_holds_a_slash_is_found_by_either_spelling(
    start_gateway: Any, backoffice_settings: Settings, http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(backoffice_settings)
    number = REGISTER_BY_CALL["orderNumber"]  # "K2TU/sm{7u4X3F", the 1.0 doc's example
    await post_one(http, gw.url, "/api/v1/deals", deal(number))
    for spelled in ("K2TU%2Fsm%7B7u4X3F", "K2TU/sm%7B7u4X3F", "K2TU/sm{7u4X3F"):
        url = yarl.URL(f"{gw.url}/api/v1/deals/{spelled}", encoded=True)
        async with http.get(url, headers=AUTH) as resp:
            body = await resp.json()
            assert resp.status == 200, (spelled, body)
        assert body["orderNumber"] == number, body
    async with http.get(f"{gw.url}/api/v1/deals/K2TU/other", headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


async def test_a_1_0_register_without_an_order_number_is_relayed_and_numbered_by_calltouch(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    """The doc makes orderNumber optional: Calltouch numbers such a deal with its orderId."""
    await sandbox_config(http, sandbox.url, client_api_id=CLIENT_API_ID)
    gw = await start_gateway(backoffice_settings)
    unnumbered = {k: v for k, v in REGISTER_BY_PHONE.items() if k != "orderNumber"}
    for _ in range(2):  # two such deals are two: no dedup, no chain between them
        async with http.post(f"{gw.url}{LEGACY}/register/", data=unnumbered) as resp:
            assert resp.status == 202, await resp.text()

    async def both_registered() -> bool:
        orders = await sandbox_view(http, sandbox.url, "orders")
        return len([n for n, o in orders.items() if n == str(o.get("orderId"))]) == 2

    await eventually(both_registered, timeout=20)


async def test_phones_posted_while_the_create_is_queued_go_with_the_create(
    start_gateway: Any, backoffice_settings: Settings, sandbox: Any,
    http: aiohttp.ClientSession,
) -> None:
    """A CRM posts a deal, then its contact a moment later: no update can send matching, so
    the create not sent yet takes it. Before, the phones were stripped into an update."""
    gw = await start_gateway(replace(backoffice_settings, batch_linger=3.0))
    first = await post_one(http, gw.url, "/api/v1/deals", deal("late-1", phones=[], emails=[]))
    then = await post_one(http, gw.url, "/api/v1/deals", deal("late-1", revenue=2000))
    assert then["id"] == first["id"], (first, then)

    async def delivered() -> bool:
        return (await deal_status(http, gw.url, "late-1"))["status"] == "delivered"

    await eventually(delivered, timeout=20)
    rows = await sandbox_requests(http, sandbox.url)
    [create] = calls(rows, CREATE)
    [order] = create["json"]["orders"]
    assert order["revenue"] == "2000.00" and calls(rows, UPDATE) == []
    # By the contact first; the custom source only as the last resort.
    by_phone, *_, last = order["matching"]
    assert by_phone["type"] == "callContact" and by_phone["callContactParams"]["phones"]
    assert last["type"] == "customSources", order["matching"]
