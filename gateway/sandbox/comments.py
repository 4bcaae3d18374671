"""The sandbox's lead comments 2.0: ``comment/lead/add``.

A batch of comments is checked whole, as a deals batch is. Each comment then goes to what its
``matching`` list finds first (a lead the sandbox registered, or a call), is kept for
``/sandbox/comments``, and is answered with what it was added to, or with ``NO_LEAD``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.sandbox.leadservice import (
    BLANK,
    COMMENT_MATCHING,
    NO_LEAD,
    NOT_OBJECT,
    Violation,
    batch,
    has_text,
    invalid,
    matching_problems,
    token_refused,
)
from gateway.sandbox.office import OFFICE, BackOffice, Received, json_response, match_lead


def comment(request: web.Request, received: Received) -> web.Response:
    office = request.app[OFFICE]
    if (refused := token_refused(office, received)) is not None:
        return refused
    items, problems = batch(received.body, "comments")
    problems += [p for i, one in enumerate(items) for p in _comment_problems(f"comments[{i}]", one)]
    if problems:
        return invalid(problems)
    return json_response({"meta": [], "data": {"comments": [
        _comment_one(office, received.site, item) for item in items]}})


def _comment_problems(at: str, item: Any) -> list[Violation]:
    if not isinstance(item, dict):
        return [(at, NOT_OBJECT)]
    found = matching_problems(f"{at}.matching", item.get("matching"), COMMENT_MATCHING, True)
    return found + ([] if has_text(item.get("addComment")) else [(f"{at}.addComment", BLANK)])


def _comment_one(office: BackOffice, site: str, item: dict[str, Any]) -> dict[str, Any]:
    found = match_lead(office, item["matching"])
    if found is None:
        return {"requestInfo": None, "callInfo": None, "commented": False, "error": NO_LEAD}
    lead, call = found.lead, found.call_id
    office.comments.append({"siteId": site, "text": item["addComment"],
                            "requestId": str(lead.request_id) if lead else None,
                            "callId": str(call) if call else None})
    return {
        "requestInfo": {"requestId": str(lead.request_id), "requestNumber": lead.request_number}
        if lead else None,
        "callInfo": {"callId": str(call), "callReferenceId": None, "sipCallId": None}
        if call else None,
        "commented": True, "error": None,
    }
