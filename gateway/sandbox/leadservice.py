"""What the sandbox's lead-service methods (deals 2.0 and lead comments) share.

Their wordings, as Calltouch documents them or, where it does not, as the shared plan words
them; the reading of a JSON call; the refusal of a wrong ``Access-Token`` or a missing
``SiteId``; the validation error answer; and the checks of a batch and of its ``matching`` lists,
which report every violation found rather than the first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.sandbox.office import PARAMS, BackOffice, Received, as_int, is_date, json_response

MAX_ITEMS, MAX_MATCHING, MAX_NUMBER, MAX_DEPTH = 100, 20, 256, 525600
NO_TOKEN = "Access token не найден"  # noqa: S105 (an answer's wording, no secret)
BLANK = "This value should not be blank."
TOO_LONG = f"This value is too long. It should have {MAX_NUMBER} characters or less."
NOT_STRING, NOT_LIST = "This value should be of type string.", "This value should be of type array."
NOT_OBJECT, NOT_NUMBER = "This value should be of type object.", "This value should be a number."
BAD_DATE = "Неверный формат даты, ожидается dd-mm-yyyy hh:mm:ss"
TOO_MANY = f"Не более {MAX_ITEMS} элементов"
TOO_MANY_MATCHING = f"Не более {MAX_MATCHING} типов матчинга"
UNKNOWN_MATCHING = "Неизвестный тип матчинга"
NO_CONTACT = "Должен быть передан хотя бы один из параметров – emails или phones"
BAD_DEPTH = f"Значение должно быть от 1 до {MAX_DEPTH}"
BAD_LOGIC = "Значение должно быть and или or"
BAD_TAGS = 'Ожидается {"overwrite": bool, "tags": [{"tag": "..."}]}'
BAD_CUSTOM = 'Ожидается [{"field": "...", "value": "..."}]'
NO_LEAD = "Лид не найден"
DEAL_MATCHING, COMMENT_MATCHING = frozenset(PARAMS), frozenset(PARAMS) - {"customSources"}
Violation = tuple[str, str]  # fieldPath, message


# --- reading a call ----------------------------------------------------------------------------

def receive_json(key: str) -> Callable[[web.Request], Awaitable[Received]]:
    async def receive(request: web.Request) -> Received:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        items = body.get(key) if isinstance(body, dict) else None
        return Received(body=body, items=len(items) if isinstance(items, list) else 1,
                        site=request.headers.get("SiteId", ""),
                        token=request.headers.get("Access-Token", ""))
    return receive


# --- lead-service validation -------------------------------------------------------------------

def token_refused(office: BackOffice, received: Received) -> web.Response | None:
    token = received.token.strip()
    if not token or not received.site or (office.access_token and token != office.access_token):
        return json_response({"message": NO_TOKEN}, 401)
    return None


def invalid(violations: list[Violation]) -> web.Response:
    data = {"type": "validationError", "apiErrorData": None, "validationErrorData": {
        "violations": [{"fieldPath": path, "message": text} for path, text in violations]}}
    return json_response({"meta": [], "data": data}, 400)


def batch(body: Any, key: str) -> tuple[list[Any], list[Violation]]:
    if not isinstance(body, dict):
        return [], [("", NOT_OBJECT)]
    items = body.get(key)
    if not items:
        return [], [(key, BLANK)]
    if not isinstance(items, list):
        return [], [(key, NOT_LIST)]
    return (items, []) if len(items) <= MAX_ITEMS else ([], [(key, TOO_MANY)])


def has_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def matching_problems(at: str, matching: Any, types: frozenset[str],
                      required: bool = False) -> list[Violation]:
    if matching is None or matching == []:
        return [(at, BLANK)] if required else []
    if not isinstance(matching, list):
        return [(at, NOT_LIST)]
    if len(matching) > MAX_MATCHING:
        return [(at, TOO_MANY_MATCHING)]
    found: list[Violation] = []
    for j, entry in enumerate(matching):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in types:
            found.append((f"{at}[{j}].type", UNKNOWN_MATCHING))
        else:
            found += _params_problems(f"{at}[{j}].{PARAMS[kind]}", kind, entry.get(PARAMS[kind]))
    return found


def _params_problems(at: str, kind: str, params: Any) -> list[Violation]:
    if not isinstance(params, dict):
        return [(at, BLANK)]
    found: list[Violation] = []
    tags = params.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(has_text(t) for t in tags)):
        found.append((f"{at}.tags", NOT_LIST))
    elif isinstance(tags, list) and len(tags) > 1 and params.get("tagsLogic") not in ("and", "or"):
        found.append((f"{at}.tagsLogic", BAD_LOGIC))
    if kind in ("request", "call"):
        key = f"{kind}Id"
        ok = has_text(params.get(key)) or as_int(params.get(key)) > 0
        return found + ([] if ok else [(f"{at}.{key}", BLANK)])
    return found + (_contact_problems(at, kind, params) if kind != "customSources" else [])


def _contact_problems(at: str, kind: str, params: dict[str, Any]) -> list[Violation]:
    def listed(key: str) -> bool:
        value = params.get(key)
        return isinstance(value, list) and bool(value) and all(has_text(v) for v in value)

    found: list[Violation] = []
    if not listed("phones") and (kind == "callContact" or not listed("emails")):
        found.append((f"{at}.phones", BLANK if kind == "callContact" else NO_CONTACT))
    if not is_date(params.get("date")):
        found.append((f"{at}.date", BAD_DATE if "date" in params else BLANK))
    to_match = "callTypeToMatch" if kind == "callContact" else "requestTypeToMatch"
    if not has_text(params.get(to_match)):
        found.append((f"{at}.{to_match}", BLANK))
    depth = params.get("searchDepth")
    if not (isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth <= MAX_DEPTH):
        found.append((f"{at}.searchDepth", BAD_DEPTH))
    return found
