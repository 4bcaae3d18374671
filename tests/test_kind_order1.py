"""The legacy deals 1.0 kind: validation, the chain key, the call, the answer (pure, no I/O)."""

from __future__ import annotations

from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.calltouch.answers import Defer, Delivered, Permanent, Retry, http_failure
from gateway.calltouch.client import Reply
from gateway.errors import Invalid
from gateway.kinds import order1, order1_params
from gateway.kinds.order1 import (
    KIND,
    PATHS,
    Order,
    Order1Kind,
    chain,
    from_payload,
    op_for_path,
    payload,
)
from gateway.kinds.order1_params import MAX_QUERY, validate
from gateway.queue.base import Job

MOSCOW = ZoneInfo("Europe/Moscow")
REGISTER = {
    "orderNumber": "K2TU/sm{7u4X3F", "orderSum": "1000", "orderStatus": "start",
    "orderDate": "26.03.2018 10:00:00", "service": "AmoCRM",
}
TOKENS = {"default": "tok-default", "shop": "tok-shop"}
FUZZ = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def ok(op: str, params: dict[str, str]) -> dict[str, str]:
    return validate(op, params, MOSCOW).params


def codes(op: str, params: dict[str, str]) -> list[tuple[str | None, str]]:
    with pytest.raises(Invalid) as info:
        validate(op, params, MOSCOW)
    assert info.value.status == 422
    assert info.value.error == "invalid_order"
    return [(e.field, e.code) for e in info.value.errors]


def test_the_docs_register_by_call_is_kept_as_given() -> None:
    params = {**REGISTER, "callId": "32496964", "manager": "Коля",
              "tags": "mytag1,mytag2,mytag3"}
    assert ok("register", params) == params


@pytest.mark.parametrize(("op", "name", "raw", "normal"), [
    ("register", "orderDate", "26.03.2018 10:00:00", "26.03.2018 10:00:00"),
    ("register", "orderDate", "26-03-2018 10:00:00", "26.03.2018 10:00:00"),
    ("register", "orderDate", "2018-03-26T10:00:00", "26.03.2018 10:00:00"),
    ("register", "orderDate", "2018-03-26T07:00:00+00:00", "26.03.2018 10:00:00"),
    ("register", "orderDate", "2018-03-26T10:00:00Z", "26.03.2018 13:00:00"),
    ("register", "orderSum", " 1000 ", "1000"),
    ("register", "orderSum", "1000,50", "1000.50"),
    ("register", "orderSum", "6000.0000", "6000.0000"),
    ("register", "orderSum", "-250", "-250"),
    ("register", "phoneNumber", "+7 (920) 555-00-55", "79205550055"),
    ("register", "phoneNumber", "89205550055", "79205550055"),
    ("register", "email", "Ivan@Example.COM", "Ivan@example.com"),
    ("register", "tags", " a, b ,,c ", "a,b,c"),
    ("register", "linkTimeThreshold", "600", "600"),
    ("register", "bindTo", "requests", "requests"),
    ("register", "callReferenceId", "pbx-1/2", "pbx-1/2"),
    ("register", "requestNumber", "site-77", "site-77"),
    ("register", "orderComment", "line one\nline two", "line one\nline two"),
    ("register", "comment", "  note ", "note"),
    ("register", "custom[funnel]", "Магазин", "Магазин"),
    ("register", "source", "пришел на ресепшн", "пришел на ресепшн"),
    ("update", "status", "selling", "selling"),
    ("update", "orderSum", "100000", "100000"),
    ("update", "custom[funnel]", "Сервис", "Сервис"),
    ("update", "term", "", ""),  # an empty update parameter clears the value: kept
    ("update", "tags", "  ", ""),
    ("delete", "orderNumber", " ajhbkhbsd232dsc ", "ajhbkhbsd232dsc"),
])
def test_each_value_is_normalised(op: str, name: str, raw: str, normal: str) -> None:
    base = dict(REGISTER) if op == "register" else {"orderId": "3413448"}
    assert ok(op, {**base, name: raw})[name] == normal


