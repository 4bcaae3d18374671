"""The deal kinds (deals 2.0) and the lead-service answer they share (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.calltouch.answers import Convert, Defer, Delivered, Permanent, Retry, http_failure
from gateway.calltouch.client import Reply
from gateway.errors import Invalid
from gateway.kinds import deal_fields as deals
from gateway.kinds import leadservice as ls
from gateway.kinds.deal import (
    KIND_CREATE,
    KIND_UPDATE,
    DealCreateKind,
    DealUpdateKind,
    update_order,
)
from gateway.kinds.deal_fields import Fallback, order_number, payload, validate
from gateway.kinds.deal_merge import STATUS_SEEN, follow, merge
from gateway.queue.base import Job

MOSCOW = ZoneInfo("Europe/Moscow")
NOW = datetime(2024, 3, 15, 9, 30, 0, tzinfo=UTC)  # 12:30:00 in Moscow
TODAY = "15-03-2024 12:30:00"
SITE_IDS = {"default": "111", "shop": "222"}
TOKENS = {"default": "tok-default", "shop": "tok-shop"}
PHONE, EMAIL = "+7 (915) 777-11-22", "Ivan.Petrov@Example.RU"
OFFLINE = "оффлайн-визит"
FUZZ = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


TWO_LINES = "\n".join(["первая", "вторая"])
DEFAULT = Fallback()


def ok(data: dict[str, Any], fallback: Fallback = DEFAULT) -> dict[str, Any]:
    return validate(data, MOSCOW, fallback, now=NOW).fields


def codes(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(Invalid) as info:
        validate(data, MOSCOW, now=NOW)
    assert info.value.status == 422
    assert info.value.error == "invalid_deal"
    return [(e.field, e.code) for e in info.value.errors]


def job(fields: dict[str, Any] | bytes, *, site: str = "default", after: str | None = None,
        kind: str = KIND_CREATE, name: str = "j1") -> Job:
    body = fields if isinstance(fields, bytes) else orjson.dumps(fields)
    return Job(name, kind, body, 0.0, 0, 1, site, after)


def reply(body: object, status: int = 200) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Reply(status, raw, http_failure(status, {}, raw))


def results(*items: dict[str, Any]) -> dict[str, Any]:
    return {"meta": [], "data": {"orders": list(items)}}


def violations(*paths: str) -> dict[str, Any]:
    found = [{"fieldPath": p, "message": "This value should not be blank."} for p in paths]
    return {"meta": [], "data": {"type": "validationError", "apiErrorData": None,
                                 "validationErrorData": {"violations": found}}}


def create() -> DealCreateKind:
    return DealCreateKind(SITE_IDS, TOKENS, 0.5)


def update() -> DealUpdateKind:
    return DealUpdateKind(SITE_IDS, TOKENS, 0.5)


# --- fields ---------------------------------------------------------------------------------


def test_a_full_deal_is_normalised() -> None:
    fields = ok({
        "orderNumber": "  UniqueDealId2 ", "orderDate": "19-07-2021 16:42:32",
        "status": "Визит", "statusDate": "19.07.2021 16:45:00", "revenue": 1000,
        "funnel": "Магазин", "currency": "RUB", "manager": "Мария", "orderName": "Заказ 12",
        "orderLink": "https://crm.example.ru/deal/12", "tags": ["Масла", "Товар"],
        "comment": TWO_LINES, "customFields": {"Склад": "Север"},
    })
    assert fields["orderNumber"] == "UniqueDealId2"
    assert fields["orderDate"] == "19-07-2021 16:42:32"
    assert fields["statusDate"] == "19-07-2021 16:45:00"
    assert fields["revenue"] == "1000.00"
    assert fields["tags"] == ["Масла", "Товар"]
    assert fields["comment"] == TWO_LINES
    assert fields["customFields"] == {"Склад": "Север"}
    assert fields["orderLink"] == "https://crm.example.ru/deal/12"


@pytest.mark.parametrize(("raw", "text"), [
    (1000, "1000.00"), (0, "0.00"), ("1000", "1000.00"), (" 1000.5 ", "1000.50"),
    (1000.1, "1000.10"), (0.1 + 0.2, "0.30"), ("0.005", "0.01"), (-0.0, "0.00"),
    ("999999999999999.99", "999999999999999.99"),
])
def test_revenue_is_sent_with_two_decimals(raw: object, text: str) -> None:
    assert ok({"orderNumber": "A", "revenue": raw})["revenue"] == text


@pytest.mark.parametrize("raw", [
    -1, "-1", "1,5", "1e3", "1_000", "abc", True, float("nan"), float("inf"), 10**15,
    "1000000000000000", "\u0661\u0662", [1], {"a": 1},
])
def test_bad_revenue_is_invalid_amount(raw: object) -> None:
    assert codes({"orderNumber": "A", "revenue": raw}) == [("revenue", "invalid_amount")]


@pytest.mark.parametrize(("raw", "text"), [
    ("19-07-2021 16:42:32", "19-07-2021 16:42:32"),
    ("19.07.2021 16:42:32", "19-07-2021 16:42:32"),
    ("2021-07-19T16:42:32", "19-07-2021 16:42:32"),          # naive: the site's own time
    ("2021-07-19T13:42:32+00:00", "19-07-2021 16:42:32"),    # moved into Moscow
    ("2021-07-19T13:42:32Z", "19-07-2021 16:42:32"),
    ("2021-07-19", "19-07-2021 00:00:00"),
    ("0005-01-02T03:04:05", "02-01-0005 03:04:05"),          # the year keeps four digits
])
def test_dates_are_written_as_lead_service_reads_them(raw: str, text: str) -> None:
    assert ls.service_date(raw, MOSCOW) == text
    assert ok({"orderNumber": "A", "orderDate": raw})["orderDate"] == text


@pytest.mark.parametrize("raw", [
    "19/07/2021 16:42:32", "31-02-2021 10:00:00", "yesterday", 20210719, "1" * 41,
    "0001-01-01T00:00:00+05:00",  # moved into Moscow it leaves year 1
])
def test_bad_dates_are_invalid_date(raw: object) -> None:
    with pytest.raises(ls.f.Bad) as info:
        ls.service_date(raw, MOSCOW)
    assert info.value.code == "invalid_date"
    assert codes({"orderNumber": "A", "orderDate": raw}) == [("orderDate", "invalid_date")]


def test_order_number_is_required_and_one_line() -> None:
    assert codes({}) == [("orderNumber", "required")]
    assert codes({"orderNumber": "   "}) == [("orderNumber", "required")]
    assert codes({"orderNumber": "a\nb"}) == [("orderNumber", "invalid_characters")]
    assert codes({"orderNumber": "x" * 257}) == [("orderNumber", "too_long")]
    assert ok({"orderNumber": "x" * 256})["orderNumber"] == "x" * 256
    assert ok({"orderNumber": 42})["orderNumber"] == "42"


def test_every_bad_field_is_listed_at_once() -> None:
    assert sorted(codes({
        "orderNumber": "", "revenue": "-1", "orderLink": "ftp://x", "unknown": 1,
        "phones": ["123"], "customFields": [1], "tags": [{"a": 1}],
    }), key=str) == sorted([
        ("orderNumber", "required"), ("revenue", "invalid_amount"),
        ("orderLink", "invalid_url"), ("unknown", "unknown_field"),
        ("phones[0]", "invalid_phone"), ("customFields", "invalid_type"),
        ("tags", "invalid_type"),
    ], key=str)


def test_custom_fields_follow_the_lead_rules() -> None:
    many = {f"f{i}": "v" for i in range(21)}
    assert codes({"orderNumber": "A", "customFields": many}) == [
        ("customFields", "too_many_custom_fields")]


def test_a_status_without_its_date_is_dated_when_accepted() -> None:
    fields = ok({"orderNumber": "A", "status": "Оплачен"})
    assert fields["statusDate"] == TODAY


def test_a_status_date_needs_its_status() -> None:
    assert codes({"orderNumber": "A", "statusDate": TODAY}) == [
        ("statusDate", "status_required")]


def test_empty_values_are_not_given() -> None:
    fields = ok({"orderNumber": "A", "status": "", "tags": [], "customFields": {},
                 "comment": None, "phones": []})
    assert set(fields) == {"orderNumber", "fallback"}


# --- contacts and matching ------------------------------------------------------------------


def test_matching_is_built_from_phones_and_emails() -> None:
    fields = ok({"orderNumber": "A", "orderDate": "19-07-2021 16:42:32",
                 "phones": [PHONE, "89009991122", PHONE], "emails": [EMAIL]})
    phones = ["79157771122", "79009991122"]
    assert fields["matching"] == [
        {"type": "callContact", "callContactParams": {
            "phones": phones, "date": "19-07-2021 16:42:32", "searchDepth": 259200,
            "callTypeToMatch": "nearest"}},
        {"type": "requestContact", "requestContactParams": {
            "emails": ["Ivan.Petrov@example.ru"], "phones": phones,
            "date": "19-07-2021 16:42:32", "searchDepth": 259200,
            "requestTypeToMatch": "nearest"}},
        {"type": "customSources", "customSourceParams": {
            "source": OFFLINE, "medium": OFFLINE, "campaign": OFFLINE}},
    ]
    assert "phones" not in fields and "emails" not in fields
    assert "fallback" not in fields


def test_emails_alone_match_form_requests_only() -> None:
    matching = ok({"orderNumber": "A", "emails": EMAIL})["matching"]
    assert [m["type"] for m in matching] == ["requestContact", "customSources"]
    assert "phones" not in matching[0]["requestContactParams"]


def test_the_matching_date_is_the_order_date_else_the_status_date_else_now() -> None:
    def date(data: dict[str, Any]) -> str:
        params = ok({"orderNumber": "A", "phones": [PHONE], **data})["matching"][0]
        return str(params["callContactParams"]["date"])

    assert date({"orderDate": "01-01-2024 10:00:00", "status": "s",
                 "statusDate": "02-01-2024 10:00:00"}) == "01-01-2024 10:00:00"
    assert date({"status": "s", "statusDate": "02-01-2024 10:00:00"}) == "02-01-2024 10:00:00"
    assert date({}) == TODAY


def test_the_fallback_source_comes_from_the_argument() -> None:
    fallback = Fallback("визит", "офлайн", "весна")
    matching = ok({"orderNumber": "A", "phones": [PHONE]}, fallback)["matching"]
    assert matching[-1]["customSourceParams"] == {
        "source": "визит", "medium": "офлайн", "campaign": "весна"}
    assert ok({"orderNumber": "A"}, fallback)["fallback"] == {
        "source": "визит", "medium": "офлайн", "campaign": "весна"}


def test_contacts_are_checked_one_by_one() -> None:
    assert codes({"orderNumber": "A", "phones": [PHONE, "12"], "emails": ["x@", EMAIL]}) == [
        ("phones[1]", "invalid_phone"), ("emails[0]", "invalid_email")]
    assert codes({"orderNumber": "A", "phones": [PHONE] * 21}) == [
        ("phones", "too_many_contacts")]


def test_no_phone_or_email_given_appears_in_the_errors() -> None:
    phone, email = "+7 915 777-11-22 доб. 5", "ivan.petrov@@example.ru"
    with pytest.raises(Invalid) as info:
        validate({"orderNumber": "A", "phones": [phone], "emails": [email]}, MOSCOW)
    text = str(info.value.errors) + str(info.value)
    assert phone not in text and email not in text and "777" not in text


CALL_CONTACT = {"type": "callContact", "callContactParams": {
    "phones": ["84953338877"], "date": "01-10-2020 12:00:00", "callTypeToMatch": "nearest",
    "searchDepth": 120}}
REQUEST_CONTACT = {"type": "requestContact", "requestContactParams": {
    "emails": ["name@server.com"], "date": "01-10-2020 12:00:00", "tags": ["a", "b"],
    "tagsLogic": "and", "requestTypeToMatch": "nearestUniq", "searchDepth": 525600}}
CUSTOM = {"type": "customSources", "customSourceParams": {"source": "s", "medium": "m"}}
REQUEST = {"type": "request", "requestParams": {"requestId": "5222102"}}


def test_a_given_matching_passes_through_as_given() -> None:
    given = [REQUEST, CALL_CONTACT, REQUEST_CONTACT, CUSTOM]
    fields = ok({"orderNumber": "A", "matching": given})
    assert fields["matching"] == given
    assert "fallback" not in fields


@pytest.mark.parametrize(("entry", "error"), [
    ({"type": "call", "callParams": {"callId": 1}}, ("matching[0].type",
                                                     "invalid_matching_type")),
    ({"type": "callContact"}, ("matching[0].callContactParams", "required")),
    ({"type": "callContact", "callContactParams": {**CALL_CONTACT["callContactParams"],
                                                   "searchDepth": 0}},
     ("matching[0].callContactParams.searchDepth", "invalid_search_depth")),
    ({"type": "callContact", "callContactParams": {**CALL_CONTACT["callContactParams"],
                                                   "searchDepth": 525601}},
     ("matching[0].callContactParams.searchDepth", "invalid_search_depth")),
    ({"type": "callContact", "callContactParams": {**CALL_CONTACT["callContactParams"],
                                                   "searchDepth": True}},
     ("matching[0].callContactParams.searchDepth", "invalid_search_depth")),
    ({"type": "callContact", "callContactParams": {**CALL_CONTACT["callContactParams"],
                                                   "date": "2020-10-01T12:00:00"}},
     ("matching[0].callContactParams.date", "invalid_date")),
    ({"type": "callContact", "callContactParams": {
        k: v for k, v in CALL_CONTACT["callContactParams"].items() if k != "phones"}},
     ("matching[0].callContactParams.phones", "required")),
    ({"type": "callContact", "callContactParams": {**CALL_CONTACT["callContactParams"],
                                                   "extra": 1}},
     ("matching[0].callContactParams.extra", "unknown_field")),
    ({"type": "requestContact", "requestContactParams": {
        k: v for k, v in REQUEST_CONTACT["requestContactParams"].items() if k != "emails"}},
     ("matching[0].requestContactParams", "contact_required")),
    ({"type": "requestContact", "requestContactParams": {
        k: v for k, v in REQUEST_CONTACT["requestContactParams"].items()
        if k != "tagsLogic"}},
     ("matching[0].requestContactParams.tagsLogic", "required")),
    ({"type": "requestContact", "requestContactParams": {
        **REQUEST_CONTACT["requestContactParams"], "tagsLogic": "xor"}},
     ("matching[0].requestContactParams.tagsLogic", "invalid_choice")),
    ({"type": "request", "requestParams": {"requestId": "12a"}},
     ("matching[0].requestParams.requestId", "invalid_id")),
    ({"type": "request", "requestParams": {"requestId": 0}},
     ("matching[0].requestParams.requestId", "invalid_id")),
    ({"type": "customSources", "customSourceParams": {"medium": "m"}},
     ("matching[0].customSourceParams.source", "required")),
    ({**CUSTOM, "extra": 1}, ("matching[0].extra", "unknown_field")),
    ("callContact", ("matching[0].type", "invalid_matching_type")),
])
def test_a_bad_matching_entry_is_named_by_its_path(entry: object, error: tuple[str, str]
                                                   ) -> None:
    assert codes({"orderNumber": "A", "matching": [entry]}) == [error]


def test_matching_has_at_most_20_entries_19_beside_a_lead() -> None:
    assert ok({"orderNumber": "A", "matching": [CUSTOM] * 20})["matching"] == [CUSTOM] * 20
    assert codes({"orderNumber": "A", "matching": [CUSTOM] * 21}) == [
        ("matching", "invalid_matching")]
    assert codes({"orderNumber": "A", "lead": "L", "matching": [CUSTOM] * 20}) == [
        ("matching", "invalid_matching")]
    assert codes({"orderNumber": "A", "matching": {"type": "request"}}) == [
        ("matching", "invalid_matching")]


def test_matching_and_contacts_exclude_each_other() -> None:
    assert codes({"orderNumber": "A", "matching": [CUSTOM], "phones": [PHONE]}) == [
        ("matching", "conflicting_fields")]


# --- payload and calls ----------------------------------------------------------------------


def test_the_payload_holds_the_fields_and_marks_the_lead() -> None:
    deal = validate({"orderNumber": "A", "lead": " L-1 ", "phones": [PHONE]}, MOSCOW, now=NOW)
    assert (deal.order_number, deal.lead) == ("A", "L-1")
    body = orjson.loads(payload(deal))
    assert body[deals.LEAD_FIRST] is True
    assert "lead" not in body
    assert body["matching"] == deal.fields["matching"]
    assert order_number(payload(deal)) == "A"
    plain = validate({"orderNumber": "B"}, MOSCOW, now=NOW)
    assert deals.LEAD_FIRST not in orjson.loads(payload(plain))


def test_a_create_carries_every_field_in_calltouch_names() -> None:
    deal = validate({
        "orderNumber": "A", "orderDate": "19-07-2021 16:42:32", "status": "Визит",
        "revenue": "10", "funnel": "F", "currency": "RUB", "manager": "M", "orderName": "N",
        "orderLink": "https://x.ru/1", "tags": ["t1", "t2"], "comment": "c",
        "customFields": {"k": "v"}, "phones": [PHONE], "lead": "L",
    }, MOSCOW, now=NOW)
    call = create().call([job(payload(deal), after="5222102")])
    assert (call.method, call.path) == ("POST", "/lead-service/v1/api/client-order/create")
    assert call.headers == {"Access-Token": "tok-default", "SiteId": "111"}
    [order] = call.json["orders"]  # type: ignore[index]
    assert order["matching"][0] == {"type": "request", "requestParams": {"requestId": 5222102}}
    assert order["matching"][1:] == deal.fields["matching"]
    assert {k: v for k, v in order.items() if k != "matching"} == {
        "orderNumber": "A", "orderDate": "19-07-2021 16:42:32", "status": "Визит",
        "statusDate": TODAY, "revenue": "10.00", "funnel": "F", "currency": "RUB",
        "manager": "M", "orderName": "N", "orderLink": "https://x.ru/1",
        "addTags": [{"tag": "t1"}, {"tag": "t2"}],
        "customFields": [{"field": "k", "value": "v"}], "addNewComment": {"text": "c"},
    }


def test_a_create_without_contacts_goes_with_the_custom_source_alone() -> None:
    deal = validate({"orderNumber": "A"}, MOSCOW, Fallback("s", "m", "c"), now=NOW)
    [order] = create().call([job(payload(deal))]).json["orders"]  # type: ignore[index]
    assert order == {"matching": [{"type": "customSources", "customSourceParams": {
        "source": "s", "medium": "m", "campaign": "c"}}], "orderNumber": "A"}


def test_a_marked_lead_without_its_request_id_adds_no_entry() -> None:
    deal = validate({"orderNumber": "A", "lead": "L"}, MOSCOW, now=NOW)
    [order] = create().call([job(payload(deal))]).json["orders"]  # type: ignore[index]
    assert [m["type"] for m in order["matching"]] == ["customSources"]


def test_an_update_carries_only_what_was_given_and_no_matching() -> None:
    deal = validate({"orderNumber": "A", "status": "Оплачен", "tags": ["t"], "comment": "c",
                     "phones": [PHONE], "lead": "L"}, MOSCOW, now=NOW)
    call = update().call([job(payload(deal), site="shop", kind=KIND_UPDATE)])
    assert call.path == "/lead-service/v1/api/client-order/update"
    assert call.headers == {"Access-Token": "tok-shop", "SiteId": "222"}
    assert call.json == {"orders": [{
        "orderNumber": "A", "status": "Оплачен", "statusDate": TODAY,
        "addNewComment": {"text": "c"},
        "addTags": {"overwrite": False, "tags": [{"tag": "t"}]},
    }]}


def test_a_call_carries_many_jobs_of_one_site_in_order() -> None:
    jobs = [job({"orderNumber": str(i)}, name=f"j{i}", kind=KIND_UPDATE) for i in range(3)]
    orders = update().call(jobs).json["orders"]  # type: ignore[index]
    assert [o["orderNumber"] for o in orders] == ["0", "1", "2"]
    with pytest.raises(AssertionError):
        update().call([job({"orderNumber": "1"}), job({"orderNumber": "2"}, site="shop")])


def test_the_senders_describe_themselves() -> None:
    for sender, kind, method in ((create(), KIND_CREATE, "client-order/create"),
                                 (update(), KIND_UPDATE, "client-order/update")):
        assert (sender.kind, sender.method, sender.batch) == (kind, method, 100)
        assert sender.linger == 0.5
        assert type(sender).reads_errors is True


# --- answers --------------------------------------------------------------------------------


def two() -> list[Job]:
    return [job({"orderNumber": "A"}, name="a"), job({"orderNumber": "B"}, name="b")]


def test_each_created_deal_is_delivered_with_its_calltouch_id() -> None:
    answer = reply(results({"orderNumber": "A", "calltouchOrderId": 7071678, "error": None},
                           {"orderNumber": "B", "calltouchOrderId": "7071679"}))
    assert create().read(answer, two()) == [Delivered("7071678"), Delivered("7071679")]


def test_a_create_calltouch_holds_already_becomes_an_update() -> None:
    answer = reply(results(
        {"orderNumber": "A", "calltouchOrderId": None,
         "error": "Сделка с таким orderNumber уже существует"},  # noqa: RUF001
        {"orderNumber": "B", "error": "Order already exists"}))
    assert create().read(answer, two()) == [Convert(KIND_UPDATE), Convert(KIND_UPDATE)]


def test_an_update_of_an_unknown_deal_is_retried() -> None:
    answer = reply(results({"orderNumber": "A", "error": "Сделка не найдена"},
                           {"orderNumber": "B", "calltouchOrderId": 9}))
    verdicts = update().read(answer, two())
    assert verdicts[0] == Retry("not_found", "Сделка не найдена")
    assert verdicts[1] == Delivered("9")
    # A create does not take "not found" for a retry, nor an update "already exists".
    assert create().read(answer, two())[0] == Permanent("rejected", "Сделка не найдена")
    exists = reply(results({"orderNumber": "A", "error": "already exists"}))
    assert update().read(exists, two()[:1]) == [Permanent("rejected", "already exists")]


def test_any_other_item_error_is_permanent_and_redacted() -> None:
    answer = reply(results({"orderNumber": "A", "error": "bad phone +7 915 777-11-22 x@y.ru"}))
    [verdict] = create().read(answer, two()[:1])
    assert verdict == Permanent("rejected", "bad phone *** ***")


def test_missing_results_and_wrong_bodies_are_retried() -> None:
    short = reply(results({"orderNumber": "A", "calltouchOrderId": 1}))
    verdicts = create().read(short, two())
    assert verdicts[0] == Delivered("1")
    assert isinstance(verdicts[1], Retry) and verdicts[1].code == "invalid_answer"
    for body in (b"<html>oops</html>", {"data": {}}, results("x", {"orderNumber": "B"}),
                 results({"orderNumber": "A", "calltouchOrderId": True})):
        assert {type(v) for v in create().read(reply(body), two())} == {Retry}
        assert {v.code for v in create().read(reply(body), two())} == {  # type: ignore[union-attr]
            "invalid_answer"}


def test_a_result_naming_another_deal_is_not_taken_for_this_one() -> None:
    swapped = reply(results({"orderNumber": "B", "calltouchOrderId": 2},
                            {"orderNumber": "A", "calltouchOrderId": 1}))
    assert [v.code for v in create().read(swapped, two())] == [  # type: ignore[union-attr]
        "invalid_answer", "invalid_answer"]


@pytest.mark.parametrize(("status", "body"), [
    (401, {"message": "Access token не найден"}),
    (200, {"message": "Access token не найден"}),
    (200, {"meta": [], "data": {"message": "Ошибка доступа"}}),
    (403, {"meta": [], "data": {"message": "Ошибка доступа"}}),
    (401, b""),
])
def test_a_refused_token_defers_every_job_without_an_attempt(status: int, body: object) -> None:
    verdicts = create().read(reply(body, status), two())
    assert [type(v) for v in verdicts] == [Defer, Defer]
    assert all(v.code == "auth_failed" and v.delay == ls.AUTH_DELAY  # type: ignore[union-attr]
               for v in verdicts)


def test_a_validation_error_rejects_the_items_named_and_defers_the_rest() -> None:
    jobs = [job({"orderNumber": str(i)}, name=str(i)) for i in range(4)]
    answer = reply(violations("orders[3].orderNumber", "orders[1].matching[0].type"), 400)
    verdicts = create().read(answer, jobs)
    assert verdicts[1] == Permanent("rejected", "matching[0].type: This value should not be "
                                    "blank.")
    assert verdicts[3] == Permanent("rejected", "orderNumber: This value should not be blank.")
    assert verdicts[0] == verdicts[2] == Defer("batch_rejected",
                                               "another item of its call was invalid", 0.0)


def test_a_validation_error_naming_no_item_rejects_them_all() -> None:
    answer = reply(violations("orders"), 400)
    verdicts = update().read(answer, two())
    assert verdicts == [Permanent("rejected", "orders: This value should not be blank.")] * 2
    beyond = reply(violations("orders[7].status"), 400)
    assert {type(v) for v in update().read(beyond, two())} == {Permanent}


def test_a_violation_message_is_redacted() -> None:
    answer = {"meta": [], "data": {"type": "validationError", "validationErrorData": {
        "violations": [{"fieldPath": "orders[0].matching[0].callContactParams.phones[0]",
                        "message": "79157771122 is not valid"}]}}}
    [verdict, _] = create().read(reply(answer, 400), two())
    assert isinstance(verdict, Permanent) and "79157771122" not in verdict.detail


def test_a_4xx_of_no_known_shape_is_what_http_alone_says() -> None:
    answer = reply({"message": "Method not allowed"}, 405)
    assert create().read(answer, two()) == [answer.failure, answer.failure]
    assert isinstance(answer.failure, Permanent)


# --- merge and follow -----------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    return orjson.dumps({"orderNumber": "A", **fields})


def test_a_later_update_merges_into_a_queued_one() -> None:
    queued = body(status="s1", statusDate="01-01-2024 10:00:00", revenue="1.00",
                  tags=["a", "b"], comment="one", customFields={"x": "1", "y": "1"})
    new = body(status="s2", statusDate="02-01-2024 10:00:00", revenue="2.00", tags=["b", "c"],
               comment="two", customFields={"y": "2", "z": "2"}, manager="M")
    assert orjson.loads(merge(queued, new)) == {
        "orderNumber": "A", "status": "s2", "statusDate": "02-01-2024 10:00:00",
        "revenue": "2.00", "tags": ["a", "b", "c"], "comment": "one\ntwo",
        "customFields": {"x": "1", "y": "2", "z": "2"}, "manager": "M",
    }


def test_an_older_status_arriving_late_does_not_roll_the_deal_back() -> None:
    queued = body(status="paid", statusDate="02-01-2024 10:00:00")
    new = body(status="new", statusDate="01-01-2024 23:59:59", revenue="5.00")
    assert orjson.loads(merge(queued, new)) == {
        "orderNumber": "A", "status": "paid", "statusDate": "02-01-2024 10:00:00",
        "revenue": "5.00"}
    # Dates compare as moments, not as text ("01-02" sorts before "02-01" but is later).
    later = body(status="shipped", statusDate="01-02-2024 00:00:00")
    assert orjson.loads(merge(queued, later))["status"] == "shipped"


def test_merge_keeps_the_lead_marker_of_either_and_the_matching_given() -> None:
    """The marker only matters with the requestId of a lead the job waits for; a revived
    create waits for the lead the new post names, so the new post's marker must stay."""
    queued = body(matching=[CALL_CONTACT], leadRequest=True)
    assert orjson.loads(merge(queued, body(fallback={"source": "s"}))) == {
        "orderNumber": "A", "matching": [CALL_CONTACT], "leadRequest": True}
    assert orjson.loads(merge(body(fallback={"source": "s"}), body(leadRequest=True,
                                                                   matching=[CUSTOM]))) == {
        "orderNumber": "A", "matching": [CUSTOM], "leadRequest": True}


