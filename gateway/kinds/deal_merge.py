"""One deal's successive payloads: an update folded into one queued, or following one sent (pure).

A deal's jobs form one chain in the queue (:class:`gateway.queue.base.Link`): :func:`merge`
joins an update into the chain's tail while it is still queued, and :func:`follow` makes the
update to queue after one sent or in flight. Neither lets an older status replace a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.kinds import leadservice as ls
from gateway.kinds.deal_fields import LEAD_FIRST

_STATUS = ("status", "statusDate")
_NOT_UPDATED = ("matching", "fallback", LEAD_FIRST)  # what only a create sends
# The newest statusDate of the jobs before, in a payload that sets no status itself: a later
# post compares with it, so an update without a status between does not let an older status
# through. No call sends it (deal.py picks the fields it sends by name).
STATUS_SEEN = "statusDateSeen"


# --- one deal's successive payloads -------------------------------------------------------


def _newest_status_date(old: Mapping[str, Any]) -> str | None:
    """The newest statusDate ``old`` knows: its own, or that of the jobs before it."""
    dated = [(moment, text) for text in (old.get("statusDate"), old.get(STATUS_SEEN))
             if (moment := ls.read_moment(text)) is not None]
    return max(dated)[1] if dated else None


def _older_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """``new`` sets a status dated before ``old``'s: an older status arriving late."""
    was = ls.read_moment(_newest_status_date(old))
    now = ls.read_moment(new.get("statusDate"))
    return was is not None and now is not None and now < was


def merge(queued: bytes, new: bytes) -> bytes:
    """One payload of ``queued`` and a later ``new`` of the same deal, still unsent.

    A field given later wins, but an older status never replaces a newer one; tags add up,
    comments join (a repeat of the last adds nothing), custom fields merge by name. The lead
    marker is kept when either has it: it matches by the requestId of the lead the job waits
    for, so it does nothing on a job that waits for none, and a revived create waits for the
    lead the new post names.
    """
    old, later = orjson.loads(queued), orjson.loads(new)
    later.pop(STATUS_SEEN, None)
    if _older_status(old, later):
        for name in _STATUS:
            later.pop(name, None)
    merged = {**old, **later}
    if "tags" in old and "tags" in later:
        merged["tags"] = list(dict.fromkeys([*old["tags"], *later["tags"]]))
    if "comment" in old and "comment" in later:
        merged["comment"] = _joined(old["comment"], later["comment"])
    if "customFields" in old and "customFields" in later:
        merged["customFields"] = {**old["customFields"], **later["customFields"]}
    if "matching" in merged:
        merged.pop("fallback", None)
    return orjson.dumps(merged)


def _joined(comment: str, later: str) -> str:
    """``later`` after ``comment``, unless it is the last one joined: the same post twice."""
    if comment == later or comment.endswith("\n" + later):
        return comment
    return comment + "\n" + later


def follow(previous: bytes | None, new: bytes) -> bytes | None:
    """The update to queue after ``previous`` (the deal's latest payload sent or in flight;
    ``None`` when purged): ``new`` without what only a create sends and without an older
    status; ``None`` when nothing but the ``orderNumber`` is left."""
    later = orjson.loads(new)
    for name in (*_NOT_UPDATED, STATUS_SEEN):
        later.pop(name, None)
    seen = None
    if previous is not None:
        old = orjson.loads(previous)
        if _older_status(old, later):
            for name in _STATUS:
                later.pop(name, None)
        _drop_unchanged(old, later)
        seen = _newest_status_date(old)
    if not later.keys() - {"orderNumber"}:
        return None
    if "statusDate" not in later and seen is not None:
        later[STATUS_SEEN] = seen
    return orjson.dumps(later)


def _drop_unchanged(old: Mapping[str, Any], later: dict[str, Any]) -> None:
    """Leave out what ``old`` already said: the same file posted twice queues nothing."""
    for name in [n for n in later if n != "orderNumber" and old.get(n) == later[n]]:
        del later[name]
    if isinstance(later.get("tags"), list) and isinstance(old.get("tags"), list):
        later["tags"] = [tag for tag in later["tags"] if tag not in old["tags"]] or None
    if isinstance(later.get("customFields"), dict) and isinstance(old.get("customFields"), dict):
        changed = {k: v for k, v in later["customFields"].items()
                   if old["customFields"].get(k) != v}
        later["customFields"] = changed or None
    for name in ("tags", "customFields"):
        if name in later and later[name] is None:
            del later[name]
