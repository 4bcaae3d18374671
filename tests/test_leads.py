"""Normalisation and validation of lead fields (pure functions, no I/O)."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.errors import InvalidLead
from gateway.kinds.lead import MAX_ELAPSED, Channel, validate

CONTACT = {"fio": "Иван Петров"}


MOSCOW = ZoneInfo("Europe/Moscow")


def ok(data: dict[str, Any], channel: Channel = "browser", zone: tzinfo | None = None
       ) -> dict[str, Any]:
    return dict(validate(data, channel, zone).fields)


def codes(data: dict[str, Any], channel: Channel = "browser", zone: tzinfo | None = None
          ) -> list[tuple[str | None, str]]:
    with pytest.raises(InvalidLead) as info:
        validate(data, channel, zone)
    assert info.value.status == 422
    assert info.value.error == "invalid_lead"
    return [(e.field, e.code) for e in info.value.errors]


@pytest.mark.parametrize(("raw", "phone"), [
    ("+7 (920) 555-00-55", "79205550055"),
    ("8 920 555 00 55", "79205550055"),
    ("89205550055", "79205550055"),
    ("9205550055", "79205550055"),
    ("(920) 555.00.55", "79205550055"),
    (79205550055, "79205550055"),
    (" 7-920-555-00-55 ", "79205550055"),
])
def test_phone_is_normalised_to_11_digits_starting_7(raw: object, phone: str) -> None:
    assert ok({"phoneNumber": raw})["phoneNumber"] == phone


@pytest.mark.parametrize("raw", [
    "555-00-55",                   # 7 digits
    "920555005",                   # 9 digits
    "12025550100",                 # 11 digits, neither 7 nor 8
    "+44 20 7946 0958",            # 12 digits
    "792055500551",                # 12 digits
    "+7 920 555 00 55 ext. 1",     # letters
    "tel:+79205550055",
    "\u0667\u0669\u0662\u0660\u0665\u0665\u0665\u0660\u0660\u0665\u0665",  # Arabic-Indic
    "+7 920 555 00 55\u0665",      # ASCII phone plus an Arabic-Indic digit
])
def test_bad_phone_is_invalid_phone(raw: str) -> None:
    assert codes({**CONTACT, "phoneNumber": raw}) == [("phoneNumber", "invalid_phone")]


@pytest.mark.parametrize(("raw", "email"), [
    ("ivan@example.com", "ivan@example.com"),
    ("Ivan.Petrov+leads@Example.COM", "Ivan.Petrov+leads@example.com"),
    ("  ivan@mail.example.ru ", "ivan@mail.example.ru"),
    ("иван@пример.рф", "иван@пример.рф"),
])
def test_email_is_kept_with_its_domain_lowercased(raw: str, email: str) -> None:
    assert ok({"email": raw})["email"] == email


@pytest.mark.parametrize(("raw", "code"), [
    ("ivan", "invalid_email"),
    ("ivan@", "invalid_email"),
    ("@example.com", "invalid_email"),
    ("ivan@example", "invalid_email"),
    ("ivan@example.c", "invalid_email"),
    ("iv an@example.com", "invalid_email"),
    ("a@b@example.com", "invalid_email"),
    (12345, "invalid_email"),
    ("x" * 250 + "@example.com", "too_long"),
    (["ivan@example.com"], "invalid_type"),
    (True, "invalid_type"),
])
def test_bad_email(raw: object, code: str) -> None:
    assert codes({**CONTACT, "email": raw}) == [("email", code)]


@pytest.mark.parametrize(("field", "limit"), [
    ("fio", 256), ("subject", 256), ("requestNumber", 256), ("comment", 4096),
])
def test_text_fields_are_bounded(field: str, limit: int) -> None:
    assert ok({**CONTACT, field: "я" * limit})[field] == "я" * limit
    assert codes({**CONTACT, field: "я" * (limit + 1)}) == [(field, "too_long")]


@pytest.mark.parametrize(("field", "raw", "code"), [
    ("subject", "two\nlines", "invalid_characters"),
    ("requestNumber", "a\rb", "invalid_characters"),
    ("fio", "nul\x00byte", "invalid_characters"),
    ("comment", "bell\x07", "invalid_characters"),
    ("subject", {"a": 1}, "invalid_type"),
    ("requestNumber", [1], "invalid_type"),
    ("subject", False, "invalid_type"),
])
def test_text_fields_reject_control_characters_and_non_scalars(
    field: str, raw: object, code: str
) -> None:
    assert codes({**CONTACT, field: raw}) == [(field, code)]


def test_comment_may_span_lines_and_text_is_trimmed() -> None:
    fields = ok({**CONTACT, "comment": " line 1\nline 2\r\n", "subject": "  Заказ  "})
    assert fields["comment"] == "line 1\nline 2"
    assert fields["subject"] == "Заказ"


def test_numbers_become_strings() -> None:
    fields = ok({**CONTACT, "requestNumber": 42, "subject": 1.5})
    assert fields["requestNumber"] == "42"
    assert fields["subject"] == "1.5"
    assert validate({**CONTACT, "requestNumber": 42}, "api").request_number == "42"
    assert validate(CONTACT, "api").request_number is None


@pytest.mark.parametrize("url", [
    "https://shop.example.ru/contacts?utm_source=ya#form",
    "http://localhost:8080/",
    "HTTPS://SHOP.EXAMPLE.RU",
    "http://[::1]/x",
    "http://[::1]:8080",
    "https://user:pw@shop.example.ru:8443/a?b#c",
    "http://shop.example.ru?utm=1",
])
def test_good_request_url(url: str) -> None:
    assert ok({**CONTACT, "requestUrl": url})["requestUrl"] == url


@pytest.mark.parametrize("url", [
    "ftp://shop.example.ru/",
    "javascript:alert(1)",
    "data:text/html,hi",
    "//shop.example.ru/x",
    "shop.example.ru",
    "https://",
    "http://[::1",
    "http://[::1]x/",
    "http://a]b/",
    "http://user@/x",
    "http://:80/",
    "http://shop example.ru/",
    "https:/shop.example.ru/",
    "https://" + "a" * 2048,
])
def test_bad_request_url(url: str) -> None:
    [(field, code)] = codes({**CONTACT, "requestUrl": url})
    assert field == "requestUrl"
    assert code in ("invalid_url", "too_long")


@pytest.mark.parametrize(("raw", "session"), [
    ("1845461367", "1845461367"), (1845461367, "1845461367"), (" 42 ", "42"),
])
def test_good_session_id(raw: object, session: str) -> None:
    assert ok({**CONTACT, "sessionId": raw})["sessionId"] == session


@pytest.mark.parametrize(("raw", "code"), [
    ("abc", "invalid_session"),
    ("12a", "invalid_session"),
    ("-1", "invalid_session"),
    (-1, "invalid_session"),
    (1.5, "invalid_session"),
    ("\uff11\uff12\uff13", "invalid_session"),  # full-width digits
    ("1" * 21, "too_long"),
    (True, "invalid_type"),
])
def test_bad_session_id(raw: object, code: str) -> None:
    assert codes({**CONTACT, "sessionId": raw}) == [("sessionId", code)]


@pytest.mark.parametrize(("raw", "tags"), [
    (["new", "vip"], ["new", "vip"]),
    ("new, vip,,  ", ["new", "vip"]),
    (["a,b", " c "], ["a", "b", "c"]),
    ("одна", ["одна"]),
    (7, ["7"]),
    ([f"t{i}" for i in range(20)], [f"t{i}" for i in range(20)]),
])
def test_tags_list_or_comma_string(raw: object, tags: list[str]) -> None:
    assert ok({**CONTACT, "tags": raw})["tags"] == tags


@pytest.mark.parametrize(("raw", "code"), [
    ([f"t{i}" for i in range(21)], "too_many_tags"),
    (",".join(f"t{i}" for i in range(21)), "too_many_tags"),
    (["x" * 65], "too_many_tags"),
    ([{"a": 1}], "invalid_type"),
    ([["nested"]], "invalid_type"),
    ({"a": "b"}, "invalid_type"),
])
def test_bad_tags(raw: object, code: str) -> None:
    assert codes({**CONTACT, "tags": raw}) == [("tags", code)]


def test_tags_that_are_only_commas_are_dropped() -> None:
    assert "tags" not in ok({**CONTACT, "tags": " , ,"})


@pytest.mark.parametrize(("raw", "custom"), [
    ({"utm_source": "yandex", "n": 5, "x": 1.25}, {"utm_source": "yandex", "n": "5", "x": "1.25"}),
    ({" Город ": " Москва "}, {"Город": "Москва"}),
    ({"note": "a\nb"}, {"note": "a\nb"}),
    ({f"f{i}": i for i in range(20)}, {f"f{i}": str(i) for i in range(20)}),
])
def test_good_custom_fields(raw: dict[str, Any], custom: dict[str, str]) -> None:
    assert ok({**CONTACT, "customFields": raw})["customFields"] == custom


@pytest.mark.parametrize(("raw", "code"), [
    ({f"f{i}": i for i in range(21)}, "too_many_custom_fields"),
    ({"": "x"}, "invalid_custom_field"),
    ({"  ": "x"}, "invalid_custom_field"),
    ({"a": ""}, "invalid_custom_field"),
    ({"a": "   "}, "invalid_custom_field"),
    ({"a[b]": "x"}, "invalid_custom_field"),
    ({"a": None}, "invalid_type"),
    ({"a": True}, "invalid_type"),
    ({"a": [1]}, "invalid_type"),
    ({"a": {"b": 1}}, "invalid_type"),
    ({"a": "x" * 1025}, "too_long"),
    ({"n" * 65: "x"}, "too_long"),
    ({"a\x00": "x"}, "invalid_characters"),
    ("utm=1", "invalid_type"),
    (["a"], "invalid_type"),
])
def test_bad_custom_fields(raw: object, code: str) -> None:
    assert codes({**CONTACT, "customFields": raw}) == [("customFields", code)]


@pytest.mark.parametrize("name", [
    "name", "phone", "customField[utm]", "requestid", "FIO", "_honeypot2", "x" * 100,
])
def test_unknown_fields_are_rejected(name: str) -> None:
    assert codes({**CONTACT, name: "value"}) == [(name[:64], "unknown_field")]


def test_unknown_field_is_rejected_even_when_empty() -> None:
    assert codes({**CONTACT, "phone": ""}) == [("phone", "unknown_field")]


@pytest.mark.parametrize(("raw", "date"), [
    ("01.02.2024 10:11:12", "01.02.2024 10:11:12"),
    ("2024-02-01T10:11:12", "01.02.2024 10:11:12"),
    ("2024-02-01 10:11", "01.02.2024 10:11:00"),
])
def test_request_date_from_the_api(raw: str, date: str) -> None:
    assert ok({**CONTACT, "requestDate": raw}, "api")["requestDate"] == date


@pytest.mark.parametrize(("raw", "date"), [
    ("01.02.2024 10:11:12", "01.02.2024 10:11:12"),  # the site's own time: as it is
    ("2024-02-01T10:11:12", "01.02.2024 10:11:12"),
    ("2024-02-01T10:11:12Z", "01.02.2024 13:11:12"),  # moved into the site's zone
    ("2024-02-01T10:11:12+05:00", "01.02.2024 08:11:12"),
    ("2024-07-01T23:30:00-02:00", "02.07.2024 04:30:00"),
])
def test_a_request_date_with_an_offset_is_moved_into_the_sites_zone(raw: str, date: str) -> None:
    assert ok({**CONTACT, "requestDate": raw}, "api", MOSCOW)["requestDate"] == date


@pytest.mark.parametrize(
    "raw", ["yesterday", "32.01.2024 10:00:00", "01.02.2024", "2024-13-01", 1.5,
            "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
            "01.01.0999 10:00:00", "1969-12-31T23:59:59+03:00"]  # would be sent as "01.01.999"
)
def test_bad_request_date(raw: object) -> None:
    codes_found = codes({**CONTACT, "requestDate": raw}, "api", MOSCOW)
    assert codes_found == [("requestDate", "invalid_date")]


def test_request_date_is_not_for_browsers() -> None:
    data = {**CONTACT, "requestDate": "01.02.2024 10:11:12"}
    assert codes(data, "browser") == [("requestDate", "not_allowed")]


@pytest.mark.parametrize("data", [
    {},
    {"subject": "Заказ", "comment": "перезвоните"},
    {"fio": "", "phoneNumber": None, "email": ""},
    {"fio": "   "},
    {"_honeypot": "", "tags": ["a"]},
])
def test_a_contact_is_required(data: dict[str, Any]) -> None:
    assert codes(data) == [(None, "contact_required")]


@pytest.mark.parametrize("contact", [
    {"fio": "Иван"}, {"phoneNumber": "89205550055"}, {"email": "ivan@example.com"},
])
def test_any_one_contact_is_enough(contact: dict[str, str]) -> None:
    assert ok(contact).keys() == contact.keys()


def test_every_bad_field_is_reported_at_once() -> None:
    data = {"phoneNumber": "1", "email": "x", "sessionId": "y", "bogus": 1}
    assert codes(data) == [
        ("phoneNumber", "invalid_phone"), ("email", "invalid_email"),
        ("sessionId", "invalid_session"), ("bogus", "unknown_field"),
    ]


def test_empty_optional_fields_are_dropped() -> None:
    data = {**CONTACT, "subject": "", "tags": [], "customFields": {}, "email": None}
    assert ok(data) == CONTACT


@pytest.mark.parametrize(("honeypot", "flagged"), [
    ("http://spam.example", True), ("x", True), ("", False), (None, False),
])
def test_honeypot_flags_a_bot_and_is_not_a_field(honeypot: object, flagged: bool) -> None:
    lead = validate({**CONTACT, "_honeypot": honeypot}, "browser")
    assert lead.honeypot is flagged
    assert dict(lead.fields) == CONTACT


def test_no_honeypot_means_a_person() -> None:
    assert validate(CONTACT, "browser").honeypot is False


@pytest.mark.parametrize(("raw", "elapsed"), [
    (5000, 5000), (0, 0), ("1500", 1500), (" 1500 ", 1500), ("007", 7),
    (MAX_ELAPSED, MAX_ELAPSED), (str(MAX_ELAPSED), MAX_ELAPSED),
    (None, None), ("", None),
])
def test_elapsed_is_carried_and_never_a_field(raw: object, elapsed: int | None) -> None:
    channels: tuple[Channel, ...] = ("browser", "api")  # carried on both; only one is scored
    for channel in channels:
        lead = validate({**CONTACT, "_elapsed": raw}, channel)
        assert lead.elapsed == elapsed
        assert dict(lead.fields) == CONTACT


def test_no_elapsed_is_none() -> None:
    assert validate(CONTACT, "browser").elapsed is None


@pytest.mark.parametrize("raw", [
    -1, "-1", 1.5, 1500.0, "1.5", "1e3", "abc", "0x10", True, False, [1500], {"ms": 1},
    "\uff11\uff15",  # full-width digits
    MAX_ELAPSED + 1, str(MAX_ELAPSED + 1), "9" * 17, "9" * 5000,
])
def test_bad_elapsed_is_invalid_elapsed(raw: object) -> None:
    assert codes({**CONTACT, "_elapsed": raw}) == [("_elapsed", "invalid_elapsed")]


def test_bad_elapsed_is_reported_with_the_other_errors() -> None:
    data = {"phoneNumber": "1", "_elapsed": "soon"}
    assert codes(data) == [("phoneNumber", "invalid_phone"), ("_elapsed", "invalid_elapsed")]