@pytest.mark.parametrize(("op", "name", "raw", "code"), [
    ("register", "orderSum", "1e3", "invalid_sum"),
    ("register", "orderSum", "1 000", "invalid_sum"),
    ("register", "orderSum", "NaN", "invalid_sum"),
    ("register", "orderSum", "10.12345", "invalid_sum"),
    ("register", "orderSum", "+5", "invalid_sum"),
    ("register", "orderSum", "1.", "invalid_sum"),
    ("register", "orderSum", "\u0661\u0660\u0660", "invalid_sum"),  # Arabic-Indic digits
    ("register", "orderDate", "26/03/2018 10:00", "invalid_date"),
    ("register", "orderDate", "31.02.2018 10:00:00", "invalid_date"),
    ("register", "orderDate", "01.01.0001 00:00:00", "invalid_date"),
    ("register", "orderDate", "x" * 40, "too_long"),
    ("register", "callId", "abc", "invalid_id"),
    ("register", "requestId", "1" * 20, "invalid_id"),
    ("register", "phoneNumber", "555-00-55", "invalid_phone"),
    ("register", "email", "ivan@", "invalid_email"),
    ("register", "linkTimeThreshold", "-1", "invalid_seconds"),
    ("register", "linkTimeThreshold", "2h", "invalid_seconds"),
    ("register", "bindTo", "leads", "invalid_bind_to"),
    ("register", "orderStatus", "a\nb", "invalid_characters"),
    ("register", "manager", "x" * 257, "too_long"),
    ("register", "orderComment", "x" * 4097, "too_long"),
    ("register", "tags", ",".join(["t"] * 21), "too_many_tags"),
    ("register", "custom[]", "v", "invalid_custom_field"),
    ("register", "custom[a[b]]", "v", "invalid_custom_field"),
    ("register", "custom[x]", "v" * 1025, "too_long"),
    ("update", "orderId", "12a", "invalid_id"),
    ("update", "orderSum", "много", "invalid_sum"),
    ("update", "status", "a\rb", "invalid_characters"),
    ("delete", "orderId", "-3", "invalid_id"),
    ("delete", "orderNumber", "x" * 257, "too_long"),
])
def test_each_bad_value_is_refused_by_its_code(op: str, name: str, raw: str, code: str) -> None:
    base = dict(REGISTER) if op == "register" else {"orderNumber": "N-1"}
    assert codes(op, {**base, name: raw}) == [(name, code)]


@pytest.mark.parametrize(("op", "params", "expected"), [
    ("register", {}, [(n, "required") for n in
                      ("orderSum", "orderStatus", "orderDate", "service")]),
    ("register", {**REGISTER, "callId": "1", "requestId": "2"}, [(None, "call_and_request")]),
    ("register", {**REGISTER, "callReferenceId": "a", "requestNumber": "b"},
     [(None, "call_and_request")]),
    ("register", {**REGISTER, **{f"custom[f{i}]": "v" for i in range(21)}},
     [("custom", "too_many_custom_fields")]),
    ("update", {"status": "won"}, [(None, "order_required")]),
    ("update", {"orderId": "", "orderNumber": ""}, [(None, "order_required")]),
    ("delete", {}, [(None, "order_required")]),
    ("update", {"orderNumber": "N", **{f"custom[c{i}]": "ж" * 200 for i in range(10)}},
     [(None, "too_long")]),
    ("nothing", {}, [(None, "unknown_operation")]),
])
def test_rules_of_the_whole_call(
    op: str, params: dict[str, str], expected: list[tuple[str | None, str]]
) -> None:
    assert codes(op, params) == expected


def test_a_bad_value_is_not_also_reported_missing() -> None:
    assert codes("register", {**REGISTER, "orderSum": "x"}) == [("orderSum", "invalid_sum")]
    assert codes("delete", {"orderId": "x"}) == [("orderId", "invalid_id")]