def test_follow_drops_what_only_a_create_sends() -> None:
    previous = body(status="s1", statusDate="01-01-2024 10:00:00")
    new = body(status="s2", statusDate="02-01-2024 10:00:00", matching=[CUSTOM],
               fallback={"source": "s"}, leadRequest=True)
    assert orjson.loads(follow(previous, new) or b"") == {
        "orderNumber": "A", "status": "s2", "statusDate": "02-01-2024 10:00:00"}
    assert follow(None, new) == follow(previous, new)


def test_follow_drops_an_older_status_and_may_leave_nothing() -> None:
    previous = body(status="paid", statusDate="02-01-2024 10:00:00")
    older = body(status="new", statusDate="01-01-2024 10:00:00", matching=[CUSTOM])
    assert follow(previous, older) is None
    assert orjson.loads(follow(None, older) or b"")["status"] == "new"
    with_revenue = body(status="new", statusDate="01-01-2024 10:00:00", revenue="3.00")
    assert orjson.loads(follow(previous, with_revenue) or b"") == {
        "orderNumber": "A", "revenue": "3.00", STATUS_SEEN: "02-01-2024 10:00:00"}
    assert follow(previous, body()) is None


# --- properties -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
DATES = st.one_of(
    st.datetimes().map(ls.write_date),
    st.datetimes().map(lambda d: d.strftime("%d.%m.%Y %H:%M:%S")),
    st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
    st.text(max_size=30),
)
ENTRIES = st.sampled_from([REQUEST, CALL_CONTACT, REQUEST_CONTACT, CUSTOM]) | st.fixed_dictionaries(
    {"type": st.sampled_from(["request", "call", "callContact", "requestContact",
                              "customSources", "x"])},
    optional={"requestParams": JSON, "callContactParams": st.dictionaries(
        st.sampled_from(["phones", "date", "searchDepth", "callTypeToMatch", "tags",
                         "tagsLogic"]), JSON)},
)
VALUES = {
    "orderNumber": st.text(max_size=300) | JSON, "orderDate": DATES, "statusDate": DATES,
    "status": JSON, "revenue": st.decimals().map(str) | JSON, "funnel": JSON,
    "currency": JSON, "manager": JSON, "orderName": JSON, "orderLink": JSON, "tags": JSON,
    "comment": JSON, "customFields": JSON, "lead": JSON,
    "phones": st.lists(st.text(alphabet="0123456789+() -.", max_size=20)) | JSON,
    "emails": st.lists(st.emails() | st.text()) | JSON,
    "matching": st.lists(ENTRIES, max_size=22) | JSON,
}
DEALS = st.fixed_dictionaries({}, optional={
    **VALUES, "unknown": JSON, "x" * 100: JSON})


