"""Decode a request body into a plain mapping of lead fields (pure; no validation of values)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from gateway.errors import BadRequest

JSON_TYPES = frozenset({"application/json", "text/plain"})
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 64
MAX_DEPTH = 4

_CUSTOM = re.compile(r"^customField\[(.*)\]$", re.DOTALL)


def media_type(header: str) -> str:
    """``text/plain`` of ``text/plain;charset=UTF-8``.

    Not the standard library's header parser (behind aiohttp's ``content_type``): it recurses
    once per ``(`` of a comment, and a hostile header of a thousand is a RecursionError.
    """
    return header.partition(";")[0].strip().lower()


def decode(content_type: str, body: bytes) -> dict[str, Any]:
    """Read a JSON (or text/plain JSON) or form-urlencoded body; raises :class:`BadRequest`."""
    if content_type in JSON_TYPES:
        return decode_json(body)
    if content_type == FORM_TYPE:
        return decode_form(body)
    raise BadRequest(
        "unsupported_media_type",
        "send application/json, text/plain (JSON) or application/x-www-form-urlencoded",
        status=415,
    )


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


# Escapes, scanned left to right so that an escaped backslash is never read as an escape's
# start: a surrogate pair, a lone surrogate, or any other escape.
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\."
)


def _mend_surrogates(body: bytes) -> bytes:
    """``body`` with each lone surrogate escape as U+FFFD. ``JSON.stringify`` writes one when
    a cut falls inside an emoji (the snippet cuts long fields); orjson refuses it, and the
    visitor's lead would be lost for one character."""
    return _ESCAPE.sub(lambda m: rb"\ufffd" if m[1] else m[0], body)


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            data = orjson.loads(_mend_surrogates(body))
        except orjson.JSONDecodeError:
            raise BadRequest("malformed_json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("malformed_json", "the body must be a JSON object")
    # Nesting needs an opening bracket per level: with few in the text, skip the walk.
    few = body.count(b"{") + body.count(b"[") <= MAX_DEPTH
    if not few and _depth(data) > MAX_DEPTH:
        raise BadRequest("malformed_json", f"the body nests deeper than {MAX_DEPTH} levels")
    return data


def decode_form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise BadRequest("malformed_form", "the form body is not valid UTF-8") from None
    except ValueError:
        raise BadRequest("malformed_form", f"more than {MAX_FORM_FIELDS} form fields") from None
    return _collect(pairs)


def _collect(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    custom: dict[str, str] = {}
    for key, value in pairs:
        match = _CUSTOM.match(key)
        target, name = (custom, match[1]) if match else (data, key)
        if name in target:
            raise BadRequest("malformed_form", "a form field is repeated")
        target[name] = value
    if custom:
        if "customFields" in data:
            raise BadRequest("malformed_form", "use customField[NAME] or customFields, not both")
        data["customFields"] = custom
    return data
