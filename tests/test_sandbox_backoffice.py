"""The sandbox's deal, comment and 1.0 methods answer as documented and keep what they applied.

Every test talks to a real sandbox on port 0. The sandbox limits a client IP to 5 calls a
second across all methods, so a test makes at most 5 Calltouch calls unless the limit is what
it tests (the ``/sandbox/*`` endpoints are not counted).
"""
# The documented wordings and the values of Calltouch's examples are Russian.
# ruff: noqa: RUF001

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway.sandbox.leadservice import NO_LEAD, NO_TOKEN, TOO_MANY
from gateway.sandbox.office import EXISTS, NOT_FOUND, SESSION
from gateway.sandbox.orders import BAD_CLIENT_API_ID
from gateway.sandbox.run import SandboxThread
from gateway.sandbox.server import REGISTER

SITE = "18990"
HEADERS = {"Access-Token": "any-token", "SiteId": SITE}
CREATE = "/lead-service/v1/api/client-order/create"
UPDATE = "/lead-service/v1/api/client-order/update"
COMMENT = "/lead-service/v1/api/comment/lead/add"
ORDERS = "/calls-service/RestAPI/orders"
DATE = "19-07-2021 16:42:32"


@pytest.fixture
def url() -> Iterator[str]:
    simulator = SandboxThread(latency=(0.0, 0.0))
    yield simulator.start()
    simulator.stop()


async def read(resp: aiohttp.ClientResponse) -> Any:
    """The JSON of an answer; a 503's text, which is not JSON."""
    return await resp.json() if resp.content_type == "application/json" else await resp.text()


async def post(http: aiohttp.ClientSession, url: str, path: str, body: Any,
               headers: dict[str, str] = HEADERS) -> tuple[int, Any]:
    async with http.post(url + path, json=body, headers=headers) as resp:
        return resp.status, await read(resp)


async def legacy(http: aiohttp.ClientSession, url: str, method: str,
                 **params: str) -> tuple[int, Any]:
    async with http.get(f"{url}{ORDERS}/{method}/", params={"clientApiId": "k", **params}) as resp:
        return resp.status, await read(resp)


async def view(http: aiohttp.ClientSession, url: str, name: str) -> Any:
    async with http.get(f"{url}/sandbox/{name}") as resp:
        assert resp.status == 200
        return await resp.json()


async def configure(http: aiohttp.ClientSession, url: str, **config: Any) -> int:
    async with http.post(f"{url}/sandbox/config", json=config) as resp:
        return resp.status


async def register(http: aiohttp.ClientSession, url: str, **form: str) -> dict[str, Any]:
    async with http.post(url + REGISTER.format(site_id=SITE), data=form) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json(content_type=None)
        return answer


def deal(number: str, **fields: Any) -> dict[str, Any]:
    return {"orderNumber": number, "status": "Визит", "statusDate": DATE, "orderDate": DATE,
            "revenue": "1000.00", **fields}


def violations(body: Any) -> list[dict[str, str]]:
    assert body["meta"] == [] and body["data"]["type"] == "validationError", body
    assert body["data"]["apiErrorData"] is None
    found: list[dict[str, str]] = body["data"]["validationErrorData"]["violations"]
    return found


# --- deals 2.0 ---------------------------------------------------------------------------------