@FUZZ
@given(DEALS)
@example({"orderNumber": "A", "revenue": "9" * 30})
@example({"orderNumber": "A", "orderDate": "9999-12-31T23:59:59-12:00"})
@example({"matching": [{"type": "request", "requestParams": {"requestId": "\u00b2"}}]})
def test_validate_raises_nothing_but_invalid(data: dict[str, Any]) -> None:
    try:
        deal = validate(data, MOSCOW, now=NOW)
    except Invalid as exc:
        assert exc.errors
        return
    body = orjson.loads(payload(deal))
    assert body["orderNumber"] == deal.order_number
    create().call([job(payload(deal), after="1")])
    update().call([job(payload(deal), kind=KIND_UPDATE)])


@FUZZ
@given(st.lists(st.text(alphabet="0123456789+() -.x", min_size=7, max_size=20), max_size=3),
       st.lists(st.emails() | st.text(min_size=7).map(lambda t: t + "@x"), max_size=3))
def test_no_contact_given_comes_back_in_an_error(phones: list[str], emails: list[str]) -> None:
    try:
        validate({"orderNumber": "A", "phones": phones, "emails": emails}, MOSCOW, now=NOW)
    except Invalid as exc:
        text = str(exc.errors)
        assert not [v for v in (*phones, *emails) if v.strip() and v.strip() in text]


