"""The comment kind: a comment added to a lead or a call at Calltouch (pure).

The payload is JSON: ``{"comment": text, "lead": ref}`` for a lead sent through this gateway
(its Calltouch ``requestId`` comes at send time, as the job's ``after_upstream``), or
``{"comment": text, "matching": [...]}`` (Calltouch's own list; a ``requestId`` or ``callId``
target is written as one entry of it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.calltouch.answers import Delivered, Permanent, Retry, Verdict, redact
from gateway.calltouch.client import Call, Reply
from gateway.errors import FieldError, Invalid
from gateway.kinds import fields as f
from gateway.kinds import leadservice as ls
from gateway.kinds import matching as m
from gateway.queue.base import Job

KIND = "comment"
METHOD = "comment/lead/add"
MAX_TEXT = 4096  # as a lead's own comment (fields.comment): Calltouch documents no limit
_TYPES = frozenset({"request", "call", "requestContact", "callContact"})
_TARGETS = ("lead", "requestId", "callId", "matching")
_KNOWN = frozenset({"comment", "key", *_TARGETS})
_ID_ENTRY = {"requestId": ("request", "requestParams"), "callId": ("call", "callParams")}


@dataclass(slots=True)  # not frozen: see gateway.queue.base.Put
class Comment:
    """A valid comment: ``target`` is ``{"lead": ref}`` or ``{"matching": [...]}``."""

    text: str
    target: dict[str, Any]
    key: str | None = None  # the caller's idempotency key

    @property
    def lead(self) -> str | None:
        """A lead sent through this gateway (its id or requestNumber): the comment waits."""
        lead = self.target.get("lead")
        return lead if isinstance(lead, str) else None


def validate(data: Mapping[str, object]) -> Comment:
    """Normalise a decoded body into a :class:`Comment` or raise :class:`Invalid`."""
    errors = [FieldError(name[:64], "unknown_field", "is not a comment field")
              for name in data if name not in _KNOWN]
    text = _text(data.get("comment"), "comment", errors)
    key = _text(data.get("key"), "key", errors) if not _is_empty(data.get("key")) else None
    given = [name for name in _TARGETS if not _is_empty(data.get(name))]
    if len(given) != 1:
        code = "target_required" if not given else "conflicting_targets"
        errors.append(FieldError(None, code, "give exactly one of " + ", ".join(_TARGETS)))
        target: dict[str, Any] = {}
    else:
        target = _target(given[0], data[given[0]], errors)
    if errors:
        raise Invalid(errors, "invalid_comment")
    assert text is not None
    return Comment(text, target, key)


def _is_empty(value: object) -> bool:
    return not value and (value is None or isinstance(value, (str, list, dict)))


def _text(value: object, name: str, errors: list[FieldError]) -> str | None:
    if _is_empty(value):
        errors.append(FieldError(name, "required", "is required"))
        return None
    try:
        text = f.comment(value) if name == "comment" else f.line(value)
    except f.Bad as bad:
        errors.append(FieldError(name, bad.code, str(bad)))
        return None
    if not text:
        errors.append(FieldError(name, "required", "is required"))
        return None
    return text


def _target(name: str, value: object, errors: list[FieldError]) -> dict[str, Any]:
    if name == "lead":
        lead = _text(value, "lead", errors)
        return {"lead": lead}
    if name == "matching":
        errors += m.check_matching(value, _TYPES)
        return {"matching": value}  # Calltouch's own list: passed through as given
    try:
        m.check_id(value)
    except f.Bad as bad:
        errors.append(FieldError(name, bad.code, str(bad)))
        return {}
    kind, params = _ID_ENTRY[name]
    return {"matching": [{"type": kind, params: {name: int(str(value))}}]}


def dedup_key(comment: Comment) -> str:
    """The caller's key, else one of (target, text): Calltouch has no idempotency key, so a
    repeat of the same comment on the same lead is taken as the same comment."""
    if comment.key is not None:
        return comment.key
    canonical = orjson.dumps({"target": comment.target, "text": comment.text},
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def payload(comment: Comment) -> bytes:
    return orjson.dumps({"comment": comment.text, **comment.target})


def entry(fields: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
    """One entry of the call's ``comments``."""
    matching = [ls.request_entry(request_id)] if "lead" in fields else fields["matching"]
    return {"matching": matching, "addComment": fields["comment"]}


def read_item(item: Mapping[str, Any], job: Job) -> Verdict:
    commented = item.get("commented")
    error = ls.item_error(item)
    if commented is True:
        return Delivered(_commented_id(item))
    if commented is not False:
        return Retry("invalid_answer", "a result without commented")
    if error is not None and ls.says(error, "не найден", "not found"):
        # Not at Calltouch yet (a lead registered moments ago): back off and look again.
        return Retry("lead_not_found", redact(error))
    return Permanent("rejected", redact(error or "not commented"))


def _commented_id(item: Mapping[str, Any]) -> str:
    """The request's id, else the call's: which of them took the comment."""
    for info, name in (("requestInfo", "requestId"), ("callInfo", "callId")):
        found = item.get(info)
        if isinstance(found, dict) and found.get(name) not in (None, ""):
            return str(found[name])
    return ""


class CommentKind:
    """Comments go up to 100 a call, all of one site (the relay leases per site)."""

    kind = KIND
    method = METHOD
    batch = 100
    reads_errors = True  # lead-service answers a wrong token or a bad item with a 4xx too

    def __init__(
        self, site_ids: Mapping[str, str], tokens: Mapping[str, str], linger: float
    ) -> None:
        self._site_ids, self._tokens = dict(site_ids), dict(tokens)
        self.linger = linger

    def call(self, jobs: Sequence[Job]) -> Call:
        site = jobs[0].site
        assert all(job.site == site for job in jobs), "a call carries the jobs of one site"
        items = [entry(orjson.loads(job.payload), job.after_upstream) for job in jobs]
        return Call("POST", ls.PATHS["comments"], json={"comments": items},
                    headers=ls.headers(self._tokens[site], self._site_ids[site]))

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        return ls.read_batch(reply, jobs, "comments", read_item)
