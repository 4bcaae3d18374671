"""The check of a lead-service ``matching`` list: each entry's type and parameters (pure).

A deal 2.0 or a lead comment may say what it is matched to (a request or a call at Calltouch)
in Calltouch's own list of matching entries: :func:`check_matching` reports every problem of
one such list, entry by entry and within the limits below, and :func:`check_id` checks the
Calltouch id that a comment may name instead. The entry the gateway writes itself, for a lead
it sent, is :func:`gateway.kinds.leadservice.request_entry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.errors import FieldError
from gateway.kinds import fields as f
from gateway.kinds import leadservice as ls

MAX_MATCHING = 20
MAX_SEARCH_DEPTH = 525600  # minutes: one year
MAX_CONTACTS = 20  # phones or e-mails of one list: Calltouch documents no limit


# --- matching ------------------------------------------------------------------------------
# Calltouch's own list, checked as comments-api.ru.txt and deals-api-v2-example.md document it
# and passed through as given: its dates must already be in lead-service's form.

Check = Callable[[object], None]


def check_id(value: object) -> None:
    """A Calltouch id: a positive whole number, or the digits of one."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise f.Bad("invalid_id", "must be a Calltouch id: a positive whole number")


def _text(limit: int) -> Check:
    def check(value: object) -> None:
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            raise f.Bad("invalid_text", f"must be non-empty text of at most {limit} characters")
    return check


def _texts(limit: int, *, at_most: int = MAX_CONTACTS) -> Check:
    each = _text(limit)

    def check(value: object) -> None:
        if not isinstance(value, list) or not 0 < len(value) <= at_most:
            raise f.Bad("invalid_list", f"must be a list of 1 to {at_most} items")
        for item in value:
            each(item)
    return check


def _one_of(*allowed: str) -> Check:
    def check(value: object) -> None:
        if value not in allowed:
            raise f.Bad("invalid_choice", "must be one of " + ", ".join(allowed))
    return check


def _depth(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SEARCH_DEPTH:
        raise f.Bad("invalid_search_depth", f"must be minutes from 1 to {MAX_SEARCH_DEPTH}")


def _date(value: object) -> None:
    if ls.read_moment(value) is None:
        raise f.Bad("invalid_date", "must be dd-mm-yyyy hh:mm:ss")


_TAGS: dict[str, tuple[Check, bool]] = {
    "tags": (_texts(64, at_most=f.MAX_TAGS), False), "tagsLogic": (_one_of("and", "or"), False),
}
_CONTACT: dict[str, tuple[Check, bool]] = {
    **_TAGS, "date": (_date, True), "searchDepth": (_depth, True),
}
# type -> (its parameters' key, {parameter: (check, required)})
_TYPES: dict[str, tuple[str, dict[str, tuple[Check, bool]]]] = {
    "request": ("requestParams", {"requestId": (check_id, True), **_TAGS}),
    "call": ("callParams", {"callId": (check_id, True), **_TAGS}),
    "requestContact": ("requestContactParams", {
        **_CONTACT, "phones": (_texts(64), False), "emails": (_texts(254), False),
        "requestTypeToMatch": (_text(64), True),
    }),
    "callContact": ("callContactParams", {
        **_CONTACT, "phones": (_texts(64), True), "callTypeToMatch": (_text(64), True),
    }),
    "customSources": ("customSourceParams", {
        "source": (_text(256), True), "medium": (_text(256), False),
        "campaign": (_text(256), False),
    }),
}


def check_matching(
    value: object, types: frozenset[str], *, limit: int = MAX_MATCHING, name: str = "matching"
) -> list[FieldError]:
    """Every problem of a ``matching`` list whose entries may be of ``types``."""
    if not isinstance(value, list) or not 0 < len(value) <= limit:
        return [FieldError(name, "invalid_matching", f"must be a list of 1 to {limit} entries")]
    errors: list[FieldError] = []
    for index, entry in enumerate(value):
        errors += _check_entry(entry, types, f"{name}[{index}]")
    return errors


def _check_entry(entry: object, types: frozenset[str], path: str) -> list[FieldError]:
    kind = entry.get("type") if isinstance(entry, dict) else None
    if not isinstance(kind, str) or kind not in types:
        return [FieldError(path + ".type", "invalid_matching_type",
                           "must be one of " + ", ".join(sorted(types)))]
    assert isinstance(entry, dict)
    key, rules = _TYPES[kind]
    errors = [FieldError(f"{path}.{k}"[:96], "unknown_field", "is not a matching field")
              for k in entry if k not in ("type", key)]
    params = entry.get(key)
    if not isinstance(params, dict):
        return [*errors, FieldError(f"{path}.{key}", "required", f"is required for {kind}")]
    return errors + _check_params(params, rules, f"{path}.{key}")


def _check_params(
    params: Mapping[str, object], rules: Mapping[str, tuple[Check, bool]], path: str
) -> list[FieldError]:
    errors: list[FieldError] = []
    for name, value in params.items():
        if name not in rules:
            errors.append(FieldError(f"{path}.{name}"[:96], "unknown_field",
                                     "is not a matching field"))
            continue
        try:
            rules[name][0](value)
        except f.Bad as bad:
            errors.append(FieldError(f"{path}.{name}", bad.code, str(bad)))
    errors += [FieldError(f"{path}.{name}", "required", "is required")
               for name, (_, required) in rules.items() if required and name not in params]
    tags = params.get("tags")
    if isinstance(tags, list) and len(tags) > 1 and "tagsLogic" not in params:
        errors.append(FieldError(f"{path}.tagsLogic", "required", "is required with 2+ tags"))
    # requestContact (the one kind with emails) takes phones, emails or both: one is needed.
    if "emails" in rules and "emails" not in params and "phones" not in params:
        errors.append(FieldError(path, "contact_required", "needs phones or emails"))
    return errors