STATUSES = st.tuples(st.sampled_from(["new", "paid", "shipped", "returned"]),
                     st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)))
PAYLOADS = st.builds(
    lambda status, tags, revenue: {
        "orderNumber": "A",
        **({"status": status[0], "statusDate": ls.write_date(status[1])} if status else {}),
        **({"tags": tags} if tags else {}), **({"revenue": revenue} if revenue else {}),
    },
    st.none() | STATUSES, st.lists(st.sampled_from("abcde"), unique=True, max_size=3),
    st.none() | st.sampled_from(["1.00", "2.00"]),
)


def newest_status(payloads: list[dict[str, Any]]) -> str | None:
    """The status of the newest statusDate; of two alike, the one given later."""
    best: tuple[datetime, str] | None = None
    for p in payloads:
        if "status" in p:
            moment = datetime.strptime(p["statusDate"], ls.DATE_FORMAT)
            if best is None or moment >= best[0]:
                best = (moment, p["status"])
    return None if best is None else best[1]


@FUZZ
@given(st.lists(PAYLOADS, min_size=1, max_size=6))
def test_merged_status_is_that_of_the_newest_status_date(payloads: list[dict[str, Any]]
                                                         ) -> None:
    merged = orjson.dumps(payloads[0])
    for p in payloads[1:]:
        merged = merge(merged, orjson.dumps(p))
    result = orjson.loads(merged)
    assert result.get("status") == newest_status(payloads)
    tags = [t for p in payloads for t in p.get("tags", [])]
    assert result.get("tags", []) == list(dict.fromkeys(tags))