async def test_create_answers_each_order_in_request_order_and_keeps_it(
        http: aiohttp.ClientSession, url: str) -> None:
    matching = [{"type": "customSources", "customSourceParams": {
        "source": "оффлайн-визит", "medium": "оффлайн-визит", "campaign": "оффлайн-визит"}}]
    first = deal("B-2", addTags=[{"tag": "Тег1"}, {"tag": "Тег2"}], matching=matching,
                 funnel="Магазин", manager="Коля")
    status, body = await post(http, url, CREATE, {"crm": "ERP", "orders": [first, deal("A-1")]})
    assert status == 200 and body["meta"] == []
    results = body["data"]["orders"]
    assert [r["orderNumber"] for r in results] == ["B-2", "A-1"]
    assert [r["error"] for r in results] == [None, None]
    ids = [r["calltouchOrderId"] for r in results]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 2
    deals = (await view(http, url, "deals"))["deals"]
    assert deals["B-2"] == {
        "orderNumber": "B-2", "siteId": SITE, "calltouchOrderId": ids[0], "crm": "ERP",
        "status": "Визит", "statusDate": DATE, "orderDate": DATE, "revenue": "1000.00",
        "tags": ["Тег1", "Тег2"], "comments": [], "customFields": {}, "matching": matching,
        "matched": {"type": "customSources", "source": "оффлайн-визит",
                    "medium": "оффлайн-визит", "campaign": "оффлайн-визит"},
        "funnel": "Магазин", "manager": "Коля", "updates": 0}
    assert deals["A-1"]["calltouchOrderId"] == ids[1]
    assert (await view(http, url, "deals?site=other"))["deals"] == {}


async def test_a_second_create_of_an_order_number_is_an_item_error(
        http: aiohttp.ClientSession, url: str) -> None:
    await post(http, url, CREATE, {"orders": [deal("A-1", status="Новый")]})
    status, body = await post(http, url, CREATE, {"orders": [deal("A-1", status="Другой"),
                                                             deal("A-2")]})
    assert status == 200
    [again, fresh] = body["data"]["orders"]
    assert again == {"orderNumber": "A-1", "calltouchOrderId": None, "error": EXISTS}
    assert fresh["error"] is None and fresh["calltouchOrderId"] is not None
    deals = (await view(http, url, "deals"))["deals"]
    assert deals["A-1"]["status"] == "Новый" and set(deals) == {"A-1", "A-2"}
    # The same orderNumber on another SiteId is another deal.
    status, body = await post(http, url, CREATE, {"orders": [deal("A-1")]},
                              {**HEADERS, "SiteId": "777"})
    assert body["data"]["orders"][0]["error"] is None


async def test_an_update_applies_only_what_it_carries(
        http: aiohttp.ClientSession, url: str) -> None:
    tags = [{"tag": "a"}, {"tag": "b"}]
    _, created = await post(http, url, CREATE, {"orders": [
        deal("A-1", addTags=tags, customFields=[{"field": "k1", "value": "v1"}]),
        deal("A-2", addTags=tags)]})
    ids = [r["calltouchOrderId"] for r in created["data"]["orders"]]
    status, body = await post(http, url, UPDATE, {"orders": [
        {"orderNumber": "A-1", "status": "Оплачен", "statusDate": "20-07-2021 10:00:00",
         "addTags": {"overwrite": False, "tags": [{"tag": "b"}, {"tag": "c"}]},
         "addNewComment": {"text": "первый"}, "customFields": [{"field": "k2", "value": 2}]},
        {"orderNumber": "NOPE", "status": "x"},
        {"orderNumber": "A-2", "addTags": {"overwrite": True, "tags": [{"tag": "z"}]}},
        {"orderNumber": "A-1", "addNewComment": {"text": "второй"}},
    ]})
    assert status == 200
    assert body["data"]["orders"] == [
        {"orderNumber": "A-1", "calltouchOrderId": ids[0], "error": None},
        {"orderNumber": "NOPE", "calltouchOrderId": None, "error": NOT_FOUND},
        {"orderNumber": "A-2", "calltouchOrderId": ids[1], "error": None},
        {"orderNumber": "A-1", "calltouchOrderId": ids[0], "error": None}]
    deals = (await view(http, url, "deals"))["deals"]
    one, two = deals["A-1"], deals["A-2"]
    assert (one["status"], one["statusDate"], one["revenue"]) == (
        "Оплачен", "20-07-2021 10:00:00", "1000.00")  # revenue was not carried: kept
    assert one["tags"] == ["a", "b", "c"] and two["tags"] == ["z"]
    assert one["comments"] == ["первый", "второй"] and two["comments"] == []
    assert one["customFields"] == {"k1": "v1", "k2": 2}
    assert (one["updates"], two["updates"]) == (2, 1) and two["status"] == "Визит"
    assert set(deals) == {"A-1", "A-2"}