def test_a_long_update_within_the_url_limit_is_taken() -> None:
    params = {"orderNumber": "N", "comment": "x" * 4000,
              **{f"custom[c{i}]": "y" * 1000 for i in range(3)}}
    room = MAX_QUERY - len(urlencode(params)) - len("&term=")
    assert ok("update", {**params, "term": "z" * room}) == {**params, "term": "z" * room}
    assert codes("update", {**params, "term": "z" * (room + 1)}) == [(None, "too_long")]


def test_empty_parameters_of_register_and_delete_are_as_if_not_given() -> None:
    assert "manager" not in ok("register", {**REGISTER, "manager": "", "tags": " "})
    assert ok("delete", {"orderId": "5", "orderNumber": ""}) == {"orderId": "5"}


def test_client_api_id_is_never_stored_and_unknown_parameters_are_dropped() -> None:
    order = validate("register", {**REGISTER, "clientApiId": "secret", "utm": "x",
                                  "status": "s", "customX": "y"}, MOSCOW)
    assert order.params == REGISTER
    assert order.ignored == ("utm", "status", "customX")
    update = validate("update", {"orderId": "1", "orderStatus": "s", "orderDate": "d"}, MOSCOW)
    assert update.params == {"orderId": "1"}
    assert update.ignored == ("orderStatus", "orderDate")
    delete = validate("delete", {"orderId": "1", "custom[a]": "b", "status": "s"}, MOSCOW)
    assert delete.params == {"orderId": "1"}
    assert b"secret" not in payload(order)


def test_ignored_names_are_bounded() -> None:
    params = {**REGISTER, **{"x" * 100 + str(i): "v" for i in range(50)}}
    ignored = validate("register", params, MOSCOW).ignored
    assert len(ignored) == order1.MAX_IGNORED
    assert all(len(name) == 64 for name in ignored)


@pytest.mark.parametrize(("op", "params", "key"), [
    ("register", REGISTER, "n:K2TU/sm{7u4X3F"),
    ("update", {"orderNumber": "N-1", "orderId": "7"}, "n:N-1"),
    ("update", {"orderId": "7"}, "id:7"),
    ("delete", {"orderId": "7", "orderNumber": ""}, "id:7"),
    ("delete", {"orderNumber": "N-1"}, "n:N-1"),
])
def test_chain_key(op: str, params: dict[str, str], key: str) -> None:
    assert chain(validate(op, params, MOSCOW)) == key


@pytest.mark.parametrize("number", [None, " "], ids=["absent", "blank"])
def test_a_register_without_an_order_number_is_a_chain_of_its_own(number: str | None) -> None:
    """orderNumber is optional in the doc (Calltouch then uses its orderId)."""
    params = {k: v for k, v in REGISTER.items() if k != "orderNumber"}
    if number is not None:
        params["orderNumber"] = number
    order = validate("register", params, MOSCOW)
    assert "orderNumber" not in order.params
    first, second = chain(order), chain(order)
    assert first.startswith("new:") and second.startswith("new:") and first != second


def test_payload_is_op_and_params_and_reads_back() -> None:
    order = validate("update", {"orderId": "7", "status": "won"}, MOSCOW)
    assert orjson.loads(payload(order)) == {"op": "update",
                                            "params": {"orderId": "7", "status": "won"}}
    assert from_payload(payload(order)) == Order("update", {"orderId": "7", "status": "won"})


@pytest.mark.parametrize(("path", "op"), [
    ("/calls-service/RestAPI/orders/register/", "register"),
    ("/calls-service/RestAPI/orders/update-by-id", "update"),
    ("/calls-service/RestAPI/orders/delete-by-id/", "delete"),
    ("/calls-service/RestAPI/orders/", None),
    ("/calls-service/RestAPI/requests/1/register/", None),
])
def test_op_for_path(path: str, op: str | None) -> None:
    assert op_for_path(path) == op


def job(op: str, params: dict[str, str], site: str = "default",
        after: str | None = None) -> Job:
    data = orjson.dumps({"op": op, "params": params})
    return Job("j1", KIND, data, 0.0, 0, 1, site=site, after_upstream=after)