@FUZZ
@given(st.none() | PAYLOADS, PAYLOADS)
def test_a_followed_update_leaves_the_newest_status(previous: dict[str, Any] | None,
                                                     new: dict[str, Any]) -> None:
    """Calltouch holds ``previous``, then gets what follow() leaves of ``new``."""
    sent = follow(None if previous is None else orjson.dumps(previous), orjson.dumps(new))
    left = {} if sent is None else orjson.loads(sent)
    left.pop(STATUS_SEEN, None)  # kept for the next post to compare with; never sent
    held = {**(previous or {}), **left}
    assert held.get("status") == newest_status([p for p in (previous, new) if p is not None])
    assert (sent is None) == (left.keys() <= {"orderNumber"})
    # What it sends is new's, less what previous already said (tags it already has).
    assert sent is None or all(
        set(v) <= set(new[k]) if k == "tags" else v == new[k] for k, v in left.items()
    )
    if previous is not None and "tags" in left:
        assert not set(left["tags"]) & set(previous.get("tags", []))


@FUZZ
@given(st.lists(PAYLOADS, min_size=1, max_size=6))
def test_updates_followed_one_after_another_leave_the_newest_status(
    payloads: list[dict[str, Any]]
) -> None:
    """Each post follows the one sent before it, as a chain whose tail is always in flight;
    Calltouch applies what each sends. An update without a status in between is no gap."""
    held = dict(payloads[0])
    previous = orjson.dumps(payloads[0])
    for p in payloads[1:]:
        sent = follow(previous, orjson.dumps(p))
        if sent is not None:
            held.update({k: v for k, v in orjson.loads(sent).items() if k != STATUS_SEEN})
            previous = sent
    assert held.get("status") == newest_status(payloads)