@pytest.mark.parametrize(("bad", "path"), [
    ({"orderNumber": ""}, "orders[1].orderNumber"),
    ({"orderNumber": None}, "orders[1].orderNumber"),
    ({"orderNumber": "x" * 257}, "orders[1].orderNumber"),
    ({"statusDate": "19.07.2021 16:42:32"}, "orders[1].statusDate"),
    ({"orderDate": "2021-07-19 16:42:32"}, "orders[1].orderDate"),
    ({"orderDate": "31-02-2021 16:42:32"}, "orders[1].orderDate"),
    ({"revenue": "a lot"}, "orders[1].revenue"),
    ({"matching": [{"type": "customSources", "customSourceParams": {}},
                   {"type": "byMagic"}]}, "orders[1].matching[1].type"),
    ({"matching": [{"type": "requestContact", "requestContactParams": {
        "phones": ["79157771122"], "date": DATE, "requestTypeToMatch": "nearest",
        "searchDepth": 0}}]}, "orders[1].matching[0].requestContactParams.searchDepth"),
    ({"addTags": {"overwrite": "yes", "tags": []}}, "orders[1].addTags"),
    ({"customFields": {"k": "v"}}, "orders[1].customFields"),
    ({"addNewComment": {"text": " "}}, "orders[1].addNewComment.text"),
])
@pytest.mark.parametrize("path_of", [CREATE, UPDATE])
async def test_a_validation_error_refuses_the_whole_batch(
        http: aiohttp.ClientSession, url: str, bad: dict[str, Any], path: str,
        path_of: str) -> None:
    status, body = await post(http, url, path_of, {"orders": [deal("OK-1"), deal("OK-2", **bad)]})
    assert status == 400
    [violation] = violations(body)
    assert violation["fieldPath"] == path and violation["message"], violation
    assert (await view(http, url, "deals"))["deals"] == {}  # the good neighbour is not applied


async def test_every_violation_of_a_batch_is_listed(http: aiohttp.ClientSession, url: str) -> None:
    status, body = await post(http, url, CREATE, {"orders": [
        deal(""), deal("A", orderDate="yesterday", matching=[{"type": "nope"}])]})
    assert status == 400
    assert [v["fieldPath"] for v in violations(body)] == [
        "orders[0].orderNumber", "orders[1].orderDate", "orders[1].matching[0].type"]


@pytest.mark.parametrize(("path", "key"), [(CREATE, "orders"), (UPDATE, "orders"),
                                           (COMMENT, "comments")])
async def test_more_than_100_items_are_refused(
        http: aiohttp.ClientSession, url: str, path: str, key: str) -> None:
    item = deal("A") if key == "orders" else {
        "matching": [{"type": "call", "callParams": {"callId": 1}}], "addComment": "x"}
    status, body = await post(http, url, path, {key: [item] * 101})
    assert status == 400
    assert violations(body) == [{"fieldPath": key, "message": TOO_MANY}]
    status, body = await post(http, url, path, {key: [item] * 100})
    assert status == 200 and len(body["data"][key]) == 100
    rows = await view(http, url, "requests")
    assert [r["items"] for r in rows] == [101, 100]


@pytest.mark.parametrize("headers", [
    {"SiteId": SITE}, {"Access-Token": "", "SiteId": SITE}, {"Access-Token": "t"}])
@pytest.mark.parametrize("path", [CREATE, UPDATE, COMMENT])
async def test_a_missing_token_or_site_is_401(
        http: aiohttp.ClientSession, url: str, headers: dict[str, str], path: str) -> None:
    status, body = await post(http, url, path, {"orders": [deal("A")]}, headers)
    assert (status, body) == (401, {"message": NO_TOKEN})
    assert (await view(http, url, "deals"))["deals"] == {}