def test_the_sender_is_one_call_a_job_and_reads_errors() -> None:
    kind = Order1Kind(TOKENS)
    assert (kind.kind, kind.method, kind.batch, kind.linger, kind.reads_errors) == (
        "order1", "orders", 1, 0.0, True)
    assert order1.METHODS == {"register": "orders/register", "update": "orders/update-by-id",
                              "delete": "orders/delete-by-id"}


def test_register_is_a_form_post_with_the_sites_token_in_the_query() -> None:
    call = Order1Kind(TOKENS).call([job("register", {**REGISTER, "clientApiId": "stale"},
                                        site="shop", after="99")])
    assert (call.method, call.path) == ("POST", PATHS["register"])
    assert call.query == {"clientApiId": "tok-shop"}
    assert call.form == REGISTER  # no token from the payload, no orderId from a neighbour


@pytest.mark.parametrize("op", ["update", "delete"])
def test_update_and_delete_are_gets_with_the_token_from_the_constructor(op: str) -> None:
    params = {"orderNumber": "N-1", "clientApiId": "stale"}
    call = Order1Kind(TOKENS).call([job(op, params)])
    assert (call.method, call.path, call.form) == ("GET", PATHS[op], None)
    assert call.query == {"orderNumber": "N-1", "clientApiId": "tok-default"}


def test_order_id_comes_from_the_register_the_job_waited_for() -> None:
    kind = Order1Kind(TOKENS)
    call = kind.call([job("update", {"orderNumber": "N-1", "status": "won"}, after="7811141")])
    assert call.query == {"orderNumber": "N-1", "status": "won", "orderId": "7811141",
                          "clientApiId": "tok-default"}
    given_id = kind.call([job("delete", {"orderId": "5"}, after="7811141")])
    assert given_id.query == {"orderId": "5", "clientApiId": "tok-default"}


def reply(status: int, body: object) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Reply(status, raw, http_failure(status, {}, raw))


def read(op: str, answer: Reply, site: str = "default") -> object:
    params = REGISTER if op == "register" else {"orderNumber": "N-1"}
    [verdict] = Order1Kind(TOKENS).read(answer, [job(op, params, site=site)])
    return verdict


REGISTER_ANSWER = {
    "orderId": 7811141, "callId": 32940789, "dateCreated": 1522047600000, "status": "new",
    "sum": "1000", "orderNumber": "xX8H9MkFIzpLmT",
}
SESSION = {
    "keywords": "(not set)", "city": "vladimir", "ip": "95.66.182.68", "browser": "Mozilla",
    "source": "(direct)", "medium": "(none)", "ref": "", "url": "http://x.example/?p=1",
    "utmSource": "ya", "utmMedium": "", "utmTerm": "звонок 79205550055", "utmContent": "",
    "utmCampaign": "c1", "guaClientId": None, "yaClientId": "42", "sessionId": 1846408120,
}


def test_register_answer_is_delivered_by_its_order_id() -> None:
    assert read("register", reply(200, REGISTER_ANSWER)) == Delivered(
        "7811141", details={"callId": "32940789"})


def test_register_answer_keeps_the_sessions_attribution_and_nothing_personal() -> None:
    answer = {**REGISTER_ANSWER, "callId": None, "requestId": 51213218, "session": SESSION,
              "client": {"fio": "Иван", "phones": [{"phoneNumber": "74953080100"}]}}
    verdict = read("register", reply(200, answer))
    assert verdict == Delivered("7811141", details={
        "requestId": "51213218", "source": "(direct)", "medium": "(none)", "utmSource": "ya",
        "utmCampaign": "c1", "utmTerm": "звонок ***", "keywords": "(not set)",
        "city": "vladimir",
    })


def test_update_answer_is_delivered_nested_as_the_doc_shows_or_flat() -> None:
    nested = {"order": {"orderId": 7812899, "orderNumber": "7812899"}, "session": None}
    assert read("update", reply(200, nested)) == Delivered("7812899")
    assert read("update", reply(200, {"orderId": "7812899", "orderNumber": "N-1"})) == \
        Delivered("7812899")
    assert read("delete", reply(200, {"orderId": 5, "deleted": True})) == Delivered("5")