def test_an_older_status_after_an_update_without_one_does_not_roll_the_deal_back() -> None:
    created = body(status="paid", statusDate="02-01-2024 10:00:00")
    revenue = follow(created, body(revenue="3.00"))
    assert revenue is not None and orjson.loads(revenue)["revenue"] == "3.00"
    assert follow(revenue, body(status="new", statusDate="01-01-2024 10:00:00")) is None
    shipped = follow(revenue, body(status="shipped", statusDate="03-01-2024 10:00:00"))
    assert shipped is not None and orjson.loads(shipped)["status"] == "shipped"
    # What a call sends is picked by name: the date kept for comparing is not among it.
    assert STATUS_SEEN not in update_order(orjson.loads(revenue))


def test_the_same_deal_posted_again_queues_nothing() -> None:
    deal = {"orderNumber": "A", "status": "new", "statusDate": "01-02-2026 10:00:00",
            "revenue": "10.00", "tags": ["x"], "customFields": {"f": "1"}}
    assert follow(orjson.dumps(deal), orjson.dumps(deal)) is None
    changed = follow(orjson.dumps(deal), orjson.dumps({**deal, "revenue": "20.00"}))
    assert changed is not None and orjson.loads(changed) == {
        "orderNumber": "A", "revenue": "20.00", STATUS_SEEN: "01-02-2026 10:00:00"}


def test_a_comment_posted_again_while_queued_is_joined_once() -> None:
    def post(comment: str) -> bytes:
        return orjson.dumps({"orderNumber": "A", "comment": comment})

    queued = merge(merge(post("paid by card"), post("paid by card")), post("paid by card"))
    assert orjson.loads(queued)["comment"] == "paid by card"
    twice = merge(merge(queued, post("deliver")), post("deliver"))
    assert orjson.loads(twice)["comment"] == "paid by card\ndeliver"


def test_now_defaults_to_the_clock() -> None:
    before = datetime.now(MOSCOW).replace(microsecond=0)
    fields = validate({"orderNumber": "A", "status": "s"}, MOSCOW).fields
    moment = datetime.strptime(fields["statusDate"], ls.DATE_FORMAT).replace(tzinfo=MOSCOW)
    assert before <= moment <= datetime.now(MOSCOW) + timedelta(seconds=1)