async def test_a_configured_token_is_the_only_one_accepted(
        http: aiohttp.ClientSession, url: str) -> None:
    assert await configure(http, url, access_token="right-token-xyz",
                           client_api_id="right-key-xyz") == 200
    status, body = await post(http, url, CREATE, {"orders": [deal("A")]})
    assert (status, body) == (401, {"message": NO_TOKEN})
    status, _ = await post(http, url, CREATE, {"orders": [deal("A")]},
                           {"Access-Token": "right-token-xyz", "SiteId": SITE})
    assert status == 200
    assert await legacy(http, url, "delete-by-id", orderId="1") == (
        401, {"message": BAD_CLIENT_API_ID})
    assert await configure(http, url, access_token=None) == 200  # any again
    status, _ = await post(http, url, UPDATE, {"orders": [{"orderNumber": "A"}]})
    assert status == 200
    assert await configure(http, url, access_token=5) == 400
    rows = await view(http, url, "requests")
    assert [r["status"] for r in rows] == [401, 200, 401, 200]  # what was answered
    assert all("right-" not in str(r) for r in rows)  # no token kept


# --- comments ----------------------------------------------------------------------------------

def by_request(request_id: Any) -> dict[str, Any]:
    return {"type": "request", "requestParams": {"requestId": request_id}}


def by_contact(**contact: list[str]) -> dict[str, Any]:
    return {"type": "requestContact", "requestContactParams": {
        **contact, "date": DATE, "requestTypeToMatch": "nearest", "searchDepth": 120}}


async def test_a_comment_finds_a_registered_lead_or_says_it_is_not_found(
        http: aiohttp.ClientSession, url: str) -> None:
    lead = await register(http, url, fio="x", phoneNumber="89205550055", requestNumber="R-1",
                          tags="web,promo")
    other = await register(http, url, email="Ivan@Example.com", requestNumber="R-2")
    tagged = {"type": "request", "requestParams": {
        "requestId": lead["requestId"], "tags": ["web", "vip"], "tagsLogic": "and"}}
    status, body = await post(http, url, COMMENT, {"comments": [
        {"matching": [by_request(str(lead["requestId"]))], "addComment": "по id"},
        {"matching": [by_request(999), {"type": "call", "callParams": {"callId": 42}}],
         "addComment": "звонок"},
        {"matching": [by_contact(phones=["+7 (920) 555-00-55"])], "addComment": "по телефону"},
        {"matching": [by_contact(phones=["70000000000"], emails=["ivan@example.com"])],
         "addComment": "по почте"},
        {"matching": [by_request(999), tagged,
                      {"type": "callContact", "callContactParams": {
                          "phones": ["79205550055"], "date": DATE,
                          "callTypeToMatch": "nearest", "searchDepth": 120}}],
         "addComment": "никому"},
    ]})
    assert status == 200 and body["meta"] == []
    found = body["data"]["comments"]
    lead_info = {"requestId": str(lead["requestId"]), "requestNumber": "R-1"}
    assert found[0] == {"requestInfo": lead_info, "callInfo": None, "commented": True,
                        "error": None}
    assert found[1] == {"requestInfo": None, "commented": True, "error": None, "callInfo": {
        "callId": "42", "callReferenceId": None, "sipCallId": None}}
    assert found[2]["requestInfo"] == lead_info
    assert found[3]["requestInfo"] == {"requestId": str(other["requestId"]),
                                       "requestNumber": "R-2"}
    assert found[4] == {"requestInfo": None, "callInfo": None, "commented": False,
                        "error": NO_LEAD}
    kept = (await view(http, url, "comments"))["comments"]
    assert [(c["text"], c["requestId"], c["callId"]) for c in kept] == [
        ("по id", str(lead["requestId"]), None), ("звонок", None, "42"),
        ("по телефону", str(lead["requestId"]), None),
        ("по почте", str(other["requestId"]), None)]
    assert {c["siteId"] for c in kept} == {SITE}


