"""Decoding request bodies into lead mappings (pure functions, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import BadRequest, FieldError
from gateway.intake.bodies import MAX_FORM_FIELDS, decode

JSON = "application/json"
TEXT = "text/plain"
FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("content_type", [JSON, TEXT])
@pytest.mark.parametrize(("body", "data"), [
    (b'{"fio": "\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd"}', {"fio": "Иван"}),
    (b'{"fio": "\\u0418\\u0432\\u0430\\u043d"}', {"fio": "Иван"}),
    (b'{"fio": "\\ud83d\\ude00"}', {"fio": "\U0001f600"}),
    # A lone surrogate, as JSON.stringify writes a cut inside an emoji: one character mended.
    (b'{"fio": "ab\\ud83d", "c": "\\ude00x"}', {"fio": "ab\ufffd", "c": "\ufffdx"}),
    (b'{"fio": "\\\\ud800"}', {"fio": "\\ud800"}),  # an escaped backslash, then text
    (b' {"tags": ["a", "b"], "customFields": {"n": 1}} \n', {
        "tags": ["a", "b"], "customFields": {"n": 1}}),
    (b"{}", {}),
    (b'{"a": {"b": {"c": {"d": 1}}}}', {"a": {"b": {"c": {"d": 1}}}}),  # 4 levels: the limit
])
def test_json_and_text_plain_json(content_type: str, body: bytes, data: dict[str, Any]) -> None:
    assert decode(content_type, body) == data


@pytest.mark.parametrize(("body", "data"), [
    (b"fio=%D0%98%D0%B2%D0%B0%D0%BD&phoneNumber=%2B7+920+555-00-55", {
        "fio": "Иван", "phoneNumber": "+7 920 555-00-55"}),
    (b"fio=Ivan&customField%5Butm_source%5D=ya&customField[city]=%D0%9C%D1%81%D0%BA", {
        "fio": "Ivan", "customFields": {"utm_source": "ya", "city": "Мск"}}),
    (b"customField[a+b]=1&customField[]=2", {"customFields": {"a b": "1", "": "2"}}),
    (b"fio=&email=a%40b.ru&tags=a%2Cb", {"fio": "", "email": "a@b.ru", "tags": "a,b"}),
    (b"", {}),
    (b"customFields=x", {"customFields": "x"}),
])
def test_form_urlencoded_with_calltouch_names(body: bytes, data: dict[str, Any]) -> None:
    assert decode(FORM, body) == data


def test_form_field_limit() -> None:
    body = "&".join(f"f{i}=x" for i in range(MAX_FORM_FIELDS)).encode()
    assert len(decode(FORM, body)) == MAX_FORM_FIELDS
    with pytest.raises(BadRequest) as info:
        decode(FORM, body + b"&one=more")
    assert (info.value.status, info.value.code) == (400, "malformed_form")


DEEP = b'{"a": {"b": {"c": {"d": {"e": 1}}}}}'
WIDE_DEEP = b'{"customFields": {"x": [[[[1]]]]}}'


@pytest.mark.parametrize(("content_type", "body", "code"), [
    (JSON, b"", "malformed_json"),
    (JSON, b'{"fio": ', "malformed_json"),
    (JSON, b"{'fio': 'x'}", "malformed_json"),
    (JSON, b'{"fio": "x",}', "malformed_json"),
    (JSON, b'{"fio": "x"} {}', "malformed_json"),
    (JSON, b'{"fio": "\xff"}', "malformed_json"),                # bad UTF-8
    (JSON, b'{"fio": "\xd0"}', "malformed_json"),                # truncated UTF-8
    (JSON, b'{"fio": "\xed\xa0\x80"}', "malformed_json"),        # UTF-8-encoded surrogate
    (JSON, b'\xff\xfe{\x00}\x00', "malformed_json"),              # UTF-16
    (JSON, b'{"n": NaN}', "malformed_json"),
    (JSON, b'{"n": Infinity}', "malformed_json"),
    (JSON, b'{"n": -Infinity}', "malformed_json"),
    (JSON, b'{"n": 1e400}', "malformed_json"),
    (TEXT, b"[]", "malformed_json"),
    (TEXT, b'"fio"', "malformed_json"),
    (JSON, b"1", "malformed_json"),
    (JSON, b"null", "malformed_json"),
    (JSON, DEEP, "malformed_json"),
    (JSON, WIDE_DEEP, "malformed_json"),
    (JSON, b"[" * 5000 + b"]" * 5000, "malformed_json"),
    (FORM, b"fio=\xff", "malformed_form"),
    (FORM, b"fio=%FF", "malformed_form"),
    (FORM, b"fio=%ED%A0%80", "malformed_form"),
    (FORM, b"fio=a&fio=b", "malformed_form"),
    (FORM, b"fio=a&fio=", "malformed_form"),
    (FORM, b"customField[a]=1&customField%5Ba%5D=2", "malformed_form"),
    (FORM, b"customFields=x&customField[a]=1", "malformed_form"),
])
def test_unreadable_bodies_are_400(content_type: str, body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode(content_type, body)
    assert (info.value.status, info.value.code, info.value.error) == (400, code, code)
    assert info.value.errors == [FieldError(None, code, str(info.value))]


@pytest.mark.parametrize("content_type", [
    "image/png", "application/octet-stream", "multipart/form-data", "application/xml",
    "text/html", "application/json-patch+json", "",
])
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode(content_type, b'{"fio": "x"}')
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(("body", "ok"), [
    (b'{"a": {"b": {"c": {"d": 1}}}}', True),              # four levels: the limit
    (b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', False),
    (b'{"a": [[[1]]]}', True),
    (b'{"a": [[[[1]]]]}', False),
    (b'{"comment": "{{{{[[[[", "a": {"b": 1}}', True),     # brackets in text are not levels
    (b'{"comment": "{[{[", "a": {"b": {"c": {"d": {"e": 1}}}}}', False),
])
def test_nesting_limit_holds_with_or_without_brackets_in_text(body: bytes, ok: bool) -> None:
    if ok:
        assert isinstance(decode(JSON, body), dict)
        return
    with pytest.raises(BadRequest) as info:
        decode(JSON, body)
    assert info.value.code == "malformed_json"
