"""The comment kind: validation, dedup key, the call, the answer (pure, no I/O)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.calltouch.answers import Defer, Delivered, Permanent, Retry, http_failure
from gateway.calltouch.client import Reply
from gateway.errors import Invalid
from gateway.kinds import leadservice as ls
from gateway.kinds.comment import (
    KIND,
    MAX_TEXT,
    Comment,
    CommentKind,
    dedup_key,
    payload,
    validate,
)
from gateway.queue.base import Job

SITE_IDS = {"default": "111", "shop": "222"}
TOKENS = {"default": "tok-default", "shop": "tok-shop"}
TEXT = "Клиент перезвонил"
FUZZ = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REQUEST_CONTACT = {"type": "requestContact", "requestContactParams": {
    "emails": ["name@server.com"], "phones": ["79157771122", "+7 (915) 888-11-22"],
    "date": "01-10-2020 12:00:00", "tags": ["a"], "requestTypeToMatch": "nearestUniq",
    "searchDepth": 120}}
CALL = {"type": "call", "callParams": {"callId": 2, "tags": ["a", "b"], "tagsLogic": "or"}}


def codes(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(Invalid) as info:
        validate(data)
    assert (info.value.status, info.value.error) == (422, "invalid_comment")
    return [(e.field, e.code) for e in info.value.errors]


def job(comment: Comment | dict[str, Any], *, site: str = "default", after: str | None = None,
        name: str = "c1") -> Job:
    body = payload(comment) if isinstance(comment, Comment) else orjson.dumps(comment)
    return Job(name, KIND, body, 0.0, 0, 1, site, after)


def sender() -> CommentKind:
    return CommentKind(SITE_IDS, TOKENS, 0.25)


def reply(body: object, status: int = 200) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Reply(status, raw, http_failure(status, {}, raw))


def results(*items: dict[str, Any]) -> dict[str, Any]:
    return {"meta": [], "data": {"comments": list(items)}}


# --- fields ---------------------------------------------------------------------------------


def test_a_comment_on_a_gateway_lead_waits_for_it() -> None:
    text = "\n".join([TEXT, "ещё"])
    comment = validate({"comment": f"  {text}  ", "lead": " ctgw-abc "})
    assert comment.text == text
    assert comment.lead == "ctgw-abc"
    assert comment.target == {"lead": "ctgw-abc"}
    assert orjson.loads(payload(comment)) == {"comment": comment.text, "lead": "ctgw-abc"}


@pytest.mark.parametrize(("target", "entry"), [
    ({"requestId": 5222102}, {"type": "request", "requestParams": {"requestId": 5222102}}),
    ({"requestId": "5222102"}, {"type": "request", "requestParams": {"requestId": 5222102}}),
    ({"callId": "12692441"}, {"type": "call", "callParams": {"callId": 12692441}}),
])
def test_an_id_target_is_one_matching_entry(target: dict[str, Any], entry: dict[str, Any]
                                            ) -> None:
    comment = validate({"comment": TEXT, **target})
    assert comment.lead is None
    assert orjson.loads(payload(comment)) == {"comment": TEXT, "matching": [entry]}


def test_a_given_matching_passes_through_as_given() -> None:
    matching = [CALL, REQUEST_CONTACT]
    assert validate({"comment": TEXT, "matching": matching}).target == {"matching": matching}


@pytest.mark.parametrize(("data", "errors"), [
    ({"lead": "L"}, [("comment", "required")]),
    ({"comment": "   ", "lead": "L"}, [("comment", "required")]),
    ({"comment": "x" * (MAX_TEXT + 1), "lead": "L"}, [("comment", "too_long")]),
    ({"comment": "a\x00b", "lead": "L"}, [("comment", "invalid_characters")]),
    ({"comment": TEXT}, [(None, "target_required")]),
    ({"comment": TEXT, "lead": "L", "requestId": 1}, [(None, "conflicting_targets")]),
    ({"comment": TEXT, "callId": 1, "matching": [CALL]}, [(None, "conflicting_targets")]),
    ({"comment": TEXT, "requestId": "12a"}, [("requestId", "invalid_id")]),
    ({"comment": TEXT, "requestId": 0}, [("requestId", "invalid_id")]),
    ({"comment": TEXT, "callId": True}, [("callId", "invalid_id")]),
    ({"comment": TEXT, "callId": 1.5}, [("callId", "invalid_id")]),
    ({"comment": TEXT, "lead": "a\nb"}, [("lead", "invalid_characters")]),
    ({"comment": TEXT, "lead": "L", "key": "k" * 257}, [("key", "too_long")]),
    ({"comment": TEXT, "lead": "L", "other": 1}, [("other", "unknown_field")]),
    ({"comment": TEXT, "matching": [CALL] * 21}, [("matching", "invalid_matching")]),
    ({"comment": TEXT, "matching": [{"type": "customSources", "customSourceParams": {
        "source": "s"}}]}, [("matching[0].type", "invalid_matching_type")]),
    ({"comment": TEXT, "matching": [{"type": "call", "callParams": {"tags": ["a"]}}]},
     [("matching[0].callParams.callId", "required")]),
    ({"comment": TEXT, "matching": [{"type": "requestContact", "requestContactParams": {
        "phones": ["1"], "date": "01-10-2020 12:00:00", "requestTypeToMatch": "nearest"}}]},
     [("matching[0].requestContactParams.searchDepth", "required")]),
])
def test_bad_comments_name_every_problem(data: dict[str, Any],
                                         errors: list[tuple[str | None, str]]) -> None:
    assert codes(data) == errors


def test_all_problems_are_listed_at_once() -> None:
    assert codes({"comment": "", "requestId": "x", "extra": 1}) == [
        ("extra", "unknown_field"), ("comment", "required"), ("requestId", "invalid_id")]


def test_no_contact_given_comes_back_in_an_error() -> None:
    bad = {"type": "requestContact", "requestContactParams": {
        "phones": ["+7 915 777-11-22"], "emails": ["ivan@example.ru"], "date": "tomorrow",
        "requestTypeToMatch": "nearest", "searchDepth": 0}}
    with pytest.raises(Invalid) as info:
        validate({"comment": TEXT, "matching": [bad]})
    text = str(info.value.errors)
    assert "777" not in text and "ivan" not in text and "tomorrow" not in text


# --- dedup ----------------------------------------------------------------------------------


def test_the_dedup_key_is_the_callers_key_when_given() -> None:
    assert dedup_key(validate({"comment": TEXT, "lead": "L", "key": " crm-42 "})) == "crm-42"


def test_the_same_text_on_the_same_target_dedups() -> None:
    one = dedup_key(validate({"comment": TEXT, "requestId": 5}))
    assert one == dedup_key(validate({"comment": f" {TEXT} ", "requestId": "5"}))
    assert len(one) == 64 and int(one, 16) >= 0
    others = {
        dedup_key(validate({"comment": TEXT, "requestId": 6})),
        dedup_key(validate({"comment": TEXT, "callId": 5})),
        dedup_key(validate({"comment": TEXT + ".", "requestId": 5})),
        dedup_key(validate({"comment": TEXT, "lead": "5"})),
    }
    assert one not in others and len(others) == 4
    canonical = orjson.dumps({"target": {"lead": "L"}, "text": TEXT},
                             option=orjson.OPT_SORT_KEYS)
    assert dedup_key(validate({"comment": TEXT, "lead": "L"})) == hashlib.sha256(
        canonical).hexdigest()


# --- the call -------------------------------------------------------------------------------


def test_a_lead_target_gets_its_request_id_at_send_time() -> None:
    jobs = [job(validate({"comment": TEXT, "lead": "L"}), after="5222102", site="shop"),
            job(validate({"comment": "b", "matching": [CALL]}), site="shop", name="c2")]
    call = sender().call(jobs)
    assert (call.method, call.path) == ("POST", "/lead-service/v1/api/comment/lead/add")
    assert call.headers == {"Access-Token": "tok-shop", "SiteId": "222"}
    assert call.json == {"comments": [
        {"matching": [{"type": "request", "requestParams": {"requestId": 5222102}}],
         "addComment": TEXT},
        {"matching": [CALL], "addComment": "b"},
    ]}


def test_a_lead_target_without_its_request_id_goes_as_null() -> None:
    call = sender().call([job(validate({"comment": TEXT, "lead": "L"}))])
    [item] = call.json["comments"]  # type: ignore[index]
    assert item["matching"] == [{"type": "request", "requestParams": {"requestId": None}}]


def test_a_call_carries_the_jobs_of_one_site() -> None:
    comment = validate({"comment": TEXT, "requestId": 1})
    with pytest.raises(AssertionError):
        sender().call([job(comment), job(comment, site="shop")])


def test_the_sender_describes_itself() -> None:
    s = sender()
    assert (s.kind, s.method, s.batch, s.linger) == ("comment", "comment/lead/add", 100, 0.25)
    assert CommentKind.reads_errors is True


# --- the answer -----------------------------------------------------------------------------


def three() -> list[Job]:
    comment = validate({"comment": TEXT, "requestId": 1})
    return [job(comment, name=f"c{i}") for i in range(3)]


def test_each_commented_item_is_delivered_with_the_id_it_went_to() -> None:
    answer = reply(results(
        {"requestInfo": {"requestId": "5222102", "requestNumber": "n"}, "callInfo": None,
         "commented": True, "error": None},
        {"callInfo": {"callId": 12692441, "callReferenceId": None}, "requestInfo": None,
         "commented": True, "error": None},
        {"requestInfo": None, "callInfo": None, "commented": True},
    ))
    assert sender().read(answer, three()) == [
        Delivered("5222102"), Delivered("12692441"), Delivered("")]


def test_a_lead_not_found_is_retried_other_errors_are_permanent() -> None:
    answer = reply(results(
        {"commented": False, "error": "Лид не найден"},
        {"commented": False, "error": "Lead not found"},
        {"commented": False, "error": "Нет " + "79157771122"},
    ))
    assert sender().read(answer, three()) == [
        Retry("lead_not_found", "Лид не найден"), Retry("lead_not_found", "Lead not found"),
        Permanent("rejected", "Нет " + "***"),
    ]


def test_an_item_without_its_flag_or_result_is_retried() -> None:
    answer = reply(results({"commented": "yes"}, {"commented": False}))
    verdicts = sender().read(answer, three())
    assert verdicts[0] == Retry("invalid_answer", "a result without commented")
    assert verdicts[1] == Permanent("rejected", "not commented")
    assert isinstance(verdicts[2], Retry) and verdicts[2].code == "invalid_answer"
    assert [v.code for v in sender().read(reply(b"not json"), three())  # type: ignore[union-attr]
            ] == ["invalid_answer"] * 3


def test_a_refused_token_defers_every_comment() -> None:
    for answer in (reply({"message": "Access token не найден"}, 401),
                   reply({"meta": [], "data": {"message": "Ошибка доступа"}})):
        verdicts = sender().read(answer, three())
        assert [(type(v), v.code) for v in verdicts] == [  # type: ignore[union-attr]
            (Defer, "auth_failed")] * 3
        assert {v.delay for v in verdicts} == {ls.AUTH_DELAY}  # type: ignore[union-attr]


def test_a_validation_error_names_the_comment_and_defers_the_others() -> None:
    answer = reply({"meta": [], "data": {"type": "validationError", "apiErrorData": None,
                                         "validationErrorData": {"violations": [{
                                             "fieldPath": "comments[0].addComment",
                                             "message": "This value should not be blank."}]}}},
                   400)
    verdicts = sender().read(answer, three())
    assert verdicts[0] == Permanent("rejected", "addComment: This value should not be blank.")
    assert [v.code for v in verdicts[1:]] == ["batch_rejected"] * 2  # type: ignore[union-attr]
    # An "orders[...]" path names no comment: every comment is rejected.
    other = reply(orjson.dumps(orjson.loads(answer.body)).replace(b"comments[0]", b"orders[0]"),
                  400)
    assert {type(v) for v in sender().read(other, three())} == {Permanent}


# --- properties -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
ENTRY = st.sampled_from([CALL, REQUEST_CONTACT]) | st.fixed_dictionaries(
    {"type": st.sampled_from(["request", "call", "requestContact", "callContact", "x"])},
    optional={"requestParams": JSON, "callParams": JSON, "requestContactParams": JSON,
              "callContactParams": st.dictionaries(st.sampled_from([
                  "phones", "date", "searchDepth", "callTypeToMatch", "tags", "tagsLogic",
              ]), JSON)},
)
COMMENTS = st.fixed_dictionaries({}, optional={
    "comment": st.text() | JSON, "lead": st.text() | JSON, "key": JSON,
    "requestId": st.integers() | st.text(alphabet="0123456789\u00b2", max_size=25) | JSON,
    "callId": st.integers() | JSON, "matching": st.lists(ENTRY, max_size=22) | JSON,
    "unknown": JSON,
})


@FUZZ
@given(COMMENTS)
@example({"comment": "x", "requestId": "\u00b2"})
@example({"comment": "x", "callId": 2**63})
def test_validate_raises_nothing_but_invalid(data: dict[str, Any]) -> None:
    try:
        comment = validate(data)
    except Invalid as exc:
        assert exc.errors
        return
    assert len(dedup_key(comment)) > 0
    sender().call([job(comment, after="1")])
    assert orjson.loads(payload(comment))["comment"] == comment.text