@pytest.mark.parametrize("body", [
    {"orderNumber": "N-1"}, {"orderId": None}, {"orderId": True}, {"orderId": ""}, [1],
    b"<html>ok</html>", b"",
])
def test_a_2xx_without_order_id_is_retried(body: object) -> None:
    verdict = read("register", reply(200, body))
    assert isinstance(verdict, Retry)
    assert verdict.code == "invalid_answer"


@pytest.mark.parametrize("body", [{"orderNumber": "N-1"}, {"deleted": True}, b"", b"ok"])
def test_a_delete_answered_2xx_is_done_whatever_its_body(body: object) -> None:
    """The doc shows no answer of delete: sent again, it would be retried to its max age."""
    assert read("delete", reply(200, body)) == Delivered("N-1")
    by_id = Order1Kind(TOKENS).read(reply(200, body), [job("delete", {"orderNumber": "N-1"},
                                                           after="7811141")])
    assert by_id == [Delivered("7811141")]


@pytest.mark.parametrize(("status", "body"), [
    (401, {"message": "Неверный clientApiId"}),
    (403, {"message": "Forbidden"}),
    (400, {"message": "Неверный clientApiId"}),
    (200, {"message": "clientApiId не указан"}),
])
def test_a_refused_token_defers_without_counting(status: int, body: object) -> None:
    verdict = read("update", reply(status, body))
    assert isinstance(verdict, Defer)
    assert (verdict.code, verdict.delay) == ("auth_failed", 30.0)


@pytest.mark.parametrize("op", ["update", "delete"])
def test_an_unknown_deal_is_final(op: str) -> None:
    verdict = read(op, reply(400, {"message": "Сделка не найдена"}))
    assert verdict == Permanent("not_found", "HTTP 400: Сделка не найдена")


@pytest.mark.parametrize(("op", "status"), [("register", 400), ("update", 404),
                                            ("delete", 422), ("register", 409)])
def test_other_4xx_are_rejected_with_the_message_redacted(op: str, status: int) -> None:
    body = {"message": "bad phone 79205550055 of ivan@example.com and token tok-shop"}
    verdict = read(op, reply(status, body), site="shop")
    assert verdict == Permanent("rejected", f"HTTP {status}: bad phone *** of *** and token ***")


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limited"), (500, "server_error"),
                                              (503, "server_error"), (408, "server_error")])
def test_statuses_http_decides_keep_the_clients_verdict(status: int, code: str) -> None:
    verdict = read("register", reply(status, b"busy"))
    assert isinstance(verdict, Retry)
    assert verdict.code == code
    no_answer = Reply(None, b"", Retry("timeout", "timed out"))
    assert read("update", no_answer) == Retry("timeout", "timed out")


MARK = "QZXJ"
NAMES = st.sampled_from(sorted(
    {*order1_params._CHECKS["register"], *order1_params._CHECKS["update"], "orderDate",
     "clientApiId", "custom[a]", "custom[]", "custom[[x]]"}
)) | st.text(max_size=12)
VALUES = (
    st.text(max_size=40)
    | st.sampled_from(["1000", "26.03.2018 10:00:00", "2018-03-26T10:00:00+03:00",
                       "79205550055", "a@b.ru", "calls", "", " ", "-0", "1,5"])
    | st.builds(lambda a, b: a + MARK + b, st.text(max_size=10), st.text(max_size=10))
)


@FUZZ
@given(op=st.sampled_from(["register", "update", "delete"]),
       params=st.dictionaries(NAMES, VALUES, max_size=12))
def test_any_params_give_an_order_or_invalid_never_with_a_value(
    op: str, params: dict[str, str]
) -> None:
    try:
        order = validate(op, params, MOSCOW)
    except Invalid as exc:
        assert exc.errors
        for error in exc.errors:
            # A marker, not each value: a value may well be a word of a message.
            assert MARK not in error.message and MARK not in error.code
        return
    assert "clientApiId" not in order.params
    assert all(isinstance(v, str) for v in order.params.values())
    assert chain(order).startswith(("n:", "id:"))
    assert from_payload(payload(order)).params == order.params