async def test_a_lead_by_contact_is_found_only_within_the_search_depth_before_the_date(
        http: aiohttp.ClientSession, url: str) -> None:
    """requestContact: ``searchDepth`` minutes before ``date``, as the comments doc says."""
    at = datetime.strptime(DATE, "%d-%m-%Y %H:%M:%S")

    def dated(minutes: int) -> str:  # a register's requestDate, ``minutes`` after DATE
        return (at + timedelta(minutes=minutes)).strftime("%d.%m.%Y %H:%M:%S")

    inside = await register(http, url, phoneNumber="79205550001", requestNumber="in",
                            requestDate=dated(-119))
    await register(http, url, phoneNumber="79205550002", requestNumber="early",
                   requestDate=dated(-121))
    await register(http, url, phoneNumber="79205550003", requestNumber="late",
                   requestDate=dated(1))
    undated = await register(http, url, phoneNumber="79205550004", requestNumber="undated")
    status, body = await post(http, url, COMMENT, {"comments": [
        {"matching": [by_contact(phones=[f"7920555000{n}"])], "addComment": str(n)}
        for n in range(1, 5)]})
    assert status == 200, body
    found = [c["requestInfo"] and c["requestInfo"]["requestId"] for c in body["data"]["comments"]]
    assert found == [str(inside["requestId"]), None, None, str(undated["requestId"])]


@pytest.mark.parametrize(("bad", "path"), [
    ({"addComment": " "}, "comments[1].addComment"),
    ({"addComment": None}, "comments[1].addComment"),
    ({"matching": []}, "comments[1].matching"),
    ({"matching": None}, "comments[1].matching"),
    ({"matching": [{"type": "customSources", "customSourceParams": {}}]},
     "comments[1].matching[0].type"),
    ({"matching": [{"type": "request", "requestParams": {}}]},
     "comments[1].matching[0].requestParams.requestId"),
    ({"matching": [by_contact()]}, "comments[1].matching[0].requestContactParams.phones"),
    ({"matching": [{"type": "call", "callParams": {"callId": 1}}] * 21}, "comments[1].matching"),
])
async def test_a_comment_validation_error_applies_nothing(
        http: aiohttp.ClientSession, url: str, bad: dict[str, Any], path: str) -> None:
    good = {"matching": [{"type": "call", "callParams": {"callId": 7}}], "addComment": "ok"}
    status, body = await post(http, url, COMMENT, {"comments": [good, {**good, **bad}]})
    assert status == 400
    assert [v["fieldPath"] for v in violations(body)] == [path]
    assert (await view(http, url, "comments"))["comments"] == []


async def test_a_register_answer_carries_the_session_when_a_session_id_was_given(
        http: aiohttp.ClientSession, url: str) -> None:
    with_session = await register(http, url, fio="x", sessionId="1846408120")
    assert with_session["session"] == {"sessionId": 1846408120, **SESSION}
    assert set(SESSION) == {"source", "medium", "utmSource", "utmMedium", "utmCampaign",
                            "utmContent", "utmTerm", "keywords", "city"}
    assert (await register(http, url, fio="x"))["session"] is None
    assert (await register(http, url, fio="x", sessionId=""))["session"] is None


# --- deals 1.0 ---------------------------------------------------------------------------------

REGISTER_1 = {"orderSum": "1000", "orderStatus": "new", "orderDate": "26.03.2018 10:00:00",
              "service": "AmoCRM"}


async def test_a_1_0_deal_is_registered_by_request_updated_and_deleted(
        http: aiohttp.ClientSession, url: str) -> None:
    lead = await register(http, url, fio="x", sessionId="55", requestNumber="R-9")
    status, made = await legacy(http, url, "register", requestId=str(lead["requestId"]),
                                orderNumber="hzwe4iCHiwauun", tags="mytag1,mytag2",
                                manager="Коля", **{"custom[field1]": "v1"}, **REGISTER_1)
    assert status == 200
    assert made["orderNumber"] == "hzwe4iCHiwauun" and made["requestId"] == lead["requestId"]
    assert made["status"] == "new" and made["sum"] == "1000" and made["currentAmount"] == 1000
    assert made["sent"] == "26.03.2018" and "callId" not in made
    assert made["dateCreated"] == 1522047600000  # 26.03.2018 10:00 Moscow time
    status, changed = await legacy(http, url, "update-by-id", orderNumber="hzwe4iCHiwauun",
                                   orderSum="6000", status="selling", tags="newtag")
    assert status == 200
    assert (changed["orderId"], changed["orderNumber"]) == (made["orderId"], "hzwe4iCHiwauun")
    assert changed["order"]["status"] == "selling" and changed["order"]["sum"] == "6000"
    assert changed["session"] == {"sessionId": 55, **SESSION}
    status, gone = await legacy(http, url, "delete-by-id", orderId=str(made["orderId"]))
    assert (status, gone) == (200, {"orderId": made["orderId"], "deleted": True})
    assert await legacy(http, url, "update-by-id", orderId=str(made["orderId"])) == (
        400, {"message": NOT_FOUND})
    order = (await view(http, url, "orders"))["orders"]["hzwe4iCHiwauun"]
    assert order == {
        "orderId": made["orderId"], "orderNumber": "hzwe4iCHiwauun", "sum": "6000",
        "status": "selling", "orderDate": "26.03.2018 10:00:00", "service": "AmoCRM",
        "manager": "Коля", "requestId": str(lead["requestId"]), "tags": ["newtag"],
        "customFields": {"field1": "v1"}, "updates": 1, "deleted": True,
        "matched": {"type": "request", "requestId": str(lead["requestId"]),
                    "requestNumber": "R-9"}}


async def test_a_1_0_deal_by_call_by_post_form_and_by_contact(
        http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(f"{url}{ORDERS}/register/", data={
            "clientApiId": "k", "callId": "32496964", **REGISTER_1}) as resp:
        assert resp.status == 200
        by_call = await resp.json(content_type=None)
    assert by_call["callId"] == 32496964 and by_call["orderNumber"] == str(by_call["orderId"])
    status, by_phone = await legacy(http, url, "register", phoneNumber="79205550055",
                                    orderNumber="J2", **REGISTER_1)
    assert status == 200 and "callId" not in by_phone and "requestId" not in by_phone
    status, changed = await legacy(http, url, "update-by-id", orderId=str(by_call["orderId"]),
                                   comment="ok")
    assert status == 200 and changed["order"]["callId"] == 32496964
    orders = (await view(http, url, "orders"))["orders"]
    assert orders[str(by_call["orderId"])]["matched"] == {"type": "call", "callId": "32496964"}
    assert orders[str(by_call["orderId"])]["comment"] == "ok"
    assert orders["J2"]["matched"] is None and orders["J2"]["deleted"] is False
    rows = await view(http, url, "requests")
    assert [r["method"] for r in rows] == ["orders/register"] * 2 + ["orders/update-by-id"]
    assert all("clientApiId" not in r["form"] for r in rows)


@pytest.mark.parametrize(("params", "status", "message"), [
    ({"clientApiId": ""}, 401, BAD_CLIENT_API_ID),
    ({"orderSum": ""}, 400, "Не указан обязательный параметр orderSum"),
    ({"service": ""}, 400, "Не указан обязательный параметр service"),
    ({"orderDate": "26-03-2018 10:00:00"}, 400, "orderDate"),
    ({"orderSum": "много"}, 400, "orderSum"),
    ({"requestId": "123"}, 400, "Заявка не найдена"),
    ({"callId": "1", "requestNumber": "R"}, 400, "одновременно"),
])
async def test_a_1_0_register_refuses_what_the_documentation_requires(
        http: aiohttp.ClientSession, url: str, params: dict[str, str], status: int,
        message: str) -> None:
    answer = await legacy(http, url, "register", **{**REGISTER_1, **params})
    assert answer[0] == status and message in answer[1]["message"], answer
    assert (await view(http, url, "orders"))["orders"] == {}


async def test_1_0_update_and_delete_of_an_unknown_deal_are_400(
        http: aiohttp.ClientSession, url: str) -> None:
    await legacy(http, url, "register", orderNumber="N-1", **REGISTER_1)
    assert await legacy(http, url, "update-by-id", orderNumber="N-2") == (
        400, {"message": NOT_FOUND})
    assert await legacy(http, url, "delete-by-id", orderId="1") == (400, {"message": NOT_FOUND})
    assert await legacy(http, url, "update-by-id") == (400, {"message": NOT_FOUND})
    status, again = await legacy(http, url, "register", orderNumber="N-1", **REGISTER_1)
    assert (status, again) == (400, {"message": EXISTS})
    assert (await view(http, url, "orders"))["orders"]["N-1"]["updates"] == 0


# --- one window, the knobs, the log ------------------------------------------------------------

async def test_one_window_counts_every_method(http: aiohttp.ClientSession, url: str) -> None:
    start = time.monotonic()
    for i in range(3):
        await register(http, url, fio=f"x{i}")
    answers = [await post(http, url, CREATE, {"orders": [deal("A"), deal("B")]}),
               await post(http, url, COMMENT, {"comments": [
                   {"matching": [by_request(1)], "addComment": "x"}]})]
    sixth = await legacy(http, url, "register", **REGISTER_1)
    elapsed = time.monotonic() - start
    assert elapsed < 1, "too slow a machine for a one-second window"
    assert [a[0] for a in answers] == [200, 200] and sixth[0] == 429
    rows = await view(http, url, "requests")
    assert [(r["method"], r["items"], r["status"]) for r in rows] == [
        ("register", 1, 200)] * 3 + [("client-order/create", 2, 200),
                                     ("comment/lead/add", 1, 200), ("orders/register", 1, 429)]
    assert [r["form"] for r in rows[3:5]] == [{}, {}]
    assert rows[3]["json"]["orders"][0]["orderNumber"] == "A" and rows[3]["site"] == SITE
    assert rows[0]["site"] == SITE and rows[0]["json"] is None
    stats = await view(http, url, "stats")
    assert stats["by_method"] == {"register": 3, "client-order/create": 1,
                                  "comment/lead/add": 1, "orders/register": 1}
    assert stats["by_status"] == {"200": 5, "429": 1}
    assert (await view(http, url, "orders"))["orders"] == {}  # the refused one did nothing


@pytest.mark.parametrize("call", ["deal", "legacy"])
async def test_faults_and_latency_apply_to_every_method(
        http: aiohttp.ClientSession, url: str, call: str) -> None:
    async def once() -> tuple[int, Any]:
        if call == "deal":
            return await post(http, url, CREATE, {"orders": [deal("A")]})
        return await legacy(http, url, "register", orderNumber="A", **REGISTER_1)

    assert await configure(http, url, fault="503") == 200
    assert (await once())[0] == 503
    assert await configure(http, url, fault="error200") == 200
    status, body = await once()
    assert (status, body) == (200, {"meta": [], "data": {"message": "Ошибка доступа"}})
    assert await configure(http, url, fault=None, latency=[0.2, 0.2]) == 200
    start = time.monotonic()
    assert (await once())[0] == 200
    assert time.monotonic() - start >= 0.2
    deals = (await view(http, url, "deals"))["deals"]
    orders = (await view(http, url, "orders"))["orders"]
    assert len(deals) + len(orders) == 1  # only the call without a fault was applied


async def test_reset_forgets_what_was_applied_but_not_the_tokens(
        http: aiohttp.ClientSession, url: str) -> None:
    assert await configure(http, url, client_api_id="k") == 200
    lead = await register(http, url, fio="x")
    await post(http, url, CREATE, {"orders": [deal("A")]})
    await post(http, url, COMMENT, {"comments": [
        {"matching": [by_request(lead["requestId"])], "addComment": "x"}]})
    await legacy(http, url, "register", orderNumber="N", **REGISTER_1)
    assert (await view(http, url, "comments"))["comments"]
    async with http.post(f"{url}/sandbox/reset") as resp:
        assert resp.status == 200
    assert (await view(http, url, "deals"))["deals"] == {}
    assert (await view(http, url, "comments"))["comments"] == []
    assert (await view(http, url, "orders"))["orders"] == {}
    assert await view(http, url, "requests") == []
    _, body = await post(http, url, COMMENT, {"comments": [
        {"matching": [by_request(lead["requestId"])], "addComment": "x"}]})
    assert body["data"]["comments"][0]["error"] == NO_LEAD  # the leads are forgotten too
    assert (await legacy(http, url, "register", clientApiId="other", **REGISTER_1))[0] == 401
